"""DCGAN on CIFAR-10 (32x32 or 64x64 colour images).

Paper: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016: transposed-conv generator with BatchNorm + ReLU and a
tanh output, strided-conv discriminator with LeakyReLU(0.2) and BatchNorm, weights ~ N(0, 0.02),
Adam(2e-4, beta1 0.5), batch 128.

Run:
    python dcgan_cifar.py                                   # 64 px, batch 128, 40 epochs (the coursework setting)
    python dcgan_cifar.py --image-size 32                   # the paper's hyper-parameters at CIFAR's own 32x32
    python dcgan_cifar.py --data synthetic --epochs 5       # offline: coloured letters, 10 classes
    python dcgan_cifar.py --data folder --data-dir my_images/   # any folder of images (searched recursively)
    python dcgan_cifar.py --generate 64 --checkpoint runs/<run>/last.pt --interpolate   # samples, no training
    python evaluate.py runs/<run>                           # FID of every saved checkpoint of a run
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 dcgan_cifar.py --device cuda

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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = common.script_name(__file__)  # a copy of this file (my_gan.py) writes checkpoints of its own name
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EVAL = {"dataset": "cifar10", "conditioning": "none"}  # what evaluate.py compares this script's samples with


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="DCGAN on CIFAR-10 (32 or 64 px).", usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["cifar10", "folder", "synthetic"], default="cifar10",
                   help="cifar10: the official batches in --data-dir; folder: every image under --data-dir; "
                        "synthetic: coloured letters, offline")
    g.add_argument("--data-dir", default="data", help="where real datasets are read from / downloaded to")
    g.add_argument("--n-per-class", type=common.positive_int, default=1000, help="--data synthetic: images per class")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips of the real images")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=64, help="image height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=64, help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=64, help="discriminator feature maps (first block)")
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
    g.add_argument("--save-every", type=common.positive_int, default=5, help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--eval-every", type=common.positive_int, default=None, metavar="N",
                   help="FID every N epochs (evaluate.py): logged, plotted, best.pt kept")
    g.add_argument("--fid-samples", type=common.positive_int, default=10000, help="with --eval-every: images per FID")
    g.add_argument("--inception-weights", default=None, help="FID Inception weights (default: evaluate.py's)")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                   help="draw N samples from --checkpoint into a grid")
    g.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", default=None, help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None, help="with --generate: also one PNG per sample in this folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: also a latent interpolation sheet (<grid>_interpolation.png)")
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


class Discriminator(nn.Module):
    """3 x S x S -> one logit; strided convs with LeakyReLU(0.2), BN except on the first layer (DCGAN).
    32 px: 4 convs (32 -> 16 -> 8 -> 4 -> 1); 64 px: 5."""

    def __init__(self, ndf=64, image_size=64, channels=3):
        super().__init__()
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


def build_generator(settings):
    """The generator from a checkpoint's settings (evaluate.py and --generate use this)."""
    return Generator(settings["nz"], settings["ngf"], settings["image_size"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = common.prepare_model(Generator(args.nz, args.ngf, args.image_size).apply(common.dcgan_init), device)
    discriminator = common.prepare_model(Discriminator(args.ndf, args.image_size).apply(common.dcgan_init), device)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, (args.beta1, args.beta2), device),
                  "discriminator": common.adam(discriminator.parameters(), args.lr, (args.beta1, args.beta2), device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1), with batch-statistics BN as in training (this also suits the
    EMA generator, whose weights never produced running statistics). BN runs on copies of its buffers, so
    drawing samples never changes the model (exact resume)."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise,))


# ---------------------------------------------------------------------------
# Training step: the DCGAN losses, one discriminator and one generator update. This is the part to change:
# the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images = batch["images"]
    noise = torch.randn(real_images.shape[0], args.nz, 1, 1, device=real_images.device)
    with common.autocast(real_images.device, args.amp):
        fake_images = generator(noise)
        # Discriminator: maximise log D(x) + log(1 - D(G(z))); fake detached so G gets no gradient here.
        logits_real = discriminator(real_images)
        logits_fake = discriminator(fake_images.detach())
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)

    with common.autocast(real_images.device, args.amp):
        # Generator: the non-saturating loss, maximise log D(G(z)).
        logits_gen = discriminator(fake_images)
        loss_g = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),  # d_real/d_fake feed the health monitor
            "d_real": torch.sigmoid(logits_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach().float()).mean()}


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
    images, _labels, class_names = load_data(args)
    loader = common.DeviceLoader(images, None, args.batch_size, device, seed=args.seed, flip=not args.no_flip,
                                 rank=dist.rank, world_size=dist.world_size)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    score_fid = prepare_fid(args, images, device) if args.eval_every and master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise for the sample grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    fixed_noise = torch.randn(64, args.nz, 1, 1, generator=torch.Generator().manual_seed(args.seed)).to(device)
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
            real_images, _ = loader.batch(step)
            values = train_step(models, optimizers, {"images": real_images, "labels": None}, args)
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
            if finished or stopping or epoch == 1 or epoch % args.sample_every == 0:
                samples = sample(shown_generator, fixed_noise)
                log.monitor.check_samples(samples, real_reference, epoch, step)
                common.save_grid(samples, os.path.join(out, "samples", f"epoch_{epoch:03d}.png"), nrow=8,
                                 scale=64 // args.image_size, title=f"epoch {epoch}, step {step}")
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
                          "rng": common.rng_state(), "fixed_noise": fixed_noise.cpu(), **log.state_dict(),
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
    """--generate N --checkpoint PATH: a grid of N samples (+ one PNG each, + an interpolation sheet)."""
    grid_path = common.check_output_path(args.grid_out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png"), "--grid-out")
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings = checkpoint["args"]
    generator = common.rebuild(build_generator, settings, args.checkpoint).to(device)
    common.load_weights(generator, checkpoint.get("generator_ema", checkpoint["generator"]), args.checkpoint)
    noise = torch.randn(args.generate, settings["nz"], 1, 1, generator=torch.Generator().manual_seed(args.seed))
    images = sample(generator, noise.to(device))
    common.save_grid(images, grid_path, nrow=min(8, args.generate))
    written = [grid_path]
    if args.png_dir:
        written.append(common.save_pngs(images, args.png_dir))
    if args.interpolate:  # 8 rows, each a walk through the latent space between two random points
        sheet = sample(generator, common.interpolation_noise(8, 10, settings["nz"], args.seed).to(device))
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_interpolation.png", nrow=10))
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
