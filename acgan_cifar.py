"""ACGAN on CIFAR-10: a class-conditional GAN whose discriminator also names the class (32 or 64 px).

Paper: Odena, Olah & Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs", ICML 2017.
The generator gets noise joined with a learned embedding of the class label; the discriminator has two
heads on one conv trunk: real/fake (source) and a 10-way class head. With L_S the log-likelihood of the
right source and L_C that of the right class (on real AND generated images), the discriminator maximises
L_S + L_C and the generator maximises L_C - L_S (in its non-saturating form). --aux-weight scales L_C.

Run:
    python acgan_cifar.py                                   # 64 px, batch 128, 40 epochs (the coursework setting)
    python acgan_cifar.py --image-size 32 --batch-size 100 --embed-dim 10   # the paper's: 32 px, batch 100, 100+10-d input
    python acgan_cifar.py --data synthetic --epochs 5       # offline: coloured letters, 10 classes
    python acgan_cifar.py --data folder --data-dir my_images/   # one subfolder per class
    python acgan_cifar.py --generate 100 --checkpoint runs/<run>/last.pt --interpolate   # samples, no training
    python evaluate.py runs/<run>                           # FID of every saved checkpoint of a run
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 acgan_cifar.py --device cuda

Sample grids have one row per class (class names on the left) and one column per fixed noise vector.
log.csv has the discriminator's class accuracy on real (acc_real) and generated (acc_fake) images; each
epoch's mean is printed and plotted in accuracy.png. --generate --interpolate also writes a class
interpolation sheet: fixed noise per row, the class embedding blended from one class to the next.

Data: --data cifar10 reads the official python batches from <data-dir>/cifar-10-batches-py/ (downloading
and unpacking cifar-10-python.tar.gz when they are missing). The images are decoded once into a uint8
tensor on the training device and fed with random horizontal flips. --data synthetic draws the letters
A-J (synthetic.letters), each class in its own colour on a randomly tinted background.
"""

import argparse
import copy
import glob
import os
import pickle
import socket
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = common.script_name(__file__)  # a copy of this file (my_gan.py) writes checkpoints of its own name
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EVAL = {"dataset": "cifar10", "conditioning": "class", "num_classes": 10, "class_names": list(CIFAR10_CLASSES),
        "classes_arg": "class_names"}  # the trained classes are in the checkpoint's args (folder data has its own)


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ACGAN on CIFAR-10 (32 or 64 px), class-conditional.",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["cifar10", "folder", "synthetic"], default="cifar10",
                   help="cifar10: the official batches in --data-dir; folder: images in one subfolder per class "
                        "under --data-dir; synthetic: coloured letters, offline")
    g.add_argument("--data-dir", default="data", help="where real datasets are read from / downloaded to")
    g.add_argument("--n-per-class", type=common.positive_int, default=1000, help="--data synthetic: images per class")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips of the real images")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=64, help="image height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--embed-dim", type=common.positive_int, default=50,
                   help="size of the class embedding joined with the noise")
    g.add_argument("--ngf", type=common.positive_int, default=64, help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=64, help="discriminator feature maps (first block)")
    g.add_argument("--aux-weight", type=common.non_negative_float, default=1.0,
                   help="weight of the class loss L_C in both players' losses")
    g.add_argument("--epochs", type=common.positive_int, default=40, help="passes over the training set")
    g.add_argument("--batch-size", type=common.positive_int, default=128,
                   help="images per step per process (global batch = batch size x processes)")
    g.add_argument("--lr", type=common.positive_float, default=2e-4, help="Adam learning rate of both networks")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.999,
                   help="decay of the moving average of the generator's weights that samples and evaluate.py use "
                        "(0: off)")
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
    g.add_argument("--sample-every", type=common.positive_int, default=5, help="sample grid every N epochs")
    g.add_argument("--grid-columns", type=common.positive_int, default=10,
                   help="samples per class (columns) in the sample grids")
    g.add_argument("--save-every", type=common.positive_int, default=5, help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--eval-every", type=common.positive_int, default=None, metavar="N",
                   help="FID every N epochs (evaluate.py): logged, plotted, best.pt kept")
    g.add_argument("--fid-samples", type=common.positive_int, default=10000, help="with --eval-every: images per FID")
    g.add_argument("--inception-weights", default=None, help="FID Inception weights (default: evaluate.py's)")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                   help="draw N samples from --checkpoint into a grid, the classes in turn")
    g.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", default=None, help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None, help="with --generate: also one PNG per sample in this folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: also a latent interpolation sheet (<grid>_interpolation.png) and a class "
                        "interpolation sheet (<grid>_class_interpolation.png)")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns (uint8 images (N, 3, S, S), int64 labels (N,), class names)
