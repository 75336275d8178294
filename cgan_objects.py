"""Conditional GAN on multi-object scenes (i-CLEVR): draw a scene holding the objects you ask for.

Papers: Mirza & Osindero 2014 (conditional GAN); Radford et al. 2016 (DCGAN); Miyato & Koyama 2018
(projection discriminator); Odena et al. 2017 (AC-GAN); de Vries et al. 2017 (conditional BN); WGAN,
WGAN-GP (--loss); DiffAugment (--translate). Coursework: the i-CLEVR lab (24 objects, 8 colours x 3
shapes, 1-3 per picture), scored on the 32 conditions of test.json and new_test.json: of the k
objects asked for, how many are in a classifier's top k (72 labels in test.json, 84 in
new_test.json). best.pt is picked on 32 other, held-out conditions.

Run (offline: procedural scenes from synthetic.py):
    python evaluate.py --train-classifier objects   # once: the classifier that scores samples
    python cgan_objects.py [--image-size 32]        # 64x64 as the lab asks (GPU); 32: CPU size
    python cgan_objects.py --image-size 32 --ngf 32 --ndf 32 --n-images 60000 --aux-weight 2 \\
        --max-minutes 30 --epochs 200   # docs/cgan_objects.md: >= 0.90 on both lists, bf16 CPU
    python cgan_objects.py --data iclevr --data-dir data/iclevr --classifier checkpoint.pth
    python cgan_objects.py --d-cond map --loss bce --lr-g 2e-4 --lr-d 1e-4   # report 004
    python cgan_objects.py --loss wgan-clip         # report 003: WGAN, RMSprop, clipping
    python cgan_objects.py --generate 8 --checkpoint runs/<run>/best.pt --objects "red cube"
    python evaluate.py runs/<run>/last.pt           # the same two scores, from the checkpoint
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cgan_objects.py --device cuda
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

import checkpoints
import common
import image_io

SCRIPT = common.script_name(__file__)  # a copy (my_gan.py) writes checkpoints of its own name
OBJECTS = [f"{colour} {shape}" for shape in ("cube", "sphere", "cylinder")
           for colour in ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")]
N_OBJECTS, MAX_OBJECTS = len(OBJECTS), 3  # OBJECTS[8 * shape + colour], as in objects.json
OBJECT_INDEX = {name: i for i, name in enumerate(OBJECTS)}
EVAL = {"dataset": "objects", "conditioning": "multi-hot", "num_classes": N_OBJECTS,
        "class_names": OBJECTS}
DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "classifiers", "objects.pt")
LIST_FILES = ("test.json", "new_test.json")
VALIDATION_MAKE_UP = {1: 3, 2: 12, 3: 17}  # objects per condition: how many (32, 78 labels)
SCORE_REPEATS = 10  # noise draws behind the steadier *_mean scores
# A resumed run keeps its settings (model, data, losses, budget, precision) but these, when typed.
CHANGEABLE_ON_RESUME = ("epochs", "max_steps", "max_minutes", "device", "data_dir", "test_dir",
                        "compile", "deterministic", "sync_bn", "skip_nonfinite", "log_every",
                        "sample_every", "save_every", "eval_every", "classifier", "track",
                        "no_progress")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional GAN on i-CLEVR-like object scenes.",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "iclevr"], default="synthetic",
                   help="synthetic: procedural scenes, offline; iclevr: the lab's pictures")
    g.add_argument("--data-dir", default="data",
                   help="--data iclevr: the lab's folder (its lists are scored without --test-dir)")
    g.add_argument("--n-images", type=common.positive_int, default=20000, help="synthetic scenes")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=64, help="height and width")
    g.add_argument("--test-dir", help="folder of the test.json and new_test.json to score")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of G's noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=64, help="G feature maps, last block")
    g.add_argument("--ndf", type=common.positive_int, default=64, help="D feature maps, 1st block")
    g.add_argument("--cond-dim", type=common.positive_int, default=64, help="size of G's condition")
    g.add_argument("--g-cond", choices=["cbn", "concat"], default="cbn",
                   help="G: condition joined with the noise (concat), also conditional BN (cbn)")
    g.add_argument("--d-cond", choices=["projection", "map", "channels"], default="projection",
                   help="D: projection (Miyato & Koyama); map, channels: 1, 3 more input channels")
    g.add_argument("--d-norm", choices=["auto", "batch", "spectral", "none"], default="auto",
                   help="D's normalisation; auto: batch, but none for wgan-gp (per-sample penalty)")
    g.add_argument("--acgan", action=argparse.BooleanOptionalAction, default=True,
                   help="AC-GAN's multi-label head on D (--no-acgan: the reports' plain cGAN)")
    g.add_argument("--aux-weight", type=common.non_negative_float, default=1.0,
                   help="weight of the AC-GAN loss")
    g.add_argument("--loss", choices=["hinge", "bce", "wgan-gp", "wgan-clip"], default="hinge",
                   help="bce: DCGAN's; wgan-gp: gradient penalty; wgan-clip: RMSprop, clipping")
    g.add_argument("--lambda", dest="lambda_gp", type=common.non_negative_float, default=10.0,
                   help="wgan-gp: gradient penalty weight")
    g.add_argument("--clip", type=common.positive_float, default=0.01, help="wgan-clip: max |w|")
    g.add_argument("--n-critic", type=common.positive_int, help="D steps per G step (1; WGAN: 5)")
    g.add_argument("--translate", type=common.unit_interval, default=0.125, metavar="FRACTION",
                   help="DiffAugment: shift what D sees by up to this part of its size (0: off)")
    g.add_argument("--epochs", type=common.positive_int, default=30, help="passes over the data")
    g.add_argument("--batch-size", type=common.positive_int, default=64, help="images per process")
    g.add_argument("--lr-g", type=common.positive_float, help="G's; unset: 2e-4, wgan-clip 5e-5")
    g.add_argument("--lr-d", type=common.positive_float, help="D's learning rate; unset: as --lr-g")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--step-lr", type=common.positive_int, help="lr x gamma every this many epochs")
    g.add_argument("--gamma", type=common.positive_float, default=0.5, help="factor of --step-lr")
    g.add_argument("--ema", type=common.unit_interval, default=0.0, help="EMA decay of G (0: off)")
    g.add_argument("--seed", type=common.seed, default=0, help="random seed (data, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, help="stop after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, help="training budget, then score")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda:1, mps")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast or fp32; auto: bf16 where the hardware has it natively "
                        "(CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX), else fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip NaN/inf steps, not stop")
    g = parser.add_argument_group("logging, samples, checkpoints, scores")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=1, help="epochs per grid")
    g.add_argument("--save-every", type=common.positive_int, default=10, help="keep epoch_NNN.pt")
    g.add_argument("--eval-every", type=common.positive_int, default=1, metavar="N",
                   help="score every N epochs and at the end, if there is a classifier (best.pt)")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help="ours (evaluate.py --train-classifier objects) or the lab's checkpoint.pth")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, metavar="N", help="draw N pictures")
    g.add_argument("--checkpoint", help="with --generate: the checkpoint to sample from")
    g.add_argument("--objects", nargs="+", metavar="NAME",
                   help="with --generate: 1-3 objects, e.g. 'red cube' (default: random sets)")
    g.add_argument("--grid-out", help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", help="with --generate: also one PNG per sample (a new folder)")
    g.add_argument("--interpolate", action="store_true", help="--generate: also interpolations")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.d_norm == "batch" and args.loss == "wgan-gp":
        parser.error("--loss wgan-gp penalises each sample's gradient: --d-norm none or spectral")
    if args.d_norm == "auto":
        args.d_norm = "none" if args.loss == "wgan-gp" else "batch"
    default_lr = 5e-5 if args.loss == "wgan-clip" else 2e-4
    args.lr_g, args.lr_d = args.lr_g or default_lr, args.lr_d or default_lr
    if args.n_critic is None:
        args.n_critic = 5 if args.loss.startswith("wgan") else 1
    return args


# ---------------------------------------------------------------------------
# Conditions: lists of object names -> multi-hot vectors (24,), checked; JSON with one-line errors
# ---------------------------------------------------------------------------
def condition_vector(names, object_index, where):
    """['red cube', 'blue sphere'] -> float multi-hot (24,); UserError naming `where` if bad."""
    if not isinstance(names, list) or not names:
        raise common.UserError(f"{where}: empty condition or not a list (1 to {MAX_OBJECTS} names)")
    if len(names) > MAX_OBJECTS:
        raise common.UserError(f"{where}: {len(names)} objects {names} (at most {MAX_OBJECTS})")
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
    except (OSError, ValueError, RecursionError) as e:  # Latin-1, broken or absurdly nested JSON
        raise common.UserError(f"cannot read {path}: {common.first_line(e)[:200]}") from None


def read_object_index(folder):
    """objects.json (name -> index) when the folder has one, else ours, in the lab's order."""
    path = os.path.join(folder, "objects.json")
    if not os.path.isfile(path):
        return OBJECT_INDEX
    index = read_json(path, "objects.json")
    if (not isinstance(index, dict) or not all(type(v) is int for v in index.values())
            or sorted(index.values()) != list(range(N_OBJECTS))):
        raise common.UserError(
            f"{path} must map {N_OBJECTS} names to whole numbers 0..{N_OBJECTS - 1}")
    return index


