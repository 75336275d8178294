"""Conditional GAN on multi-object scenes (i-CLEVR): draw a scene holding the objects you ask for.

Papers: Mirza & Osindero, "Conditional Generative Adversarial Nets" (2014); Radford et al. (DCGAN, ICLR 2016);
Miyato & Koyama, "cGANs with Projection Discriminator" (ICLR 2018); Odena et al. (AC-GAN, ICML 2017);
de Vries et al. (conditional BatchNorm, 2017); Arjovsky et al. (WGAN) and Gulrajani et al. (WGAN-GP) for --loss;
Zhao et al. (DiffAugment, NeurIPS 2020) for --translate. Coursework: the i-CLEVR lab (24 objects = 8 colours x
3 shapes, 1-3 objects per picture, a multi-hot condition), scored by a classifier on the 32 condition lists of
test.json and new_test.json.

Score: for each generated 64x64 image with k requested objects, the classifier's top-k labels are compared
with the request; score = hits / requested labels over the list (72 labels in test.json, 84 in new_test.json).
best.pt is picked on 32 held-out validation conditions, not on the lists it is scored on.

Run (offline: procedural scenes from synthetic.py):
    python evaluate.py --train-classifier objects     # once: the object classifier that scores samples
    python cgan_objects.py --image-size 32            # our defaults at the CPU size
    # the 30-minute CPU run of docs/cgan_objects.md (>= 0.90 on both lists):
    python cgan_objects.py --image-size 32 --ngf 32 --ndf 32 --amp --n-images 60000 --aux-weight 2 --max-minutes 30 --epochs 200
    python cgan_objects.py                            # 64x64, as the lab asks (GPU)
    python cgan_objects.py --data iclevr --data-dir data/iclevr --classifier checkpoint.pth   # the lab's data
    python cgan_objects.py --d-cond map --loss bce --lr-g 2e-4 --lr-d 1e-4   # report 004: condition map, DCGAN loss
    python cgan_objects.py --loss wgan-clip                                  # report 003: WGAN, RMSprop, clipping
    python cgan_objects.py --generate 8 --checkpoint runs/<run>/best.pt --objects "red cube" "blue sphere" --interpolate
    python evaluate.py runs/<run>/last.pt             # the same two scores, from the checkpoint
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cgan_objects.py --device cuda

Data: --data synthetic renders scenes with synthetic.scenes; --data iclevr reads the lab's objects.json,
train.json and PNGs (decoded once, squashed to the image size and cached next to train.json). The condition
lists come from --test-dir, else from --data-dir with --data iclevr, else synthetic lists of the lab's make-up.
"""

