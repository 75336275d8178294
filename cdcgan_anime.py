"""Conditional DCGAN on anime faces: draw a face with the hair and eye colours you ask for.

Papers: DCGAN (Radford et al. 2016), conditional GANs (Mirza & Osindero 2014), the mismatched-pair
term of Reed et al. (2016, text to image), WGAN and WGAN-GP for --loss, AC-GAN (Odena et al. 2017)
for --aux-weight. Coursework: MLDS homework 3 (DCGAN on anime faces, a conditional DCGAN by hair
and eye colour, WGAN-GP lambda 1 vs 10, the "training tips" ablations).

Run (offline: procedural cartoon faces from synthetic.py):
    python cdcgan_anime.py --image-size 32       # the CPU setting (docs/cdcgan_anime.md)
    python cdcgan_anime.py --data anime --data-dir data/mlds_anime --tags-file testing_tags.txt
    python cdcgan_anime.py --loss wgan-gp --lambda 1 | --aux-weight 0.1 | --no-bn | --unconditional
    python evaluate.py --train-classifier faces  # once: the classifier that --eval-every 1 uses
    python cdcgan_anime.py --generate 8 --checkpoint runs/<run>/last.pt --show "pink hair aqua eyes"
    python cdcgan_anime.py --generate --checkpoint runs/<run>/last.pt --cascade \\
        lbpcascade_animeface.xml --tags-file testing_tags.txt  # the course's cgan.png: faces found
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cdcgan_anime.py --device cuda

Data: --data anime reads the MLDS data (extra_data/: images/ + tags.csv; or faces/ + tags_clean.csv)
once into a uint8 tensor on the training device; --data synthetic draws synthetic.faces.
"""

import argparse
import copy
import glob
import os
import re
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import common
import image_io

SCRIPT = common.script_name(__file__)  # a copy (my_gan.py) writes checkpoints of its own name
HAIR_COLOURS = ("orange", "white", "aqua", "gray", "green", "red", "purple", "pink", "blue",
                "black", "brown", "blonde")  # the MLDS course's lists and order (as synthetic)
EYE_COLOURS = ("gray", "black", "orange", "pink", "yellow", "aqua", "purple", "green", "brown",
               "red", "blue")
N_HAIR, N_EYES = len(HAIR_COLOURS), len(EYE_COLOURS)
EVAL = {"dataset": "faces", "conditioning": "attributes", "num_classes": [N_HAIR, N_EYES],
        "class_names": {"hair": list(HAIR_COLOURS), "eyes": list(EYE_COLOURS)}}
DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "classifiers", "faces.pt")
# The rows of the report's figures: the five tag pairs of the course's testing_tags.txt.
REPORT_PAIRS = ["blue hair blue eyes", "blue hair green eyes", "blue hair red eyes",
                "green hair blue eyes", "green hair red eyes"]