def read_condition_lists(folder):
    """{'test': (32, 24) multi-hot, 'new_test': ...} from `folder`'s test.json, new_test.json."""
    index, lists = read_object_index(folder), {}
    for file in LIST_FILES:
        path = os.path.join(folder, file)
        conditions = read_json(path, file)
        if not isinstance(conditions, list) or not conditions:
            raise common.UserError(f"{path} must hold a list of condition lists")
        lists[file[:-5]] = torch.stack([condition_vector(c, index, f"{path} entry {i}")
                                        for i, c in enumerate(conditions)])
    return lists


def synthetic_condition_lists():
    """Lists with the make-up of the lab's test.json and new_test.json, drawn by synthetic.py."""
    import synthetic  # only here: a copy with the lab's lists needs no synthetic.py

    lists = {"test": synthetic.condition_lists(synthetic.TEST_MAKE_UP, seed=1),
             "new_test": synthetic.condition_lists(synthetic.NEW_TEST_MAKE_UP, seed=2)}
    return {name: torch.stack([condition_vector(c, OBJECT_INDEX, name) for c in conditions])
            for name, conditions in lists.items()}


def find_condition_lists(test_dir=None, settings=None):
    """(lists to score, where from): --test-dir, an i-CLEVR run's --data-dir, else synthetic."""
    settings = settings or {}
    if test_dir:
        if not all(os.path.isfile(os.path.join(test_dir, f)) for f in LIST_FILES):
            raise common.UserError(f"--test-dir {test_dir} must hold test.json and new_test.json")
        return read_condition_lists(test_dir), f"lists from {test_dir}"
    data_dir = settings.get("data_dir")
    if settings.get("data") == "iclevr" and data_dir and all(
            os.path.isfile(os.path.join(data_dir, f)) for f in LIST_FILES):
        return read_condition_lists(data_dir), f"lists from {data_dir}"
    return synthetic_condition_lists(), "synthetic lists (seeds 1, 2) with the lab's make-up"


