"""Conditional GAN on multi-object scenes (i-CLEVR): draw a scene holding the objects you ask for.

Papers: Mirza & Osindero, "Conditional Generative Adversarial Nets" (2014); Radford et al. (DCGAN, ICLR 2016);
Miyato & Koyama, "cGANs with Projection Discriminator" (ICLR 2018); Odena et al. (AC-GAN, ICML 2017);
Arjovsky et al. (WGAN) and Gulrajani et al. (WGAN-GP) for --loss. Coursework: the i-CLEVR lab (24 objects =
8 colours x 3 shapes, 1-3 objects per picture, a multi-hot condition), scored by a classifier on the 32
condition lists of test.json and new_test.json.

Score: for each generated 64x64 image with k requested objects, the classifier's top-k labels are compared
with the request; score = hits / requested labels over the list (72 labels in test.json, 84 in new_test.json).

Run (offline: procedural scenes from synthetic.py):
    python evaluate.py --train-classifier objects     # once: the object classifier that scores samples
    python cgan_objects.py --image-size 32            # our defaults at the CPU size
    # the 30-minute CPU benchmark (README: >= 0.90 on both lists):
    python cgan_objects.py --image-size 32 --ngf 32 --ndf 32 --amp --n-scenes 60000 --aux-weight 2 --max-minutes 30 --epochs 200
    python cgan_objects.py                            # 64x64, as the lab asks (GPU)
    python cgan_objects.py --data iclevr --data-dir data/iclevr --classifier checkpoint.pth   # the lab's data
    python cgan_objects.py --d-cond map --loss bce --lr-g 2e-4 --lr-d 1e-4   # report 004: condition map, DCGAN loss
    python cgan_objects.py --loss wgan-clip                                  # report 003: WGAN, RMSprop, clipping
    python cgan_objects.py --generate --checkpoint runs/<run>/last.pt --objects "red cube" "blue sphere"
    python evaluate.py runs/<run>/last.pt             # the same two scores, from the checkpoint
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cgan_objects.py --device cuda
"""

import argparse
import copy
import glob
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import synthetic

