"""Conditional DCGAN on anime faces: draw a face with the hair and eye colours you ask for.

Papers: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional GANs"
(ICLR 2016); Mirza & Osindero, "Conditional Generative Adversarial Nets" (2014); Reed et al.,
"Generative Adversarial Text to Image Synthesis" (ICML 2016: the mismatched-pair term); Arjovsky et al.
(WGAN) and Gulrajani et al. (WGAN-GP) for --loss; Odena et al., "Conditional Image Synthesis with Auxiliary
Classifier GANs" (ICML 2017) for --aux-weight. Coursework: MLDS homework 3 (DCGAN on anime faces,
a conditional DCGAN by hair and eye colour with small tag embeddings, WGAN-GP lambda 1 vs 10, the
"training tips" ablations).

Run (offline: procedural cartoon faces from synthetic.py):
    python cdcgan_anime.py --image-size 32            # the CPU setting (docs/cdcgan_anime.md)
    python cdcgan_anime.py --data anime --data-dir data/mlds_anime --tags-file testing_tags.txt   # MLDS data
    python cdcgan_anime.py --show "blue hair blue eyes" "green hair red eyes"                      # grid rows
    python cdcgan_anime.py --loss wgan-gp --lambda 1                                               # lambda 1 vs 10
    python cdcgan_anime.py --aux-weight 1             # D also names the colours it sees (AC-GAN's class term)
    python cdcgan_anime.py --no-bn | --soft-labels | --no-normalize | --unconditional              # the ablations
    python evaluate.py --train-classifier faces       # once: the attribute classifier, then --eval-every 1 scores
    python cdcgan_anime.py --generate 8 --checkpoint runs/<run>/last.pt --show "pink hair aqua eyes" --interpolate
    python cdcgan_anime.py --generate --checkpoint runs/<run>/last.pt --tags-file testing_tags.txt \\
        --cascade lbpcascade_animeface.xml            # the course's 5x5 sheet cgan.png and its face count
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cdcgan_anime.py --device cuda

Data: --data anime reads the MLDS faces (extra_data/: images/<id>.jpg + tags.csv, lines "id,<hair> hair <eye>
eyes"; or the older faces/<id>.jpg + tags_clean.csv), decoded once (in threads) into a uint8 tensor on the
training device. --data synthetic draws cartoon faces of known hair and eye colour (synthetic.faces).
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

import common

SCRIPT = common.script_name(__file__)  # a copy of this file (my_gan.py) writes checkpoints of its own name
# The MLDS course's colour vocabularies, in the course's order (synthetic.faces draws with the same lists).
HAIR_COLOURS = ("orange", "white", "aqua", "gray", "green", "red", "purple", "pink", "blue", "black", "brown", "blonde")
EYE_COLOURS = ("gray", "black", "orange", "pink", "yellow", "aqua", "purple", "green", "brown", "red", "blue")
N_HAIR, N_EYES = len(HAIR_COLOURS), len(EYE_COLOURS)
EVAL = {"dataset": "faces", "conditioning": "attributes", "num_classes": [N_HAIR, N_EYES],
        "class_names": {"hair": list(HAIR_COLOURS), "eyes": list(EYE_COLOURS)}}
DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classifiers", "faces.pt")
# The rows of the report's figures: the five tag pairs of the course's testing_tags.txt.
REPORT_PAIRS = ["blue hair blue eyes", "blue hair green eyes", "blue hair red eyes", "green hair blue eyes",
                "green hair red eyes"]
TAG_PATTERN = re.compile(r"^\s*(\w+)\s+hair,?\s+(\w+)\s+eyes?\s*$")
GRID_COLUMNS = 8
ACCURACIES = ("hair_acc", "eye_acc", "both_acc")


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
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "anime"], default="synthetic",
                   help="synthetic: procedural cartoon faces, offline; anime: the MLDS data in --data-dir "
                        "(extra_data/: images/ + tags.csv, or faces/ + tags_clean.csv)")
    g.add_argument("--data-dir", default="data", help="where the MLDS data is read from")
    g.add_argument("--n-images", type=common.positive_int, default=20000,
                   help="--data synthetic: faces in total (not per class: each face's hair and eye colours are "
                        "drawn at random from the 12 x 11 pairs)")
    g.add_argument("--image-size", type=int, choices=[32, 64, 96], default=64, help="image height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--embed-dim", type=common.positive_int, default=5,
                   help="size of each tag embedding (report: 5; much larger ones led to mode collapse)")
    g.add_argument("--ngf", type=common.positive_int, default=32,
                   help="generator width: layers of 4, 2, 1 x ngf then 3 channels (64: the report's 256-128-64-3)")
    g.add_argument("--ndf", type=common.positive_int, default=32,
                   help="discriminator width: layers of 1, 2, 4 x ndf channels (on the real faces see "
                        "docs/cdcgan_anime.md for 64 against 32 in the same 45 CPU minutes)")
    g.add_argument("--act", choices=["selu", "relu"], default="relu",
                   help="generator activation (the report's generator used SELU)")
    g.add_argument("--unconditional", action="store_true",
                   help="the plain DCGAN of the report's first part: no tags at all")
    g.add_argument("--loss", choices=["bce", "wgan-clip", "wgan-gp"], default="bce",
                   help="bce: the DCGAN loss; wgan-clip: WGAN with weight clipping; wgan-gp: gradient penalty")
    g.add_argument("--clip", type=common.positive_float, default=0.02, help="with wgan-clip: weight clipping bound")
    g.add_argument("--lambda", dest="lambda_gp", type=common.non_negative_float, default=10.0,
                   help="with wgan-gp: gradient penalty weight (the report compared 1 and 10)")
    g.add_argument("--n-critic", type=common.positive_int, default=None,
                   help="critic (discriminator) updates per generator update (default: 1 for bce, 5 for wgan)")
    g.add_argument("--mismatch-weight", type=common.non_negative_float, default=1.0,
                   help="weight of the (real image, wrong tags) -> fake term; 0 turns it off")
    g.add_argument("--aux-weight", type=common.non_negative_float, default=0.0,
                   help="AC-GAN's class term: D also names the hair and eye colours of a face from the image alone, "
                        "learnt on the real faces, and G is trained to be named right; 0 (default): the report's "
                        "model (see docs/cdcgan_anime.md for 1 on the real faces)")
    g.add_argument("--no-bn", action="store_true", help="ablation: no BatchNorm in either network")
    g.add_argument("--soft-labels", action="store_true",
                   help="ablation (bce): real targets drawn from [0.7, 1.2], fake from [0, 0.3]")
    g.add_argument("--no-normalize", action="store_true",
                   help="ablation: images in [0, 1] and a ReLU generator output instead of [-1, 1] and tanh")
    g.add_argument("--epochs", type=common.positive_int, default=10, help="passes over the training set")
    g.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per step per process (global batch = batch size x processes)")
    g.add_argument("--lr", type=common.positive_float, default=None,
                   help="learning rate (default: 2e-4 Adam for bce, 5e-5 RMSprop for wgan-clip, 1e-4 Adam for wgan-gp)")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.999,
                   help="decay of a moving average of the generator's weights that samples and evaluate.py use "
                        "(0: off; on the real faces it raised the eye-colour accuracy from 0.59 to 0.70: "
                        "docs/cdcgan_anime.md)")
    g.add_argument("--seed", type=common.seed, default=0, help="random seed (data order, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, default=None, help="stop after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, default=None,
                   help="stop after this many minutes of training (a wall-clock budget)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA and on CPUs with native bf16")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm across processes")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on CUDA)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip a step whose loss is NaN/inf instead of stopping")
    g = parser.add_argument_group("logging, samples, checkpoints, scores")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log losses every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=1, help="sample grid every N epochs")
    g.add_argument("--save-every", type=common.positive_int, default=5, help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--show", type=show_pair, nargs="+", default=REPORT_PAIRS, metavar="TAGS",
                   help="rows of the sample grids, each '<hair> hair <eye> eyes' (default: the report's five)")
    g.add_argument("--tags-file", default=None,
                   help="the course's testing_tags.txt (lines 'n,<hair> hair <eye> eyes'): also the 5x5 sheet "
                        "cgan.png of its first 25 lines")
    g.add_argument("--eval-every", type=common.positive_int, default=None, metavar="N",
                   help="hair/eye accuracy of --classifier on generated faces every N epochs (evaluate.py): "
                        "logged, plotted (accuracy.png), best.pt kept")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help="with --eval-every: the attribute classifier (python evaluate.py --train-classifier faces)")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, nargs="?", const=GRID_COLUMNS, default=None, metavar="N",
                   help=f"draw N faces per --show pair from --checkpoint into a grid (unconditional: 8 rows of N; "
                        f"--generate alone: {GRID_COLUMNS})")
    g.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", default=None, help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None, help="with --generate: also one PNG per sample in this folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: also a latent interpolation sheet (<grid>_interpolation.png) and a tag "
                        "one (<grid>_conditions.png: fixed noise, the tags blended from one --show pair to the next)")
    g.add_argument("--cascade", default=None,
                   help="with --generate and --tags-file: count the faces OpenCV's lbpcascade_animeface.xml finds "
                        "on cgan.png (the course's pass mark: 20 of 25)")
    args = common.parse_args(parser, argv)
    if args.soft_labels and args.loss != "bce":
        parser.error("--soft-labels applies to --loss bce (WGAN critics output scores, not probabilities)")
    if args.eval_every and args.unconditional:
        parser.error("--eval-every scores the requested hair and eye colours: an --unconditional generator has none")
    if args.aux_weight and args.unconditional:
        parser.error("--aux-weight trains G to draw the requested colours: an --unconditional generator has none")
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.cascade and not args.tags_file:
        parser.error("--cascade counts the faces of the --tags-file sheet: pass --tags-file too")
    if args.lr is None:
        args.lr = {"bce": 2e-4, "wgan-clip": 5e-5, "wgan-gp": 1e-4}[args.loss]
    if args.n_critic is None:
        args.n_critic = 1 if args.loss == "bce" else 5
    return args




# ---------------------------------------------------------------------------
# Data: the MLDS tag formats, the real loader, the offline faces. Returns (uint8 images (N, 3, S, S),
# int64 labels (N, 2) = [hair, eye])
# ---------------------------------------------------------------------------
def read_tag_lines(path):
    """A tag file's lines: UTF-8 (a BOM is dropped) or, failing that, Latin-1; unreadable -> one clear line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise common.UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\0", "").splitlines()