def random_conditions(n, rng):
    """n random sets of 1-3 distinct objects, as multi-hot (n, 24)."""
    conditions = torch.zeros(n, N_OBJECTS)
    for row, count in enumerate(torch.randint(1, MAX_OBJECTS + 1, (n,), generator=rng).tolist()):
        conditions[row, torch.randperm(N_OBJECTS, generator=rng)[:count]] = 1.0
    return conditions


def same_condition_pairs(labels, pairs=32):
    """Two pictures each (indices) of the first `pairs` conditions the data holds twice."""
    _, ids, counts = labels.unique(dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(ids, stable=True)  # the pictures grouped by condition, in data order
    starts = (torch.cumsum(counts, 0) - counts)[counts >= 2]
    starts = starts[order[starts].argsort()][:pairs]  # the conditions met first in the data
    return torch.stack([order[starts], order[starts + 1]], 1).flatten()


# ---------------------------------------------------------------------------
# Data: uint8 images (N, 3, S, S) and float multi-hot labels (N, 24)
# ---------------------------------------------------------------------------
def load_iclevr(data_dir, image_size):
    """The lab's objects.json, train.json (file -> object names) and PNGs (in data_dir, /iclevr or
    /images), squashed from 320x240 to image_size as the lab's loader does; cached once decoded."""
    from PIL import Image

    if not os.path.isfile(os.path.join(data_dir, "objects.json")):
        raise common.UserError(f"objects.json not found in {data_dir} (the lab's i-CLEVR folder)")
    index = read_object_index(data_dir)
    train = read_json(os.path.join(data_dir, "train.json"), "train.json")
    if not isinstance(train, dict) or not train:
        raise common.UserError(f"{data_dir}/train.json must map file names to object lists")
    files = sorted(train)
    labels = torch.stack([condition_vector(train[f], index, f"train.json entry {f!r}")
                          for f in files])
    cache = os.path.join(data_dir, f"cache_{image_size}px.pt")
    if os.path.isfile(cache):
        try:
            cached = torch.load(cache, weights_only=True)
            if cached.get("train_files") == files:
                return cached["images"], labels[cached["kept"]]
        except Exception:  # noqa: BLE001 - a stale or broken cache is simply rebuilt
            pass
    folders = (os.path.join(data_dir, "iclevr"), os.path.join(data_dir, "images"), data_dir)
    folder = next((d for d in folders if os.path.isfile(os.path.join(d, files[0]))), None)
    if folder is None:
        raise common.UserError(f"cannot find the i-CLEVR images (e.g. {files[0]}) in {data_dir}, "
                               f"{data_dir}/iclevr or {data_dir}/images: unzip iclevr.zip there")
    present = [os.path.isfile(os.path.join(folder, f)) for f in files]
    kept = [i for i, here in enumerate(present) if here]
    missing = [f for f, here in zip(files, present) if not here]
    if missing:
        print(f"warning: {len(missing)} of {len(files)} images listed in train.json are missing "
              f"from {folder} (first: {missing[0]}); training on the other {len(kept)}",
              file=sys.stderr)
    pictures = (image_io.read_image(os.path.join(folder, files[i]))  # one-line errors
                for i in kept)
    arrays = np.stack([np.asarray(p.resize((image_size,) * 2, Image.BILINEAR)) for p in pictures])
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    kept = torch.tensor(kept)
    try:  # decoding 18k PNGs takes a minute; next time it is one file read
        checkpoints.save_checkpoint(cache, {"train_files": files, "kept": kept, "images": images})
    except (OSError, common.UserError):  # a read-only data folder: no cache
        pass
    return images, labels[kept]


def load_data(args):
    """All data errors surface here, before anything is written."""
    if args.data == "iclevr":
        return load_iclevr(args.data_dir, args.image_size)
    import synthetic  # offline scenes; only here: a copy with real data needs no synthetic.py

    return synthetic.scenes(args.n_images, args.image_size, seed=args.seed)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift come from the condition, per picture: scale = 1 + Linear(c),
    shift = Linear(c) (de Vries et al. 2017; Miyato & Koyama 2018 pair it with projection)."""

    def __init__(self, channels, cond_dim):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Linear(cond_dim, channels)
        self.shift = nn.Linear(cond_dim, channels)

    def forward(self, x, cond):
        scale, shift = self.scale(cond)[..., None, None], self.shift(cond)[..., None, None]
        return self.norm(x) * (1 + scale) + shift


class Generator(nn.Module):
    """(noise, condition) -> image: DCGAN's transposed convs from the noise joined with Linear ->
    ReLU of the condition; g_cond="cbn": every BatchNorm also tells its layer what to draw."""

    def __init__(self, nz=100, cond_dim=64, ngf=64, image_size=64, g_cond="concat"):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(N_OBJECTS, cond_dim), nn.ReLU(True))
        blocks = {32: 3, 64: 4}[image_size]
        in_width, width = nz + cond_dim, ngf * 2 ** (blocks - 1)
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for i in range(blocks):  # 1x1 -> 4x4, then each block doubles the resolution
            stride, padding = (1, 0) if i == 0 else (2, 1)
            self.convs.append(nn.ConvTranspose2d(in_width, width, 4, stride, padding, bias=False))
            self.norms.append(nn.BatchNorm2d(width) if g_cond != "cbn"
                              else ConditionalBatchNorm2d(width, cond_dim))
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
    """image, condition -> realness logit (+ 24 AC-GAN logits): DCGAN's strided convs; the condition
    as input channels (map, channels) or projected: w . phi(x) + embed(y) . phi(x) (Miyato)."""

    def __init__(self, ndf=64, image_size=64, d_cond="projection", norm="batch", acgan=True):
        super().__init__()
        self.d_cond = d_cond
        extra = {"projection": 0, "map": 1, "channels": 3}[d_cond]
        if extra:
            self.cond_to_image = nn.Linear(N_OBJECTS, extra * image_size * image_size)
        sn = nn.utils.spectral_norm if norm == "spectral" else (lambda m: m)
        blocks = {32: 3, 64: 4}[image_size]
        layers = [sn(nn.Conv2d(3 + extra, ndf, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(blocks - 1):  # each block halves the size; BatchNorm with norm="batch" only
            conv = sn(nn.Conv2d(width, width * 2, 4, 2, 1, bias=norm != "batch"))
            bn = [nn.BatchNorm2d(width * 2)] if norm == "batch" else []
            layers += [conv, *bn, nn.LeakyReLU(0.2, True)]
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
            maps = self.cond_to_image(labels).view(len(labels), -1, *images.shape[2:])
            images = torch.cat([images, maps], dim=1)
        features = self.trunk(images)
        phi = features.sum(dim=(2, 3))
        if self.d_cond == "projection":
            logits = self.linear(phi).flatten() + (self.embed(labels) * phi).sum(dim=1)
        else:
            logits = self.head(features).flatten()
        aux = self.aux_classifier(phi) if self.aux_classifier is not None else None
        return logits, aux


def weights_init(module):
    """DCGAN's init: conv/linear weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(settings):
    """The generator from a run's settings: training, --generate and evaluate.py build it here."""
    if not all(type(settings[k]) is int and settings[k] > 0 for k in ("nz", "cond_dim", "ngf")):
        raise ValueError("nz, cond_dim and ngf must be positive whole numbers")
    return Generator(settings["nz"], settings["cond_dim"], settings["ngf"], settings["image_size"],
                     settings.get("g_cond", "concat"))


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = common.prepare_model(build_generator(vars(args)).apply(weights_init), device)
    discriminator = Discriminator(args.ndf, args.image_size, args.d_cond, args.d_norm, args.acgan)
    if args.d_norm != "spectral":  # spectral norm rescales the weights itself
        discriminator.apply(weights_init)
    discriminator = common.prepare_model(discriminator, device)

    def optimizer(net, lr):  # wgan-clip: RMSprop, momentum-free, as the WGAN paper's clipped critic
        if args.loss == "wgan-clip":
            return torch.optim.RMSprop(net.parameters(), lr=lr)
        return common.adam(net.parameters(), lr, (args.beta1, args.beta2), device)
    optimizers = {"generator": optimizer(generator, args.lr_g),
                  "discriminator": optimizer(discriminator, args.lr_d)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights, decay warmed up as (1 + step) / (10 + step)."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def sample(generator, noise, labels):
    """Images in [-1, 1]; BN on batch statistics, on copies of its buffers (exact resume)."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels.to(noise.device).float()))


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
    """AC-GAN's class loss for 24 yes/no questions: BCE summed over the labels (a mean would be 24
    times weaker than single-label AC-GAN's cross-entropy), averaged over the pictures."""
    bce = F.binary_cross_entropy_with_logits(aux_logits.float(), labels, reduction="sum")
    return bce / len(labels)


def gradient_penalty(critic, real_images, fake_images, labels):
    """WGAN-GP: (||grad_x D(x_hat, y)||_2 - 1)^2 at random points between real and fake pictures."""
    alpha = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device)
    mixed = (alpha * real_images + (1 - alpha) * fake_images).requires_grad_(True)
    logits, _ = critic(mixed, labels)
    grads, = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    return ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def translate(images, fraction):
    """DiffAugment (Zhao et al. 2020): shift each picture up to `fraction` of its size, zero-filled.
    Without it D wins outright after ~20k steps; G drifts into noise that fools the AC-GAN head."""
    max_shift = round(images.shape[-1] * fraction)
    if max_shift == 0:
        return images
    n, _, height, width = images.shape
    device = images.device
    shift_y, shift_x = torch.randint(-max_shift, max_shift + 1, (2, n, 1, 1), device=device)
    rows = (torch.arange(height, device=device)[None, :, None] + shift_y + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=device)[None, None, :] + shift_x + 1).clamp(0, width + 1)
    padded = F.pad(images, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # out-of-range reads hit the border
    return padded[torch.arange(n, device=device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------
# Training step: one critic update, and a generator update unless batch["update_generator"] is
# False (the loop sets it every --n-critic steps). This is the part to change: the loop logs, plots
# and checks whatever values it returns.
# ---------------------------------------------------------------------------
def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, labels = batch["images"], batch["labels"]
    noise = torch.randn(real_images.shape[0], args.nz, device=real_images.device)
    # bf16 autocast (--precision): convolutions in bf16, BatchNorm and the losses stay fp32
    bf16 = torch.autocast(real_images.device.type, torch.bfloat16, enabled=args.precision == "bf16")
    with bf16:
        fake_images = generator(noise, labels)
        seen_real = translate(real_images, args.translate)  # D sees only translated pictures,
        seen_fake = translate(fake_images.detach(), args.translate)  # real and generated alike
        logits_real, aux_real = discriminator(seen_real, labels)
        logits_fake, _ = discriminator(seen_fake, labels)
        loss_d = discriminator_loss(args.loss, logits_real, logits_fake)
        if args.loss == "wgan-gp":
            penalty = gradient_penalty(discriminator, seen_real, seen_fake, labels)
            loss_d = loss_d + args.lambda_gp * penalty
        if aux_real is not None:  # AC-GAN: D also learns which objects a real picture holds
            loss_d = loss_d + args.aux_weight * auxiliary_loss(aux_real, labels)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)
    if args.loss == "wgan-clip":  # keep the critic K-Lipschitz by clipping its weights
        with torch.no_grad():
            for p in discriminator.parameters():
                p.clamp_(-args.clip, args.clip)

    if batch.get("update_generator", True):
        with bf16:
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
    """The 32 held-out conditions that pick best.pt: random sets, 3 / 12 / 17 of 1 / 2 / 3 objects
    (half of test.json and new_test.json together), none in `scored_lists` and none twice."""
    rng = np.random.default_rng(seed)
    taken = {frozenset(c.nonzero().flatten().tolist())
             for conditions in scored_lists.values() for c in conditions}
    chosen = []
    for count, how_many in sorted(VALIDATION_MAKE_UP.items()):
        wanted = len(chosen) + how_many
        while len(chosen) < wanted:
            objects = frozenset(rng.choice(N_OBJECTS, size=count, replace=False).tolist())
            if objects not in taken:
                taken.add(objects)
                chosen.append(objects)
    return torch.stack([F.one_hot(torch.tensor(list(c)), N_OBJECTS).sum(0).float() for c in chosen])


def scoring_noise(nz, repeats, seed=0):
    """Fixed noise for scoring: repeats x 32 vectors (the first 32: the lab-style single draw)."""
    return torch.randn(repeats, 32, nz, generator=torch.Generator().manual_seed(seed + 12345))


def prepare_scores(args, lists, device):
    """score(generator) -> {test, new_test, *_mean, validation} by judges.py, or None (no judge)."""
    if not os.path.isfile(args.classifier):
        if os.path.abspath(args.classifier) != DEFAULT_CLASSIFIER:
            raise common.UserError(f"--classifier {args.classifier} not found")
        print(f"note: no object classifier at {args.classifier}: training without scores (train "
              f"one with python evaluate.py --train-classifier objects)", file=sys.stderr)
        return None
    import judges  # only when scoring: a copy that does not score needs no judges.py

    classifier = judges.objects_load_classifier(args.classifier, device)
    held_out = {"validation": validation_conditions(lists)}
    noise, held_out_noise = (scoring_noise(args.nz, SCORE_REPEATS, args.seed + k) for k in (0, 1))

    def score(generator):
        draw = lambda z, conditions: sample(generator, z, conditions)  # noqa: E731
        first, mean = judges.objects_score_lists(draw, classifier, lists, noise)
        validation, _ = judges.objects_score_lists(draw, classifier, held_out, held_out_noise)
        return {**first, **{f"{k}_mean": v for k, v in mean.items()}, **validation}
    score.ceiling = judges.objects_classifier_ceiling(classifier, args.image_size)
    return score


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: device, settings, precision, seeds, data, lists; every input error surfaces here.
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
    images, labels = load_data(args)
    loader = image_io.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed,
                                   rank=dist.rank, world_size=dist.world_size)
    steps_per_epoch = len(loader)
    last_step = min(args.epochs * steps_per_epoch, args.max_steps or float("inf"))
    lists, lists_source = find_condition_lists(args.test_dir, vars(args))
    score = prepare_scores(args, lists, device) if master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, schedulers, fixed noise; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator = networks["generator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    shown_generator = ema_generator or generator  # what the grids, scores and evaluate.py use
    schedulers = {name: torch.optim.lr_scheduler.StepLR(opt, args.step_lr, args.gamma)
                  for name, opt in optimizers.items()} if args.step_lr else {}
    fixed_noise, second_noise = scoring_noise(args.nz, 2, args.seed).to(device)  # scored draws 1, 2
    saved = dict(networks, **({"generator_ema": ema_generator} if ema_generator else {}))
    step = 0
    if checkpoint is not None:
        in_checkpoint = checkpoint.get("schedulers") or {}  # saved before --step-lr had a state?
        kept = {name: s for name, s in schedulers.items() if name in in_checkpoint}
        checkpoints.restore_training_state(checkpoint, resume_path, saved, optimizers, kept)
        step = checkpoint["step"]
        time_spent = checkpoint.get("elapsed_s", 0.0) >= 60 * (args.max_minutes or float("inf"))
        if step >= last_step or time_spent:
            checkpoints.say_finished(resume_path, step, master)
            return out
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {name: common.maybe_compile(common.wrap_ddp(net, dist, args.sync_bn), args.compile)
              for name, net in networks.items()}

    # The run folder: claimed once every check has passed; only the master process writes.
    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None
    pairs = same_condition_pairs(labels)  # the health monitor's real pictures: two per condition
    real_reference = loader.to_float(images[pairs].to(device))
    real_pairs = torch.arange(len(pairs), device=device) // 2  # which condition each one holds
    if master and checkpoint is not None:
        checkpoints.adopt_checkpoint(out, checkpoint, resume_path)
    if master and not os.path.isfile(os.path.join(out, "config.json")):
        extra = {"training_images": len(images), "condition_lists": lists_source,
                 "classifier": args.classifier if score else None}
        common.write_config(out, args, SCRIPT, device, extra)
        image_io.save_grid(loader.to_float(images[:32].to(device)), os.path.join(out, "real.png"),
                           nrow=8, title="real images", captions=[describe(c) for c in labels[:32]])
    if master:
        ceiling = score.ceiling if score else None
        ceiling = f" (classifier's held-out score on real scenes: {ceiling:.3f})" if ceiling else ""
        print(f"{len(images)} pictures; scoring {lists_source}{ceiling}", file=sys.stderr)
        print(f"{SCRIPT}: {out}, {device}, {args.precision}, step {step} of {last_step}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT)

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    grid, epoch = None, -(-step // steps_per_epoch)
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, real_labels = loader.batch(step)
            batch = {"images": real_images, "labels": real_labels,  # G: every --n-critic steps
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

            # End of an epoch, of the run, or an interruption: log, schedule, samples, scores, save.
            if epoch_done or finished:  # an interrupted run keeps its unlogged steps in last.pt
                log.flush(step, epoch)
            for scheduler in schedulers.values() if epoch_done else ():
                scheduler.step()
            # an all-reduce on every rank: the processes' weights must agree
            divergence = common.replica_divergence(generator, dist) if finished else 0.0
            drawing = finished or stopping or epoch == 1 or epoch % args.sample_every == 0
            if master and drawing:
                drawn = {name: sample(shown_generator, fixed_noise[:len(c)], c)
                         for name, c in lists.items()}
                again = sample(shown_generator, second_noise[:len(lists["test"])], lists["test"])
                twice = torch.arange(len(again), device=device).repeat(2)  # each condition twice
                log.monitor.check_samples(torch.cat([drawn["test"], again]), real_reference, epoch,
                                          step, fake_labels=twice, real_labels=real_pairs)
                for name, prefix in (("new_test", "new_test_"), ("test", "")):  # grid: test's
                    grid = os.path.join(out, "samples", f"{prefix}epoch_{epoch:03d}.png")
                    # 8 a row, as the reports submitted
                    image_io.save_grid(drawn[name], grid, nrow=8,
                                       title=f"{name}.json, epoch {epoch}, step {step}",
                                       captions=[describe(c) for c in lists[name]])
                image_io.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                  os.path.join(out, "progress.gif"))
                image_io.plot_losses(log.history, os.path.join(out, "losses.png"),
                                     title=f"{SCRIPT} losses ({args.loss}, {args.d_cond})")
            keep = epoch_done and epoch % args.save_every == 0
            copies = [f"epoch_{epoch:03d}.pt"] if keep else []  # written after last.pt
            # On SIGINT/SIGTERM no scoring: last.pt first (a preempted job has seconds).
            due = finished or (epoch_done and epoch % args.eval_every == 0)
            if score is not None and due and not stop:
                log.record(step, epoch, **score(shown_generator))
                scores = log.history["scores"]
                best = scores["validation"][-1] > max(scores["validation"][:-1], default=-1.0)
                copies += ["best.pt"] if best else []
                curves = {k: (scores["epoch"], scores[k]) for k in
                          ("test", "new_test", "test_mean", "new_test_mean", "validation")}
                image_io.plot_curves(curves, os.path.join(out, "scores.png"), xlabel="epoch",
                                     title=f"{SCRIPT}: i-CLEVR scores", ylabel="score")
            if master:
                checkpoint = {"format": checkpoints.CHECKPOINT_FORMAT, "script": SCRIPT,
                              "args": common.plain_args(args), "class_names": list(OBJECTS),
                              "step": step, "epoch": epoch, "finished": finished,
                              **{name: module.state_dict() for name, module in saved.items()},
                              "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
                              "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                              "rng": checkpoints.rng_state(), "fixed_noise": fixed_noise.cpu(),
                              "fixed_labels": lists["test"], **log.state_dict(),
                              "world_size": dist.world_size, "replica_divergence": divergence}
                checkpoints.save_run_checkpoint(out, checkpoint, copies)
            if stopping or finished:
                break
    log.close()
    if lock is not None:
        lock.close()
    if master:
        how = "interrupted" if stop else "time budget spent" if stopping == "time" else "finished"
        scores, best = log.history.get("scores", {}), None  # ties: the first, as best.pt
        if scores.get("validation"):
            i = scores["validation"].index(max(scores["validation"]))
            best = (f"best validation {scores['validation'][i]:.4g} at epoch {scores['epoch'][i]}, "
                    f"test {scores['test'][i]:.3f}, new_test {scores['new_test'][i]:.3f} (best.pt)")
        checkpoints.say_how_it_ended(how, out, step, epoch, grid, best)
    if stop:
        raise SystemExit(130)
    return out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH [--objects ...]: N captioned pictures (+ interpolations)."""
    default_grid = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    grid_path = image_io.check_output_path(args.grid_out or default_grid, "--grid-out", "png")
    sheets = [grid_path[:-len(".png")] + f"_{kind}interpolation.png" for kind in ("", "condition_")]
    for path in sheets if args.interpolate else []:
        image_io.check_output_path(path, "the interpolation sheet", "png")
    if args.png_dir:
        image_io.check_empty_folder(args.png_dir, "--png-dir")
    wanted = args.objects and condition_vector(args.objects, OBJECT_INDEX, "--objects")
    device = common.pick_device(args.device)
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    generator = checkpoints.rebuild(build_generator, checkpoint["args"], args.checkpoint).to(device)
    weights = checkpoint.get("generator_ema", checkpoint["generator"])  # the average, if trained
    checkpoints.load_weights(generator, weights, args.checkpoint)
    n, nz, rng = args.generate, checkpoint["args"]["nz"], torch.Generator().manual_seed(args.seed)
    conditions = random_conditions(n, rng) if wanted is None else wanted.expand(n, -1)
    images = sample(generator, torch.randn(n, nz, generator=rng).to(device), conditions)
    captions = [describe(c) for c in conditions]
    written = [image_io.save_grid(images, grid_path, nrow=min(8, n), captions=captions)]
    if args.png_dir:
        written.append(image_io.save_pngs(images, args.png_dir))
    if args.interpolate:  # 8 rows of 10 steps; the rows' conditions are the grid's first ones
        starts = conditions[torch.arange(8) % n].repeat_interleave(10, 0)
        walks = image_io.interpolation_noise(8, 10, nz, args.seed)  # a latent walk, condition fixed
        captions = [describe(c) if i % 10 == 0 else "" for i, c in enumerate(starts)]
        sheet = sample(generator, walks.to(device), starts)
        written.append(image_io.save_grid(sheet, sheets[0], nrow=10, captions=captions))
        ends, t = random_conditions(8, rng), torch.linspace(0, 1, 10).view(1, 10, 1)
        starts = starts[::10]  # the condition blended from one object set to another, noise fixed
        blended = ((1 - t) * starts[:, None] + t * ends[:, None]).reshape(80, N_OBJECTS)
        noise = torch.randn(8, 1, nz, generator=rng).expand(8, 10, -1).reshape(80, nz)
        sheet = sample(generator, noise.to(device), blended)
        captions = [describe(c) if i % 10 in (0, 9) else "" for i, c in enumerate(blended)]
        written.append(image_io.save_grid(sheet, sheets[1], nrow=10, captions=captions))
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