SCRIPT = "cgan_objects"
OBJECTS = synthetic.SCENE_OBJECTS  # index = 8 * shape + colour, as in the lab's objects.json
N_OBJECTS = len(OBJECTS)
MAX_OBJECTS = synthetic.MAX_SCENE_OBJECTS
EVAL = {"dataset": "objects", "conditioning": "multi-hot", "num_classes": N_OBJECTS, "class_names": OBJECTS}
REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLASSIFIER = os.path.join(REPO, "classifiers", "objects.pt")
SHARED_LISTS = os.path.join(os.path.dirname(REPO), "shared", "data", "iclevr")  # the lab's lists, when present
VALIDATION_MAKE_UP = {1: 3, 2: 12, 3: 17}  # objects per condition: how many conditions (32, 78 labels)
CLASSIFIER_SIZE = 64  # the lab's evaluator scores 64x64 images; 32x32 samples are upsampled first
LIST_FILES = ("test.json", "new_test.json")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional GAN on i-CLEVR-like multi-object scenes.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", "iclevr"], default="synthetic",
                        help="synthetic: procedural scenes; iclevr: the lab's objects.json, train.json and "
                             "images (in --data-dir, --data-dir/iclevr or --data-dir/images)")
    parser.add_argument("--n-scenes", type=common.positive_int, default=20000,
                        help="with --data synthetic: scenes rendered (the lab's train.json has 18,009 pictures)")
    parser.add_argument("--cond-dim", type=common.positive_int, default=64,
                        help="generator: the multi-hot condition goes through Linear -> ReLU to this size")
    parser.add_argument("--g-cond", choices=["cbn", "concat"], default="cbn",
                        help="how the generator sees the condition: concat (joined with the noise at the input) or "
                             "cbn (also conditional BatchNorm in every layer)")
    parser.add_argument("--d-cond", choices=["projection", "map", "channels"], default="projection",
                        help="how the discriminator sees the condition: projection (Miyato & Koyama); map: Linear "
                             "to one HxW map added as a 4th channel; channels: Linear to 3xHxW, 3 more channels")
    parser.add_argument("--loss", choices=["hinge", "bce", "wgan-gp", "wgan-clip"], default="hinge",
                        help="hinge; bce (the DCGAN loss); wgan-gp (gradient penalty); wgan-clip (RMSprop and "
                             "weight clipping, the original WGAN)")
    parser.add_argument("--acgan", action=argparse.BooleanOptionalAction, default=True,
                        help="an auxiliary multi-label head on the discriminator (AC-GAN, BCE on the 24 labels); "
                             "--no-acgan for the plain conditional GAN of the reports")
    parser.add_argument("--aux-weight", type=common.non_negative_float, default=1.0, help="weight of the AC-GAN loss")
    parser.add_argument("--d-norm", choices=["auto", "batch", "spectral", "none"], default="auto",
                        help="discriminator normalisation; auto: batch, but none for wgan-gp (its penalty is per "
                             "sample); spectral: spectral norm on every layer (Miyato et al. 2018)")
    parser.add_argument("--translate", type=common.unit_interval, default=0.125, metavar="FRACTION",
                        help="DiffAugment translation: every picture the discriminator sees, real or generated, is "
                             "shifted by up to this fraction of its size (0: off); keeps it from winning outright")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="generator feature maps")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="discriminator feature maps")
    parser.add_argument("--lr-g", type=common.positive_float, default=None,
                        help="generator learning rate (default 2e-4; wgan-clip: 5e-5, the WGAN paper's RMSprop rate)")
    parser.add_argument("--lr-d", type=common.positive_float, default=None,
                        help="discriminator learning rate (default 2e-4; wgan-clip: 5e-5)")
    parser.add_argument("--step-lr", type=common.positive_int, default=None, metavar="EPOCHS",
                        help="multiply both learning rates by --gamma every EPOCHS epochs")
    parser.add_argument("--gamma", type=common.positive_float, default=0.5, help="factor of --step-lr")
    parser.add_argument("--ema", type=common.unit_interval, default=0.0,
                        help="sample and score from an exponential moving average of the generator's weights with "
                             "this decay (0: the trained weights themselves)")
    parser.add_argument("--n-critic", type=common.positive_int, default=None,
                        help="discriminator updates per generator update (default 1; 5 for the WGAN losses)")
    parser.add_argument("--lambda", dest="lambda_gp", type=common.non_negative_float, default=10.0,
                        help="wgan-gp: gradient penalty weight")
    parser.add_argument("--clip", type=common.positive_float, default=0.01, help="wgan-clip: weight clipping bound")
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                        help="object classifier that scores samples: ours (evaluate.py --train-classifier objects) "
                             "or the lab's ResNet-18 checkpoint.pth")
    parser.add_argument("--test-dir", default=None,
                        help="folder with test.json and new_test.json (default: --data-dir with --data iclevr, "
                             "else the lab's lists in ../shared/data/iclevr, else synthetic lists)")
    parser.add_argument("--eval-every", type=common.positive_int, default=1,
                        help="score test.json and new_test.json and save their grids every N epochs")
    parser.add_argument("--max-minutes", type=common.positive_float, default=None,
                        help="stop training after this many minutes (then save and score): fixed-budget runs")
    parser.add_argument("--generate", action="store_true", help="no training: draw --objects from --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    parser.add_argument("--objects", nargs="+", default=None, metavar="NAME",
                        help="with --generate: object names, e.g. 'red cube' 'blue sphere' (1 to 3)")
    parser.add_argument("--grid-out", default=None, help="with --generate: output PNG (default next to the checkpoint)")
    common.add_common_args(parser, epochs=30, batch_size=64, lr=None, image_size=64, sample_every=1, save_every=10)
    args = parser.parse_args(argv)
    if args.image_size not in (32, 64):
        parser.error("--image-size must be 32 or 64")
    if args.generate and (args.checkpoint is None or args.objects is None):
        parser.error("--generate needs --checkpoint PATH and --objects NAME [NAME ...]")
    if args.d_norm == "batch" and args.loss == "wgan-gp":
        parser.error("--loss wgan-gp penalises each sample's gradient: use --d-norm none or spectral, not batch")
    if args.d_norm == "auto":
        args.d_norm = "none" if args.loss == "wgan-gp" else "batch"
    default_lr = 5e-5 if args.loss == "wgan-clip" else 2e-4
    args.lr_g = args.lr_g or default_lr
    args.lr_d = args.lr_d or default_lr
    if args.n_critic is None:
        args.n_critic = 5 if args.loss.startswith("wgan") else 1
    return args


