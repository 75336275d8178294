"""Conditional DCGAN on anime faces: draw a face with the hair and eye colours you ask for.

Papers: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional GANs"
(ICLR 2016); Mirza & Osindero, "Conditional Generative Adversarial Nets" (2014); Reed et al.,
"Generative Adversarial Text to Image Synthesis" (ICML 2016: the mismatched-pair term); Arjovsky et al.
(WGAN) and Gulrajani et al. (WGAN-GP) for --loss. Coursework: MLDS homework 3 (DCGAN on anime faces,
a conditional DCGAN by hair and eye colour, WGAN-GP lambda 1 vs 10, the "training tips" ablations).

Run (offline: procedural cartoon faces from synthetic.py):
    python evaluate.py --train-classifier faces       # once: the attribute classifier that scores samples
    python cdcgan_anime.py --image-size 32            # the CPU benchmark setting (README)
    python cdcgan_anime.py --data anime --data-dir data/extra_data --tags-file testing_tags.txt   # MLDS data
    python cdcgan_anime.py --show "blue hair blue eyes" "green hair red eyes"                     # grid rows
    python cdcgan_anime.py --loss wgan-gp --lambda 1                                              # report: lambda 1 vs 10
    python cdcgan_anime.py --no-bn | --soft-labels | --no-normalize | --unconditional             # report's ablations
    python cdcgan_anime.py --generate --checkpoint runs/<run>/last.pt --show "pink hair aqua eyes"
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cdcgan_anime.py --device cuda
"""

import argparse
import glob
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import synthetic

SCRIPT = "cdcgan_anime"
HAIR_COLOURS, EYE_COLOURS = synthetic.HAIR_COLOURS, synthetic.EYE_COLOURS
N_HAIR, N_EYES = len(HAIR_COLOURS), len(EYE_COLOURS)
EVAL = {"dataset": "faces", "conditioning": "attributes", "num_classes": [N_HAIR, N_EYES],
        "class_names": {"hair": list(HAIR_COLOURS), "eyes": list(EYE_COLOURS)}}
REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLASSIFIER = os.path.join(REPO, "classifiers", "faces.pt")
# The rows of the report's figures: the five tag pairs of the course's testing_tags.txt.
REPORT_PAIRS = ["blue hair blue eyes", "blue hair green eyes", "blue hair red eyes", "green hair blue eyes",
                "green hair red eyes"]
TAG_PATTERN = re.compile(r"^\s*(\w+)\s+hair,?\s+(\w+)\s+eyes?\s*$")


def parse_tag_text(text):
    """'blue hair green eyes' -> (hair index, eye index); ValueError with a readable reason."""
    match = TAG_PATTERN.match(text)
    if not match:
        raise ValueError(f"expected '<hair> hair <eye> eyes', got {text.strip()!r}")
    hair, eye = match.group(1).lower(), match.group(2).lower()
    if hair not in HAIR_COLOURS:
        raise ValueError(f"unknown hair colour {hair!r} (known: {', '.join(HAIR_COLOURS)})")
    if eye not in EYE_COLOURS:
        raise ValueError(f"unknown eye colour {eye!r} (known: {', '.join(EYE_COLOURS)})")
    return HAIR_COLOURS.index(hair), EYE_COLOURS.index(eye)


def show_pair(text):
    """argparse type of --show: the tags, checked, written the canonical way (the args stay plain strings)."""
    try:
        hair, eye = parse_tag_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}") from None
    return f"{HAIR_COLOURS[hair]} hair {EYE_COLOURS[eye]} eyes"