# ---------------------------------------------------------------------------
CIFAR10_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"  # the "CIFAR-10 python version" link on that page
CIFAR10_FOLDER = "cifar-10-batches-py"  # what the tarball unpacks to
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]  # 10,000 images each


class CifarUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles. Allow only the numpy pieces they are made of, so a tampered file
    cannot run code (the same idea as torch.load(weights_only=True))."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the file")
        return super().find_class(module, name)


def read_cifar_batch(path):
    """One python-version batch file: a pickled dict with 'data' (N x 3072 uint8, RGB planes) and 'labels'."""
    try:
        with open(path, "rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()  # latin1: the files were written by Python 2
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64)
        if len(labels) != len(data) or labels.min() < 0 or labels.max() > 9:
            raise ValueError("labels do not match the images")
    except Exception as e:  # noqa: BLE001 - truncated, foreign or tampered: all mean 'fetch it again'
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise common.UserError(f"{path} is not a readable CIFAR-10 batch ({reason}): delete "
                               f"{os.path.dirname(path)} and unpack cifar-10-python.tar.gz again") from None
    return torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels)


def fetch_cifar10(data_dir):
    """Download and unpack cifar-10-python.tar.gz with torchvision (it skips the download when the
    tarball is already in data_dir with the right MD5); one clear message when that is impossible."""
    from torchvision.datasets import CIFAR10

    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an offline machine behind a firewall fails instead of hanging
    try:
        CIFAR10(data_dir, train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline: URLError, socket errors, HTTP errors, MD5 mismatch...
        tarball = os.path.join(data_dir, CIFAR10_TARBALL)
        found = f"{tarball} is there but incomplete or corrupt; " if os.path.exists(tarball) else ""
        raise common.UserError(
            f"CIFAR-10 is not in {data_dir} and could not be downloaded ({type(e).__name__}): {found}fetch "
            f"{CIFAR10_TARBALL} from {CIFAR10_PAGE} and put it in {data_dir}/ (or unpack it there, giving "
            f"{os.path.join(data_dir, CIFAR10_FOLDER)}/), or use --data synthetic") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def load_cifar10(data_dir):
    """The 50,000 training images as uint8 (N, 3, 32, 32) and their labels, read once.

    The batch files are read by read_cifar_batch rather than torchvision's CIFAR10 class: torchvision
    insists on the official MD5 of every file (so the tests' small fake set would be refused) and
    unpickles without restriction. torchvision still does the download and unpacking."""
    paths = [os.path.join(data_dir, CIFAR10_FOLDER, name) for name in CIFAR10_TRAIN_BATCHES]
    if not all(os.path.isfile(p) for p in paths):
        fetch_cifar10(data_dir)
    batches = [read_cifar_batch(p) for p in paths]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def load_image_folder(root, image_size):
    """Every image under `root` (searched recursively), centre-cropped to a square and resized once.
    An image under a first-level subfolder gets that subfolder's name as its class (ImageFolder's layout)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    paths = common.list_image_files(root)

    def decode(path):
        return np.asarray(ImageOps.fit(common.read_image(path, "RGB"), (image_size, image_size), Image.BICUBIC))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes outside the GIL
        arrays = list(pool.map(decode, paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    folders = [os.path.relpath(p, root).split(os.sep)[0] if os.sep in os.path.relpath(p, root) else "" for p in paths]
    class_names = sorted(set(folders))
    labels = torch.tensor([class_names.index(f) for f in folders], dtype=torch.int64)
    return images, labels, class_names


SYNTHETIC_CHARS = "ABCDEFGHIJ"
SYNTHETIC_COLOURS = torch.tensor([  # one clearly different colour per class
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [170, 110, 40], [250, 250, 250]], dtype=torch.float32)


def load_synthetic(n_per_class, image_size, seed):
    """Offline stand-in with 10 classes: letter A-J (synthetic.letters), drawn in its class's colour
    on a dark background of random tint. Quick to make, and class and colour are learnable."""
    import synthetic  # only for the offline data: a copied script with real data needs no synthetic.py

    glyphs, labels = synthetic.letters(list(SYNTHETIC_CHARS), n_per_class, image_size=image_size, seed=seed)
    ink = glyphs.float() / 255  # (N, 1, S, S): 1 on the stroke, 0 on the background
    background = torch.rand(len(glyphs), 3, 1, 1, generator=torch.Generator().manual_seed(seed)) * 110
    foreground = SYNTHETIC_COLOURS[labels].view(-1, 3, 1, 1)
    images = (background + (foreground - background) * ink).round().clamp(0, 255).to(torch.uint8)
    return images, labels.long(), list(SYNTHETIC_CHARS)


def load_data(args):
    """All data errors surface here, before anything is written."""
    if args.data == "cifar10":
        images, labels = load_cifar10(args.data_dir)
        return common.to_uint8_images(images, args.image_size, 3), labels, list(CIFAR10_CLASSES)
    if args.data == "folder":
        return load_image_folder(args.data_dir, args.image_size)
    return load_synthetic(args.n_per_class, args.image_size, args.seed)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """(z, class) -> 3 x S x S. The class's learned embedding is joined to the noise, then the DCGAN
    generator: transposed convs with BN + ReLU, tanh output. 32 px: 4 transposed convs; 64 px: 5."""

    def __init__(self, nz=100, ngf=64, image_size=64, num_classes=10, embed_dim=50, channels=3):
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, embed_dim)
        doublings = {32: 3, 64: 4}[image_size]  # from 4x4 to the image size
        width = ngf * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(nz + embed_dim, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels):
        # Class indices (N,) pick an embedding; class weights (N, num_classes) blend them (class interpolation).
        table = self.label_embedding.weight
        embedded = self.label_embedding(labels) if labels.dim() == 1 else labels.to(table.dtype) @ table
        return self.net(torch.cat([z.flatten(1), embedded], dim=1)[:, :, None, None])


class Discriminator(nn.Module):
    """3 x S x S -> (source logit, class logits). One DCGAN conv trunk (LeakyReLU(0.2), BN except on the
    first layer) down to 4x4, then two heads: real/fake and the auxiliary classifier."""

    def __init__(self, ndf=64, image_size=64, num_classes=10, channels=3):
        super().__init__()
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        self.trunk = nn.Sequential(*layers)
        self.source_head = nn.Conv2d(width, 1, 4, 1, 0)  # real or generated
        self.aux_classifier = nn.Conv2d(width, num_classes, 4, 1, 0)  # which class

    def forward(self, x):
        features = self.trunk(x)
        return self.source_head(features).flatten(), self.aux_classifier(features).flatten(1)


def build_generator(settings):
    """The generator from a checkpoint's settings (evaluate.py and --generate use this)."""
    return Generator(settings["nz"], settings["ngf"], settings["image_size"], settings["num_classes"],
                     settings["embed_dim"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = common.prepare_model(build_generator(vars(args)).apply(common.dcgan_init), device)
    discriminator = Discriminator(args.ndf, args.image_size, args.num_classes).apply(common.dcgan_init)
    discriminator = common.prepare_model(discriminator, device)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, (args.beta1, args.beta2), device),
                  "discriminator": common.adam(discriminator.parameters(), args.lr, (args.beta1, args.beta2), device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1) and classes (N,) or class weights (N, classes); by default the
    classes take turns. Batch-statistics BN as in training (this also suits the EMA generator), run on copies of
    its buffers, so that drawing samples never changes the model (exact resume)."""
    if labels is None:
        num_classes = common.unwrap(generator).label_embedding.num_embeddings
        labels = torch.arange(noise.shape[0], device=noise.device) % num_classes
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels))


# ---------------------------------------------------------------------------
# Training step: the ACGAN losses, one discriminator and one generator update. This is the part to change:
# the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def source_loss(logits, is_real):
    """-L_S for one batch: binary cross-entropy of the real/fake head (stable, on logits)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(is_real)))


