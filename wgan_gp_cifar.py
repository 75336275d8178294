"""WGAN-GP on CIFAR-10: a Wasserstein GAN whose critic is kept 1-Lipschitz by a gradient penalty (32 or 64 px).

Paper: Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of Wasserstein GANs",
NeurIPS 2017, Algorithm 1: the critic C minimises E[C(G(z))] - E[C(x)] + lambda * E[(||grad C(x_hat)||_2 - 1)^2]
at random interpolates x_hat between real and generated images; the generator minimises -E[C(G(z))].
No sigmoid anywhere and no BatchNorm in the critic (the penalty is per sample; batch statistics would
couple the samples): LayerNorm instead, or nothing (--critic-norm none). Adam(1e-4, betas (0, 0.9)),
lambda 10, n_critic 5: the paper's defaults. The generator is the DCGAN one.

One training step = one generator update = n_critic critic updates before it, each on its own batch of
--batch-size real images (Algorithm 1's inner loop). So a step reads n_critic x batch-size images, an epoch
(one pass over the data) has N / (n_critic x batch-size) steps, --max-steps counts generator updates, as the
paper's "generator iterations" do, and images/s counts the real images the critic reads.

Run:
    python wgan_gp_cifar.py                                 # 64 px, batch 128, 40 epochs, the paper's optimizer
    python wgan_gp_cifar.py --lambda 10 --n-critic 5        # the penalty weight and critic steps, explicitly
    python wgan_gp_cifar.py --image-size 64 --batch-size 128 --lr 2e-4 --beta1 0.5 --beta2 0.999   # the report's
    # the paper's DCGAN-style CIFAR-10 run as in the authors' gan_cifar.py (200,000 generator steps):
    python wgan_gp_cifar.py --image-size 32 --batch-size 64 --lr 1e-4 --beta1 0.5 --beta2 0.9 --nz 128
                            --ngf 128 --ndf 128 --critic-norm none --epochs 1300 --max-steps 200000
    python wgan_gp_cifar.py --data synthetic --epochs 5     # offline: coloured letters, 10 classes
    python evaluate.py runs/<run>/epoch_*.pt                # FID of every saved epoch: pick the best
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 wgan_gp_cifar.py --device cuda

log.csv has the Wasserstein estimate E[C(x)] - E[C(G(z))] (wasserstein), the penalty term before lambda
(gradient_penalty) and the mean gradient norm at the interpolates (grad_norm, near 1 when the penalty works).

Data: --data cifar10 reads the official python batches from <data-dir>/cifar-10-batches-py/ (downloading
and unpacking cifar-10-python.tar.gz when they are missing). The 50,000 training images are decoded once
into a uint8 tensor on the training device and fed with random horizontal flips. --data synthetic draws
the letters A-J (synthetic.letters), each class in its own colour on a randomly tinted background.
"""

import argparse
import copy
import glob
import os
import pickle
import socket
import sys
import time

import numpy as np
import torch
import torch.nn as nn

import common
import synthetic