show_pair.__name__ = "'<hair> hair <eye> eyes'"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional DCGAN on anime faces by hair and eye colour.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", "anime"], default="synthetic",
                        help="synthetic: procedural cartoon faces; anime: the MLDS data in --data-dir "
                             "(extra_data/: images/ + tags.csv, or faces/ + tags_clean.csv)")
    parser.add_argument("--n-faces", type=common.positive_int, default=20000,
                        help="with --data synthetic: faces drawn for training")
    parser.add_argument("--show", type=show_pair, nargs="+", default=REPORT_PAIRS,
                        metavar="TAGS", help="rows of the sample grids, each '<hair> hair <eye> eyes' "
                                             "(default: the report's five)")
    parser.add_argument("--tags-file", default=None,
                        help="the course's testing_tags.txt (lines 'n,<hair> hair <eye> eyes'): also write the "
                             "5x5 sheet samples/cgan.png from its first 25 lines")
    parser.add_argument("--unconditional", action="store_true",
                        help="the plain DCGAN of the report's first part: no tags at all")
    parser.add_argument("--embed-dim", type=common.positive_int, default=5,
                        help="size of each tag embedding (report: 5; much larger ones led to mode collapse)")
    parser.add_argument("--ngf", type=common.positive_int, default=32,
                        help="generator width: layers of 4, 2, 1 x ngf then 3 channels (64: the report's 256-128-64-3)")
    parser.add_argument("--ndf", type=common.positive_int, default=32, help="discriminator width")
    parser.add_argument("--act", choices=["selu", "relu"], default="relu",
                        help="generator activation (the report's generator used SELU)")
    parser.add_argument("--loss", choices=["bce", "wgan-clip", "wgan-gp"], default="bce",
                        help="bce: the DCGAN loss; wgan-clip: WGAN with weight clipping; wgan-gp: gradient penalty")
    parser.add_argument("--clip", type=common.positive_float, default=0.02, help="with wgan-clip: weight clipping bound")
    parser.add_argument("--lambda", dest="lambda_gp", type=common.non_negative_float, default=10.0,
                        help="with wgan-gp: gradient penalty weight (the report compared 1 and 10)")
    parser.add_argument("--n-critic", type=common.positive_int, default=None,
                        help="discriminator updates per generator update (default: 1 for bce, 5 for wgan)")
    parser.add_argument("--mismatch-weight", type=common.non_negative_float, default=1.0,
                        help="weight of the (real image, wrong tags) -> fake term; 0 turns it off")
    parser.add_argument("--no-bn", action="store_true", help="ablation: no BatchNorm in either network")
    parser.add_argument("--soft-labels", action="store_true",
                        help="ablation (bce): real targets drawn from [0.7, 1.2], fake from [0, 0.3]")
    parser.add_argument("--no-normalize", action="store_true",
                        help="ablation: images in [0, 1] and a ReLU generator output instead of [-1, 1] and tanh")
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                        help="attribute classifier used to score samples each epoch (skipped if absent; "
                             "train one with: python evaluate.py --train-classifier faces)")
    parser.add_argument("--score-every", type=common.positive_int, default=1,
                        help="score hair/eye accuracy with --classifier every N epochs")
    parser.add_argument("--generate", action="store_true",
                        help="no training: write the --show grid (and --tags-file sheet) from --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    common.add_common_args(parser, epochs=10, batch_size=64, lr=None, image_size=64, sample_every=1, save_every=5)
    parser.add_argument("--lr", type=common.positive_float, default=None,
                        help="learning rate (default: 2e-4 Adam for bce, 5e-5 RMSprop for wgan-clip, 1e-4 Adam for wgan-gp)")
    args = parser.parse_args(argv)
    if args.image_size not in (32, 64, 96):
        parser.error("--image-size must be 32, 64 or 96")
    if args.soft_labels and args.loss != "bce":
        parser.error("--soft-labels applies to --loss bce (WGAN critics output scores, not probabilities)")
    if args.generate and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.lr is None:
        args.lr = {"bce": 2e-4, "wgan-clip": 5e-5, "wgan-gp": 1e-4}[args.loss]
    if args.n_critic is None:
        args.n_critic = 1 if args.loss == "bce" else 5
    return args


# ---------------------------------------------------------------------------
# Data: the MLDS tag formats, the real loader, the embedded faces
# ---------------------------------------------------------------------------
def parse_tags_csv(path):
    """tags.csv / testing_tags.txt: lines 'id,<hair> hair <eye> eyes' -> list of (id, hair, eye)."""
    name = os.path.basename(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            image_id, comma, tags = line.strip().partition(",")
            if not comma or not image_id.strip():
                raise common.UserError(f"{name} line {number}: expected 'id,<hair> hair <eye> eyes', got {line.strip()!r}")
            try:
                hair, eye = parse_tag_text(tags)
            except ValueError as e:
                raise common.UserError(f"{name} line {number}: {e}") from None
            rows.append((image_id.strip(), hair, eye))
    if not rows:
        raise common.UserError(f"{path} holds no tag lines")
    return rows


def parse_tags_clean(path):
    """The older tags_clean.csv: 'id,tag:count<TAB>tag:count...'. Keeps the images with exactly one hair
    colour and one eye colour of the vocabularies (other tags, like 'long hair', are ignored).
    Returns (rows, number of lines dropped)."""
    name = os.path.basename(path)
    rows, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            image_id, comma, tags = line.rstrip("\n").partition(",")
            if not comma or not image_id.strip():
                raise common.UserError(f"{name} line {number}: expected 'id,tag:count<TAB>tag:count...', "
                                       f"got {line.strip()[:60]!r}")
            hairs, eyes = set(), set()
            for item in tags.split("\t"):
                tag = item.rpartition(":")[0].strip().lower() if ":" in item else item.strip().lower()
                words = tag.split()
                if len(words) == 2 and words[1] == "hair" and words[0] in HAIR_COLOURS:
                    hairs.add(HAIR_COLOURS.index(words[0]))
                elif len(words) == 2 and words[1] == "eyes" and words[0] in EYE_COLOURS:
                    eyes.add(EYE_COLOURS.index(words[0]))
            if len(hairs) == 1 and len(eyes) == 1:
                rows.append((image_id.strip(), hairs.pop(), eyes.pop()))
            else:
                dropped += 1
    return rows, dropped


def find_anime_layout(data_dir):
    """(image folder, tag file, format) for the folder itself or its extra_data/ or faces/ layout."""
    for root in (data_dir, os.path.join(data_dir, "extra_data")):
        if os.path.isfile(os.path.join(root, "tags.csv")) and os.path.isdir(os.path.join(root, "images")):
            return os.path.join(root, "images"), os.path.join(root, "tags.csv"), "extra_data"
    if os.path.isfile(os.path.join(data_dir, "tags_clean.csv")) and os.path.isdir(os.path.join(data_dir, "faces")):
        return os.path.join(data_dir, "faces"), os.path.join(data_dir, "tags_clean.csv"), "faces"
    raise common.UserError(
        f"no anime faces in {data_dir}: expected extra_data/ (images/<id>.jpg + tags.csv) or faces/<id>.jpg + "
        f"tags_clean.csv (MLDS 2018 homework 3 data; see README), or use --data synthetic")


def load_anime(data_dir, image_size, verbose=True):
    """The MLDS data -> (uint8 images (N, 3, S, S), labels int64 (N, 2) = [hair, eye])."""
    from PIL import Image

    image_dir, tag_file, layout = find_anime_layout(data_dir)
    if layout == "extra_data":
        rows, dropped = parse_tags_csv(tag_file), 0
    else:
        rows, dropped = parse_tags_clean(tag_file)
    if not rows:
        raise common.UserError(f"{tag_file}: no image has exactly one hair colour and one eye colour tag")
    files = {os.path.splitext(f)[0]: f for f in os.listdir(image_dir) if f.lower().endswith((".jpg", ".jpeg", ".png"))}
    arrays, labels = [], []
    for image_id, hair, eye in rows:
        if image_id not in files:
            raise common.UserError(f"{os.path.basename(tag_file)} names image {image_id!r}, but {image_dir} has no "
                                   f"{image_id}.jpg")
        path = os.path.join(image_dir, files[image_id])
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.LANCZOS)
                arrays.append(np.asarray(im))
        except OSError as e:
            raise common.UserError(f"cannot read image {path}: {e}") from None
        labels.append((hair, eye))
    untagged = len(set(files) - {r[0] for r in rows})
    if verbose:
        note = f" ({dropped} tag lines without exactly one hair and one eye colour dropped)" if dropped else ""
        print(f"loaded {len(arrays)} faces from {image_dir}{note}", file=sys.stderr)
        if untagged:
            print(f"note: {untagged} images in {image_dir} have no usable tags in {os.path.basename(tag_file)} "
                  f"and are not used", file=sys.stderr)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


def load_data(args):
    if args.data == "anime":
        return load_anime(args.data_dir, args.image_size)
    images, hair, eyes = synthetic.faces(args.n_faces, args.image_size, seed=args.seed)
    return images, torch.stack([hair, eyes], 1)


def wrong_tags(labels):
    """For each (hair, eye) a different pair: (real image, wrong tags) must be judged fake. A third of them get
    a wrong hair colour only, a third wrong eyes only, a third both: if nearly every wrong pair had the wrong
    hair (as when drawn uniformly from the other 131 pairs), D could ignore the small eyes."""
    which = torch.randint(0, 3, (labels.shape[0],), device=labels.device)  # 0: hair, 1: eyes, 2: both
    hair_shift = torch.randint(1, N_HAIR, which.shape, device=labels.device) * (which != 1)
    eye_shift = torch.randint(1, N_EYES, which.shape, device=labels.device) * (which != 0)
    return torch.stack([(labels[:, 0] + hair_shift) % N_HAIR, (labels[:, 1] + eye_shift) % N_EYES], 1)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """[noise, hair embedding, eye embedding] -> (S/8)x(S/8) -> ... -> image: the report's 4 transposed
    convs with ngf x 4, 2, 1 channels, then 3 (256-128-64-3 at ngf 64), BN and ReLU or SELU."""

    def __init__(self, nz=100, embed_dim=5, ngf=64, image_size=64, act="relu", batch_norm=True, normalized=True,
                 conditional=True):
        super().__init__()
        self.nz, self.conditional, self.normalized = nz, conditional, normalized
        if conditional:
            self.hair_embedding = nn.Embedding(N_HAIR, embed_dim)
            self.eye_embedding = nn.Embedding(N_EYES, embed_dim)
        activation = {"relu": lambda: nn.ReLU(True), "selu": lambda: nn.SELU(True)}[act]
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        width = [ngf * 4, ngf * 2, ngf]
        layers = [nn.ConvTranspose2d(nz + (2 * embed_dim if conditional else 0), width[0], image_size // 8, 1, 0,
                                     bias=not batch_norm), norm(width[0]), activation()]
        for c_in, c_out in zip(width, width[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), norm(c_out), activation()]
        # tanh for images in [-1, 1]; the --no-normalize ablation's [0, 1] images get a ReLU output.
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1), nn.Tanh() if normalized else nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, noise, labels=None):
        z = noise.flatten(1)
        if self.conditional:
            z = torch.cat([z, self.hair_embedding(labels[:, 0]), self.eye_embedding(labels[:, 1])], 1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image -> conv -> [features, tag embeddings expanded to a map] -> convs -> one logit (the report's design:
    the tags join after the first conv). LeakyReLU(0.2); BN except on the first layer, unless turned off."""

    def __init__(self, embed_dim=5, ndf=64, image_size=64, batch_norm=True, conditional=True):
        super().__init__()
        self.conditional = conditional
        if conditional:
            self.hair_embedding = nn.Embedding(N_HAIR, embed_dim)
            self.eye_embedding = nn.Embedding(N_EYES, embed_dim)
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.first = nn.Sequential(nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True))
        c_in = ndf + (2 * embed_dim if conditional else 0)
        self.rest = nn.Sequential(
            nn.Conv2d(c_in, ndf * 2, 4, 2, 1, bias=not batch_norm), norm(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=not batch_norm), norm(ndf * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, 1, image_size // 8, 1, 0))

    def forward(self, images, labels=None):
        features = self.first(images)
        if self.conditional:
            tags = torch.cat([self.hair_embedding(labels[:, 0]), self.eye_embedding(labels[:, 1])], 1)
            tag_map = tags[:, :, None, None].expand(-1, -1, features.shape[2], features.shape[3])
            features = torch.cat([features, tag_map.to(features.dtype)], 1)
        return self.rest(features).flatten()


def build_generator(args):
    """Rebuild the generator from the plain args dict stored in a checkpoint (evaluate.py uses this)."""
    return Generator(args["nz"], args["embed_dim"], args["ngf"], args["image_size"], args["act"],
                     batch_norm=not args["no_bn"], normalized=not args["no_normalize"],
                     conditional=not args["unconditional"])


def build(args, device):
    generator = Generator(args.nz, args.embed_dim, args.ngf, args.image_size, args.act, batch_norm=not args.no_bn,
                          normalized=not args.no_normalize, conditional=not args.unconditional)
    # The WGAN-GP critic has no BatchNorm: the gradient penalty is per sample, and BN mixes samples.
    discriminator = Discriminator(args.embed_dim, args.ndf, args.image_size,
                                  batch_norm=not args.no_bn and args.loss != "wgan-gp",
                                  conditional=not args.unconditional)
    generator = common.prepare_model(generator.apply(common.dcgan_init), device)
    discriminator = common.prepare_model(discriminator.apply(common.dcgan_init), device)
    if args.loss == "wgan-clip":  # the WGAN paper: momentum-based optimizers were unstable with clipping
        optimizers = {"generator": torch.optim.RMSprop(generator.parameters(), lr=args.lr),
                      "discriminator": torch.optim.RMSprop(discriminator.parameters(), lr=args.lr)}
    else:
        betas = (args.beta1, args.beta2)
        optimizers = {"generator": common.adam(generator.parameters(), args.lr, betas, device),
                      "discriminator": common.adam(discriminator.parameters(), args.lr, betas, device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz) and labels (N, 2) = [hair, eye] indices. Train-mode BN, as in
    training (see dcgan_letters.py). A --no-normalize generator draws in [0, 1]: mapped to [-1, 1] here.
    We sample on copies of the running statistics, so drawing samples never changes the model (exact resume)."""
    generator = common.unwrap(generator)
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    images = torch.func.functional_call(generator, buffers, (noise, labels if generator.conditional else None))
    if not generator.normalized:
        images = images.clamp(0, 1) * 2 - 1
    return images


# ---------------------------------------------------------------------------
# Losses and the training step
# ---------------------------------------------------------------------------
def gradient_penalty(critic, real_images, fake_images, labels):
    """WGAN-GP: lambda * E[(||grad_x D(x_hat, tags)||_2 - 1)^2], x_hat on lines between real and fake images."""
    alpha = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device)
    mixed = (alpha * real_images + (1 - alpha) * fake_images).requires_grad_(True)
    scores = critic(mixed, labels)
    grad, = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def targets(logits, real, soft):
    """BCE targets: 1 / 0, or with --soft-labels drawn from [0.7, 1.2] / [0, 0.3] (the "training tips")."""
    if not soft:
        return torch.ones_like(logits) if real else torch.zeros_like(logits)
    low, high = (0.7, 1.2) if real else (0.0, 0.3)
    return torch.empty_like(logits).uniform_(low, high)