# ---------------------------------------------------------------------------
# Conditions: lists of object names -> multi-hot vectors, checked
# ---------------------------------------------------------------------------
def condition_vector(names, object_index, where):
    """['red cube', 'blue sphere'] -> float multi-hot (24,); UserError naming `where` for bad input."""
    if not isinstance(names, list) or not names:
        raise common.UserError(f"{where}: empty condition (each needs 1 to {MAX_OBJECTS} object names)")
    if len(names) > MAX_OBJECTS:
        raise common.UserError(f"{where}: {len(names)} objects {names} (at most {MAX_OBJECTS} per picture)")
    vector = torch.zeros(N_OBJECTS)
    for name in names:
        if name not in object_index:
            raise common.UserError(f"{where}: unknown object name {name!r} (known: 'gray cube' ... "
                                   f"'yellow cylinder', 8 colours x cube/sphere/cylinder)")
        vector[object_index[name]] = 1.0
    return vector


def read_json(path, what):
    if not os.path.isfile(path):
        raise common.UserError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise common.UserError(f"cannot read {path}: {e}") from None


def read_object_index(folder):
    """objects.json (name -> index) when the folder has one, else ours; it must match the lab's order."""
    path = os.path.join(folder, "objects.json")
    if not os.path.isfile(path):
        return {name: i for i, name in enumerate(OBJECTS)}
    index = read_json(path, "objects.json")
    if not isinstance(index, dict) or sorted(index.values()) != list(range(N_OBJECTS)):
        raise common.UserError(f"{path} must map {N_OBJECTS} object names to the indices 0..{N_OBJECTS - 1}")
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


def find_condition_lists(test_dir=None, args=None):
    """The lists to score: --test-dir, else the --data-dir of an i-CLEVR run, else the lab's lists in
    ../shared/data/iclevr, else synthetic lists with the real ones' make-up. Returns (lists, where from)."""
    args = args or {}
    candidates = [test_dir] if test_dir else []
    if args.get("data") == "iclevr" and args.get("data_dir"):
        candidates.append(args["data_dir"])
    if test_dir is None:
        candidates.append(SHARED_LISTS)
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, f)) for f in LIST_FILES):
            return read_condition_lists(folder), f"lists from {folder}"
        if folder == test_dir:
            raise common.UserError(f"--test-dir {folder} must hold test.json and new_test.json")
    index = {name: i for i, name in enumerate(OBJECTS)}
    lists = {"test": synthetic.condition_lists(synthetic.TEST_MAKE_UP, seed=1),
             "new_test": synthetic.condition_lists(synthetic.NEW_TEST_MAKE_UP, seed=2)}
    return ({k: torch.stack([condition_vector(c, index, k) for c in v]) for k, v in lists.items()},
            "synthetic lists (seeds 1, 2) with the lab's make-up")


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
                kept = cached["kept"]
                return cached["images"], labels[kept]
        except Exception:  # noqa: BLE001 - a stale or broken cache is simply rebuilt
            pass
    folder = find_image_folder(data_dir, files[0])
    arrays, kept, missing = [], [], []
    for i, f in enumerate(files):
        path = os.path.join(folder, f)
        if not os.path.isfile(path):
            missing.append(f)
            continue
        try:
            with Image.open(path) as im:
                arrays.append(np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)))
        except OSError as e:
            raise common.UserError(f"cannot read image {path}: {e}") from None
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
    except OSError:
        pass
    return images, labels[kept]


def load_data(args):
    if args.data == "iclevr":
        return load_iclevr(args.data_dir, args.image_size)
    return synthetic.scenes(args.n_scenes, args.image_size, seed=args.seed)


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


def build_generator(args):
    """Rebuild the generator from the plain args dict stored in a checkpoint (evaluate.py uses this)."""
    return Generator(args["nz"], args["cond_dim"], args["ngf"], args["image_size"], args.get("g_cond", "concat"))