SCRIPT = "wgan_gp_cifar"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EVAL = {"dataset": "cifar10", "conditioning": "none"}


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="WGAN-GP on CIFAR-10 (32 or 64 px).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=["cifar10", "folder", "synthetic"], default="cifar10",
                        help="cifar10: torchvision's CIFAR-10 in --data-dir; folder: every image under --data-dir; "
                             "synthetic: coloured letters, offline")
    parser.add_argument("--n-per-class", type=common.positive_int, default=1000,
                        help="with --data synthetic: images per class (10 classes)")
    parser.add_argument("--no-flip", action="store_true", help="no random horizontal flips of the real images")
    parser.add_argument("--lambda", dest="lambda_gp", metavar="LAMBDA", type=common.non_negative_float, default=10.0,
                        help="weight of the gradient penalty (the paper's lambda)")
    parser.add_argument("--n-critic", type=common.positive_int, default=5,
                        help="critic updates per generator update (each on its own batch)")
    parser.add_argument("--critic-norm", choices=["layer", "none"], default="layer",
                        help="normalisation in the critic: layer (LayerNorm over C, H, W) or none; never batch norm")
    parser.add_argument("--ngf", type=common.positive_int, default=64, help="generator feature maps (last block)")
    parser.add_argument("--ndf", type=common.positive_int, default=64, help="critic feature maps (first block)")
    parser.add_argument("--ema-decay", type=common.unit_interval, default=0.999,
                        help="keep an exponential moving average of the generator's weights with this decay "
                             "(sample grids and evaluate.py use it); 0 turns it off")
    parser.add_argument("--fid-every", type=common.positive_int, default=None, metavar="N",
                        help="compute FID every N epochs (evaluate.py), log it and keep best.pt; off by default")
    parser.add_argument("--fid-samples", type=common.positive_int, default=10000,
                        help="with --fid-every: generated and real images per FID")
    parser.add_argument("--inception-weights", default=None,
                        help="with --fid-every: path of the FID Inception weights (default: evaluate.py's)")
    common.add_common_args(parser, epochs=40, batch_size=128, lr=1e-4, image_size=64, sample_every=5, save_every=5)
    parser.set_defaults(beta1=0.0, beta2=0.9)  # the paper's Adam; --beta1 0.5 --beta2 0.999 for the report's
    args = parser.parse_args(argv)
    if args.image_size not in (32, 64):
        parser.error("--image-size must be 32 or 64")
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


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def load_image_folder(root, image_size):
    """Every image under `root` (searched recursively), centre-cropped to a square and resized once.
    An image under a first-level subfolder gets that subfolder's name as its class (ImageFolder's layout)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    if not os.path.isdir(root):
        raise common.UserError(f"image folder not found: {root} (pass --data-dir PATH with --data folder)")
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    if not paths:
        raise common.UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")

    def decode(path):
        try:
            with Image.open(path) as im:
                square = ImageOps.fit(im.convert("RGB"), (image_size, image_size), Image.BICUBIC)
                return np.asarray(square)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken files
            raise common.UserError(f"cannot read image {path}: {e}") from None

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
        images, class_names = common.to_uint8_images(images, args.image_size, 3), list(CIFAR10_CLASSES)
    elif args.data == "folder":
        images, labels, class_names = load_image_folder(args.data_dir, args.image_size)
    else:
        images, labels, class_names = load_synthetic(args.n_per_class, args.image_size, args.seed)
    return images, labels, class_names


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """z (nz x 1 x 1) -> 4x4 -> ... -> 3 x S x S; transposed convs with BN + ReLU, tanh output (DCGAN).
    32 px: 4 transposed convs (4 -> 8 -> 16 -> 32); 64 px: 5 (one more doubling)."""

    def __init__(self, nz=100, ngf=64, image_size=64, channels=3):
        super().__init__()
        doublings = {32: 3, 64: 4}[image_size]  # from 4x4 to the image size
        width = ngf * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Critic(nn.Module):
    """3 x S x S -> one unbounded score (no sigmoid). Strided convs with LeakyReLU(0.2), like the DCGAN
    discriminator but without BatchNorm: the gradient penalty is computed per sample, and batch norm would
    make each score depend on the rest of the batch. LayerNorm (GroupNorm with one group: mean and variance
    over C, H, W of each sample) takes its place, as in the paper. 32 px: 4 convs; 64 px: 5."""

    def __init__(self, ndf=64, image_size=64, norm="layer", channels=3):
        super().__init__()
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(halvings - 1):
            normalise = nn.GroupNorm(1, width * 2) if norm == "layer" else nn.Identity()
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), normalise, nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


def build_generator(args):
    """Rebuild the generator from the plain args dict stored in a checkpoint (evaluate.py uses this)."""
    return Generator(args["nz"], args["ngf"], args["image_size"])


def build(args, device):
    generator = common.prepare_model(Generator(args.nz, args.ngf, args.image_size).apply(common.dcgan_init), device)
    critic = common.prepare_model(Critic(args.ndf, args.image_size, args.critic_norm).apply(common.dcgan_init), device)
    betas = (args.beta1, args.beta2)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, betas, device),
                  "critic": common.adam(critic.parameters(), args.lr, betas, device)}
    return {"generator": generator, "critic": critic}, optimizers


def images_per_step(args):
    """Real images one training step reads: n_critic batches (bench.py and the images/s log use this)."""
    return args.batch_size * args.n_critic


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1), with batch-statistics BN as in training (as dcgan_letters.py;
    this also suits the EMA generator, whose weights never produced any running statistics). We sample on
    copies of the running statistics, so that drawing samples never changes the model (exact resume)."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise,))


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights. The decay warms up as (1 + step) / (10 + step), so a
    short run's average is not stuck near the random initial weights. Buffers (BN statistics) are copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


# ---------------------------------------------------------------------------
# Losses and the training step
# ---------------------------------------------------------------------------
def gradient_penalty(critic, real_images, fake_images):
    """E[(||grad_x_hat C(x_hat)||_2 - 1)^2] at x_hat = eps * x + (1 - eps) * G(z), eps ~ U[0, 1] per sample
    (the paper's eq. 3). Returns (penalty, mean gradient norm). create_graph=True: the penalty is itself
    differentiated when the critic is updated."""
    eps = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device)
    interpolates = (eps * real_images.detach() + (1 - eps) * fake_images.detach()).requires_grad_(True)
    scores = critic(interpolates)
    (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = gradients.float().flatten(1).square().sum(1).add(1e-12).sqrt()  # +1e-12: finite gradient at norm 0
    return (norms - 1).square().mean(), norms.detach().mean()


def train_step(models, optimizers, batch, args):
    """n_critic critic updates, one per --batch-size slice of batch["images"], then one generator update."""
    generator, critic = models["generator"], models["critic"]
    opt_g, opt_c = optimizers["generator"], optimizers["critic"]
    # torch.compile cannot differentiate twice: the penalty runs the critic as compiled-free (eager) code.
    eager_critic = getattr(critic, "_orig_mod", critic)
    critic_losses, wasserstein, penalties, grad_norms = [], [], [], []
    for real_images in batch["images"].split(args.batch_size):
        noise = torch.randn(real_images.shape[0], args.nz, 1, 1, device=real_images.device)
        with common.autocast(real_images.device, args.amp):
            with torch.no_grad():  # the critic's update needs no gradient through G
                fake_images = generator(noise)
            score_real = critic(real_images).float().mean()
            score_fake = critic(fake_images).float().mean()
            penalty, grad_norm = gradient_penalty(eager_critic, real_images, fake_images)
            loss_c = score_fake - score_real + args.lambda_gp * penalty
        opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        common.optimizer_step(opt_c, loss_c, args.skip_nonfinite)
        critic_losses.append(loss_c.detach())
        wasserstein.append((score_real - score_fake).detach())
        penalties.append(penalty.detach())
        grad_norms.append(grad_norm)

    noise = torch.randn(args.batch_size, args.nz, 1, 1, device=batch["images"].device)
    with common.autocast(noise.device, args.amp):
        loss_g = -critic(generator(noise)).float().mean()  # the generator minimises -E[C(G(z))]
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    mean = lambda values: torch.stack(values).mean()  # noqa: E731 - over the n_critic critic updates
    return {"loss_d": mean(critic_losses), "loss_g": loss_g.detach(), "wasserstein": mean(wasserstein),
            "gradient_penalty": mean(penalties), "grad_norm": mean(grad_norms)}


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------
LOG_FIELDS = ["step", "epoch", "loss_d", "loss_g", "wasserstein", "gradient_penalty", "grad_norm", "images_per_s",
              "fid", "kid"]


def prepare_fid(args, images, device):
    """--fid-every: import evaluate.py (only then) and check that the Inception weights are there, before
    any training. Returns score(generator) -> {"fid": ..., "kid": ...} against the training images."""
    try:
        import evaluate
    except ImportError as e:
        raise common.UserError(f"--fid-every needs evaluate.py next to this script ({e})") from None
    # A fixed random subset (the synthetic set is sorted by class).
    reference = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:args.fid_samples]]

    def score(generator):
        def sample_fn(n):
            return sample(generator, torch.randn(n, args.nz, 1, 1, device=device))
        return evaluate.generator_fid(sample_fn, reference, args.fid_samples, device,
                                      batch_size=min(250, args.fid_samples), inception_weights=args.inception_weights)
    evaluate.load_inception(args.inception_weights, device)  # a clear message now, not after an epoch
    return score


def train_one(args, images, class_names, out, dist, score_fid=None):
    """Train on `images` (uint8) into run folder `out`; returns the history."""
    device, master = dist.device, dist.is_master
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    models, optimizers = build(args, device)
    ema_generator = copy.deepcopy(models["generator"]).requires_grad_(False) if args.ema_decay > 0 else None
    fixed_noise = torch.randn(64, args.nz, 1, 1, generator=torch.Generator().manual_seed(args.seed)).to(device)
    loader = common.DeviceLoader(images, None, images_per_step(args), device, seed=args.seed, flip=not args.no_flip,
                                 rank=dist.rank, world_size=dist.world_size)
    epoch, batch_in_epoch, step = 0, 0, 0
    history = {"step": [], "loss_d": [], "loss_g": [], "wasserstein": [], "gradient_penalty": [], "grad_norm": [],
               "fid_epoch": [], "fid": []}
    meter = common.LossMeter()

    resume_path = common.resolve_resume(args.resume, out)
    if resume_path:
        checkpoint = common.load_checkpoint(resume_path, SCRIPT, map_location=device)
        for key in models:
            models[key].load_state_dict(checkpoint[key])
        for key in optimizers:
            optimizers[key].load_state_dict(checkpoint["optimizers"][key])
        if ema_generator is not None:
            ema_generator.load_state_dict(checkpoint.get("generator_ema", checkpoint["generator"]))
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
    real_reference = loader.to_float(images[:64].to(device))
    total_steps = args.epochs * len(loader) if args.max_steps is None else min(args.max_steps, args.epochs * len(loader))

    def save(path, finished=False):
        common.save_checkpoint(path, {
            "format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
            "class_names": list(class_names), "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
            "finished": finished, "generator": common.unwrap(models["generator"]).state_dict(),
            "critic": common.unwrap(models["critic"]).state_dict(),
            **({"generator_ema": ema_generator.state_dict()} if ema_generator is not None else {}),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "rng": common.rng_state(), "history": history, "fixed_noise": fixed_noise.cpu(), "meter": meter.state_dict(),
            "world_size": dist.world_size, "replica_divergence": divergence})

    def log(images_per_s):
        means = meter.means()
        if not means:
            return
        common.check_finite(means, step, args.skip_nonfinite)
        monitor.update(means, step)
        for k in ("step", "loss_d", "loss_g", "wasserstein", "gradient_penalty", "grad_norm"):
            history[k].append(step if k == "step" else means[k])
        if master:
            logger.log({"step": step, "epoch": epoch, **means, "images_per_s": images_per_s})
            bar.set_postfix(wasserstein=f"{means['wasserstein']:.3f}", grad_norm=f"{means['grad_norm']:.2f}",
                            img_s=f"{images_per_s:.0f}", refresh=False)

    def shown_generator():  # the averaged weights when there are any: they are what evaluate.py scores
        return ema_generator if ema_generator is not None else models["generator"]

    def write_samples(label):
        images_now = sample(shown_generator(), fixed_noise)
        monitor.check_samples(images_now, real_reference, label, step)
        # Each image shown at 64 screen pixels (32 px images doubled): big enough to see, small enough for the GIF.
        common.save_grid(images_now, os.path.join(out, "samples", f"epoch_{label:03d}.png"), nrow=8,
                         scale=64 // args.image_size)
        common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))), os.path.join(out, "progress.gif"))
        common.plot_losses(history, os.path.join(out, "losses.png"), keys=("loss_d", "loss_g", "wasserstein"),
                           title="WGAN-GP: critic loss, generator loss, Wasserstein estimate")

    def evaluate_fid():
        """Score the generator; log it and keep best.pt when it is the lowest FID so far."""
        scores = score_fid(shown_generator())
        history["fid_epoch"].append(epoch)
        history["fid"].append(scores["fid"])
        logger.log({"step": step, "epoch": epoch, "fid": scores["fid"], "kid": scores.get("kid")})
        bar.write(f"epoch {epoch}: FID {scores['fid']:.2f}", file=sys.stderr)
        return scores["fid"] <= min(history["fid"])

    bar = common.progress_bar(total_steps, initial=step, desc=SCRIPT, disable=not master or args.no_progress)
    interval_start, interval_steps, stopped, divergence = time.perf_counter(), 0, False, 0.0
    with common.GracefulExit() as stop:
        while epoch < args.epochs and not stopped:
            for images_batch, _ in loader.epoch(epoch, batch_in_epoch):
                meter.add(train_step(train_models, optimizers, {"images": images_batch, "labels": None}, args))
                if ema_generator is not None:
                    update_ema(ema_generator, common.unwrap(models["generator"]), args.ema_decay, step)
                step, batch_in_epoch, interval_steps = step + 1, batch_in_epoch + 1, interval_steps + 1
                bar.update(1)
                at_limit = args.max_steps is not None and step >= args.max_steps
                if step % args.log_every == 0 or at_limit:
                    log(interval_steps * images_per_step(args) * dist.world_size / (time.perf_counter() - interval_start))
                    interval_start, interval_steps = time.perf_counter(), 0
                if at_limit or (stop if not dist.enabled else step % args.log_every == 0 and common.stop_requested(stop, dist)):
                    stopped = True
                    break
            if batch_in_epoch == len(loader):  # a whole epoch is done (also when a stop came with its last batch)
                epoch, batch_in_epoch = epoch + 1, 0
                log(interval_steps * images_per_step(args) * dist.world_size / max(time.perf_counter() - interval_start, 1e-9))
                interval_start, interval_steps = time.perf_counter(), 0
            finished = epoch >= args.epochs or (args.max_steps is not None and step >= args.max_steps)
            if finished:  # every rank takes part in this check
                divergence = common.replica_divergence(models["generator"], dist)
            if master and (finished or stopped or epoch == 1 or epoch % args.sample_every == 0):
                write_samples(epoch if batch_in_epoch == 0 else epoch + 1)  # mid-epoch: the epoch under way
            best = master and score_fid is not None and not stopped and epoch % args.fid_every == 0 and evaluate_fid()
            if master:
                save(os.path.join(out, "last.pt"), finished=finished)
                if not stopped and epoch % args.save_every == 0:
                    save(os.path.join(out, f"epoch_{epoch:03d}.pt"), finished=finished)
                if best:
                    save(os.path.join(out, "best.pt"), finished=finished)
            if finished:
                break
        bar.close()
        if logger:
            logger.close()
        if stop:
            raise SystemExit(130)
    return history


def train(args):
    dist = common.setup_distributed(args.device)
    common.seed_everything(args.seed, args.deterministic)
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    try:
        images, _labels, class_names = load_data(args)  # data, checkpoint and FID errors surface before
        if len(images) < images_per_step(args) * dist.world_size:  # anything is written
            raise common.UserError(f"{len(images)} images are fewer than one step's n_critic x batch size = "
                                   f"{images_per_step(args)} per process: lower --batch-size or --n-critic")
        if args.resume not in (None, "auto"):
            common.load_checkpoint(args.resume, SCRIPT)
        score_fid = prepare_fid(args, images, dist.device) if args.fid_every and dist.is_master else None
        if dist.is_master:
            common.prepare_run_dir(out, resume=args.resume is not None)
            common.write_config(out, args, SCRIPT, dist.device, {"training_images": len(images)})
        train_one(args, images, class_names, out, dist, score_fid)
        if dist.is_master:
            print(f"done: {out}", file=sys.stderr)
    finally:
        common.cleanup_distributed(dist)
    return out


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    common.run_main(main)