def class_loss(class_logits, labels):
    """-L_C for one batch: cross-entropy of the auxiliary classifier against the true class."""
    return F.cross_entropy(class_logits.float(), labels)


def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, real_labels = batch["images"], batch["labels"]
    noise = torch.randn(real_images.shape[0], args.nz, 1, 1, device=real_images.device)
    fake_labels = torch.randint(args.num_classes, (real_images.shape[0],), device=real_images.device)
    with common.autocast(real_images.device, args.amp):
        fake_images = generator(noise, fake_labels)
        # Discriminator: maximise L_S + L_C; the class loss on generated images too (paper, eq. 2-3).
        source_real, classes_real = discriminator(real_images)
        source_fake, classes_fake = discriminator(fake_images.detach())
        loss_d = (source_loss(source_real, True) + source_loss(source_fake, False)
                  + args.aux_weight * (class_loss(classes_real, real_labels) + class_loss(classes_fake, fake_labels)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)

    with common.autocast(real_images.device, args.amp):
        # Generator: maximise L_C - L_S, with the non-saturating source loss (maximise log D(G(z))).
        source_gen, classes_gen = discriminator(fake_images)
        loss_g = source_loss(source_gen, True) + args.aux_weight * class_loss(classes_gen, fake_labels)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),  # d_real/d_fake feed the health monitor
            "d_real": torch.sigmoid(source_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(source_fake.detach().float()).mean(),
            "acc_real": (classes_real.detach().argmax(1) == real_labels).float().mean(),
            "acc_fake": (classes_fake.detach().argmax(1) == fake_labels).float().mean()}