TAG_PATTERN = re.compile(r"^\s*(\w+)\s+hair,?\s+(\w+)\s+eyes?\s*$")
GRID_COLUMNS = 8
ACCURACIES = ("hair_acc", "eye_acc", "both_acc")
CHANGEABLE_ON_RESUME = ("epochs", "max_steps", "max_minutes", "device", "data_dir", "compile",
                        "deterministic", "sync_bn", "skip_nonfinite", "log_every", "sample_every",
                        "save_every", "eval_every", "classifier", "show", "tags_file", "cascade",
                        "track", "no_progress")  # typed on resume, these win; all else is kept


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
    """argparse type of --show: the tags, checked, written the canonical way (plain strings)."""
    try:
        hair, eye = parse_tag_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}") from None
    return f"{HAIR_COLOURS[hair]} hair {EYE_COLOURS[eye]} eyes"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional DCGAN on anime faces by hair/eyes.",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "anime"], default="synthetic",
                   help="synthetic: cartoon faces, offline; anime: the MLDS data in --data-dir")
    g.add_argument("--data-dir", default="data", help="where the MLDS data is read from")
    g.add_argument("--n-images", type=common.positive_int, default=20000, help="synthetic faces")
    g.add_argument("--image-size", type=int, choices=[32, 64, 96], default=64, help="image side")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the noise vector")
    g.add_argument("--embed-dim", type=common.positive_int, default=5, help="tag embedding size")
    g.add_argument("--ngf", type=common.positive_int, default=32, help="G: 4, 2, 1 x ngf channels")
    g.add_argument("--ndf", type=common.positive_int, default=32, help="D: 1, 2, 4 x ndf channels")
    g.add_argument("--act", choices=["selu", "relu"], default="relu",
                   help="generator activation (the report's generator used SELU)")
    g.add_argument("--unconditional", action="store_true", help="the plain DCGAN: no tags at all")
    g.add_argument("--loss", choices=["bce", "wgan-clip", "wgan-gp"], default="bce",
                   help="bce: the DCGAN loss; wgan-clip: WGAN, clipped weights; wgan-gp: WGAN-GP")
    g.add_argument("--clip", type=common.positive_float, default=0.02, help="wgan-clip: bound")
    g.add_argument("--lambda", dest="lambda_gp", type=common.non_negative_float, default=10.0,
                   help="wgan-gp: gradient penalty weight (the report compared 1 and 10)")
    g.add_argument("--n-critic", type=common.positive_int, help="D steps per G step (1; wgan: 5)")
    g.add_argument("--mismatch-weight", type=common.non_negative_float, default=1.0,
                   help="weight of the (real image, wrong tags) -> fake term; 0 turns it off")
    g.add_argument("--aux-weight", type=common.non_negative_float, default=0.0,
                   help="AC-GAN's class term: D names a face's colours, G draws them right; 0: off")
    g.add_argument("--no-bn", action="store_true", help="ablation: no BatchNorm in either network")
    g.add_argument("--soft-labels", action="store_true", help="ablation: targets 0.7-1.2 / 0-0.3")
    g.add_argument("--no-normalize", action="store_true", help="ablation: [0, 1], ReLU output")
    g.add_argument("--epochs", type=common.positive_int, default=10, help="passes over the data")
    g.add_argument("--batch-size", type=common.positive_int, default=64, help="images per process")
    g.add_argument("--lr", type=common.positive_float, help="2e-4 (wgan-gp: 1e-4, wgan-clip: 5e-5)")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.999,
                   help="decay of the generator's weight average that samples use (0: off)")
    g.add_argument("--seed", type=common.seed, default=0, help="random seed (data, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, help="stop after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, help="wall-clock budget, minutes")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda:1, mps")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast or fp32; auto: bf16 where the hardware has it natively "
                        "(CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX), else fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip a NaN/inf step (else: stop)")
    g = parser.add_argument_group("logging, samples, checkpoints, scores")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="steps per log row")
    g.add_argument("--sample-every", type=common.positive_int, default=1, help="epochs per grid")
    g.add_argument("--save-every", type=common.positive_int, default=5, help="epoch_NNN.pt every N")
    g.add_argument("--show", type=show_pair, nargs="+", default=REPORT_PAIRS, metavar="TAGS",
                   help="rows of the sample grids, each '<hair> hair <eye> eyes'")
    g.add_argument("--tags-file", help="testing_tags.txt: also cgan.png of its first 25 lines")
    g.add_argument("--eval-every", type=common.positive_int, metavar="N",
                   help="--classifier's hair/eye accuracy every N epochs (logged, best.pt kept)")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="evaluate.py's faces judge")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, nargs="?", const=GRID_COLUMNS,
                   metavar="N", help=f"draw N (alone: {GRID_COLUMNS}) faces per --show pair from "
                                     f"--checkpoint into a grid (unconditional: 8 rows of N)")
    g.add_argument("--checkpoint", help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", help="with --generate: one PNG per sample in a new/empty folder")
    g.add_argument("--interpolate", action="store_true", help="latent and tag walks, <grid>_*.png")
    g.add_argument("--cascade", help="--tags-file: count cgan.png's faces by this OpenCV cascade")
    args = common.parse_args(parser, argv)
    if args.soft_labels and args.loss != "bce":
        parser.error("--soft-labels is for --loss bce (WGAN critics output scores, not odds)")
    if args.unconditional and (args.eval_every or args.aux_weight):
        parser.error("--eval-every and --aux-weight need the tags that --unconditional turns off")
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.cascade and not args.tags_file:
        parser.error("--cascade counts the faces of the --tags-file sheet: pass --tags-file too")
    args.lr = args.lr or {"bce": 2e-4, "wgan-clip": 5e-5, "wgan-gp": 1e-4}[args.loss]
    args.n_critic = args.n_critic or (1 if args.loss == "bce" else 5)
    return args


# ---------------------------------------------------------------------------
# Data: the MLDS tags, the real loader, the offline faces -> uint8 (N, 3, S, S), int64 (N, 2) labels
# ---------------------------------------------------------------------------
def tag_lines(path, expected):
    """(line number, id, tags) of each 'id,tags' line of a tag file, read as UTF-8 or Latin-1."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise common.UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows = []
    for number, line in enumerate(text.replace("\0", "").splitlines(), 1):
        image_id, comma, tags = line.strip().partition(",")
        if line.strip() and not (comma and image_id.strip()):
            raise common.UserError(f"{os.path.basename(path)} line {number}: expected "
                                   f"'id,{expected}', got {line.strip()[:60]!r}")
        rows += [(number, image_id.strip(), tags)] if line.strip() else []
    return rows


def parse_tags_csv(path):
    """tags.csv / testing_tags.txt: lines 'id,<hair> hair <eye> eyes' -> [(id, hair, eye), ...]."""
    rows = []
    for number, image_id, tags in tag_lines(path, "<hair> hair <eye> eyes"):
        try:
            rows.append((image_id, *parse_tag_text(tags)))
        except ValueError as e:
            raise common.UserError(f"{os.path.basename(path)} line {number}: {e}") from None
    if not rows:
        raise common.UserError(f"{path} holds no tag lines")
    return rows


def parse_tags_clean(path):
    """The older tags_clean.csv ('id,tag:count<TAB>tag:count...') -> (rows, lines dropped): keeps
    the images with exactly one hair and one eye colour tag (others, like 'long hair', ignored)."""
    rows, dropped = [], 0
    for _, image_id, tags in tag_lines(path, "tag:count<TAB>tag:count..."):
        hairs, eyes = set(), set()
        for item in tags.split("\t"):
            words = (item.rpartition(":")[0] if ":" in item else item).strip().lower().split()
            if len(words) == 2 and words[1] == "hair" and words[0] in HAIR_COLOURS:
                hairs.add(HAIR_COLOURS.index(words[0]))
            elif len(words) == 2 and words[1] == "eyes" and words[0] in EYE_COLOURS:
                eyes.add(EYE_COLOURS.index(words[0]))
        if len(hairs) == 1 and len(eyes) == 1:
            rows.append((image_id, hairs.pop(), eyes.pop()))
        else:
            dropped += 1
    return rows, dropped


def find_anime_layout(data_dir):
    """(image folder, tag file, format) of the folder itself, its extra_data/ or its faces/."""
    extra = os.path.join(data_dir, "extra_data")
    for root, images, tags, layout in ((data_dir, "images", "tags.csv", "extra_data"),
                                       (extra, "images", "tags.csv", "extra_data"),
                                       (data_dir, "faces", "tags_clean.csv", "faces")):
        if os.path.isfile(os.path.join(root, tags)) and os.path.isdir(os.path.join(root, images)):
            return os.path.join(root, images), os.path.join(root, tags), layout
    raise common.UserError(
        f"no anime faces in {data_dir}: expected extra_data/ (images/<id>.jpg + tags.csv) or "
        f"faces/<id>.jpg + tags_clean.csv (MLDS 2018 homework 3 data; see docs/cdcgan_anime.md), "
        f"or use --data synthetic")


def load_anime(data_dir, image_size, verbose=True):
    """The MLDS data, every tagged face decoded once (in threads: PIL decodes outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    image_dir, tag_file, layout = find_anime_layout(data_dir)
    rows, dropped = ((parse_tags_csv(tag_file), 0) if layout == "extra_data"
                     else parse_tags_clean(tag_file))
    tag_name = os.path.basename(tag_file)
    if not rows:
        raise common.UserError(f"{tag_file}: no image has exactly one hair and one eye colour tag")
    files = {}
    for path in image_io.list_image_files(image_dir):
        files.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    missing = next((image_id for image_id, _, _ in rows if image_id not in files), None)
    if missing is not None:
        raise common.UserError(f"{tag_name} names image {missing!r}, but {image_dir} has no "
                               f"{missing}.jpg")

    def decode(path):
        image = image_io.read_image(path, "RGB")
        if image.size != (image_size, image_size):
            image = ImageOps.fit(image, (image_size, image_size), Image.LANCZOS)
        return np.asarray(image)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(decode, [files[image_id] for image_id, _, _ in rows]))
    untagged = len(set(files) - {image_id for image_id, _, _ in rows})
    if verbose:
        note = f" ({dropped} tag lines without exactly one hair and one eye colour dropped)"
        print(f"loaded {len(arrays)} faces from {image_dir}{note if dropped else ''}",
              file=sys.stderr)
        if untagged:
            print(f"note: {untagged} images in {image_dir} have no usable tags in {tag_name} and "
                  f"are not used", file=sys.stderr)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([(hair, eye) for _, hair, eye in rows], dtype=torch.int64)


def load_data(args):
    """All data errors surface here, before anything is written."""
    if args.data == "anime":
        return load_anime(args.data_dir, args.image_size)
    # only for the offline faces: a copied script with real data needs no synthetic.py
    import synthetic

    assert synthetic.HAIR_COLOURS == HAIR_COLOURS and synthetic.EYE_COLOURS == EYE_COLOURS
    images, hair, eyes = synthetic.faces(args.n_images, args.image_size, seed=args.seed)
    return images, torch.stack([hair, eyes], 1)


def read_tag_sheet(path):
    """--tags-file: the (hair, eye) labels of the 5x5 sheet cgan.png: the file's first 25 lines."""
    if not os.path.isfile(path):
        raise common.UserError(f"--tags-file {path} not found")
    return torch.tensor([(hair, eye) for _, hair, eye in parse_tags_csv(path)[:25]])


def wrong_tags(labels):
    """For each (hair, eye) a different pair: (real image, wrong tags) must be judged fake. A third
    get a wrong hair colour only, a third wrong eyes only, a third both: if nearly every wrong pair
    had the wrong hair (as when drawn from the other 131 pairs), D could ignore the small eyes."""
    which = torch.randint(0, 3, (labels.shape[0],), device=labels.device)  # hair, eyes, both
    hair_shift = torch.randint(1, N_HAIR, which.shape, device=labels.device) * (which != 1)
    eye_shift = torch.randint(1, N_EYES, which.shape, device=labels.device) * (which != 0)
    return torch.stack([(labels[:, 0] + hair_shift) % N_HAIR,
                        (labels[:, 1] + eye_shift) % N_EYES], 1)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """[noise, hair and eye embeddings] -> (S/8)x(S/8) -> ... -> image: the report's 4 transposed
    convs of ngf x 4, 2, 1 channels then 3 (256-128-64-3 at ngf 64), BN and ReLU or SELU."""

    def __init__(self, nz=100, embed_dim=5, ngf=64, image_size=64, act="relu", batch_norm=True,
                 normalized=True, conditional=True):
        super().__init__()
        self.nz, self.conditional, self.normalized = nz, conditional, normalized
        if conditional:
            self.hair_embedding = nn.Embedding(N_HAIR, embed_dim)
            self.eye_embedding = nn.Embedding(N_EYES, embed_dim)
        activation = {"relu": nn.ReLU, "selu": nn.SELU}[act]
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        width, z_size = [ngf * 4, ngf * 2, ngf], nz + (2 * embed_dim if conditional else 0)
        layers = [nn.ConvTranspose2d(z_size, width[0], image_size // 8, 1, 0, bias=not batch_norm),
                  norm(width[0]), activation(True)]
        for c_in, c_out in zip(width, width[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), norm(c_out),
                       activation(True)]
        # tanh for images in [-1, 1]; the --no-normalize ablation's [0, 1] images get a ReLU output.
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1), nn.Tanh() if normalized else nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def embed(self, labels):
        """(N, 2) [hair, eye] indices -> the (N, 2 x embed_dim) tag vector the network sees."""
        return torch.cat([self.hair_embedding(labels[:, 0]), self.eye_embedding(labels[:, 1])], 1)

    def forward(self, noise, labels=None, tags=None):
        """`tags`: a tag vector instead of labels (the tag interpolation sheet blends two)."""
        z = noise.flatten(1)
        if self.conditional:
            z = torch.cat([z, self.embed(labels) if tags is None else tags], 1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image -> conv -> [features, tag embedding maps] -> convs -> one logit (the report's design);
    LeakyReLU(0.2), BN after the first layer. classify (--aux-weight): AC-GAN's colour head."""

    def __init__(self, embed_dim=5, ndf=64, image_size=64, batch_norm=True, conditional=True,
                 classify=False):
        super().__init__()
        self.conditional = conditional
        if conditional:
            self.hair_embedding = nn.Embedding(N_HAIR, embed_dim)
            self.eye_embedding = nn.Embedding(N_EYES, embed_dim)
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())

        def block(c_in, c_out):  # a strided conv that halves the size, BN, LeakyReLU(0.2)
            return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), norm(c_out),
                    nn.LeakyReLU(0.2, True)]
        self.first = nn.Sequential(nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True))
        c_in = ndf + (2 * embed_dim if conditional else 0)
        self.rest = nn.Sequential(*block(c_in, ndf * 2), *block(ndf * 2, ndf * 4),
                                  nn.Conv2d(ndf * 4, 1, image_size // 8, 1, 0))
        # The classifier branches off before the tags join: a head that saw them could copy them.
        self.classifier = nn.Sequential(
            *block(ndf, ndf * 2), *block(ndf * 2, ndf * 4),
            nn.Conv2d(ndf * 4, N_HAIR + N_EYES, image_size // 8, 1, 0)) if classify else None

    def forward(self, images, labels=None, classify=False):
        """-> real/fake logits; classify=True: (logits, (N, 12 + 11) hair, eye colour logits)."""
        features = self.first(images)
        colour_logits = self.classifier(features).flatten(1) if classify else None
        if self.conditional:
            tags = torch.cat([self.hair_embedding(labels[:, 0]),
                              self.eye_embedding(labels[:, 1])], 1)
            tag_map = tags[:, :, None, None].expand(-1, -1, features.shape[2], features.shape[3])
            features = torch.cat([features, tag_map.to(features.dtype)], 1)
        logits = self.rest(features).flatten()
        return (logits, colour_logits) if classify else logits


def weights_init(module):
    """DCGAN's init: conv weights ~ N(0, 0.02), BN scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(settings):
    """The generator from a run's settings: training, --generate and evaluate.py build it here."""
    sizes = [settings[key] for key in ("nz", "embed_dim", "ngf", "image_size")]
    if not all(type(size) is int and size > 0 for size in sizes) or sizes[3] % 8:  # edited
        raise ValueError(f"nz, embed_dim, ngf, image_size {sizes}: positive integers are needed, "
                         f"the image size a multiple of 8")
    return Generator(*sizes, settings["act"], batch_norm=not settings["no_bn"],
                     normalized=not settings["no_normalize"],
                     conditional=not settings["unconditional"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = common.prepare_model(build_generator(vars(args)).apply(weights_init), device)
    # The WGAN-GP critic has no BatchNorm: the gradient penalty is per sample, BN mixes samples.
    discriminator = Discriminator(args.embed_dim, args.ndf, args.image_size,
                                  batch_norm=not args.no_bn and args.loss != "wgan-gp",
                                  conditional=not args.unconditional, classify=args.aux_weight > 0)
    discriminator = common.prepare_model(discriminator.apply(weights_init), device)

    def optimizer(params):  # RMSprop for wgan-clip: the WGAN paper found momentum unstable there
        return (torch.optim.RMSprop(params, lr=args.lr) if args.loss == "wgan-clip"
                else common.adam(params, args.lr, (args.beta1, args.beta2), device))
    optimizers = {"generator": optimizer(generator.parameters()),
                  "discriminator": optimizer(discriminator.parameters())}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights, the decay warmed up as (1 + step) / (10 + step)
    so that a short run's average does not stay near the random initial weights; buffers copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def standing_statistics(generator, seed=0, batches=16, batch_size=256):
    """Set G's BatchNorm statistics to their average over noise and all 12 x 11 tag pairs (BigGAN's
    "standing statistics") for sample(): a face does not depend on its batch (docs/cdcgan_anime.md).
    Seeded: evaluate.py, which calls it on loading, gets what training saved."""
    generator = common.unwrap(generator)
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # --no-bn
        return generator
    momenta, was_training = [m.momentum for m in norms], generator.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    source, device = torch.Generator().manual_seed(seed), next(generator.parameters()).device
    generator.train()
    for _ in range(batches):
        noise = torch.randn(batch_size, generator.nz, generator=source)
        labels = torch.stack([torch.randint(0, N_HAIR, (batch_size,), generator=source),
                              torch.randint(0, N_EYES, (batch_size,), generator=source)], 1)
        generator(noise.to(device), labels.to(device) if generator.conditional else None)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return generator.train(was_training)


@torch.no_grad()
def sample(generator, noise, labels=None, tags=None):
    """Images in [-1, 1] (a --no-normalize generator's [0, 1] mapped) from noise (N, nz) and labels
    (N, 2) = [hair, eye] or a tag vector, BatchNorm in eval mode (standing_statistics)."""
    generator = common.unwrap(generator)
    was_training, conditional = generator.training, generator.conditional
    generator.eval()
    try:
        images = generator(noise, labels if conditional else None, tags if conditional else None)
    finally:
        generator.train(was_training)
    return images if generator.normalized else images.clamp(0, 1) * 2 - 1


def grid_inputs(show, nz, per_pair, seed, conditional=True, device="cpu"):
    """Noise, labels and row names of a grid: a row per --show pair with the same `per_pair` noise
    vectors in every row, so rows differ only by their tags; unconditional: 8 rows."""
    source = torch.Generator().manual_seed(seed)
    if not conditional:
        return torch.randn(8 * per_pair, nz, generator=source).to(device), None, None
    labels = torch.tensor([parse_tag_text(text) for text in show]).repeat_interleave(per_pair, 0)
    noise = torch.randn(per_pair, nz, generator=source).repeat(len(show), 1)
    return noise.to(device), labels.to(device), list(show)


def write_tag_sheet(generator, labels, path, seed, title=None):
    """The course's cgan.png: one face per --tags-file line (first 25), 5 per row."""
    noise = torch.randn(len(labels), common.unwrap(generator).nz,
                        generator=torch.Generator().manual_seed(seed)).to(labels.device)
    return image_io.save_grid(sample(generator, noise, labels), path, nrow=5, title=title)


@torch.no_grad()
def tag_interpolation(generator, show, seed, steps=10):
    """Rows that walk from one --show pair to the next (one pair alone: to the opposite colours),
    fixed noise: G sees (1 - t) * tags(a) + t * tags(b), so only the colours change."""
    starts = [parse_tag_text(text) for text in show][:8]
    ends = starts[1:] + starts[:1] if len(starts) > 1 else [((starts[0][0] + N_HAIR // 2) % N_HAIR,
                                                             (starts[0][1] + N_EYES // 2) % N_EYES)]
    plain = common.unwrap(generator)
    device = next(plain.parameters()).device
    start, end = (plain.embed(torch.tensor(pairs, device=device)) for pairs in (starts, ends))
    t = torch.linspace(0, 1, steps, device=device).view(1, steps, 1)
    tags = (start[:, None] * (1 - t) + end[:, None] * t).flatten(0, 1)
    noise = torch.randn(len(starts), plain.nz, generator=torch.Generator().manual_seed(seed))
    names = [f"{HAIR_COLOURS[a[0]]}/{EYE_COLOURS[a[1]]} -> {HAIR_COLOURS[b[0]]}/{EYE_COLOURS[b[1]]}"
             for a, b in zip(starts, ends)]
    return sample(generator, noise.repeat_interleave(steps, 0).to(device), tags=tags), names


# ---------------------------------------------------------------------------
# Training step: one discriminator update on three kinds of pairs, one generator update unless
# batch["update_generator"] is False (--n-critic). This is the part to change: the loop logs, plots
# and checks whatever values it returns.
# ---------------------------------------------------------------------------
def gradient_penalty(critic, real_images, fake_images, labels):
    """WGAN-GP: E[(||grad_x D(x_hat, tags)||_2 - 1)^2], x_hat between real and fake images."""
    alpha = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device)
    mixed = (alpha * real_images + (1 - alpha) * fake_images).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mixed, labels).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def targets(logits, real, soft):
    """BCE targets: 1 / 0, or with --soft-labels drawn from [0.7, 1.2] / [0, 0.3] (the "tips")."""
    if not soft:
        return torch.ones_like(logits) if real else torch.zeros_like(logits)
    low, high = (0.7, 1.2) if real else (0.0, 0.3)
    return torch.empty_like(logits).uniform_(low, high)


def colour_loss(colour_logits, labels):
    """AC-GAN's class term for two attributes: the hair colour's cross-entropy plus the eyes'."""
    hair_logits, eye_logits = colour_logits.float().split([N_HAIR, N_EYES], 1)
    return F.cross_entropy(hair_logits, labels[:, 0]) + F.cross_entropy(eye_logits, labels[:, 1])


def train_step(models, optimizers, batch, args):
    """(real, right tags) -> real; (fake, right tags) -> fake; (real, wrong tags) -> fake; with
    --aux-weight D also learns to name real faces' colours, and G to draw faces D names as asked."""
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, labels = batch["images"], None if args.unconditional else batch["labels"]
    noise = torch.randn(real_images.shape[0], args.nz, device=real_images.device)
    bce, soft, classify = F.binary_cross_entropy_with_logits, args.soft_labels, args.aux_weight > 0

    def generator_loss(logits):  # non-saturating BCE (maximise log D(G(z, tags), tags)); WGAN: -D
        return bce(logits, torch.ones_like(logits)) if args.loss == "bce" else -logits.mean()
    # bf16 autocast (--precision): convolutions in bf16, BatchNorm and the losses stay fp32
    bf16 = torch.autocast(real_images.device.type, torch.bfloat16, enabled=args.precision == "bf16")
    with bf16:
        fake_images = generator(noise, labels)
        if classify:  # only real faces teach the classifier: on fakes it would learn G's mistakes
            logits_real, colours_real = discriminator(real_images, labels, classify=True)
        else:
            logits_real = discriminator(real_images, labels)
        logits_fake = discriminator(fake_images.detach(), labels)
        use_wrong = labels is not None and args.mismatch_weight > 0
        logits_wrong = discriminator(real_images, wrong_tags(labels)) if use_wrong else None
        if args.loss == "bce":
            loss_d = (bce(logits_real, targets(logits_real, True, soft))
                      + bce(logits_fake, targets(logits_fake, False, soft)))
            if use_wrong:
                wrong_targets = targets(logits_wrong, False, soft)
                loss_d = loss_d + args.mismatch_weight * bce(logits_wrong, wrong_targets)
        else:
            # Critic: minimise E[D(fake)] - E[D(real)] (+ wrong tags); GP or clipping: Lipschitz
            loss_d = logits_fake.mean() - logits_real.mean()
            if use_wrong:
                loss_d = loss_d + args.mismatch_weight * (logits_wrong.mean() - logits_real.mean())
            if args.loss == "wgan-gp":
                penalty = gradient_penalty(discriminator, real_images, fake_images.detach(), labels)
                loss_d = loss_d + args.lambda_gp * penalty
        if classify:
            colour_loss_real = colour_loss(colours_real, labels)
            loss_d = loss_d + args.aux_weight * colour_loss_real
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)
    if args.loss == "wgan-clip":
        with torch.no_grad():
            for p in discriminator.parameters():
                p.clamp_(-args.clip, args.clip)

    if batch.get("update_generator", True):
        with bf16:
            if classify:
                logits_gen, colours_gen = discriminator(fake_images, labels, classify=True)
            else:
                logits_gen = discriminator(fake_images, labels)
            loss_g = generator_loss(logits_gen)
            if classify:
                loss_g = loss_g + args.aux_weight * colour_loss(colours_gen, labels)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    else:  # a critic-only step: report the generator loss the critic saw, at no extra cost
        loss_g = generator_loss(logits_fake)
    values = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
    if args.loss == "bce":  # d_real/d_fake feed the health monitor
        values["d_real"] = torch.sigmoid(logits_real.detach().float()).mean()
        values["d_fake"] = torch.sigmoid(logits_fake.detach().float()).mean()
        if use_wrong:
            values["d_wrong"] = torch.sigmoid(logits_wrong.detach().float()).mean()
    if classify:
        values["colour_loss_real"] = colour_loss_real.detach()
    return values


# ---------------------------------------------------------------------------
# Scores during training
# ---------------------------------------------------------------------------
def prepare_scores(args, device):
    """--eval-every: the classifier's hair/eye accuracy on faces of all 132 pairs (judges.py)."""
    import judges

    classifier, _ = judges.faces_load_classifier(args.classifier, device)
    return lambda generator: judges.faces_score(lambda z, labels: sample(generator, z, labels),
                                                (args.nz,), classifier, device, n_per_pair=8)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: processes and device, the run's settings, precision, seeds, data. Every input error
    # (flags, data, tag sheet, checkpoint, classifier) surfaces here, before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = checkpoints.find_resume_checkpoint(args.resume, out, SCRIPT, device)
    if checkpoint is not None:  # a resumed run keeps its settings: model, data, budget, precision
        args = checkpoints.settings_from_checkpoint(args, checkpoint, resume_path,
                                                    CHANGEABLE_ON_RESUME)
    args.precision = common.pick_precision(args.precision, device)  # auto: bf16 where it is native
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls and convolutions: TF32 on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    common.seed_everything(args.seed, args.deterministic)
    sheet_labels = read_tag_sheet(args.tags_file).to(device) if args.tags_file else None
    images, labels = load_data(args)
    loader = image_io.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed,
                                   rank=dist.rank, world_size=dist.world_size,
                                   normalize=not args.no_normalize)
    steps_per_epoch = len(loader)
    last_step = min(args.epochs * steps_per_epoch, args.max_steps or float("inf"))
    score = prepare_scores(args, device) if args.eval_every and master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise and tags for the grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    shown_generator = ema_generator or generator  # what the grids and evaluate.py use
    fixed_noise, grid_labels, rows = grid_inputs(args.show, args.nz, GRID_COLUMNS, args.seed,
                                                 not args.unconditional, device)
    saved = dict(networks, **({"generator_ema": ema_generator} if ema_generator else {}))
    step = 0
    if checkpoint is not None:
        checkpoints.restore_training_state(checkpoint, resume_path, saved, optimizers)
        step = checkpoint["step"]
        time_spent = checkpoint.get("elapsed_s", 0.0) >= 60 * (args.max_minutes or float("inf"))
        if step >= last_step or time_spent:
            checkpoints.say_finished(resume_path, step, master)
            return out
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {name: common.maybe_compile(common.wrap_ddp(net, dist, args.sync_bn), args.compile)
              for name, net in networks.items()}
    # 64 real faces at random (tags.csv is sorted); the health monitor compares them pair by pair
    shown = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:64]
    real_reference = images[shown].to(device).float().div(127.5).sub(1)  # as sample() draws
    pair_of = lambda tags: None if tags is None else tags[:, 0] * N_EYES + tags[:, 1]  # noqa: E731
    real_pairs = pair_of(None if args.unconditional else labels[shown].to(device))

    # The run folder: claimed once every check has passed; only the master process writes.
    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None
    if master and checkpoint is not None:
        checkpoints.adopt_checkpoint(out, checkpoint, resume_path)
    if master and not os.path.isfile(os.path.join(out, "config.json")):
        common.write_config(out, args, SCRIPT, device, {"training_images": len(images)})
        image_io.save_grid(real_reference, os.path.join(out, "real.png"), nrow=8,
                           title="real images")
    if master:
        print(f"{SCRIPT}: {out}, {device}, {args.precision}, step {step} of {last_step}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT)

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    grid, epoch = None, -(-step // steps_per_epoch)
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, real_labels = loader.batch(step)
            batch = {"images": real_images, "labels": real_labels,
                     "update_generator": (step + 1) % args.n_critic == 0}
            values = train_step(models, optimizers, batch, args)
            if ema_generator is not None:
                update_ema(ema_generator, generator, args.ema, step)
            step += 1
            epoch = -(-step // steps_per_epoch)  # the epoch this step belongs to (1-based)
            log.add(values, step, epoch)
            time_is_up = args.max_minutes is not None and log.minutes() >= args.max_minutes
            # Ctrl-C, SIGTERM or --max-minutes, decided alike on every rank:
            stopping = common.stop_requested(stop, time_is_up, dist, step, args.log_every)
            epoch_done = step % steps_per_epoch == 0
            finished = step == last_step or stopping == "time"
            if not (epoch_done or finished or stopping):
                continue

            # End of an epoch, of the run, or an interruption: log, samples, scores, checkpoints.
            if epoch_done or finished:  # an interrupted run keeps its unlogged steps in last.pt
                log.flush(step, epoch)
            # an all-reduce on every rank: the processes' weights must agree
            divergence = common.replica_divergence(generator, dist) if finished else 0.0
            if master:  # BatchNorm statistics for the grids, the scores and the checkpoint
                standing_statistics(shown_generator)
            drawing = finished or stopping or epoch == 1 or epoch % args.sample_every == 0
            if master and drawing:
                samples = sample(shown_generator, fixed_noise, grid_labels)
                log.monitor.check_samples(samples, real_reference, epoch, step,
                                          pair_of(grid_labels), real_pairs)
                title = f"epoch {epoch}, step {step}"
                grid = os.path.join(out, "samples", f"epoch_{epoch:03d}.png")
                image_io.save_grid(samples, grid, nrow=GRID_COLUMNS, row_labels=rows, title=title)
                image_io.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                  os.path.join(out, "progress.gif"))
                image_io.plot_losses(log.history, os.path.join(out, "losses.png"),
                                     title=f"{SCRIPT} losses ({args.loss})")
                if sheet_labels is not None:
                    cgan = os.path.join(out, "samples", "cgan.png")
                    write_tag_sheet(shown_generator, sheet_labels, cgan, args.seed, title=title)
            keep = epoch_done and epoch % args.save_every == 0
            copies = [f"epoch_{epoch:03d}.pt"] if keep else []  # written after last.pt
            if score is not None and epoch_done and not stop and epoch % args.eval_every == 0:
                accuracy = score(shown_generator)
                log.record(step, epoch, **{k: accuracy[k] for k in ACCURACIES})
                scores = log.history["scores"]
                copies += ["best.pt"] if scores["both_acc"][-1] >= max(scores["both_acc"]) else []
                image_io.plot_curves({k: (scores["epoch"], scores[k]) for k in ACCURACIES},
                                     os.path.join(out, "accuracy.png"), xlabel="epoch",
                                     ylabel="accuracy", title=f"{SCRIPT}: attribute accuracy")
            if master:
                checkpoint = {"format": checkpoints.CHECKPOINT_FORMAT, "script": SCRIPT,
                              "args": common.plain_args(args), "class_names": EVAL["class_names"],
                              "step": step, "epoch": epoch, "finished": finished,
                              **{name: module.state_dict() for name, module in saved.items()},
                              "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                              "rng": checkpoints.rng_state(), "fixed_noise": fixed_noise.cpu(),
                              "fixed_labels": None if grid_labels is None else grid_labels.cpu(),
                              **log.state_dict(), "world_size": dist.world_size,
                              "replica_divergence": divergence}
                checkpoints.save_run_checkpoint(out, checkpoint, copies)
            if stopping or finished:
                break
    log.close()
    if lock is not None:
        lock.close()
    if master:
        how = "interrupted" if stop else "time budget spent" if stopping == "time" else "finished"
        checkpoints.say_how_it_ended(how, out, step, epoch, grid, log.best("both_acc", max))
    if stop:
        raise SystemExit(130)
    return out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH: N faces per --show pair in a grid, + the sheets asked for."""
    default_grid = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    grid_path = image_io.check_output_path(args.grid_out or default_grid, "--grid-out", "png")
    stem = grid_path[:-len(".png")]
    sheet_path = os.path.join(os.path.dirname(os.path.abspath(grid_path)), "cgan.png")
    sheet_labels = read_tag_sheet(args.tags_file) if args.tags_file else None
    if sheet_labels is not None:
        image_io.check_output_path(sheet_path, "the --tags-file sheet", "png")
    for sheet in ("_interpolation.png", "_conditions.png") if args.interpolate else ():
        image_io.check_output_path(stem + sheet, "an --interpolate sheet", "png")
    if args.png_dir:
        image_io.check_empty_folder(args.png_dir, "--png-dir")
    device = common.pick_device(args.device)
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    generator = checkpoints.rebuild(build_generator, checkpoint["args"], args.checkpoint).to(device)
    weights = checkpoint.get("generator_ema", checkpoint["generator"])  # the average, if trained
    checkpoints.load_weights(generator, weights, args.checkpoint)
    standing_statistics(generator)
    conditional, nz = generator.conditional, generator.nz
    noise, labels, names = grid_inputs(args.show, nz, args.generate, args.seed, conditional, device)
    images = sample(generator, noise, labels)
    written = [image_io.save_grid(images, grid_path, nrow=args.generate, row_labels=names)]
    if args.png_dir:
        written.append(image_io.save_pngs(images, args.png_dir))
    if sheet_labels is not None:
        written.append(write_tag_sheet(generator, sheet_labels.to(device), sheet_path, args.seed))
    if args.interpolate:  # 8 rows, each a walk through the latent space between two random points
        rows = [args.show[r % len(args.show)] for r in range(8)]  # the --show pairs in turn
        _, walk_labels, names = grid_inputs(rows, nz, 10, args.seed, conditional, device)
        walk_noise = image_io.interpolation_noise(8, 10, nz, args.seed).to(device)
        walk = sample(generator, walk_noise, walk_labels)
        written.append(image_io.save_grid(walk, stem + "_interpolation.png", nrow=10,
                                          row_labels=names))
        if conditional:
            sheet, names = tag_interpolation(generator, args.show, args.seed)
            written.append(image_io.save_grid(sheet, stem + "_conditions.png", nrow=10,
                                              row_labels=names))
    print("wrote " + ", ".join(written))
    if args.cascade:
        import judges

        faces = judges.faces_count(sheet_path, args.cascade)
        print(f"{sheet_path}: OpenCV's anime cascade finds {faces} faces of {len(sheet_labels)} "
              f"(the course's pass mark: 20 of 25)")
    return grid_path


def main(argv=None):
    args = parse_args(argv)
    if args.generate is not None:
        return generate(args)
    try:
        return train(args)
    finally:
        common.cleanup_distributed()


if __name__ == "__main__":
    common.run_main(main)