def train_step(models, optimizers, batch, args):
    """One discriminator update on three kinds of pairs, and (every --n-critic steps: batch["update_generator"])
    one generator update. (real, right tags) -> real; (fake, right tags) -> fake; (real, wrong tags) -> fake."""
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images = batch["images"]
    conditional = not args.unconditional
    labels = batch["labels"] if conditional else None
    noise = torch.randn(real_images.shape[0], args.nz, device=real_images.device)
    bce = F.binary_cross_entropy_with_logits
    with common.autocast(real_images.device, args.amp):
        fake_images = generator(noise, labels)
        logits_real = discriminator(real_images, labels)
        logits_fake = discriminator(fake_images.detach(), labels)
        use_wrong = conditional and args.mismatch_weight > 0
        logits_wrong = discriminator(real_images, wrong_tags(labels)) if use_wrong else None
        if args.loss == "bce":
            loss_d = bce(logits_real, targets(logits_real, True, args.soft_labels)) \
                + bce(logits_fake, targets(logits_fake, False, args.soft_labels))
            if use_wrong:
                loss_d = loss_d + args.mismatch_weight * bce(logits_wrong, targets(logits_wrong, False, args.soft_labels))
        else:
            # Critic: minimise E[D(fake)] - E[D(real)] (+ the same for wrong tags); GP or clipping keeps D Lipschitz.
            loss_d = logits_fake.mean() - logits_real.mean()
            if use_wrong:
                loss_d = loss_d + args.mismatch_weight * (logits_wrong.mean() - logits_real.mean())
            if args.loss == "wgan-gp":
                loss_d = loss_d + args.lambda_gp * gradient_penalty(discriminator, real_images, fake_images.detach(), labels)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)
    if args.loss == "wgan-clip":
        with torch.no_grad():
            for p in discriminator.parameters():
                p.clamp_(-args.clip, args.clip)

    if batch.get("update_generator", True):
        with common.autocast(real_images.device, args.amp):
            logits_gen = discriminator(fake_images, labels)
            # Generator: non-saturating BCE (maximise log D(G(z, tags), tags)), or -E[D(G(z))] for WGAN.
            loss_g = bce(logits_gen, torch.ones_like(logits_gen)) if args.loss == "bce" else -logits_gen.mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    else:  # a critic-only step: report the generator loss the critic saw, at no extra cost
        loss_g = bce(logits_fake, torch.ones_like(logits_fake)) if args.loss == "bce" else -logits_fake.mean()
    out = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
    if args.loss == "bce":
        out["d_real"] = torch.sigmoid(logits_real.detach().float()).mean()
        out["d_fake"] = torch.sigmoid(logits_fake.detach().float()).mean()
        if use_wrong:
            out["d_wrong"] = torch.sigmoid(logits_wrong.detach().float()).mean()
    return out


