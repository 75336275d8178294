"""Conditional DCGAN on handwritten letters, 32x32 grayscale: one generator for A and B (or any two or more).

Papers: Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014 (the class label is an extra input to both
networks); Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks", ICLR 2016 (the convolutional stacks). Coursework: AIML431 (A and B from EMNIST, a sample grid per epoch, a
separate text.py to generate letters, here `--generate`).

The label enters each network through a branch of its own (the report's hidden_layer1 / hidden_layer2):
    generator:      noise z           -> ConvTranspose, BN, ReLU -> W/2 x 4 x 4 -+-> W x 4 x 4 -> DCGAN stack -> image
                    one-hot label     -> ConvTranspose, ReLU     -> W/2 x 4 x 4 -+   (no BN here: see Generator)
    discriminator:  image             -> conv, LeakyReLU -> ndf/2 x 16 x 16 -+-> ndf x 16 x 16 -> DCGAN stack -> logit
                    label as K planes -> conv, LeakyReLU -> ndf/2 x 16 x 16 -+

Run (offline, embedded letters rendered from matplotlib's fonts; a few minutes on 2 CPU cores):
    python cdcgan_ab.py                                            # A and B
    python cdcgan_ab.py --chars A B C D --epochs 20                # any two or more characters
    python cdcgan_ab.py --data emnist                              # torchvision EMNIST (balanced split)
    python cdcgan_ab.py --data folder --data-dir emnist_jpeg       # the course's Train/10 (A), Train/11 (B)
    python cdcgan_ab.py --resume auto --out runs/<run>             # continue an interrupted run
    python cdcgan_ab.py --generate 10 --checkpoint runs/<run>/last.pt --interpolate   # 10 of each letter (text.py)
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cdcgan_ab.py --device cuda
"""

import argparse
import copy
import glob
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = common.script_name(__file__)  # a copy of this file (my_gan.py) writes checkpoints of its own name
EMNIST_BALANCED = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"  # EMNIST-Balanced label -> character
DEFAULT_CHARS = ["A", "B"]
SAMPLES_PER_ROW = 8  # fixed-noise grid: this many samples per class, the same noise in every row
# The classes are the run's --chars: evaluate.py reads them from a checkpoint's args["chars"] (label i = chars[i]).
EVAL = {"dataset": "letters", "conditioning": "class", "classes": DEFAULT_CHARS, "num_classes": len(DEFAULT_CHARS),
        "classes_arg": "chars"}


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional DCGAN on 32x32 handwritten letters (default A and B).",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "emnist", "folder"], default="synthetic",
                   help="synthetic: letters rendered offline; emnist: torchvision EMNIST; folder: the course's "
                        "Train/<EMNIST label>/*.jpeg in --data-dir")
    g.add_argument("--data-dir", default="data", help="where real datasets are read from / downloaded to")
    g.add_argument("--chars", nargs="+", default=list(DEFAULT_CHARS), help="the classes (two or more); label i = i-th")
    g.add_argument("--no-transpose", action="store_true",
                   help="with --data folder/emnist: keep images as stored (EMNIST files are transposed)")
    g.add_argument("--n-per-class", type=common.positive_int, default=2400, help="--data synthetic: images per character")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=32, help="image height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=32, help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=32, help="discriminator feature maps (even: half image, half label)")
    g.add_argument("--epochs", type=common.positive_int, default=10, help="passes over the training set")
    g.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per step per process (global batch = batch size x processes)")
    g.add_argument("--lr", type=common.positive_float, default=5e-4, help="Adam learning rate of both networks")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.0,
                   help="decay of the moving average of the generator's weights that samples and evaluate.py use (0: off)")
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
    g = parser.add_argument_group("logging, samples, checkpoints")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log losses every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=2, help="sample grid every N epochs")
    g.add_argument("--save-every", type=common.positive_int, default=5, help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                   help="draw N samples of every class from --checkpoint into a grid, one row per class")
    g.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", default=None, help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None, help="with --generate: also one PNG per sample in this folder")
    g.add_argument("--interpolate", action="store_true", help="with --generate: also a latent interpolation sheet and a "
                   "class one (fixed noise, the label input blended from the first character to the second)")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.ndf % 2:
        parser.error("--ndf must be even: the discriminator's first layer is half image, half label")
    if any(len(c) != 1 for c in args.chars):
        parser.error(f"--chars takes single characters separated by spaces, got {' '.join(args.chars)}")
    if len(args.chars) < 2:
        parser.error("--chars needs two or more characters (a conditional GAN chooses between classes)")
    if len(set(args.chars)) != len(args.chars):
        parser.error(f"--chars repeats a character: {' '.join(args.chars)}")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns (uint8 images (N, 1, S, S), int64 labels (N,)), label i = args.chars[i]