# ---------------------------------------------------------------------------
# Scores during training
# ---------------------------------------------------------------------------
def prepare_fid(args, images, device):
    """--eval-every: FID/KID against a fixed subset of the training images, from evaluate.py (imported only then;
    its Inception weights are checked now, not after an epoch). Returns score(generator) -> {"fid", "kid"}."""
    try:
        import evaluate
    except ImportError as e:
        raise common.UserError(f"--eval-every needs evaluate.py next to this script ({e})") from None
    fid_of = evaluate.fid_scorer(images, args.fid_samples, device, args.inception_weights)
    return lambda generator: fid_of(lambda n: sample(generator, torch.randn(n, args.nz, 1, 1, device=device)))


def epoch_accuracy(history, steps_per_epoch):
    """The discriminator's class accuracy over each whole epoch on real and on generated images (plot_curves
    series), from the logged rows: a row holds the mean of the steps since the row before, none spans two epochs."""
    sums, previous = {}, 0
    for step, real, fake in zip(history["step"], history["acc_real"], history["acc_fake"]):
        weight, previous = step - previous, step
        total = sums.setdefault(-(-step // steps_per_epoch), [0.0, 0.0, 0])
        total[:] = total[0] + weight * real, total[1] + weight * fake, total[2] + weight
    epochs = [epoch for epoch, total in sums.items() if total[2] == steps_per_epoch]
    return {"real images": (epochs, [sums[e][0] / steps_per_epoch for e in epochs]),
            "generated images": (epochs, [sums[e][1] / steps_per_epoch for e in epochs])}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: every input error (flags, data, checkpoint, FID weights) surfaces before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = common.find_resume_checkpoint(args.resume, out, SCRIPT, map_location=device)
    if checkpoint is not None:  # a resumed run keeps its settings (model shapes, data, learning rates)
        args = common.settings_from_checkpoint(args, checkpoint, resume_path)
    common.seed_everything(args.seed, args.deterministic)
    images, labels, class_names = load_data(args)
    if len(class_names) < 2:
        raise common.UserError(f"ACGAN needs classes: one subfolder per class under {args.data_dir}")
    args.num_classes, args.class_names = len(class_names), list(class_names)  # the checkpoint's args keep them
    loader = common.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed, flip=not args.no_flip,
                                 rank=dist.rank, world_size=dist.world_size)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    score_fid = prepare_fid(args, images, device) if args.eval_every and master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise and labels for the sample grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    # Sample grid: row c shows class c; column j uses noise vector j in every row (the same "style").
    fixed_noise = torch.randn(args.grid_columns, args.nz, 1, 1, generator=torch.Generator().manual_seed(args.seed))
    fixed_noise = fixed_noise.repeat(args.num_classes, 1, 1, 1).to(device)
    fixed_labels = torch.arange(args.num_classes).repeat_interleave(args.grid_columns).to(device)
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

    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None  # all checks passed
    if master and checkpoint is None:
        common.write_config(out, args, SCRIPT, device, {"training_images": len(images)})
        common.save_grid(loader.to_float(images[:64].to(device)), os.path.join(out, "real.png"), nrow=8,
                         scale=64 // args.image_size, title="real images")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT)
    real_reference = loader.to_float(images[:64].to(device))

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, real_labels = loader.batch(step)
            values = train_step(models, optimizers, {"images": real_images, "labels": real_labels}, args)
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
            if epoch_done and "acc_real" in log.history:  # D's class accuracy over the epoch: printed and plotted
                accuracy = epoch_accuracy(log.history, steps_per_epoch)
                log.bar.write(f"epoch {epoch}: D's class accuracy {accuracy['real images'][1][-1]:.3f} on real, "
                              f"{accuracy['generated images'][1][-1]:.3f} on generated images", file=sys.stderr)
                common.plot_curves(accuracy, os.path.join(out, "accuracy.png"), title="discriminator's class accuracy",
                                   xlabel="epoch", ylabel="accuracy")
            if finished or stopping or epoch == 1 or epoch % args.sample_every == 0:
                samples = sample(shown_generator, fixed_noise, fixed_labels)
                log.monitor.check_samples(samples, real_reference, epoch, step)
                common.save_grid(samples, os.path.join(out, "samples", f"epoch_{epoch:03d}.png"),
                                 nrow=args.grid_columns, row_labels=class_names, scale=64 // args.image_size,
                                 title=f"epoch {epoch}, step {step}")
                common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                os.path.join(out, "progress.gif"))
                common.plot_losses(log.history, os.path.join(out, "losses.png"), title=f"{SCRIPT} losses")
            is_best = False
            if score_fid is not None and epoch_done and not stop and epoch % args.eval_every == 0:
                log.record(step, epoch, **score_fid(shown_generator))
                scores = log.history["scores"]
                is_best = scores["fid"][-1] <= min(scores["fid"])
                common.plot_curves({"FID": (scores["epoch"], scores["fid"])}, os.path.join(out, "fid.png"),
                                   title=f"{SCRIPT}: FID of the samples", xlabel="epoch", ylabel="FID")
            checkpoint = {"format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
                          "class_names": list(class_names), "step": step, "epoch": epoch, "finished": finished,
                          **{name: module.state_dict() for name, module in saved.items()},
                          "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                          "rng": common.rng_state(), "fixed_noise": fixed_noise.cpu(),
                          "fixed_labels": fixed_labels.cpu(), **log.state_dict(), "world_size": dist.world_size,
                          "replica_divergence": divergence}
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
    """--generate N --checkpoint PATH: a grid of N samples (+ one PNG each, + latent and class interpolation sheets)."""
    grid_path = common.check_output_path(args.grid_out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png"), "--grid-out")
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings = checkpoint["args"]
    generator = common.rebuild(build_generator, settings, args.checkpoint).to(device)
    common.load_weights(generator, checkpoint.get("generator_ema", checkpoint["generator"]), args.checkpoint)
    names, count = [str(name) for name in settings["class_names"]], settings["num_classes"]
    noise = torch.randn(args.generate, settings["nz"], 1, 1, generator=torch.Generator().manual_seed(args.seed))
    labels = torch.arange(args.generate) % count  # column c of the grid: class c
    images = sample(generator, noise.to(device), labels.to(device))
    common.save_grid(images, grid_path, nrow=min(count, args.generate), captions=[names[i] for i in labels])
    written = [grid_path]
    if args.png_dir:
        written.append(common.save_pngs(images, args.png_dir))
    if args.interpolate:
        rows = torch.arange(8) % count  # 8 latent walks between two random points, each in one class
        sheet = sample(generator, common.interpolation_noise(8, 10, settings["nz"], args.seed).to(device),
                       rows.repeat_interleave(10).to(device))
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_interpolation.png", nrow=10,
                                        row_labels=[names[i] for i in rows]))
        # One row per class c: its noise fixed, the class embedding blended from class c to class c + 1.
        classes, t = torch.arange(count), torch.linspace(0, 1, 10).view(1, 10, 1)
        weights = (1 - t) * F.one_hot(classes, count)[:, None] + t * F.one_hot((classes + 1) % count, count)[:, None]
        noise = torch.randn(count, settings["nz"], 1, 1, generator=torch.Generator().manual_seed(args.seed))
        sheet = sample(generator, noise.repeat_interleave(10, 0).to(device), weights.reshape(-1, count).to(device))
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_class_interpolation.png", nrow=10,
                                        row_labels=[f"{names[c]} > {names[(c + 1) % count]}" for c in range(count)]))
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