# ---------------------------------------------------------------------------
# Attribute classifier (hair head, eye head): scores generated faces
# ---------------------------------------------------------------------------
CLASSIFIER_SIZE = 32  # faces are judged at 32 px: colours survive the downscale, and it is fast on a CPU


class AttributeClassifier(nn.Module):
    """A small CNN with two heads: hair colour (12) and eye colour (11)."""

    def __init__(self, width=24):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]

        self.features = nn.Sequential(*block(3, width), *block(width, width), nn.MaxPool2d(2),
                                      *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
                                      *block(2 * width, 4 * width), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(4 * width * 16, 128), nn.ReLU(True))
        self.hair_head = nn.Linear(128, N_HAIR)
        self.eye_head = nn.Linear(128, N_EYES)

    def forward(self, images):
        if images.shape[-1] != CLASSIFIER_SIZE:
            images = F.interpolate(images, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="area")
        h = self.features(images)
        return self.hair_head(h), self.eye_head(h)


def augment(images, generator):
    """Flip, shift by up to 2 px, and add noise: the classifier must also read imperfect generated faces."""
    n = images.shape[0]
    flip = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    images = torch.where(flip, images.flip(3), images)
    dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
    images = torch.roll(images, (dy, dx), (2, 3))
    noise_level = torch.rand(n, 1, 1, 1, generator=generator) * 0.12
    return images + noise_level * torch.randn(images.shape, generator=generator)