import argparse
import copy
import glob
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = common.script_name(__file__)  # a copy of this file (my_gan.py) writes checkpoints of its own name
OBJECTS = [f"{colour} {shape}" for shape in ("cube", "sphere", "cylinder")  # index = 8 * shape + colour,
           for colour in ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")]  # as objects.json
N_OBJECTS, MAX_OBJECTS = len(OBJECTS), 3
EVAL = {"dataset": "objects", "conditioning": "multi-hot", "num_classes": N_OBJECTS, "class_names": OBJECTS}
DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classifiers", "objects.pt")
LIST_FILES = ("test.json", "new_test.json")
VALIDATION_MAKE_UP = {1: 3, 2: 12, 3: 17}  # objects per condition: how many conditions (32, 78 labels)
SCORE_REPEATS = 10  # noise draws behind the steadier *_mean scores


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional GAN on i-CLEVR-like multi-object scenes.",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "iclevr"], default="synthetic",
                   help="synthetic: procedural scenes, offline; iclevr: the lab's objects.json, train.json and "
                        "images (in --data-dir, --data-dir/iclevr or --data-dir/images)")
    g.add_argument("--data-dir", default="data", help="--data iclevr: the lab's folder (its test.json and "
                                                      "new_test.json are scored when --test-dir is not given)")
    g.add_argument("--n-images", type=common.positive_int, default=20000,
                   help="--data synthetic: scenes rendered in total (each holds 1-3 of the 24 objects, so there is "
                        "no per-class count; the lab's train.json has 18,009 pictures)")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=64, help="image height and width")
    g.add_argument("--test-dir", default=None,
                   help="folder with the test.json and new_test.json to score; without it: --data-dir with --data "
                        "iclevr, else synthetic lists with the lab's make-up")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=64, help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=64, help="discriminator feature maps (first block)")
    g.add_argument("--cond-dim", type=common.positive_int, default=64,
                   help="generator: the multi-hot condition goes through Linear -> ReLU to this size")
    g.add_argument("--g-cond", choices=["cbn", "concat"], default="cbn",
                   help="how the generator sees the condition: concat (joined with the noise at the input) or "
                        "cbn (also conditional BatchNorm in every layer)")
    g.add_argument("--d-cond", choices=["projection", "map", "channels"], default="projection",
                   help="how the discriminator sees the condition: projection (Miyato & Koyama); map: Linear "
                        "to one HxW map added as a 4th channel; channels: Linear to 3xHxW, 3 more channels")
    g.add_argument("--d-norm", choices=["auto", "batch", "spectral", "none"], default="auto",
                   help="discriminator normalisation; auto: batch, but none for wgan-gp (its penalty is per "
                        "sample); spectral: spectral norm on every layer (Miyato et al. 2018)")
    g.add_argument("--acgan", action=argparse.BooleanOptionalAction, default=True,
                   help="an auxiliary multi-label head on the discriminator (AC-GAN, BCE on the 24 labels); "
                        "--no-acgan for the plain conditional GAN of the reports")
    g.add_argument("--aux-weight", type=common.non_negative_float, default=1.0, help="weight of the AC-GAN loss")
    g.add_argument("--loss", choices=["hinge", "bce", "wgan-gp", "wgan-clip"], default="hinge",
                   help="hinge; bce (the DCGAN loss); wgan-gp (gradient penalty); wgan-clip (RMSprop and "
                        "weight clipping, the original WGAN)")
    g.add_argument("--lambda", dest="lambda_gp", type=common.non_negative_float, default=10.0,
                   help="wgan-gp: gradient penalty weight")
    g.add_argument("--clip", type=common.positive_float, default=0.01, help="wgan-clip: weight clipping bound")
    g.add_argument("--n-critic", type=common.positive_int, default=None,
                   help="critic (discriminator) updates per generator update; unset: 1, or 5 with the WGAN losses")
    g.add_argument("--translate", type=common.unit_interval, default=0.125, metavar="FRACTION",
                   help="DiffAugment translation: every picture the discriminator sees, real or generated, is "
                        "shifted by up to this fraction of its size (0: off); keeps it from winning outright")
    g.add_argument("--epochs", type=common.positive_int, default=30, help="passes over the training set")
    g.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per step per process (global batch = batch size x processes)")
    g.add_argument("--lr-g", type=common.positive_float, default=None,
                   help="generator learning rate; unset: 2e-4, or 5e-5 with wgan-clip (the WGAN paper's RMSprop rate)")
    g.add_argument("--lr-d", type=common.positive_float, default=None,
                   help="discriminator learning rate; unset: as --lr-g")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--step-lr", type=common.positive_int, default=None, metavar="EPOCHS",
                   help="multiply both learning rates by --gamma every EPOCHS epochs")
    g.add_argument("--gamma", type=common.positive_float, default=0.5, help="factor of --step-lr")
    g.add_argument("--ema", type=common.unit_interval, default=0.0,
                   help="decay of the moving average of the generator's weights that samples, scores and "
                        "evaluate.py use (0: off, the trained weights themselves)")
    g.add_argument("--seed", type=common.seed, default=0, help="random seed (data, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, default=None, help="stop after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, default=None,
                   help="stop after this many minutes of training, then save and score (a wall-clock budget)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA and on CPUs with native bf16")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm across processes")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on CUDA)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip a step whose loss is NaN/inf instead of stopping")
    g = parser.add_argument_group("logging, samples, checkpoints, scores")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log losses every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=1, help="sample grids every N epochs")
    g.add_argument("--save-every", type=common.positive_int, default=10, help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--eval-every", type=common.positive_int, default=1, metavar="N",
                   help="score test.json, new_test.json and the validation conditions every N epochs and at the "
                        "end (with a classifier): logged, plotted, best.pt kept on the validation score")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help="object classifier that scores samples: ours (evaluate.py --train-classifier objects) "
                        "or the lab's ResNet-18 checkpoint.pth")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                   help="draw N pictures from --checkpoint into a grid, each condition written under its picture")
    g.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    g.add_argument("--objects", nargs="+", default=None, metavar="NAME",
                   help="with --generate: the objects every picture holds, e.g. 'red cube' 'blue sphere' (1 to 3; "
                        "default: a random set per picture)")
    g.add_argument("--grid-out", default=None, help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None, help="with --generate: also one PNG per sample in this folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: also a latent interpolation sheet (<grid>_interpolation.png) and a "
                        "condition one (<grid>_condition_interpolation.png: fixed noise, the multi-hot condition "
                        "blended from one object set to another)")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.d_norm == "batch" and args.loss == "wgan-gp":
        parser.error("--loss wgan-gp penalises each sample's gradient: use --d-norm none or spectral, not batch")
    if args.d_norm == "auto":
        args.d_norm = "none" if args.loss == "wgan-gp" else "batch"
    default_lr = 5e-5 if args.loss == "wgan-clip" else 2e-4
    args.lr_g, args.lr_d = args.lr_g or default_lr, args.lr_d or default_lr
    if args.n_critic is None:
        args.n_critic = 5 if args.loss.startswith("wgan") else 1
    return args