# ---------------------------------------------------------------------------
def load_synthetic(args):
    import synthetic  # only for the offline data: a copied script with real data needs no synthetic.py

    try:
        return synthetic.letters(args.chars, args.n_per_class, image_size=args.image_size, seed=args.seed)
    except ValueError as e:
        raise common.UserError(str(e)) from None


def emnist_labels(chars):
    """EMNIST-Balanced label number of each character; one clear error for the merged lower-case letters."""
    missing = [c for c in chars if c not in EMNIST_BALANCED]
    if missing:
        raise common.UserError(f"EMNIST-Balanced has no class for {' '.join(missing)}: its classes are 0-9, A-Z and "
                               f"a b d e f g h n q r t (other lower-case letters are merged with their capitals)")
    return [EMNIST_BALANCED.index(c) for c in chars]


def upright(images, args):
    """uint8 (N, 1, H, W) as stored -> (N, 1, S, S), transposed back upright (EMNIST files are stored transposed)."""
    return common.to_uint8_images((images if args.no_transpose else images.transpose(2, 3)).contiguous(), args.image_size, 1)


def load_emnist(args):
    import torchvision

    numbers = emnist_labels(args.chars)
    try:
        dataset = torchvision.datasets.EMNIST(args.data_dir, split="balanced", train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline machines raise URLError, HTTPError, RuntimeError...
        raise common.UserError(f"EMNIST is not in {args.data_dir}/EMNIST and could not be downloaded ({type(e).__name__}): "
                               f"fetch gzip.zip from the NIST EMNIST page and unpack it to {args.data_dir}/EMNIST/raw/") from None
    keep = [dataset.targets == number for number in numbers]
    labels = torch.cat([torch.full((int(k.sum()),), i, dtype=torch.int64) for i, k in enumerate(keep)])
    return upright(torch.cat([dataset.data[k] for k in keep]).unsqueeze(1), args), labels


def load_folder(args):
    """The course's layout: <data-dir>/Train/<EMNIST label>/*.jpeg (28x28 PNG data, transposed); A = 10, B = 11."""
    root = os.path.join(args.data_dir, "Train") if os.path.isdir(os.path.join(args.data_dir, "Train")) else args.data_dir
    if not os.path.isdir(root):
        raise common.UserError(f"data folder not found: {args.data_dir} (expected Train/<label>/*.jpeg inside)")
    all_images, all_labels = [], []
    for label, number in enumerate(emnist_labels(args.chars)):
        path = os.path.join(root, str(number))
        if not os.path.isdir(path):
            present = sorted((d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), key=lambda d: (len(d), d))
            raise common.UserError(f"class folder {path} for {args.chars[label]!r} does not exist "
                                   f"(present: {' '.join(present) or 'none'})")
        try:
            files = common.list_image_files(path)
        except common.UserError:
            raise common.UserError(f"class folder {path} holds no .jpeg/.jpg/.png images") from None
        all_images += [np.asarray(common.read_image(f, "L").resize((28, 28))) for f in files]
        all_labels.append(torch.full((len(files),), label, dtype=torch.int64))
    return upright(torch.from_numpy(np.stack(all_images)).unsqueeze(1), args), torch.cat(all_labels)


def load_data(args):
    return {"synthetic": load_synthetic, "emnist": load_emnist, "folder": load_folder}[args.data](args)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """(z, label) -> image. Noise and one-hot label each become W/2 x 4 x 4 through their own transposed conv
    (+ ReLU, and BN on the noise branch); the concatenated W x 4 x 4 goes up the usual DCGAN stack to a tanh image."""

    def __init__(self, num_classes, nz=100, ngf=32, image_size=32, channels=1):
        super().__init__()
        self.num_classes = num_classes
        doublings = {32: 3, 64: 4}[image_size]  # from 4x4 to the image size
        width = ngf * 2 ** (doublings - 1)
        self.noise_branch = nn.Sequential(nn.ConvTranspose2d(nz, width // 2, 4, 1, 0, bias=False),
                                          nn.BatchNorm2d(width // 2), nn.ReLU(True))
        # No BN on the label branch. With it, the one-hot's features are at full strength from the first step and
        # the generator draws each class from the label alone, ignoring the noise (two classes, 300 steps: the
        # samples of a class 7-8x closer together than real letters; without BN, as spread out as real letters).
        self.label_branch = nn.Sequential(nn.ConvTranspose2d(num_classes, width // 2, 4, 1, 0, bias=False), nn.ReLU(True))
        layers = []
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels):
        """labels: class indices (N,), or (N, K) float weights of the classes (a blend of labels, --interpolate)."""
        one_hot = labels.to(z.dtype) if labels.is_floating_point() else F.one_hot(labels, self.num_classes).to(z.dtype)
        hidden = torch.cat([self.noise_branch(z.view(z.shape[0], -1, 1, 1)),
                            self.label_branch(one_hot.view(-1, self.num_classes, 1, 1))], 1)
        return self.net(hidden)


class Discriminator(nn.Module):
    """(image, label) -> one logit. The image and the one-hot label as K constant maps each go through their own strided
    conv to ndf/2 maps (LeakyReLU, no BN on the first layer, as in DCGAN); the concatenated ndf go down the usual stack."""

    def __init__(self, num_classes, ndf=32, image_size=32, channels=1):
        super().__init__()
        self.num_classes = num_classes
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        self.image_branch = nn.Sequential(nn.Conv2d(channels, ndf // 2, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        self.label_branch = nn.Sequential(nn.Conv2d(num_classes, ndf // 2, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        layers, width = [], ndf
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x, labels):
        label_maps = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        hidden = torch.cat([self.image_branch(x), self.label_branch(label_maps)], 1)
        return self.net(hidden).flatten()


def build_generator(settings):
    """The generator from a checkpoint's settings (evaluate.py and --generate use this)."""
    return Generator(len(settings["chars"]), settings["nz"], settings["ngf"], settings["image_size"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    num_classes = len(args.chars)
    generator = common.prepare_model(Generator(num_classes, args.nz, args.ngf, args.image_size).apply(common.dcgan_init), device)
    discriminator = common.prepare_model(Discriminator(num_classes, args.ndf, args.image_size).apply(common.dcgan_init), device)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, (args.beta1, args.beta2), device),
                  "discriminator": common.adam(discriminator.parameters(), args.lr, (args.beta1, args.beta2), device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1) and labels (N,) into args["chars"] (None: the classes in turn), with
    batch-statistics BN as in training, on copies of its buffers: drawing samples never changes the model (exact resume)."""
    if labels is None:
        labels = torch.arange(len(noise)) % generator.num_classes
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels.to(noise.device)))


# ---------------------------------------------------------------------------
# Training step: the conditional GAN losses, one discriminator and one generator update. This is the part to
# change: the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, real_labels = batch["images"], batch["labels"]
    n, device = real_images.shape[0], real_images.device
    noise = torch.randn(n, args.nz, 1, 1, device=device)
    fake_labels = torch.randint(len(args.chars), (n,), device=device)  # the generator is asked for random classes
    with common.autocast(device, args.amp):
        fake_images = generator(noise, fake_labels)
        # Discriminator: maximise log D(x|y) + log(1 - D(G(z|y')|y')); fake detached so G gets no gradient here.
        logits_real = discriminator(real_images, real_labels)
        logits_fake = discriminator(fake_images.detach(), fake_labels)
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)

    with common.autocast(device, args.amp):
        # Generator: the non-saturating loss, maximise log D(G(z|y')|y'): a B that looks like an A is caught.
        logits_gen = discriminator(fake_images, fake_labels)
        loss_g = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),  # d_real/d_fake feed the health monitor
            "d_real": torch.sigmoid(logits_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach().float()).mean()}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: every input error (flags, data, checkpoint) surfaces before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = common.find_resume_checkpoint(args.resume, out, SCRIPT, map_location=device)
    if checkpoint is not None:  # a resumed run keeps its settings (classes, model shapes, data, learning rate)
        args = common.settings_from_checkpoint(args, checkpoint, resume_path)
    common.seed_everything(args.seed, args.deterministic)
    images, labels = load_data(args)
    loader = common.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed,
                                 rank=dist.rank, world_size=dist.world_size)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise and labels for the sample grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    num_classes = len(args.chars)
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    # One row per class, the same noise in every row: what changes down a column is the label alone.
    fixed_noise = torch.randn(SAMPLES_PER_ROW, args.nz, 1, 1, generator=torch.Generator().manual_seed(args.seed))
    fixed_noise = fixed_noise.repeat(num_classes, 1, 1, 1).to(device)
    fixed_labels = torch.arange(num_classes, device=device).repeat_interleave(SAMPLES_PER_ROW)
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
        common.write_config(out, args, SCRIPT, device,
                            {"images_per_class": {c: int((labels == i).sum()) for i, c in enumerate(args.chars)}})
        real = torch.cat([images[labels == i][:SAMPLES_PER_ROW] for i in range(num_classes)])
        common.save_grid(loader.to_float(real.to(device)), os.path.join(out, "real.png"), nrow=SAMPLES_PER_ROW,
                         row_labels=args.chars, title="real images")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=" ".join(args.chars))
    real_reference = loader.to_float(images[labels == 0][:64].to(device))  # the first class, as the grid's first row

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

            # End of an epoch, of the run, or an interruption: log, samples, checkpoints.
            finished = step == last_step or stopping == "time"
            if epoch_done or finished:  # an interrupted run keeps its unlogged steps in last.pt (exact resume)
                log.flush(step, epoch)
            divergence = common.replica_divergence(generator, dist) if finished else 0.0  # every rank takes part
            if not master:
                if stopping or finished:
                    break
                continue
            if finished or stopping or epoch == 1 or epoch % args.sample_every == 0:
                samples = sample(shown_generator, fixed_noise, fixed_labels)
                # Collapse within a class (every A alike) would hide among the differences between classes: one row.
                log.monitor.check_samples(samples[:SAMPLES_PER_ROW], real_reference, epoch, step)
                common.save_grid(samples, os.path.join(out, "samples", f"epoch_{epoch:03d}.png"), nrow=SAMPLES_PER_ROW,
                                 row_labels=args.chars, title=f"epoch {epoch}, step {step}")
                common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                os.path.join(out, "progress.gif"))
                common.plot_losses(log.history, os.path.join(out, "losses.png"),
                                   title=f"conditional DCGAN losses: {' '.join(args.chars)}, lr {args.lr:g}")
            checkpoint = {"format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
                          "class_names": list(args.chars), "step": step, "epoch": epoch, "finished": finished,
                          **{name: module.state_dict() for name, module in saved.items()},
                          "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                          "rng": common.rng_state(), "fixed_noise": fixed_noise.cpu(), "fixed_labels": fixed_labels.cpu(),
                          **log.state_dict(), "world_size": dist.world_size, "replica_divergence": divergence}
            common.save_checkpoint(os.path.join(out, "last.pt"), checkpoint)
            if epoch_done and epoch % args.save_every == 0:
                common.save_checkpoint(os.path.join(out, f"epoch_{epoch:03d}.pt"), checkpoint)
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
    """--generate N --checkpoint PATH: N samples of every class, one row per class (the course's text.py);
    + one PNG each, + a latent and a class interpolation sheet."""
    grid_path = common.check_output_path(args.grid_out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png"), "--grid-out")
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    chars, nz = checkpoint["args"]["chars"], checkpoint["args"]["nz"]
    generator = common.rebuild(build_generator, checkpoint["args"], args.checkpoint).to(device)
    common.load_weights(generator, checkpoint.get("generator_ema", checkpoint["generator"]), args.checkpoint)
    # The same N noise vectors in every row, so a column shows one "handwriting" as every letter.
    noise = torch.randn(args.generate, nz, 1, 1, generator=torch.Generator().manual_seed(args.seed))
    labels = torch.arange(len(chars)).repeat_interleave(args.generate)
    images = sample(generator, noise.repeat(len(chars), 1, 1, 1).to(device), labels)
    common.save_grid(images, grid_path, nrow=args.generate, row_labels=chars)
    written = [grid_path]
    if args.png_dir:
        written.append(common.save_pngs(images, args.png_dir))
    if args.interpolate:  # 8 rows, each a walk through the latent space between two random points, as class i % K
        rows = torch.arange(8) % len(chars)
        sheet = sample(generator, common.interpolation_noise(8, 10, nz, args.seed).to(device), rows.repeat_interleave(10))
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_interpolation.png", nrow=10,
                                        row_labels=[chars[i] for i in rows]))
        blend = torch.zeros(10, len(chars))  # fixed noise along a row, the label input from the first class to the second
        blend[:, 0], blend[:, 1] = torch.linspace(1, 0, 10), torch.linspace(0, 1, 10)
        noise = torch.randn(8, nz, 1, 1, generator=torch.Generator().manual_seed(args.seed))
        sheet = sample(generator, noise.repeat_interleave(10, 0).to(device), blend.repeat(8, 1))
        written.append(common.save_grid(sheet, grid_path[:-len(".png")] + "_class_interpolation.png", nrow=10,
                                        title=f"label input {chars[0]} -> {chars[1]}, fixed noise per row"))
    print(f"wrote {args.generate} samples of each of {' '.join(chars)}: " + ", ".join(written))
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