def _classifier_data(n, seed):
    """Synthetic faces for the classifier: half drawn at 32 px, half at 64 px and shrunk (as generated 64 px faces are)."""
    half = n // 2
    small, hair_a, eyes_a = synthetic.faces(half, CLASSIFIER_SIZE, seed=seed)
    large, hair_b, eyes_b = synthetic.faces(n - half, 64, seed=seed + 1)
    large = common.to_uint8_images(large, CLASSIFIER_SIZE, 3)
    return torch.cat([small, large]), torch.stack([torch.cat([hair_a, hair_b]), torch.cat([eyes_a, eyes_b])], 1)


def _accuracy(classifier, images, labels, batch_size=512):
    hair_right, eye_right = [], []
    classifier.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            hair_logits, eye_logits = classifier(images[start:start + batch_size])
            hair_right.append(hair_logits.argmax(1) == labels[start:start + batch_size, 0])
            eye_right.append(eye_logits.argmax(1) == labels[start:start + batch_size, 1])
    hair_right, eye_right = torch.cat(hair_right), torch.cat(eye_right)
    return {"hair_acc": hair_right.float().mean().item(), "eye_acc": eye_right.float().mean().item(),
            "both_acc": (hair_right & eye_right).float().mean().item(), "n": len(images)}


def train_classifier(out_path, data_dir=None, device="cpu", seed=0, n_faces=16000, n_test=2640, epochs=5,
                     verbose=True):
    """Train the hair/eye classifier on synthetic faces (or the MLDS data in data_dir) and save it to out_path.
    Returns its held-out accuracy: the ceiling any generator's score can reach."""
    start = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)
    if data_dir is None:
        images, labels = _classifier_data(n_faces, seed=seed + 7919)  # faces no generator trained on
        test_images, test_labels = _classifier_data(n_test, seed=seed + 104729)
    else:
        images, labels = load_anime(data_dir, CLASSIFIER_SIZE, verbose=verbose)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        held_out = max(1, len(images) // 10)  # a tenth of the real faces, never trained on
        test_images, test_labels = images[order[:held_out]], labels[order[:held_out]]
        images, labels = images[order[held_out:]], labels[order[held_out:]]
    to_float = lambda x: x.float().div(127.5).sub(1)  # noqa: E731 - [-1, 1], like the generators' samples
    classifier = AttributeClassifier().to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    batch_size = 128
    steps = epochs * (len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=max(steps, 1))
    rng = torch.Generator().manual_seed(seed)
    bar = common.progress_bar(steps, desc="classifier", disable=not verbose)
    for _ in range(epochs):
        classifier.train()
        order = torch.randperm(len(images), generator=rng)
        for b in range(len(images) // batch_size):
            index = order[b * batch_size:(b + 1) * batch_size]
            x = augment(to_float(images[index]), rng).to(device)
            y = labels[index].to(device)
            hair_logits, eye_logits = classifier(x)
            loss = F.cross_entropy(hair_logits, y[:, 0]) + F.cross_entropy(eye_logits, y[:, 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
    bar.close()
    ceiling = _accuracy(classifier, to_float(test_images).to(device), test_labels.to(device))
    ceiling["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    common.save_checkpoint(out_path, {"format": common.CHECKPOINT_FORMAT, "script": "faces_classifier",
                                      "data": "synthetic" if data_dir is None else os.path.abspath(data_dir),
                                      "hair_colours": list(HAIR_COLOURS), "eye_colours": list(EYE_COLOURS),
                                      "image_size": CLASSIFIER_SIZE, "model": classifier.state_dict(),
                                      "ceiling": ceiling})
    if verbose:
        print(f"classifier saved to {out_path}: held-out hair {ceiling['hair_acc']:.3f}, eyes {ceiling['eye_acc']:.3f}, "
              f"both {ceiling['both_acc']:.3f} ({ceiling['seconds']:.0f} s)", file=sys.stderr)
    return {**ceiling, "path": out_path}


def load_classifier(path, device):
    if not os.path.isfile(path):
        raise common.UserError(f"no attribute classifier at {path}: train one with "
                               f"`python evaluate.py --train-classifier faces`")
    checkpoint = common.load_checkpoint(path, map_location=device)
    if checkpoint["script"] != "faces_classifier":
        raise common.UserError(f"{path} is not a faces attribute classifier (it was written by {checkpoint['script']})")
    classifier = AttributeClassifier().to(device)
    classifier.load_state_dict(checkpoint["model"])
    return classifier.eval(), checkpoint


def score_generator(generator, args, classifier_path, device, n_per_pair=16, seed=0):
    """Hair, eye and both-right accuracy of the classifier on generated faces, balanced over all 12 x 11 tag
    pairs (n_per_pair each). `args`: the plain args dict of the generator's checkpoint."""
    if args.get("unconditional"):
        raise common.UserError("an unconditional generator draws no requested colours: nothing to score")
    device = torch.device(device)
    classifier, _ = load_classifier(classifier_path, device)
    pairs = torch.tensor([(h, e) for h in range(N_HAIR) for e in range(N_EYES)], dtype=torch.int64)
    labels = pairs.repeat(n_per_pair, 1)  # every batch mixes all pairs, so train-mode BN sees a balanced batch
    noise = torch.randn(len(labels), args["nz"], generator=torch.Generator().manual_seed(seed))
    images = torch.cat([sample(generator, noise[i:i + 264].to(device), labels[i:i + 264].to(device)).float()
                        for i in range(0, len(labels), 264)])
    return _accuracy(classifier, images, labels.to(device))


def face_count(sheet_path_or_images, cascade_path):
    """The MLDS grading check: faces OpenCV's lbpcascade_animeface finds on the 5x5 sheet (pass: >= 20 of 25).
    Grey, histogram-equalised, detectMultiScale(scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)).
    Takes a PNG path, or images (N, 3, H, W) in [-1, 1], laid out 5 per row and enlarged as samples/cgan.png is."""
    try:
        import cv2
    except ImportError:
        raise common.UserError('the face count needs OpenCV: pip install "opencv-python-headless<5"') from None
    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascade detector out of the main package
        raise common.UserError(f'OpenCV {cv2.__version__} has no CascadeClassifier: pip install "opencv-python-headless<5"')
    if not os.path.isfile(cascade_path):
        raise common.UserError(f"cascade file not found: {cascade_path} (get lbpcascade_animeface.xml from "
                               f"https://github.com/nagadomi/lbpcascade_animeface)")
    cascade = cv2.CascadeClassifier(cascade_path)
    if cascade.empty():
        raise common.UserError(f"{cascade_path} is not an OpenCV cascade file")
    if isinstance(sheet_path_or_images, (str, os.PathLike)):
        picture = cv2.imread(str(sheet_path_or_images))
        if picture is None:
            raise common.UserError(f"cannot read image {sheet_path_or_images}")
        grey = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
    else:
        images = common.to_image_uint8(sheet_path_or_images)
        if images.shape[-1] < 64:  # common.save_grid enlarges small faces (nearest) to about 128 px
            images = F.interpolate(images, scale_factor=128 // images.shape[-1], mode="nearest")
        grey = cv2.cvtColor(common.image_grid(images, 5, padding=0), cv2.COLOR_RGB2GRAY)
    grey = cv2.equalizeHist(grey)
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return len(found)


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------
LOG_FIELDS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "d_wrong", "hair_acc", "eye_acc", "both_acc",
              "images_per_s"]
GRID_COLUMNS = 8


def show_labels(show):
    """--show tags -> (labels (rows * 8, 2) for the sample grid, row names)."""
    pairs = [parse_tag_text(text) for text in show]
    return torch.tensor([pair for pair in pairs for _ in range(GRID_COLUMNS)], dtype=torch.int64), list(show)


def write_tag_sheet(generator, tags_file, nz, path, device, seed):
    """The course's samples/cgan.png: one face per line of testing_tags.txt (first 25), 5 per row."""
    rows = parse_tags_csv(tags_file)[:25]
    labels = torch.tensor([(hair, eye) for _, hair, eye in rows], dtype=torch.int64, device=device)
    noise = torch.randn(len(rows), nz, generator=torch.Generator().manual_seed(seed)).to(device)
    common.save_grid(sample(generator, noise, labels), path, nrow=5)
    return path


def train(args):
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    common.seed_everything(args.seed, args.deterministic)
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    if args.tags_file is not None:
        if not os.path.isfile(args.tags_file):
            raise common.UserError(f"--tags-file {args.tags_file} not found")
        parse_tags_csv(args.tags_file)  # a malformed line fails now, not after training
    images, labels = load_data(args)  # all data errors surface before anything is written
    if args.resume not in (None, "auto"):  # and checkpoint errors too
        common.load_checkpoint(args.resume, SCRIPT)
    if len(images) // dist.world_size < args.batch_size:
        raise common.UserError(f"the dataset has {len(images)} images: fewer than one batch of {args.batch_size} "
                               f"per process; lower --batch-size")
    if master:
        common.prepare_run_dir(out, resume=args.resume is not None)
        common.write_config(out, args, SCRIPT, device, {"images": len(images)})
    scoring = not args.unconditional and os.path.isfile(args.classifier)
    if master and not args.unconditional and not scoring:
        print(f"note: no attribute classifier at {args.classifier}: hair/eye accuracy is not logged "
              f"(python evaluate.py --train-classifier faces)", file=sys.stderr)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    models, optimizers = build(args, device)
    noise_source = torch.Generator().manual_seed(args.seed)
    grid_labels, row_names = show_labels(args.show)
    # The same 8 noise vectors in every row: rows differ only by their tags.
    fixed_noise = torch.randn(GRID_COLUMNS, args.nz, generator=noise_source).repeat(len(args.show), 1).to(device)
    if args.unconditional:
        fixed_noise, row_names = torch.randn(64, args.nz, generator=noise_source).to(device), None
    loader = common.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed, rank=dist.rank,
                                 world_size=dist.world_size, normalize=not args.no_normalize)
    epoch, batch_in_epoch, step = 0, 0, 0
    history = {"step": [], "loss_d": [], "loss_g": [], "d_real": [], "d_fake": [], "d_wrong": [],
               "score_epoch": [], "hair_acc": [], "eye_acc": [], "both_acc": []}
    meter = common.LossMeter()

    resume_path = common.resolve_resume(args.resume, out)
    if resume_path:
        checkpoint = common.load_checkpoint(resume_path, SCRIPT, map_location=device)
        for key in models:
            models[key].load_state_dict(checkpoint[key])
        for key in optimizers:
            optimizers[key].load_state_dict(checkpoint["optimizers"][key])
        epoch, batch_in_epoch, step = checkpoint["epoch"], checkpoint["batch_in_epoch"], checkpoint["step"]
        history, fixed_noise = checkpoint["history"], checkpoint["fixed_noise"].to(device)
        meter.load_state_dict(checkpoint["meter"], device)
        common.set_rng_state(checkpoint["rng"])
        if batch_in_epoch >= len(loader):  # a different batch size or process count: start the next epoch
            epoch, batch_in_epoch = epoch + 1, 0
        if master:
            print(f"resumed from {resume_path} at epoch {epoch}, step {step}", file=sys.stderr)
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)

    train_models = {k: common.maybe_compile(common.wrap_ddp(m, dist, args.sync_bn), args.compile) for k, m in models.items()}
    logger = common.CSVLogger(os.path.join(out, "log.csv"), LOG_FIELDS, resume_step=step if resume_path else None,
                              tensorboard_dir=os.path.join(out, "tb") if args.track else None) if master else None
    monitor = common.HealthMonitor(enabled=master)
    real_reference = images[:64].float().div(127.5).sub(1).to(device)
    total_steps = args.epochs * len(loader) if args.max_steps is None else min(args.max_steps, args.epochs * len(loader))

    def save(path, finished=False):
        common.save_checkpoint(path, {
            "format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "finished": finished,
            "generator": common.unwrap(models["generator"]).state_dict(),
            "discriminator": common.unwrap(models["discriminator"]).state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "rng": common.rng_state(), "history": history, "fixed_noise": fixed_noise.cpu(), "meter": meter.state_dict(),
            "world_size": dist.world_size, "replica_divergence": divergence})

    def log(images_per_s):
        means = meter.means()
        if not means:
            return
        common.check_finite(means, step, args.skip_nonfinite)
        monitor.update(means, step)
        history["step"].append(step)
        for k in ("loss_d", "loss_g", "d_real", "d_fake", "d_wrong"):
            history[k].append(means.get(k, float("nan")))
        if master:
            logger.log({"step": step, "epoch": epoch, **means, "images_per_s": images_per_s})
            bar.set_postfix(loss_d=f"{means['loss_d']:.3f}", loss_g=f"{means['loss_g']:.3f}",
                            img_s=f"{images_per_s:.0f}", refresh=False)

    def write_samples(label):
        generator = models["generator"]
        images_now = sample(generator, fixed_noise, None if args.unconditional else grid_labels.to(device))
        monitor.check_samples(images_now, real_reference, label)
        common.save_grid(images_now, os.path.join(out, "samples", f"epoch_{label:03d}.png"), nrow=GRID_COLUMNS,
                         row_labels=row_names)
        common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))), os.path.join(out, "progress.gif"))
        common.plot_losses(history, os.path.join(out, "losses.png"), title=f"{SCRIPT} losses ({args.loss})")
        if args.tags_file:
            write_tag_sheet(generator, args.tags_file, args.nz, os.path.join(out, "samples", "cgan.png"), device, args.seed)

    def write_scores():
        scores = score_generator(models["generator"], common.plain_args(args), args.classifier, device, n_per_pair=8)
        history["score_epoch"].append(epoch)
        for k in ("hair_acc", "eye_acc", "both_acc"):
            history[k].append(scores[k])
        logger.log({"step": step, "epoch": epoch, **{k: scores[k] for k in ("hair_acc", "eye_acc", "both_acc")}})
        common.plot_curves({k: (history["score_epoch"], history[k]) for k in ("hair_acc", "eye_acc", "both_acc")},
                           os.path.join(out, "accuracy.png"), title="attribute accuracy of generated faces",
                           xlabel="epoch", ylabel="accuracy")
        print(f"\nepoch {epoch}: hair {scores['hair_acc']:.3f}  eyes {scores['eye_acc']:.3f}  "
              f"both {scores['both_acc']:.3f}", file=sys.stderr, flush=True)

    bar = common.progress_bar(total_steps, initial=step, desc=SCRIPT, disable=not master or args.no_progress)
    interval_start, interval_steps, stopped, divergence = time.perf_counter(), 0, False, 0.0
    with common.GracefulExit() as stop:
        while epoch < args.epochs and not stopped:
            for images_batch, labels_batch in loader.epoch(epoch, batch_in_epoch):
                batch = {"images": images_batch, "labels": labels_batch,
                         "update_generator": (step + 1) % args.n_critic == 0}
                meter.add(train_step(train_models, optimizers, batch, args))
                step, batch_in_epoch, interval_steps = step + 1, batch_in_epoch + 1, interval_steps + 1
                bar.update(1)
                at_limit = args.max_steps is not None and step >= args.max_steps
                if step % args.log_every == 0 or at_limit:
                    log(interval_steps * args.batch_size * dist.world_size / (time.perf_counter() - interval_start))
                    interval_start, interval_steps = time.perf_counter(), 0
                if at_limit or (stop if not dist.enabled else step % args.log_every == 0 and common.stop_requested(stop, dist)):
                    stopped = True
                    break
            if batch_in_epoch == len(loader):  # a whole epoch is done (also when a stop came with its last batch)
                epoch, batch_in_epoch = epoch + 1, 0
                log(interval_steps * args.batch_size * dist.world_size / max(time.perf_counter() - interval_start, 1e-9))
                interval_start, interval_steps = time.perf_counter(), 0
            finished = epoch >= args.epochs or (args.max_steps is not None and step >= args.max_steps)
            if finished:  # every rank takes part in this check
                divergence = common.replica_divergence(models["generator"], dist)
            if master and (finished or stopped or epoch == 1 or epoch % args.sample_every == 0):
                write_samples(epoch if batch_in_epoch == 0 else epoch + 1)  # mid-epoch: the epoch under way
            if master and scoring and not stop and (finished or (not stopped and epoch % args.score_every == 0)):
                write_scores()
            if master:
                save(os.path.join(out, "last.pt"), finished=finished)
                if not stopped and epoch % args.save_every == 0:
                    save(os.path.join(out, f"epoch_{epoch:03d}.pt"), finished=finished)
            if finished:
                break
        bar.close()
        if logger:
            logger.close()
        if stop:
            raise SystemExit(130)
    common.cleanup_distributed(dist)
    if master:
        print(f"done: {out}", file=sys.stderr)
    return out