# ---------------------------------------------------------------------------
# Conditions: lists of object names -> multi-hot vectors (24,), checked; JSON read with one-line errors
# ---------------------------------------------------------------------------
def condition_vector(names, object_index, where):
    """['red cube', 'blue sphere'] -> float multi-hot (24,); UserError naming `where` for bad input."""
    if not isinstance(names, list) or not names:
        raise common.UserError(f"{where}: empty condition or not a list (each needs 1 to {MAX_OBJECTS} object names)")
    if len(names) > MAX_OBJECTS:
        raise common.UserError(f"{where}: {len(names)} objects {names} (at most {MAX_OBJECTS} per picture)")
    vector = torch.zeros(N_OBJECTS)
    for name in names:
        if not isinstance(name, str) or name not in object_index:
            raise common.UserError(f"{where}: unknown object name {name!r} (known: 'gray cube' ... "
                                   f"'yellow cylinder', 8 colours x cube/sphere/cylinder)")
        vector[object_index[name]] = 1.0
    return vector


def describe(condition):
    """Multi-hot (24,) -> the object names, one a line (the caption under a picture)."""
    return "\n".join(OBJECTS[j] for j in condition.nonzero().flatten().tolist())


def read_json(path, what):
    if not os.path.isfile(path):
        raise common.UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is fine
            return json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # Latin-1 bytes, broken or absurdly nested JSON
        raise common.UserError(f"cannot read {path}: {common.first_line(e)[:200]}") from None


def read_object_index(folder):
    """objects.json (name -> index) when the folder has one, else ours; it must match the lab's order."""
    path = os.path.join(folder, "objects.json")
    if not os.path.isfile(path):
        return {name: i for i, name in enumerate(OBJECTS)}
    index = read_json(path, "objects.json")
    if (not isinstance(index, dict) or not all(type(v) is int for v in index.values())
            or sorted(index.values()) != list(range(N_OBJECTS))):
        raise common.UserError(f"{path} must map {N_OBJECTS} object names to the whole numbers 0..{N_OBJECTS - 1}")
    return index


def read_condition_lists(folder):
    """{'test': (32, 24) multi-hot, 'new_test': ...} from test.json and new_test.json in `folder`."""
    index = read_object_index(folder)
    lists = {}
    for file in LIST_FILES:
        path = os.path.join(folder, file)
        conditions = read_json(path, file)
        if not isinstance(conditions, list) or not conditions:
            raise common.UserError(f"{path} must hold a list of condition lists")
        lists[file[:-5]] = torch.stack([condition_vector(c, index, f"{path} entry {i}") for i, c in enumerate(conditions)])
    return lists


def synthetic_condition_lists():
    """Lists with the make-up of the lab's test.json and new_test.json, drawn by synthetic.py."""
    import synthetic  # only for the offline lists: a copied script with the lab's lists needs no synthetic.py

    index = {name: i for i, name in enumerate(OBJECTS)}
    lists = {"test": synthetic.condition_lists(synthetic.TEST_MAKE_UP, seed=1),
             "new_test": synthetic.condition_lists(synthetic.NEW_TEST_MAKE_UP, seed=2)}
    return {k: torch.stack([condition_vector(c, index, k) for c in v]) for k, v in lists.items()}


def find_condition_lists(test_dir=None, settings=None):
    """The lists to score: --test-dir, else the --data-dir of an i-CLEVR run when it holds them, else synthetic
    lists with the real ones' make-up. Returns (lists, where from)."""
    settings = settings or {}
    if test_dir:
        if not all(os.path.isfile(os.path.join(test_dir, f)) for f in LIST_FILES):
            raise common.UserError(f"--test-dir {test_dir} must hold test.json and new_test.json")
        return read_condition_lists(test_dir), f"lists from {test_dir}"
    data_dir = settings.get("data_dir")
    if settings.get("data") == "iclevr" and data_dir and all(os.path.isfile(os.path.join(data_dir, f)) for f in LIST_FILES):
        return read_condition_lists(data_dir), f"lists from {data_dir}"
    return synthetic_condition_lists(), "synthetic lists (seeds 1, 2) with the lab's make-up"


def random_conditions(n, generator):
    """n random sets of 1-3 distinct objects, as multi-hot (n, 24)."""
    conditions = torch.zeros(n, N_OBJECTS)
    for row, count in enumerate(torch.randint(1, MAX_OBJECTS + 1, (n,), generator=generator).tolist()):
        conditions[row, torch.randperm(N_OBJECTS, generator=generator)[:count]] = 1.0
    return conditions


# ---------------------------------------------------------------------------
# Data: uint8 images (N, 3, S, S) and float multi-hot labels (N, 24)
# ---------------------------------------------------------------------------
def find_image_folder(data_dir, first_file):
    for folder in (os.path.join(data_dir, "iclevr"), os.path.join(data_dir, "images"), data_dir):
        if os.path.isfile(os.path.join(folder, first_file)):
            return folder
    raise common.UserError(f"cannot find the i-CLEVR images (e.g. {first_file}) in {data_dir}, {data_dir}/iclevr or "
                           f"{data_dir}/images: unzip the lab's iclevr.zip there")