def parse_tags_csv(path):
    """tags.csv / testing_tags.txt: lines 'id,<hair> hair <eye> eyes' -> list of (id, hair, eye)."""
    name, rows = os.path.basename(path), []
    for number, line in enumerate(read_tag_lines(path), 1):
        if not line.strip():
            continue
        image_id, comma, tags = line.strip().partition(",")
        if not comma or not image_id.strip():
            raise common.UserError(f"{name} line {number}: expected 'id,<hair> hair <eye> eyes', got {line.strip()[:60]!r}")
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
    name, rows, dropped = os.path.basename(path), [], 0
    for number, line in enumerate(read_tag_lines(path), 1):
        if not line.strip():
            continue
        image_id, comma, tags = line.partition(",")
        if not comma or not image_id.strip():
            raise common.UserError(f"{name} line {number}: expected 'id,tag:count<TAB>tag:count...', "
                                   f"got {line.strip()[:60]!r}")
        hairs, eyes = set(), set()
        for item in tags.split("\t"):
            words = (item.rpartition(":")[0] if ":" in item else item).strip().lower().split()
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
        f"tags_clean.csv (MLDS 2018 homework 3 data; see docs/cdcgan_anime.md), or use --data synthetic")


def load_anime(data_dir, image_size, verbose=True):
    """The MLDS data, every tagged face decoded once (in threads: PIL decodes outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    image_dir, tag_file, layout = find_anime_layout(data_dir)
    rows, dropped = (parse_tags_csv(tag_file), 0) if layout == "extra_data" else parse_tags_clean(tag_file)
    if not rows:
        raise common.UserError(f"{tag_file}: no image has exactly one hair colour and one eye colour tag")
    files = {}
    for path in common.list_image_files(image_dir):
        files.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    missing = next((image_id for image_id, _, _ in rows if image_id not in files), None)
    if missing is not None:
        raise common.UserError(f"{os.path.basename(tag_file)} names image {missing!r}, but {image_dir} has no "
                               f"{missing}.jpg")

    def decode(path):
        image = common.read_image(path, "RGB")
        if image.size != (image_size, image_size):
            image = ImageOps.fit(image, (image_size, image_size), Image.LANCZOS)
        return np.asarray(image)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(decode, [files[image_id] for image_id, _, _ in rows]))
    untagged = len(set(files) - {image_id for image_id, _, _ in rows})
    if verbose:
        note = f" ({dropped} tag lines without exactly one hair and one eye colour dropped)" if dropped else ""
        print(f"loaded {len(arrays)} faces from {image_dir}{note}", file=sys.stderr)
        if untagged:
            print(f"note: {untagged} images in {image_dir} have no usable tags in {os.path.basename(tag_file)} "
                  f"and are not used", file=sys.stderr)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([(hair, eye) for _, hair, eye in rows], dtype=torch.int64)


def load_synthetic(n_images, image_size, seed):
    """Offline stand-in: cartoon faces (synthetic.faces), hair and eye colours drawn at random."""
    import synthetic  # only for the offline data: a copied script with real data needs no synthetic.py

    assert synthetic.HAIR_COLOURS == HAIR_COLOURS and synthetic.EYE_COLOURS == EYE_COLOURS
    images, hair, eyes = synthetic.faces(n_images, image_size, seed=seed)
    return images, torch.stack([hair, eyes], 1)


def load_data(args):
    """All data errors surface here, before anything is written."""
    if args.data == "anime":
        return load_anime(args.data_dir, args.image_size)
    return load_synthetic(args.n_images, args.image_size, args.seed)


def read_tag_sheet(path):
    """--tags-file: the (hair, eye) labels of the 5x5 sheet cgan.png, from the file's first 25 lines."""
    if not os.path.isfile(path):
        raise common.UserError(f"--tags-file {path} not found")
    return torch.tensor([(hair, eye) for _, hair, eye in parse_tags_csv(path)[:25]], dtype=torch.int64)


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
        activation = {"relu": nn.ReLU, "selu": nn.SELU}[act]
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        width = [ngf * 4, ngf * 2, ngf]
        layers = [nn.ConvTranspose2d(nz + (2 * embed_dim if conditional else 0), width[0], image_size // 8, 1, 0,
                                     bias=not batch_norm), norm(width[0]), activation(True)]
        for c_in, c_out in zip(width, width[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not batch_norm), norm(c_out), activation(True)]
        # tanh for images in [-1, 1]; the --no-normalize ablation's [0, 1] images get a ReLU output.
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1), nn.Tanh() if normalized else nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def embed(self, labels):
        """(N, 2) [hair, eye] indices -> the (N, 2 x embed_dim) tag vector the network is conditioned on."""
        return torch.cat([self.hair_embedding(labels[:, 0]), self.eye_embedding(labels[:, 1])], 1)

    def forward(self, noise, labels=None, tags=None):
        """`tags`: a tag vector given directly instead of labels (the tag interpolation sheet blends two)."""
        z = noise.flatten(1)
        if self.conditional:
            z = torch.cat([z, self.embed(labels) if tags is None else tags], 1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image -> conv -> [features, tag embeddings expanded to a map] -> convs -> one logit (the report's design:
    the tags join after the first conv). LeakyReLU(0.2); BN except on the first layer, unless turned off.
    classify=True (--aux-weight) adds AC-GAN's second head: the hair and eye colours read from the image alone."""

    def __init__(self, embed_dim=5, ndf=64, image_size=64, batch_norm=True, conditional=True, classify=False):
        super().__init__()
        self.conditional = conditional
        if conditional:
            self.hair_embedding = nn.Embedding(N_HAIR, embed_dim)
            self.eye_embedding = nn.Embedding(N_EYES, embed_dim)
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        self.first = nn.Sequential(nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True))
        c_in = ndf + (2 * embed_dim if conditional else 0)
        self.rest = nn.Sequential(
            nn.Conv2d(c_in, ndf * 2, 4, 2, 1, bias=not batch_norm), norm(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=not batch_norm), norm(ndf * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, 1, image_size // 8, 1, 0))
        # The classifier branches off before the tags join: a head that saw the requested tags could copy them.
        self.classifier = nn.Sequential(
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=not batch_norm), norm(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=not batch_norm), norm(ndf * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, N_HAIR + N_EYES, image_size // 8, 1, 0)) if classify else None

    def forward(self, images, labels=None, classify=False):
        """-> real/fake logits; classify=True: (logits, (N, 12 + 11) hair then eye colour logits)."""
        features = self.first(images)
        colour_logits = self.classifier(features).flatten(1) if classify else None
        if self.conditional:
            tags = torch.cat([self.hair_embedding(labels[:, 0]), self.eye_embedding(labels[:, 1])], 1)
            tag_map = tags[:, :, None, None].expand(-1, -1, features.shape[2], features.shape[3])
            features = torch.cat([features, tag_map.to(features.dtype)], 1)
        logits = self.rest(features).flatten()
        return (logits, colour_logits) if classify else logits


def build_generator(settings):
    """The generator from a checkpoint's settings (evaluate.py and --generate use this)."""
    return Generator(settings["nz"], settings["embed_dim"], settings["ngf"], settings["image_size"], settings["act"],
                     batch_norm=not settings["no_bn"], normalized=not settings["no_normalize"],
                     conditional=not settings["unconditional"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    conditional = not args.unconditional
    generator = common.prepare_model(build_generator(vars(args)).apply(common.dcgan_init), device)
    # The WGAN-GP critic has no BatchNorm: the gradient penalty is per sample, and BN mixes samples.
    discriminator = common.prepare_model(Discriminator(
        args.embed_dim, args.ndf, args.image_size, batch_norm=not args.no_bn and args.loss != "wgan-gp",
        conditional=conditional, classify=args.aux_weight > 0).apply(common.dcgan_init), device)

    def optimizer(params):  # RMSprop for wgan-clip: the WGAN paper found momentum unstable with clipping
        return torch.optim.RMSprop(params, lr=args.lr) if args.loss == "wgan-clip" else \
            common.adam(params, args.lr, (args.beta1, args.beta2), device)
    optimizers = {"generator": optimizer(generator.parameters()), "discriminator": optimizer(discriminator.parameters())}
    return {"generator": generator, "discriminator": discriminator}, optimizers


STANDING_BATCHES = 16  # x 256 faces drawn to estimate the generator's BatchNorm statistics (standing_statistics)


@torch.no_grad()
def standing_statistics(generator, seed=0, batches=STANDING_BATCHES, batch_size=256):
    """Set the generator's BatchNorm statistics to their average over batches of noise with tags drawn uniformly
    from the 12 x 11 pairs (BigGAN's "standing statistics"), for sample(). With each batch's own statistics, a
    face depends on the rest of its batch: drawn five pairs at a time (the course's sheet), the faces of the
    --ndf 64 run on the real data had both colours right 0.58 of the time, against 0.88 in batches that mix all
    pairs. Deterministic (seeded), so evaluate.py, which calls it on loading, gets what training saved."""
    generator = common.unwrap(generator)
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # --no-bn
        return generator
    momenta, was_training = [m.momentum for m in norms], generator.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    source = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
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
    """Images in [-1, 1] from noise (N, nz) and labels (N, 2) = [hair, eye] indices (or a tag vector), with
    BatchNorm in eval mode: the statistics standing_statistics() set, so a face does not depend on the rest of
    its batch. A --no-normalize generator draws in [0, 1]: mapped to [-1, 1] here."""
    generator = common.unwrap(generator)
    was_training = generator.training
    generator.eval()
    try:
        conditional = generator.conditional
        images = generator(noise, labels if conditional else None, tags=tags if conditional else None)
    finally:
        generator.train(was_training)
    return images if generator.normalized else images.clamp(0, 1) * 2 - 1


def grid_inputs(show, nz, per_pair, seed, conditional=True):
    """Noise, labels and row names of a sample grid: a row per --show pair with the same `per_pair` noise vectors
    in every row, so rows differ only by their tags; unconditional: 8 rows of different faces."""
    source = torch.Generator().manual_seed(seed)
    if not conditional:
        return torch.randn(8 * per_pair, nz, generator=source), None, None
    labels = torch.tensor([parse_tag_text(text) for text in show], dtype=torch.int64).repeat_interleave(per_pair, 0)
    return torch.randn(per_pair, nz, generator=source).repeat(len(show), 1), labels, list(show)


def write_tag_sheet(generator, labels, path, seed, title=None):
    """The course's cgan.png: one face per --tags-file line (first 25), 5 per row."""
    noise = torch.randn(len(labels), common.unwrap(generator).nz, generator=torch.Generator().manual_seed(seed))
    return common.save_grid(sample(generator, noise.to(labels.device), labels), path, nrow=5, title=title)


@torch.no_grad()
def tag_interpolation(generator, show, seed, steps=10):
    """Rows that walk from one --show pair to the next (one pair alone: to the opposite colours) with fixed noise:
    the generator sees (1 - t) * tags(a) + t * tags(b), so only the colours change along a row."""
    starts = [parse_tag_text(text) for text in show][:8]
    ends = starts[1:] + starts[:1] if len(starts) > 1 else [((starts[0][0] + N_HAIR // 2) % N_HAIR,
                                                             (starts[0][1] + N_EYES // 2) % N_EYES)]
    plain = common.unwrap(generator)
    device = next(plain.parameters()).device
    start, end = (plain.embed(torch.tensor(pairs, device=device)) for pairs in (starts, ends))
    t = torch.linspace(0, 1, steps, device=device).view(1, steps, 1)
    tags = (start[:, None] * (1 - t) + end[:, None] * t).flatten(0, 1)
    noise = torch.randn(len(starts), plain.nz, generator=torch.Generator().manual_seed(seed)).repeat_interleave(steps, 0)
    names = [f"{HAIR_COLOURS[a[0]]}/{EYE_COLOURS[a[1]]} -> {HAIR_COLOURS[b[0]]}/{EYE_COLOURS[b[1]]}"
             for a, b in zip(starts, ends)]
    return sample(generator, noise.to(device), tags=tags), names


# ---------------------------------------------------------------------------
# Training step: one discriminator update on three kinds of pairs, and (unless batch["update_generator"] is
# False: --n-critic) one generator update. This is the part to change: the loop logs, plots and checks
# whatever values it returns.
# ---------------------------------------------------------------------------
def gradient_penalty(critic, real_images, fake_images, labels):
    """WGAN-GP: E[(||grad_x D(x_hat, tags)||_2 - 1)^2], x_hat on lines between real and fake images."""
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


def colour_loss(colour_logits, labels):
    """AC-GAN's class term for two attributes: cross-entropy of the hair colour plus that of the eye colour."""
    hair_logits, eye_logits = colour_logits.float().split([N_HAIR, N_EYES], 1)
    return F.cross_entropy(hair_logits, labels[:, 0]) + F.cross_entropy(eye_logits, labels[:, 1])


def train_step(models, optimizers, batch, args):
    """(real, right tags) -> real; (fake, right tags) -> fake; (real, wrong tags) -> fake. With --aux-weight D
    also learns to name the colours of real faces, and G to draw faces D names as requested."""
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images = batch["images"]
    conditional = not args.unconditional
    labels = batch["labels"] if conditional else None
    noise = torch.randn(real_images.shape[0], args.nz, device=real_images.device)
    bce = F.binary_cross_entropy_with_logits
    classify = args.aux_weight > 0
    with common.autocast(real_images.device, args.amp):
        fake_images = generator(noise, labels)
        if classify:  # only real faces teach the classifier: on fakes it would learn G's mistakes as right
            logits_real, colours_real = discriminator(real_images, labels, classify=True)
        else:
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
        with common.autocast(real_images.device, args.amp):
            if classify:
                logits_gen, colours_gen = discriminator(fake_images, labels, classify=True)
            else:
                logits_gen = discriminator(fake_images, labels)
            # Generator: non-saturating BCE (maximise log D(G(z, tags), tags)), or -E[D(G(z))] for WGAN.
            loss_g = bce(logits_gen, torch.ones_like(logits_gen)) if args.loss == "bce" else -logits_gen.mean()
            if classify:
                loss_g = loss_g + args.aux_weight * colour_loss(colours_gen, labels)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    else:  # a critic-only step: report the generator loss the critic saw, at no extra cost
        loss_g = bce(logits_fake, torch.ones_like(logits_fake)) if args.loss == "bce" else -logits_fake.mean()
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
    """--eval-every: hair, eye and both-right accuracy of the attribute classifier on faces drawn for all 12 x 11
    tag pairs, from evaluate.py (imported only then; the classifier is loaded now, not after an epoch)."""
    try:
        import evaluate
    except ImportError as e:
        raise common.UserError(f"--eval-every needs evaluate.py next to this script ({e})") from None
    classifier, _ = evaluate.faces_load_classifier(args.classifier, device)
    return lambda generator: evaluate.faces_score(lambda noise, labels: sample(generator, noise, labels),
                                                  (args.nz,), classifier, device, n_per_pair=8)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: every input error (flags, data, tag sheet, checkpoint, classifier) surfaces before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = common.find_resume_checkpoint(args.resume, out, SCRIPT, map_location=device)
    if checkpoint is not None:  # a resumed run keeps its settings (model shapes, data, losses, learning rates)
        args = common.settings_from_checkpoint(args, checkpoint, resume_path)
    common.seed_everything(args.seed, args.deterministic)
    sheet_labels = read_tag_sheet(args.tags_file).to(device) if args.tags_file else None
    images, labels = load_data(args)
    loader = common.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed, rank=dist.rank,
                                 world_size=dist.world_size, normalize=not args.no_normalize)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    score = prepare_scores(args, device) if args.eval_every and master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise and tags for the sample grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    conditional = not args.unconditional
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    fixed_noise, grid_labels, row_names = grid_inputs(args.show, args.nz, GRID_COLUMNS, args.seed, conditional)
    fixed_noise, grid_labels = fixed_noise.to(device), None if grid_labels is None else grid_labels.to(device)
    saved = dict(networks)  # what a checkpoint holds
    if ema_generator is not None:
        saved["generator_ema"] = ema_generator
    step = 0
    if checkpoint is not None:
        common.restore_training_state(checkpoint, resume_path, saved, optimizers)
        step = checkpoint["step"]
        if step >= last_step or args.max_minutes is not None and checkpoint.get("elapsed_s", 0.0) >= 60 * args.max_minutes:
            common.say_finished(resume_path, step, master)
            return out
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {"generator": common.maybe_compile(common.wrap_ddp(generator, dist, args.sync_bn), args.compile),
              "discriminator": common.maybe_compile(common.wrap_ddp(discriminator, dist, args.sync_bn), args.compile)}
    shown_generator = ema_generator if ema_generator is not None else generator  # what grids and evaluate.py use
    shown_real = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:64]  # tags.csv is sorted
    real_reference = images[shown_real].to(device).float().div(127.5).sub(1)  # [-1, 1], as sample() returns

    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None  # all checks passed
    if master and checkpoint is None:
        common.write_config(out, args, SCRIPT, device, {"training_images": len(images)})
        common.save_grid(real_reference, os.path.join(out, "real.png"), nrow=8, title="real images")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT)

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, real_labels = loader.batch(step)
            batch = {"images": real_images, "labels": real_labels, "update_generator": (step + 1) % args.n_critic == 0}
            values = train_step(models, optimizers, batch, args)
            if ema_generator is not None:
                common.update_ema(ema_generator, generator, args.ema, step)
            step += 1
            epoch = -(-step // steps_per_epoch)  # the epoch this step belongs to (1-based)
            log.add(values, step, epoch)
            time_is_up = args.max_minutes is not None and log.minutes() >= args.max_minutes
            stopping = common.stop_requested(stop, time_is_up, dist, step, args.log_every)  # same on all ranks
            epoch_done = step % steps_per_epoch == 0
            if not (epoch_done or stopping or step == last_step):
                continue

            # End of an epoch, of the run, or an interruption: log, samples, scores, checkpoints.
            finished = step == last_step or stopping == "time"
            if epoch_done or finished:  # an interrupted run keeps its unlogged steps in last.pt (exact resume)
                log.flush(step, epoch)
            divergence = common.replica_divergence(generator, dist) if finished else 0.0  # every rank takes part
            if not master:
                if stopping or finished:
                    break
                continue
            standing_statistics(shown_generator)  # for the grids, the scores and the checkpoint
            if finished or stopping or epoch == 1 or epoch % args.sample_every == 0:
                samples = sample(shown_generator, fixed_noise, grid_labels)
                log.monitor.check_samples(samples, real_reference, epoch, step)
                common.save_grid(samples, os.path.join(out, "samples", f"epoch_{epoch:03d}.png"), nrow=GRID_COLUMNS,
                                 row_labels=row_names, title=f"epoch {epoch}, step {step}")
                common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                os.path.join(out, "progress.gif"))
                common.plot_losses(log.history, os.path.join(out, "losses.png"), title=f"{SCRIPT} losses ({args.loss})")
                if sheet_labels is not None:
                    write_tag_sheet(shown_generator, sheet_labels, os.path.join(out, "samples", "cgan.png"), args.seed,
                                    title=f"epoch {epoch}, step {step}")
            is_best = False
            if score is not None and epoch_done and not stop and epoch % args.eval_every == 0:
                accuracy = score(shown_generator)
                log.record(step, epoch, **{k: accuracy[k] for k in ACCURACIES})
                scores = log.history["scores"]
                is_best = scores["both_acc"][-1] >= max(scores["both_acc"])
                common.plot_curves({k: (scores["epoch"], scores[k]) for k in ACCURACIES}, os.path.join(out, "accuracy.png"),
                                   title=f"{SCRIPT}: attribute accuracy of generated faces", xlabel="epoch",
                                   ylabel="accuracy")
            checkpoint = {"format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
                          "class_names": EVAL["class_names"], "step": step, "epoch": epoch, "finished": finished,
                          **{name: module.state_dict() for name, module in saved.items()},
                          "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                          "rng": common.rng_state(), "fixed_noise": fixed_noise.cpu(),
                          "fixed_labels": None if grid_labels is None else grid_labels.cpu(), **log.state_dict(),
                          "world_size": dist.world_size, "replica_divergence": divergence}
            common.save_checkpoint(os.path.join(out, "last.pt"), checkpoint)
            if epoch_done and epoch % args.save_every == 0:
                common.save_checkpoint(os.path.join(out, f"epoch_{epoch:03d}.pt"), checkpoint)
            if is_best:
                common.save_checkpoint(os.path.join(out, "best.pt"), checkpoint)
            if stopping or finished:
                break
    log.close()
    if lock is not None:
        lock.close()
    if stop:
        raise SystemExit(130)
    return out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH: N faces per --show pair in a grid (+ one PNG each, the --tags-file sheet
    and its face count, interpolation sheets)."""
    grid_path = common.check_output_path(args.grid_out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png"), "--grid-out")
    sheet_path = os.path.join(os.path.dirname(os.path.abspath(grid_path)), "cgan.png")
    sheet_labels = read_tag_sheet(args.tags_file) if args.tags_file else None
    if sheet_labels is not None:
        common.check_output_path(sheet_path, "the --tags-file sheet")
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings = checkpoint["args"]
    generator = common.rebuild(build_generator, settings, args.checkpoint).to(device)
    common.load_weights(generator, checkpoint.get("generator_ema", checkpoint["generator"]), args.checkpoint)
    standing_statistics(generator)
    conditional = not settings["unconditional"]
    noise, labels, row_names = grid_inputs(args.show, settings["nz"], args.generate, args.seed, conditional)
    images = sample(generator, noise.to(device), None if labels is None else labels.to(device))
    common.save_grid(images, grid_path, nrow=args.generate, row_labels=row_names)
    written = [grid_path]
    if args.png_dir:
        written.append(common.save_pngs(images, args.png_dir))
    if sheet_labels is not None:
        written.append(write_tag_sheet(generator, sheet_labels.to(device), sheet_path, args.seed))
    if args.interpolate:  # 8 rows, each a walk through the latent space between two random points
        stem = os.path.splitext(grid_path)[0]
        walk_labels, names = None, None
        if conditional:  # the --show pairs in turn, one per row
            names = [args.show[r % len(args.show)] for r in range(8)]
            walk_labels = torch.tensor([parse_tag_text(text) for text in names]).repeat_interleave(10, 0).to(device)
        walk = sample(generator, common.interpolation_noise(8, 10, settings["nz"], args.seed).to(device), walk_labels)
        written.append(common.save_grid(walk, stem + "_interpolation.png", nrow=10, row_labels=names))
        if conditional:
            sheet, names = tag_interpolation(generator, args.show, args.seed)
            written.append(common.save_grid(sheet, stem + "_conditions.png", nrow=10, row_labels=names))
    print("wrote " + ", ".join(written))
    if args.cascade:
        try:
            import evaluate
        except ImportError as e:
            raise common.UserError(f"--cascade needs evaluate.py next to this script ({e})") from None
        print(f"{sheet_path}: OpenCV's anime cascade finds {evaluate.faces_count(sheet_path, args.cascade)} faces "
              f"of {len(sheet_labels)} (the course's pass mark: 20 of 25)")
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