def generate(args):
    """--generate --checkpoint PATH: the --show grid (and the --tags-file sheet) from a trained generator."""
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    if args.tags_file:
        parse_tags_csv(args.tags_file)  # a bad file fails before anything is written
    generator = build_generator(checkpoint["args"]).to(device)
    generator.load_state_dict(checkpoint["generator"])
    nz = checkpoint["args"]["nz"]
    folder = os.path.dirname(os.path.abspath(args.checkpoint))
    noise_source = torch.Generator().manual_seed(args.seed)
    if checkpoint["args"]["unconditional"]:
        images, row_names = sample(generator, torch.randn(64, nz, generator=noise_source).to(device)), None
    else:  # the same noise in every row, as in training's grids
        labels, row_names = show_labels(args.show)
        noise = torch.randn(GRID_COLUMNS, nz, generator=noise_source).repeat(len(args.show), 1)
        images = sample(generator, noise.to(device), labels.to(device))
    path = common.save_grid(images, os.path.join(folder, "generated.png"), nrow=GRID_COLUMNS, row_labels=row_names)
    print(f"wrote {path}")
    if args.tags_file and not checkpoint["args"]["unconditional"]:
        sheet = write_tag_sheet(generator, args.tags_file, nz, os.path.join(folder, "cgan.png"), device, args.seed)
        print(f"wrote {sheet}")
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.generate:
        return generate(args)
    return train(args)


if __name__ == "__main__":
    common.run_main(main)