def load_iclevr(data_dir, image_size):
    """The lab's layout: objects.json, train.json (file -> object names) and the PNGs; decoded once, squashed
    from 320x240 to image_size x image_size (as the lab's loader does) and cached next to train.json."""
    from PIL import Image

    if not os.path.isdir(data_dir):
        raise common.UserError(f"i-CLEVR folder not found: {data_dir} (it needs objects.json, train.json and the images)")
    if not os.path.isfile(os.path.join(data_dir, "objects.json")):
        raise common.UserError(f"objects.json not found in {data_dir}")
    index = read_object_index(data_dir)
    train = read_json(os.path.join(data_dir, "train.json"), "train.json")
    if not isinstance(train, dict) or not train:
        raise common.UserError(f"{data_dir}/train.json must map image file names to lists of object names")
    files = sorted(train)
    labels = torch.stack([condition_vector(train[f], index, f"train.json entry {f!r}") for f in files])
    cache = os.path.join(data_dir, f"cache_{image_size}px.pt")
    if os.path.isfile(cache):
        try:
            cached = torch.load(cache, weights_only=True)
            if cached.get("train_files") == files:
                return cached["images"], labels[cached["kept"]]
        except Exception:  # noqa: BLE001 - a stale or broken cache is simply rebuilt
            pass
    folder = find_image_folder(data_dir, files[0])
    arrays, kept, missing = [], [], []
    for i, f in enumerate(files):
        path = os.path.join(folder, f)
        if not os.path.isfile(path):
            missing.append(f)
            continue
        picture = common.read_image(path, "RGB")  # one clear line for a broken file
        arrays.append(np.asarray(picture.resize((image_size, image_size), Image.BILINEAR)))
        kept.append(i)
    if missing:
        print(f"warning: {len(missing)} of {len(files)} images listed in train.json are missing from {folder} "
              f"(first: {missing[0]}); training on the other {len(kept)}", file=sys.stderr)
    if not kept:
        raise common.UserError(f"none of the images listed in {data_dir}/train.json exist in {folder}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    kept = torch.tensor(kept)
    try:  # decoding 18k PNGs takes a minute; next time it is one file read
        common.save_checkpoint(cache, {"train_files": files, "kept": kept, "images": images})
    except (OSError, common.UserError):  # a read-only data folder: no cache
        pass
    return images, labels[kept]


def load_synthetic(n_images, image_size, seed):
    """Offline stand-in: procedural scenes of 1-3 shaded objects on a grey floor (synthetic.scenes)."""
    import synthetic  # only for the offline data: a copied script with real data needs no synthetic.py

    return synthetic.scenes(n_images, image_size, seed=seed)


def load_data(args):
    """All data errors surface here, before anything is written."""
    if args.data == "iclevr":
        return load_iclevr(args.data_dir, args.image_size)
    return load_synthetic(args.n_images, args.image_size, args.seed)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are predicted from the condition (de Vries et al. 2017; Miyato & Koyama
    2018 pair it with the projection discriminator): scale = 1 + Linear(c), shift = Linear(c), per picture."""

    def __init__(self, channels, cond_dim):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Linear(cond_dim, channels)
        self.shift = nn.Linear(cond_dim, channels)

    def forward(self, x, cond):
        return self.norm(x) * (1 + self.scale(cond))[:, :, None, None] + self.shift(cond)[:, :, None, None]


class Generator(nn.Module):
    """(noise, condition) -> image. The multi-hot condition goes through Linear -> ReLU, is joined with the
    noise, and the DCGAN transposed-conv stack (BN + ReLU, tanh output) draws from 4x4 up. With
    g_cond="cbn" every BatchNorm also takes its scale and shift from the condition, so each layer is told
    what to draw, not only the first."""

    def __init__(self, nz=100, cond_dim=64, ngf=64, image_size=64, g_cond="concat"):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(N_OBJECTS, cond_dim), nn.ReLU(True))
        blocks = {32: 3, 64: 4}[image_size]
        in_width, width = nz + cond_dim, ngf * 2 ** (blocks - 1)
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for i in range(blocks):  # 1x1 -> 4x4, then each block doubles the resolution
            stride, padding = (1, 0) if i == 0 else (2, 1)
            self.convs.append(nn.ConvTranspose2d(in_width, width, 4, stride, padding, bias=False))
            self.norms.append(ConditionalBatchNorm2d(width, cond_dim) if g_cond == "cbn" else nn.BatchNorm2d(width))
            in_width, width = width, width // 2
        self.to_rgb = nn.ConvTranspose2d(in_width, 3, 4, 2, 1)

    def forward(self, noise, labels):
        cond = self.embed(labels)
        x = torch.cat([noise.flatten(1), cond], dim=1)[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            x = F.relu(norm(x, cond) if isinstance(norm, ConditionalBatchNorm2d) else norm(x))
        return torch.tanh(self.to_rgb(x))


class Discriminator(nn.Module):
    """image (+ condition) -> realness logit (+ 24 auxiliary logits with --acgan).

    DCGAN trunk of strided convs with LeakyReLU(0.2). The condition enters either as extra input channels
    (map, channels) or by projection: logit = w . phi(x) + embed(y) . phi(x), with phi(x) the summed trunk
    features and embed(y) the sum of the requested objects' embeddings (Miyato & Koyama 2018)."""

    def __init__(self, ndf=64, image_size=64, d_cond="projection", norm="batch", acgan=True):
        super().__init__()
        self.d_cond, self.image_size = d_cond, image_size
        extra = {"projection": 0, "map": 1, "channels": 3}[d_cond]
        if extra:
            self.cond_to_image = nn.Linear(N_OBJECTS, extra * image_size * image_size)
        sn = nn.utils.spectral_norm if norm == "spectral" else (lambda m: m)
        blocks = {32: 3, 64: 4}[image_size]
        layers = [sn(nn.Conv2d(3 + extra, ndf, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(blocks - 1):
            layers.append(sn(nn.Conv2d(width, width * 2, 4, 2, 1, bias=norm != "batch")))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            width *= 2
        self.trunk = nn.Sequential(*layers)  # -> (width, 4, 4)
        if d_cond == "projection":
            self.linear = sn(nn.Linear(width, 1))
            self.embed = sn(nn.Linear(N_OBJECTS, width, bias=False))
        else:
            self.head = sn(nn.Conv2d(width, 1, 4, 1, 0))
        self.aux_classifier = sn(nn.Linear(width, N_OBJECTS)) if acgan else None

    def forward(self, images, labels):
        if self.d_cond != "projection":
            maps = self.cond_to_image(labels).view(len(labels), -1, self.image_size, self.image_size)
            images = torch.cat([images, maps], dim=1)
        features = self.trunk(images)
        phi = features.sum(dim=(2, 3))
        if self.d_cond == "projection":
            logits = self.linear(phi).flatten() + (self.embed(labels) * phi).sum(dim=1)
        else:
            logits = self.head(features).flatten()
        aux = self.aux_classifier(phi) if self.aux_classifier is not None else None
        return logits, aux


def build_generator(settings):
    """The generator from a checkpoint's settings (evaluate.py and --generate use this)."""
    return Generator(settings["nz"], settings["cond_dim"], settings["ngf"], settings["image_size"],
                     settings.get("g_cond", "concat"))


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = common.prepare_model(build_generator(vars(args)).apply(common.dcgan_init), device)
    discriminator = Discriminator(args.ndf, args.image_size, args.d_cond, args.d_norm, args.acgan)
    if args.d_norm != "spectral":  # spectral norm rescales the weights itself; DCGAN's init suits the others
        discriminator.apply(common.dcgan_init)
    discriminator = common.prepare_model(discriminator, device)
    if args.loss == "wgan-clip":  # the WGAN paper: RMSprop, momentum-free, for the clipped critic
        optimizers = {"generator": torch.optim.RMSprop(generator.parameters(), lr=args.lr_g),
                      "discriminator": torch.optim.RMSprop(discriminator.parameters(), lr=args.lr_d)}
    else:
        optimizers = {"generator": common.adam(generator.parameters(), args.lr_g, (args.beta1, args.beta2), device),
                      "discriminator": common.adam(discriminator.parameters(), args.lr_d, (args.beta1, args.beta2), device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] for multi-hot `labels` (N, 24) from noise (N, nz) or (N, nz, 1, 1), with batch-statistics
    BN as in training (this also suits the EMA generator). BN runs on copies of its buffers, so drawing samples
    never changes the model (exact resume)."""
    if labels is None:
        raise ValueError("cgan_objects draws what the condition asks: pass multi-hot labels (N, 24)")
    generator = common.unwrap(generator)
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels.to(noise.device, torch.float32)))


# ---------------------------------------------------------------------------
# Losses, as the papers write them
# ---------------------------------------------------------------------------
def discriminator_loss(loss, logits_real, logits_fake):
    if loss == "bce":  # maximise log D(x, y) + log(1 - D(G(z, y), y))
        return (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    if loss == "hinge":
        return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()
    return logits_fake.mean() - logits_real.mean()  # WGAN critic: minimise E[D(fake)] - E[D(real)]


def generator_loss(loss, logits_fake):
    if loss == "bce":  # non-saturating: maximise log D(G(z, y), y)
        return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))
    return -logits_fake.mean()  # hinge and WGAN


def auxiliary_loss(aux_logits, labels):
    """AC-GAN's class loss for 24 yes/no questions: binary cross-entropy summed over the labels (a mean over them
    would make it 24 times weaker than the single-label AC-GAN's cross-entropy), averaged over the pictures."""
    return F.binary_cross_entropy_with_logits(aux_logits.float(), labels, reduction="sum") / len(labels)


def gradient_penalty(critic, real_images, fake_images, labels):
    """WGAN-GP: (||grad_x D(x_hat, y)||_2 - 1)^2 at random points between real and fake pictures."""
    alpha = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device)
    mixed = (alpha * real_images + (1 - alpha) * fake_images).requires_grad_(True)
    logits, _ = critic(mixed, labels)
    grads, = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    return ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def translate(images, fraction):
    """DiffAugment's translation (Zhao et al., NeurIPS 2020): shift each picture by a random whole number of pixels,
    up to `fraction` of its size in x and y, filling with zeros (mid grey). Applied to real and generated pictures
    alike and differentiable, so the generator is not taught to draw shifted scenes. Without it the discriminator
    wins outright after ~20k steps and the generator drifts into high-frequency noise that fools the AC-GAN head."""
    max_shift = round(images.shape[-1] * fraction)
    if max_shift == 0:
        return images
    n, _, height, width = images.shape
    shift_y, shift_x = torch.randint(-max_shift, max_shift + 1, (2, n, 1, 1), device=images.device)
    rows = (torch.arange(height, device=images.device)[None, :, None] + shift_y + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=images.device)[None, None, :] + shift_x + 1).clamp(0, width + 1)
    padded = F.pad(images, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # a one-pixel zero border that out-of-range reads hit
    return padded[torch.arange(n, device=images.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------
# Training step: one critic update, and a generator update unless batch["update_generator"] is False (the loop
# sets it every --n-critic steps). This is the part to change: the loop logs, plots and checks what it returns.
# ---------------------------------------------------------------------------
def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, labels = batch["images"], batch["labels"]
    noise = torch.randn(real_images.shape[0], args.nz, device=real_images.device)
    with common.autocast(real_images.device, args.amp):
        fake_images = generator(noise, labels)
        # the discriminator only ever sees translated pictures (--translate), real and generated alike
        seen_real, seen_fake = translate(real_images, args.translate), translate(fake_images.detach(), args.translate)
        logits_real, aux_real = discriminator(seen_real, labels)
        logits_fake, _ = discriminator(seen_fake, labels)
        loss_d = discriminator_loss(args.loss, logits_real, logits_fake)
        if args.loss == "wgan-gp":
            loss_d = loss_d + args.lambda_gp * gradient_penalty(discriminator, seen_real, seen_fake, labels)
        if aux_real is not None:  # AC-GAN: the discriminator also learns which objects a real picture holds
            loss_d = loss_d + args.aux_weight * auxiliary_loss(aux_real, labels)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)
    if args.loss == "wgan-clip":  # keep the critic K-Lipschitz by clipping its weights
        with torch.no_grad():
            for p in discriminator.parameters():
                p.clamp_(-args.clip, args.clip)

    if batch.get("update_generator", True):
        with common.autocast(real_images.device, args.amp):
            logits_gen, aux_gen = discriminator(translate(fake_images, args.translate), labels)
            loss_g = generator_loss(args.loss, logits_gen)
            if aux_gen is not None:  # AC-GAN: the generated picture must show the requested objects
                loss_g = loss_g + args.aux_weight * auxiliary_loss(aux_gen, labels)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    else:  # for the log only: the generator loss the critic gave this batch before its update
        loss_g = generator_loss(args.loss, logits_fake.detach())
    values = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
    if args.loss in ("bce", "hinge"):  # d_real/d_fake feed the health monitor
        values["d_real"] = torch.sigmoid(logits_real.detach().float()).mean()
        values["d_fake"] = torch.sigmoid(logits_fake.detach().float()).mean()
    return values


# ---------------------------------------------------------------------------
# Scores during training: the lab's two lists, and held-out validation conditions that pick best.pt
# ---------------------------------------------------------------------------
def validation_conditions(scored_lists, seed=3):
    """32 held-out conditions that pick best.pt, so that the best epoch is chosen without looking at the lists it
    is scored on: random object sets, 3 / 12 / 17 of 1 / 2 / 3 objects (half of test.json and new_test.json
    together), none of them in `scored_lists` and none twice."""
    rng = np.random.default_rng(seed)
    taken = {frozenset(c.nonzero().flatten().tolist()) for conditions in scored_lists.values() for c in conditions}
    chosen = []
    for count, how_many in sorted(VALIDATION_MAKE_UP.items()):
        wanted = len(chosen) + how_many
        while len(chosen) < wanted:
            objects = frozenset(rng.choice(N_OBJECTS, size=count, replace=False).tolist())
            if objects not in taken:
                taken.add(objects)
                chosen.append(objects)
    validation = torch.zeros(len(chosen), N_OBJECTS)
    for row, objects in enumerate(chosen):
        validation[row, list(objects)] = 1.0
    return validation


def scoring_noise(nz, repeats, seed=0):
    """Fixed noise for scoring: repeats x 32 vectors (the first 32 are the lab-style single draw)."""
    return torch.randn(repeats, 32, nz, generator=torch.Generator().manual_seed(seed + 12345))


def prepare_scores(args, lists, device):
    """The classifier scores, from evaluate.py's object judge (imported only here; the classifier file is checked
    now, not after an epoch). Returns score(generator) -> {test, new_test, test_mean, new_test_mean, validation},
    or None when the default classifier has not been trained (a note says so; training goes on unscored)."""
    if not os.path.isfile(args.classifier):
        if os.path.abspath(args.classifier) != DEFAULT_CLASSIFIER:
            raise common.UserError(f"--classifier {args.classifier} not found")
        print(f"note: no object classifier at {args.classifier}: training without scores (train one with "
              f"python evaluate.py --train-classifier objects)", file=sys.stderr)
        return None
    try:
        import evaluate
    except ImportError as e:
        raise common.UserError(f"scoring needs evaluate.py next to this script ({e})") from None
    classifier = evaluate.objects_load_classifier(args.classifier, device)
    held_out = {"validation": validation_conditions(lists)}
    noise, held_out_noise = (scoring_noise(args.nz, SCORE_REPEATS, args.seed + k) for k in (0, 1))

    def score(generator):
        draw = lambda z, conditions: sample(generator, z, conditions)  # noqa: E731
        first, mean = evaluate.objects_score_lists(draw, classifier, lists, noise)
        validation, _ = evaluate.objects_score_lists(draw, classifier, held_out, held_out_noise)
        return {**first, **{f"{k}_mean": v for k, v in mean.items()}, **validation}
    score.ceiling = evaluate.objects_classifier_ceiling(classifier, args.image_size)
    return score


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: every input error (flags, data, lists, classifier, checkpoint) surfaces before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = common.find_resume_checkpoint(args.resume, out, SCRIPT, map_location=device)
    if checkpoint is not None:  # a resumed run keeps its settings (model shapes, data, losses, learning rates)
        args = common.settings_from_checkpoint(args, checkpoint, resume_path)
    common.seed_everything(args.seed, args.deterministic)
    images, labels = load_data(args)
    loader = common.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed, rank=dist.rank,
                                 world_size=dist.world_size)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    lists, lists_source = find_condition_lists(args.test_dir, vars(args))
    score = prepare_scores(args, lists, device) if master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, schedulers, fixed noise for the sample grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    schedulers = {name: torch.optim.lr_scheduler.StepLR(opt, args.step_lr, args.gamma)
                  for name, opt in optimizers.items()} if args.step_lr else {}
    fixed_noise = scoring_noise(args.nz, 1, args.seed)[0].to(device)  # the grids show the first scored draw
    saved = dict(networks)  # what a checkpoint holds
    if ema_generator is not None:
        saved["generator_ema"] = ema_generator
    step = 0
    if checkpoint is not None:
        in_checkpoint = checkpoint.get("schedulers") or {}
        common.restore_training_state(checkpoint, resume_path, saved, optimizers,
                                      {name: s for name, s in schedulers.items() if name in in_checkpoint})
        step = checkpoint["step"]
        if step >= last_step or args.max_minutes is not None and checkpoint.get("elapsed_s", 0) >= 60 * args.max_minutes:
            common.say_finished(resume_path, step, master)
            return out
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {"generator": common.maybe_compile(common.wrap_ddp(generator, dist, args.sync_bn), args.compile),
              "discriminator": common.maybe_compile(common.wrap_ddp(discriminator, dist, args.sync_bn), args.compile)}
    shown_generator = ema_generator if ema_generator is not None else generator  # what grids and scores use

    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None  # all checks passed
    if master and checkpoint is None:
        common.write_config(out, args, SCRIPT, device, {"training_images": len(images), "condition_lists": lists_source,
                                                        "classifier": args.classifier if score else None})
        common.save_grid(loader.to_float(images[:32].to(device)), os.path.join(out, "real.png"), nrow=8,
                         title="real images", captions=[describe(c) for c in labels[:32]])
    if master:
        ceiling = f" (classifier's held-out score on real scenes: {score.ceiling:.3f})" if score and score.ceiling else ""
        print(f"{len(images)} pictures; scoring {lists_source}{ceiling}", file=sys.stderr)
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT)
    real_reference = loader.to_float(images[:64].to(device))

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, real_labels = loader.batch(step)
            batch = {"images": real_images, "labels": real_labels,  # the generator learns every --n-critic steps
                     "update_generator": (step + 1) % args.n_critic == 0}
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

            # End of an epoch, of the run, or an interruption: log, schedule, samples, scores, checkpoints.
            log.flush(step, epoch)
            if epoch_done:
                for scheduler in schedulers.values():
                    scheduler.step()
            finished = step == last_step or stopping == "time"
            divergence = common.replica_divergence(generator, dist) if finished else 0.0  # every rank takes part
            if not master:
                if stopping or finished:
                    break
                continue
            if finished or stopping or epoch == 1 or epoch % args.sample_every == 0:
                drawn = {name: sample(shown_generator, fixed_noise[:len(c)], c.to(device)) for name, c in lists.items()}
                log.monitor.check_samples(drawn["test"], real_reference, epoch, step)
                for name, prefix in (("test", ""), ("new_test", "new_test_")):  # 8 per row, as the reports submitted
                    common.save_grid(drawn[name], os.path.join(out, "samples", f"{prefix}epoch_{epoch:03d}.png"),
                                     nrow=8, title=f"{name}.json, epoch {epoch}, step {step}",
                                     captions=[describe(c) for c in lists[name]])
                common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                os.path.join(out, "progress.gif"))
                common.plot_losses(log.history, os.path.join(out, "losses.png"),
                                   title=f"{SCRIPT} losses ({args.loss}, {args.d_cond})")
            is_best = False
            # On SIGINT/SIGTERM no scoring: last.pt first (a preempted job has seconds).
            if score is not None and not stop and (finished or epoch_done and epoch % args.eval_every == 0):
                log.record(step, epoch, **score(shown_generator))
                scores = log.history["scores"]
                is_best = scores["validation"][-1] > max(scores["validation"][:-1], default=-1.0)
                common.plot_curves({k: (scores["epoch"], scores[k]) for k in
                                    ("test", "new_test", "test_mean", "new_test_mean", "validation")},
                                   os.path.join(out, "scores.png"), title=f"{SCRIPT}: i-CLEVR scores",
                                   xlabel="epoch", ylabel="score")
            checkpoint = {"format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
                          "class_names": list(OBJECTS), "step": step, "epoch": epoch, "finished": finished,
                          **{name: module.state_dict() for name, module in saved.items()},
                          "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                          "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
                          "rng": common.rng_state(), "fixed_noise": fixed_noise.cpu(), "fixed_labels": lists["test"],
                          **log.state_dict(), "world_size": dist.world_size, "replica_divergence": divergence}
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
        scores = log.history["scores"]
        if scores.get("validation"):
            best = scores["validation"].index(max(scores["validation"]))
            print(f"best (validation conditions): epoch {scores['epoch'][best]}, validation "
                  f"{scores['validation'][best]:.3f}, test {scores['test'][best]:.3f}, new_test "
                  f"{scores['new_test'][best]:.3f} (best.pt)", file=sys.stderr)
    if stop:
        raise SystemExit(130)
    return out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH [--objects NAME ...]: a grid of N pictures with the condition under each
    (+ one PNG each, + a latent and a condition interpolation sheet)."""
    grid_path = common.check_output_path(args.grid_out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png"), "--grid-out")
    wanted = None if args.objects is None else condition_vector(
        args.objects, {name: i for i, name in enumerate(OBJECTS)}, "--objects")
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings = checkpoint["args"]
    generator = common.rebuild(build_generator, settings, args.checkpoint).to(device)
    common.load_weights(generator, checkpoint.get("generator_ema", checkpoint["generator"]), args.checkpoint)
    rng = torch.Generator().manual_seed(args.seed)
    conditions = random_conditions(args.generate, rng) if wanted is None else wanted.expand(args.generate, -1)
    images = sample(generator, torch.randn(args.generate, settings["nz"], generator=rng).to(device), conditions)
    common.save_grid(images, grid_path, nrow=min(8, args.generate), captions=[describe(c) for c in conditions])
    written = [grid_path]
    if args.png_dir:
        written.append(common.save_pngs(images, args.png_dir))
    if args.interpolate:  # 8 rows of 10 steps; the rows' conditions are the grid's first ones
        starts = conditions[torch.arange(8) % args.generate]
        noise = common.interpolation_noise(8, 10, settings["nz"], args.seed)  # a latent walk, condition fixed
        sheet = sample(generator, noise.to(device), starts.repeat_interleave(10, 0))
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_interpolation.png", nrow=10,
                                        captions=[describe(c) if i % 10 == 0 else "" for i, c in
                                                  enumerate(starts.repeat_interleave(10, 0))]))
        ends, t = random_conditions(8, rng), torch.linspace(0, 1, 10).view(1, 10, 1)
        blended = ((1 - t) * starts[:, None] + t * ends[:, None]).reshape(80, N_OBJECTS)  # fixed noise per row
        noise = torch.randn(8, 1, settings["nz"], generator=rng).expand(8, 10, -1).reshape(80, settings["nz"])
        sheet = sample(generator, noise.to(device), blended)
        captions = [describe(c) if i % 10 in (0, 9) else "" for i, c in enumerate(blended)]
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_condition_interpolation.png", nrow=10,
                                        captions=captions))
    print("wrote " + ", ".join(written))
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