def build(args, device):
    generator = common.prepare_model(build_generator(vars(args)).apply(common.dcgan_init), device)
    discriminator = Discriminator(args.ndf, args.image_size, args.d_cond, args.d_norm, args.acgan)
    if args.d_norm != "spectral":  # spectral norm rescales the weights itself; DCGAN's init suits the others
        discriminator.apply(common.dcgan_init)
    discriminator = common.prepare_model(discriminator, device)
    if args.loss == "wgan-clip":  # the WGAN paper: RMSprop, momentum-free, for the clipped critic
        optimizers = {"generator": torch.optim.RMSprop(generator.parameters(), lr=args.lr_g),
                      "discriminator": torch.optim.RMSprop(discriminator.parameters(), lr=args.lr_d)}
    else:
        betas = (args.beta1, args.beta2)
        optimizers = {"generator": common.adam(generator.parameters(), args.lr_g, betas, device),
                      "discriminator": common.adam(discriminator.parameters(), args.lr_d, betas, device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] for multi-hot `labels` (N, 24) from noise (N, nz) or (N, nz, 1, 1). Train-mode BN
    (batch statistics), the mode the generator was trained in. We sample on copies of the running statistics,
    so drawing samples never changes the model (exact resume)."""
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


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights; a shorter memory in the first steps, when the weights move most."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


def train_step(models, optimizers, batch, args):
    """One discriminator update, and a generator update unless batch['update_generator'] is False (the WGAN
    losses update the generator every --n-critic steps)."""
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
    out = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
    if args.loss in ("bce", "hinge"):
        out["d_real"] = torch.sigmoid(logits_real.detach().float()).mean()
        out["d_fake"] = torch.sigmoid(logits_fake.detach().float()).mean()
    return out


# ---------------------------------------------------------------------------
# The object evaluator: a small multi-label CNN (or the lab's ResNet-18) and the lab's top-k score
# ---------------------------------------------------------------------------
class ObjectClassifier(nn.Module):
    """64x64 picture in [-1, 1] -> 24 object logits. Strided convs with BN; features pooled over the whole
    picture (max: is the object anywhere?), so objects are found wherever they stand."""

    def __init__(self, width=32):
        super().__init__()
        w = width
        layers, channels = [], 3
        for out_channels, stride in ((w, 2), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 1), (8 * w, 2)):
            layers += [nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.ReLU(True)]
            channels = out_channels
        self.features = nn.Sequential(*layers)  # 64 -> 4x4
        self.head = nn.Linear(channels, N_OBJECTS)

    def forward(self, images):
        return self.head(self.features(images).amax(dim=(2, 3)))


def iclevr_score(probabilities, conditions):
    """The lab's score: for each picture with k requested objects, count how many of the classifier's top-k
    labels were requested; return hits / requested labels (micro accuracy over the list)."""
    probabilities, conditions = torch.as_tensor(probabilities).float(), torch.as_tensor(conditions).float()
    hits, total = 0, 0
    for scores, wanted in zip(probabilities, conditions):
        k = int(wanted.sum().item())
        hits += int(wanted[scores.topk(k).indices].sum().item())
        total += k
    return hits / total if total else 0.0


def to_classifier_input(images):
    """Pictures in [-1, 1] at any size -> 64x64, as the lab's evaluator wants (32x32 upsampled bilinearly)."""
    images = images.float()
    if images.shape[-1] != CLASSIFIER_SIZE:
        images = F.interpolate(images, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear", align_corners=False)
    return images


def load_classifier(path, device):
    """Our classifier file, or the lab's ResNet-18 checkpoint.pth ({'model': state_dict}, 24-way head)."""
    if not os.path.isfile(path):
        raise common.UserError(f"object classifier not found: {path} (train one: python evaluate.py "
                               f"--train-classifier objects, or pass the lab's checkpoint.pth with --classifier)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything that is not a plain tensor file
        raise common.UserError(f"cannot load classifier {path}: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise common.UserError(f"{path} is not an object classifier (expected a dict with key 'model')")
    state = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    if checkpoint.get("script") == "object_classifier":
        model = ObjectClassifier(checkpoint["width"])
    else:  # the lab's evaluator: torchvision ResNet-18, fc = Sequential(Linear(512, 24), Sigmoid)
        import torchvision

        model = torchvision.models.resnet18(num_classes=N_OBJECTS)
        state = {k.replace("fc.0.", "fc."): v for k, v in state.items()}  # the sigmoid does not change the top k
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise common.UserError(f"{path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from None
    model.held_out = checkpoint.get("held_out", {})  # ours: its scores on held-out real scenes (the ceiling)
    return model.to(device).eval()


@torch.no_grad()
def classify(classifier, images, batch_size=256):
    """Object scores (N, 24) for pictures in [-1, 1]; any monotone output (logits or probabilities) will do."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier(to_classifier_input(chunk.to(device))).float().cpu()
                      for chunk in images.split(batch_size)])


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


@torch.no_grad()
def score_lists(generator, classifier, lists, noise):
    """Score each condition list with each noise draw. Returns ({name: first-draw score}, {name: mean over
    draws}, {name: first-draw images})."""
    device = next(generator.parameters()).device
    first, mean, images = {}, {}, {}
    for name, conditions in lists.items():
        scores = []
        for draw in noise:
            z = draw[:len(conditions)].to(device)
            fake = sample(generator, z, conditions.to(device))
            scores.append(iclevr_score(classify(classifier, fake), conditions))
            if name not in images:
                images[name] = fake.cpu()
        first[name], mean[name] = scores[0], sum(scores) / len(scores)
    return first, mean, images


def score_generator(generator, args, classifier_path=None, device="cpu", test_dir=None, repeats=10):
    """The lab's two scores for a generator built from checkpoint args (evaluate.py calls this).

    Returns {'test', 'new_test'}: scores with one fixed noise draw (the lab's protocol); {'test_mean',
    'new_test_mean'}: means over `repeats` draws (steadier); 'lists': where the condition lists came from;
    'classifier': the classifier file."""
    device = torch.device(device)
    classifier_path = classifier_path or args.get("classifier") or DEFAULT_CLASSIFIER
    classifier = load_classifier(classifier_path, device)
    lists, source = find_condition_lists(test_dir or args.get("test_dir"), args)
    generator = generator.to(device)
    first, mean, _ = score_lists(generator, classifier, lists, scoring_noise(args["nz"], repeats, args.get("seed", 0)))
    result = dict(first)
    result.update({f"{k}_mean": v for k, v in mean.items()})
    result.update({"lists": source, "classifier": classifier_path, "repeats": repeats})
    ceiling = classifier_ceiling(classifier, args["image_size"])
    if ceiling is not None:
        result["classifier_ceiling"] = ceiling
    return result


def classifier_ceiling(classifier, image_size):
    """The classifier's held-out score on real pictures of this size (what a perfect generator would get)."""
    held_out = getattr(classifier, "held_out", {})
    for name in (f"scenes at {image_size} px", f"scenes at {image_size} px, upsampled", "held-out i-CLEVR pictures"):
        if name in held_out:
            return held_out[name]
    return None


def classifier_training_data(data_dir, seed, n_scenes, n_held_out=2000):
    """(train images, train labels, held-out sets {name: (images, labels)}), uint8 64x64.

    Synthetic: scenes drawn at 64 px, plus the same scenes drawn at 32 px and upsampled, because 32 px
    generators are scored through that upsampling. Real i-CLEVR: a 90/10 split of train.json."""
    if data_dir:
        images, labels = load_iclevr(data_dir, CLASSIFIER_SIZE)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = max(1, len(images) // 10)
        held, kept = order[:cut], order[cut:]
        return images[kept], labels[kept], {"held-out i-CLEVR pictures": (images[held], labels[held])}

    def upsampled(images):
        return common.to_uint8_images(images, CLASSIFIER_SIZE, 3)

    images64, labels = synthetic.scenes(n_scenes, CLASSIFIER_SIZE, seed=seed + 1000)
    images32, _ = synthetic.scenes(n_scenes, 32, seed=seed + 1000)
    held64, held_labels = synthetic.scenes(n_held_out, CLASSIFIER_SIZE, seed=seed + 2000)
    held32, _ = synthetic.scenes(n_held_out, 32, seed=seed + 2000)
    return (torch.cat([images64, upsampled(images32)]), torch.cat([labels, labels]),
            {"scenes at 64 px": (held64, held_labels), "scenes at 32 px, upsampled": (upsampled(held32), held_labels)})


def train_classifier(out_path=DEFAULT_CLASSIFIER, data_dir=None, device="cpu", seed=0, epochs=5, n_scenes=12000,
                     n_held_out=2000, width=32, batch_size=128, log=print):
    """Train the object evaluator on synthetic scenes (or the real i-CLEVR pictures in data_dir) and save it.

    Returns {'path', 'held_out': {set name: top-k score}, 'trained_on', 'seconds'}: the held-out scores are the
    ceiling a perfect generator would reach under this evaluator."""
    start = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)
    images, labels, held_out = classifier_training_data(data_dir, seed, n_scenes, n_held_out)
    model = ObjectClassifier(width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    loader = common.DeviceLoader(images, labels, batch_size, device, seed=seed, flip=True)
    for epoch in range(epochs):
        model.train()
        total = torch.zeros((), device=device)
        for batch_images, batch_labels in loader.epoch(epoch):
            # small colour noise so that the imperfect pictures of a generator are judged by shape and colour
            batch_images = batch_images + 0.03 * torch.randn_like(batch_images)
            loss = F.binary_cross_entropy_with_logits(model(batch_images), batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach()
        log(f"classifier epoch {epoch + 1}/{epochs}: loss {total.item() / len(loader):.4f}")
    model.eval()
    scores = {}
    for name, (held_images, held_labels) in held_out.items():
        scores[name] = iclevr_score(classify(model, held_images.float() / 127.5 - 1), held_labels)
        log(f"held-out {name}: {scores[name]:.4f} (top-k score, the ceiling for generated pictures)")
    trained_on = f"i-CLEVR pictures in {data_dir}" if data_dir else f"{n_scenes} synthetic scenes at 64 and 32 px"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    common.save_checkpoint(out_path, {"format": common.CHECKPOINT_FORMAT, "script": "object_classifier",
                                      "width": width, "model": model.cpu().state_dict(), "held_out": scores,
                                      "trained_on": trained_on, "objects": list(OBJECTS)})
    return {"path": out_path, "held_out": scores, "trained_on": trained_on, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------
LOG_FIELDS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s"]
SCORE_FIELDS = ["step", "epoch", "test", "new_test", "test_mean", "new_test_mean", "validation"]
SCORE_REPEATS = 10  # noise draws behind the steadier *_mean scores


def train(args):
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    common.seed_everything(args.seed, args.deterministic)
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    # inputs first: data, condition lists, classifier and checkpoint errors surface before anything is written
    images, labels = load_data(args)
    if len(images) // dist.world_size < args.batch_size:
        raise common.UserError(f"the dataset has {len(images)} images: fewer than one batch of {args.batch_size} "
                               f"per process; lower --batch-size")
    lists, lists_source = find_condition_lists(args.test_dir, vars(args))
    classifier = None
    if os.path.isfile(args.classifier):
        classifier = load_classifier(args.classifier, device)
    elif args.classifier != DEFAULT_CLASSIFIER:
        raise common.UserError(f"--classifier {args.classifier} not found")
    elif master:
        print(f"note: no object classifier at {args.classifier}: training without scores (train one with "
              f"python evaluate.py --train-classifier objects)", file=sys.stderr)
    resume_path = common.resolve_resume(args.resume, out)
    if resume_path:
        checkpoint = common.load_checkpoint(resume_path, SCRIPT, map_location=device)
    if master:
        common.prepare_run_dir(out, resume=resume_path is not None)
        common.write_config(out, args, SCRIPT, device, {"images": len(images), "condition_lists": lists_source,
                                                        "classifier": args.classifier if classifier else None})
        ceiling = classifier_ceiling(classifier, args.image_size) if classifier else None
        print(f"{len(images)} pictures; scoring {lists_source}"
              + (f" (classifier's held-out score on real scenes: {ceiling:.3f})" if ceiling is not None else ""),
              file=sys.stderr)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    models, optimizers = build(args, device)
    # the generator that draws the grids and the scores: a moving average of the trained weights (--ema)
    sampler = copy.deepcopy(models["generator"]).requires_grad_(False) if args.ema > 0 else models["generator"]
    schedulers = {k: torch.optim.lr_scheduler.StepLR(o, args.step_lr, args.gamma) for k, o in optimizers.items()} \
        if args.step_lr else {}
    score_noise = scoring_noise(args.nz, SCORE_REPEATS, args.seed)
    validation = {"validation": validation_conditions(lists)}
    validation_noise = scoring_noise(args.nz, SCORE_REPEATS, args.seed + 1)
    loader = common.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed, rank=dist.rank,
                                 world_size=dist.world_size)
    epoch, batch_in_epoch, step = 0, 0, 0
    history = {"step": [], "loss_d": [], "loss_g": [], "d_real": [], "d_fake": [],
               "scores": {k: [] for k in SCORE_FIELDS}, "best": None}
    meter = common.LossMeter()
    if resume_path:
        for key in models:
            models[key].load_state_dict(checkpoint["generator_trained" if key == "generator" and args.ema > 0 else key])
        sampler.load_state_dict(checkpoint["generator"])
        for key in optimizers:
            optimizers[key].load_state_dict(checkpoint["optimizers"][key])
        for key in schedulers:
            schedulers[key].load_state_dict(checkpoint["schedulers"][key])
        epoch, batch_in_epoch, step = checkpoint["epoch"], checkpoint["batch_in_epoch"], checkpoint["step"]
        history = checkpoint["history"]
        if history["best"] and "test" not in history["best"]:  # picked on the scored lists (older runs): pick anew
            history["best"] = None
        meter.load_state_dict(checkpoint["meter"], device)
        common.set_rng_state(checkpoint["rng"])
        if batch_in_epoch >= len(loader):  # a different batch size or process count: start the next epoch
            epoch, batch_in_epoch = epoch + 1, 0
        if master:
            print(f"resumed from {resume_path} at epoch {epoch}, step {step}", file=sys.stderr)
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)

    train_models = {k: common.maybe_compile(common.wrap_ddp(m, dist, args.sync_bn), args.compile) for k, m in models.items()}
    logger = scores_log = None
    if master:
        tb = os.path.join(out, "tb") if args.track else None
        logger = common.CSVLogger(os.path.join(out, "log.csv"), LOG_FIELDS, resume_step=step if resume_path else None,
                                  tensorboard_dir=tb)
        scores_log = common.CSVLogger(os.path.join(out, "scores.csv"), SCORE_FIELDS,
                                      resume_step=step if resume_path else None)
    monitor = common.HealthMonitor(enabled=master)
    real_reference = loader.to_float(images[:64].to(device))
    total_steps = args.epochs * len(loader) if args.max_steps is None else min(args.max_steps, args.epochs * len(loader))
    started = time.perf_counter()

    def save(path, finished=False):
        common.save_checkpoint(path, {
            "format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "finished": finished,
            "generator": sampler.state_dict(),  # what evaluate.py and --generate draw with
            **({"generator_trained": common.unwrap(models["generator"]).state_dict()} if args.ema > 0 else {}),
            "discriminator": common.unwrap(models["discriminator"]).state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "rng": common.rng_state(), "history": history, "fixed_noise": score_noise[0], "meter": meter.state_dict(),
            "world_size": dist.world_size, "replica_divergence": divergence})

    def log(images_per_s):
        means = meter.means()
        if not means:
            return
        common.check_finite(means, step, args.skip_nonfinite)
        monitor.update(means, step)
        for k in ("step", "loss_d", "loss_g", "d_real", "d_fake"):
            if k == "step" or k in means:
                history[k].append(step if k == "step" else means[k])
        if master:
            logger.log({"step": step, "epoch": epoch, **means, "images_per_s": images_per_s})
            bar.set_postfix(loss_d=f"{means['loss_d']:.3f}", loss_g=f"{means['loss_g']:.3f}",
                            img_s=f"{images_per_s:.0f}", refresh=False)

    def evaluate_and_draw(label):
        """Grids of test.json / new_test.json (8 per row, as the reports submitted), their two scores, and the
        validation score that picks best.pt."""
        generator = sampler
        if classifier is not None:
            first, mean, drawn = score_lists(generator, classifier, lists, score_noise)
            _, held_out, _ = score_lists(generator, classifier, validation, validation_noise)
            row = {"step": step, "epoch": label, **first, **{f"{k}_mean": v for k, v in mean.items()}, **held_out}
            scores_log.log(row)
            for k in SCORE_FIELDS:
                history["scores"].setdefault(k, []).append(row[k])
            print(f"\nepoch {label}: test {first['test']:.3f}, new_test {first['new_test']:.3f} "
                  f"(mean of {SCORE_REPEATS} draws: {mean['test']:.3f}, {mean['new_test']:.3f}; "
                  f"validation {held_out['validation']:.3f})", file=sys.stderr)
            common.plot_curves({k: (history["scores"]["epoch"], history["scores"][k]) for k in SCORE_FIELDS[2:]},
                               os.path.join(out, "scores.png"), title="i-CLEVR scores", xlabel="epoch", ylabel="score")
            if history["best"] is None or held_out["validation"] > history["best"]["score"]:
                history["best"] = {"score": held_out["validation"], "epoch": label, "step": step,
                                   "test": first["test"], "new_test": first["new_test"]}
                save(os.path.join(out, "best.pt"))
        else:
            drawn = {name: sample(generator, score_noise[0][:len(c)].to(device), c.to(device)) for name, c in lists.items()}
        monitor.check_samples(drawn["test"], real_reference, label)
        common.save_grid(drawn["test"], os.path.join(out, "samples", f"epoch_{label:03d}.png"), nrow=8)
        common.save_grid(drawn["new_test"], os.path.join(out, "samples", f"new_test_epoch_{label:03d}.png"), nrow=8)
        common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))), os.path.join(out, "progress.gif"))
        common.plot_losses(history, os.path.join(out, "losses.png"), title=f"cGAN losses ({args.loss}, {args.d_cond})")

    bar = common.progress_bar(total_steps, initial=step, desc="cgan_objects", disable=not master or args.no_progress)
    interval_start, interval_steps, stopped, divergence = time.perf_counter(), 0, False, 0.0
    with common.GracefulExit() as stop:
        while epoch < args.epochs and not stopped:
            for real_images, real_labels in loader.epoch(epoch, batch_in_epoch):
                batch = {"images": real_images, "labels": real_labels, "update_generator": (step + 1) % args.n_critic == 0}
                meter.add(train_step(train_models, optimizers, batch, args))
                if args.ema > 0:
                    update_ema(sampler, models["generator"], args.ema, step)
                step, batch_in_epoch, interval_steps = step + 1, batch_in_epoch + 1, interval_steps + 1
                bar.update(1)
                at_limit = args.max_steps is not None and step >= args.max_steps
                if step % args.log_every == 0 or at_limit:
                    log(interval_steps * args.batch_size * dist.world_size / (time.perf_counter() - interval_start))
                    interval_start, interval_steps = time.perf_counter(), 0
                    # the time budget is checked at log steps only, so that every rank stops at the same step
                    at_limit = at_limit or (args.max_minutes is not None
                                            and time.perf_counter() - started > 60 * args.max_minutes)
                if at_limit or (stop if not dist.enabled else step % args.log_every == 0 and common.stop_requested(stop, dist)):
                    stopped = True
                    break
            if batch_in_epoch == len(loader):  # a whole epoch is done (also when a stop came with its last batch)
                epoch, batch_in_epoch = epoch + 1, 0
                log(interval_steps * args.batch_size * dist.world_size / max(time.perf_counter() - interval_start, 1e-9))
                interval_start, interval_steps = time.perf_counter(), 0
                for scheduler in schedulers.values():
                    scheduler.step()
            finished = epoch >= args.epochs or (stopped and not stop)
            if finished:  # every rank takes part in this check
                divergence = common.replica_divergence(models["generator"], dist)
            # On SIGINT/SIGTERM no scoring: last.pt first (a preempted job has seconds), and resume stays exact.
            if master and not stop and (finished or stopped or epoch % args.eval_every == 0):
                evaluate_and_draw(epoch if not stopped or batch_in_epoch == 0 else epoch + 1)
            if master:
                save(os.path.join(out, "last.pt"), finished=finished)
                if not stopped and epoch % args.save_every == 0:
                    save(os.path.join(out, f"epoch_{epoch:03d}.pt"), finished=finished)
            if finished:
                break
        bar.close()
        if master:
            logger.close()
            scores_log.close()
            if history["best"]:
                best = history["best"]
                print(f"best (validation conditions): epoch {best['epoch']}, validation {best['score']:.3f}, "
                      f"test {best['test']:.3f}, new_test {best['new_test']:.3f} (best.pt)", file=sys.stderr)
            print(f"done: {out}", file=sys.stderr)
        common.cleanup_distributed(dist)
        if stop:
            raise SystemExit(130)
    return out


def generate(args):
    """--generate --checkpoint PATH --objects NAME ...: one row of 8 pictures of those objects."""
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    condition = condition_vector(args.objects, {name: i for i, name in enumerate(OBJECTS)}, "--objects")
    generator = build_generator(checkpoint["args"]).to(device)
    generator.load_state_dict(checkpoint["generator"])
    noise = torch.randn(8, checkpoint["args"]["nz"], generator=torch.Generator().manual_seed(args.seed))
    images = sample(generator, noise.to(device), condition.expand(8, -1))
    path = args.grid_out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    common.save_grid(images, path, nrow=8)
    print(f"wrote 8 pictures of {', '.join(args.objects)} to {path}")
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.generate:
        return generate(args)
    return train(args)


if __name__ == "__main__":
    common.run_main(main)
