"""Conditional DCGAN on handwritten letters, 32x32 grayscale: one generator for A and B (or any two or more).

Papers: Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014 (the class label is an extra input
to both networks); Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016 (the convolutional stacks). Coursework: AIML431 (A and B from
EMNIST, a sample grid per epoch, a separate text.py to generate letters, here `--generate`).

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
    python cdcgan_ab.py --generate 10 --checkpoint runs/<run>/last.pt   # 10 of each letter (the course's text.py)
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cdcgan_ab.py --device cuda
"""

import argparse
import glob
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import synthetic

SCRIPT = "cdcgan_ab"
EMNIST_BALANCED = synthetic.EMNIST_BALANCED  # EMNIST-Balanced label -> character
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
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", "emnist", "folder"], default="synthetic",
                        help="synthetic: letters rendered offline; emnist: torchvision EMNIST; "
                             "folder: the course's Train/<EMNIST label>/*.jpeg layout in --data-dir")
    parser.add_argument("--chars", nargs="+", default=list(DEFAULT_CHARS),
                        help="the classes, two or more single characters; label i is the i-th character")
    parser.add_argument("--no-transpose", action="store_true",
                        help="with --data folder/emnist: keep images as stored (EMNIST files are transposed)")
    parser.add_argument("--n-per-char", type=common.positive_int, default=2400,
                        help="with --data synthetic: images rendered per character (the course had 2,400)")
    parser.add_argument("--ngf", type=common.positive_int, default=32, help="generator feature maps")
    parser.add_argument("--ndf", type=common.positive_int, default=32,
                        help="discriminator feature maps (even: half for the image, half for the label)")
    parser.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                        help="no training: write N samples of every class from --checkpoint to a PNG grid")
    parser.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    parser.add_argument("--grid-out", default=None, help="with --generate: output PNG (default next to the checkpoint)")
    common.add_common_args(parser, epochs=10, batch_size=64, lr=5e-4, image_size=32, sample_every=2, save_every=5)
    args = parser.parse_args(argv)
    if args.image_size not in (32, 64):
        parser.error("--image-size must be 32 or 64")
    if args.ndf % 2:
        parser.error("--ndf must be even: the discriminator's first layer is half image, half label")
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    for c in args.chars:
        if len(c) != 1:
            parser.error(f"--chars takes single characters separated by spaces, got {c!r}")
    if len(args.chars) < 2:
        parser.error("--chars needs two or more characters (a conditional GAN chooses between classes)")
    if len(set(args.chars)) != len(args.chars):
        parser.error(f"--chars repeats a character: {' '.join(args.chars)}")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns (uint8 images (N, 1, S, S), int64 labels (N,)), label i = args.chars[i]
# ---------------------------------------------------------------------------
def load_synthetic(args):
    try:
        return synthetic.letters(args.chars, args.n_per_char, image_size=args.image_size, seed=args.seed)
    except ValueError as e:
        raise common.UserError(str(e)) from None


def emnist_labels(chars):
    """EMNIST-Balanced label number of each character; one clear error for the merged lower-case letters."""
    missing = [c for c in chars if c not in EMNIST_BALANCED]
    if missing:
        raise common.UserError(f"EMNIST-Balanced has no class for {' '.join(missing)}: its classes are 0-9, A-Z and "
                               f"a b d e f g h n q r t (other lower-case letters are merged with their capitals)")
    return [EMNIST_BALANCED.index(c) for c in chars]


def load_emnist(args):
    import torchvision

    numbers = emnist_labels(args.chars)
    try:
        dataset = torchvision.datasets.EMNIST(args.data_dir, split="balanced", train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline machines raise URLError, HTTPError, RuntimeError...
        raise common.UserError(f"EMNIST is not in {args.data_dir}/EMNIST and could not be downloaded ({type(e).__name__}): "
                               f"fetch gzip.zip from the NIST EMNIST page and unpack it to {args.data_dir}/EMNIST/raw/") from None
    images = dataset.data.unsqueeze(1)  # uint8 (N, 1, 28, 28), stored transposed
    if not args.no_transpose:
        images = images.transpose(2, 3)
    keep = [dataset.targets == number for number in numbers]
    labels = torch.cat([torch.full((int(k.sum()),), i, dtype=torch.int64) for i, k in enumerate(keep)])
    images = torch.cat([images[k] for k in keep]).contiguous()
    return common.to_uint8_images(images, args.image_size, 1), labels


def load_folder(args):
    """The course's layout: <data-dir>/Train/<EMNIST label>/*.jpeg (28x28 PNG data, transposed); A = 10, B = 11."""
    import numpy as np
    from PIL import Image

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
        files = sorted(f for f in os.listdir(path) if f.lower().endswith((".jpeg", ".jpg", ".png")))
        if not files:
            raise common.UserError(f"class folder {path} holds no .jpeg/.jpg/.png images")
        arrays = []
        for f in files:
            try:
                with Image.open(os.path.join(path, f)) as im:
                    arrays.append(np.asarray(im.convert("L").resize((28, 28)) if im.size != (28, 28) else im.convert("L")))
            except OSError as e:
                raise common.UserError(f"cannot read image {os.path.join(path, f)}: {e}") from None
        images = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
        if not args.no_transpose:
            images = images.transpose(2, 3)
        all_images.append(common.to_uint8_images(images.contiguous(), args.image_size, 1))
        all_labels.append(torch.full((len(images),), label, dtype=torch.int64))
    return torch.cat(all_images), torch.cat(all_labels)


def load_data(args):
    return {"synthetic": load_synthetic, "emnist": load_emnist, "folder": load_folder}[args.data](args)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """(z, label) -> image. Noise and one-hot label each become W/2 x 4 x 4 through their own transposed conv
    (+ ReLU, and BN on the noise branch); the concatenated W x 4 x 4 goes up the usual DCGAN stack to a tanh image."""

    def __init__(self, num_classes, nz=100, ngf=32, channels=1, image_size=32):
        super().__init__()
        self.num_classes = num_classes
        blocks = {32: 3, 64: 4}[image_size]  # each block doubles the resolution from 4x4
        width = ngf * 2 ** (blocks - 1)
        self.noise_branch = nn.Sequential(nn.ConvTranspose2d(nz, width // 2, 4, 1, 0, bias=False),
                                          nn.BatchNorm2d(width // 2), nn.ReLU(True))
        # No BN on the label branch. With it, the one-hot's features are at full strength from the first step and
        # the generator draws each class from the label alone, ignoring the noise (two classes, 300 steps: the
        # samples of a class 7-8x closer together than real letters; without BN, as spread out as real letters).
        self.label_branch = nn.Sequential(nn.ConvTranspose2d(num_classes, width // 2, 4, 1, 0, bias=False), nn.ReLU(True))
        layers = []
        for _ in range(blocks - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels):
        one_hot = F.one_hot(labels, self.num_classes).to(z.dtype).view(-1, self.num_classes, 1, 1)
        hidden = torch.cat([self.noise_branch(z.view(z.shape[0], -1, 1, 1)), self.label_branch(one_hot)], 1)
        return self.net(hidden)


class Discriminator(nn.Module):
    """(image, label) -> one logit. The image and the one-hot label, spread to K constant H x W maps, each go
    through their own strided conv to ndf/2 maps (LeakyReLU, no BN on the first layer, as in DCGAN);
    the concatenated ndf maps go down the usual stack."""

    def __init__(self, num_classes, ndf=32, channels=1, image_size=32):
        super().__init__()
        self.num_classes = num_classes
        blocks = {32: 3, 64: 4}[image_size]
        self.image_branch = nn.Sequential(nn.Conv2d(channels, ndf // 2, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        self.label_branch = nn.Sequential(nn.Conv2d(num_classes, ndf // 2, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        layers = []
        width = ndf
        for _ in range(blocks - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x, labels):
        label_maps = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        hidden = torch.cat([self.image_branch(x), self.label_branch(label_maps)], 1)
        return self.net(hidden).flatten()


def build_generator(args):
    """Rebuild the generator from the plain args dict stored in a checkpoint (evaluate.py uses this)."""
    return Generator(len(args["chars"]), args["nz"], args["ngf"], 1, args["image_size"])


def build(args, device):
    num_classes = len(args.chars)
    generator = common.prepare_model(
        Generator(num_classes, args.nz, args.ngf, 1, args.image_size).apply(common.dcgan_init), device)
    discriminator = common.prepare_model(
        Discriminator(num_classes, args.ndf, 1, args.image_size).apply(common.dcgan_init), device)
    betas = (args.beta1, args.beta2)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, betas, device),
                  "discriminator": common.adam(discriminator.parameters(), args.lr, betas, device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1) and class indices `labels` (N,) into args["chars"]
    (None: the classes in turn), with batch-statistics BN as in training (the grids mix all classes in one
    batch, as the training batches do). The running statistics are used by eval mode only; we sample on copies
    of them so that drawing samples never changes the model (exact resume depends on that)."""
    if labels is None:
        labels = torch.arange(len(noise)) % generator.num_classes
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels.to(noise.device)))


# ---------------------------------------------------------------------------
# Training step: the conditional GAN losses, one discriminator and one generator update
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
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(logits_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach().float()).mean()}


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------
LOG_FIELDS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s"]
MODEL_ARGS = ("chars", "nz", "ngf", "ndf", "image_size")  # a checkpoint only fits a model built with the same


def train_loop(args, loader, out, dist, checkpoint=None):
    """Train on the loader's images and class labels into run folder `out`, from `checkpoint` if given."""
    device, master = dist.device, dist.is_master
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    models, optimizers = build(args, device)
    num_classes = len(args.chars)
    fixed_noise = torch.randn(SAMPLES_PER_ROW, args.nz, 1, 1, generator=torch.Generator().manual_seed(args.seed)).to(device)
    epoch, batch_in_epoch, step = 0, 0, 0
    history = {"step": [], "loss_d": [], "loss_g": [], "d_real": [], "d_fake": []}
    meter = common.LossMeter()

    if checkpoint is not None:
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
            print(f"resumed at epoch {epoch}, step {step}", file=sys.stderr)
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)

    # One row per class, the same noise in every row: what changes along a column is the label alone.
    grid_noise = fixed_noise.repeat(num_classes, 1, 1, 1)
    grid_labels = torch.arange(num_classes, device=device).repeat_interleave(SAMPLES_PER_ROW)
    train_models = {k: common.maybe_compile(common.wrap_ddp(m, dist, args.sync_bn), args.compile) for k, m in models.items()}
    logger = common.CSVLogger(os.path.join(out, "log.csv"), LOG_FIELDS, resume_step=step if checkpoint else None,
                              tensorboard_dir=os.path.join(out, "tb") if args.track else None) if master else None
    monitor = common.HealthMonitor(enabled=master)
    real_reference = loader.to_float(loader.images[loader.labels == 0][:64])  # the first class, as the grid's first row
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
        for k in history:
            history[k].append(step if k == "step" else means[k])
        if master:
            logger.log({"step": step, "epoch": epoch, **means, "images_per_s": images_per_s})
            bar.set_postfix(loss_d=f"{means['loss_d']:.3f}", loss_g=f"{means['loss_g']:.3f}",
                            img_s=f"{images_per_s:.0f}", refresh=False)

    def write_samples(label):
        images_now = sample(models["generator"], grid_noise, grid_labels)
        # Collapse within a class (every A alike) would hide among the differences between classes: check one row.
        monitor.check_samples(images_now[:SAMPLES_PER_ROW], real_reference, label, step)
        common.save_grid(images_now, os.path.join(out, "samples", f"epoch_{label:03d}.png"), nrow=SAMPLES_PER_ROW,
                         row_labels=args.chars)
        common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))), os.path.join(out, "progress.gif"))
        common.plot_losses(history, os.path.join(out, "losses.png"),
                           title=f"conditional DCGAN losses: {' '.join(args.chars)}, lr {args.lr:g}")

    bar = common.progress_bar(total_steps, initial=step, desc=" ".join(args.chars), disable=not master or args.no_progress)
    interval_start, interval_steps, stopped, divergence = time.perf_counter(), 0, False, 0.0
    with common.GracefulExit() as stop:
        while epoch < args.epochs and not stopped:
            for images_batch, labels_batch in loader.epoch(epoch, batch_in_epoch):
                meter.add(train_step(train_models, optimizers, {"images": images_batch, "labels": labels_batch}, args))
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
    return history


def train(args):
    dist = common.setup_distributed(args.device)
    common.seed_everything(args.seed, args.deterministic)
    out = args.out or common.default_run_dir(SCRIPT)
    args.out = out
    # Every input error (data, checkpoint) surfaces before anything is written.
    images, labels = load_data(args)
    loader = common.DeviceLoader(images, labels, args.batch_size, dist.device, seed=args.seed, rank=dist.rank,
                                 world_size=dist.world_size)  # refuses a batch larger than the data
    resume_path = common.resolve_resume(args.resume, out)
    checkpoint = common.load_checkpoint(resume_path, SCRIPT, map_location=dist.device) if resume_path else None
    if checkpoint is not None:
        show = lambda v: " ".join(v) if isinstance(v, list) else v  # noqa: E731
        differ = [f"--{k.replace('_', '-')} {show(checkpoint['args'].get(k))} (now {show(getattr(args, k))})"
                  for k in MODEL_ARGS if checkpoint["args"].get(k) != getattr(args, k)]
        if differ:
            raise common.UserError(f"{resume_path} was trained with other model settings: {', '.join(differ)}")
    if dist.is_master:
        common.prepare_run_dir(out, resume=args.resume is not None)
        common.write_config(out, args, SCRIPT, dist.device,
                            {"images_per_class": {c: int((labels == i).sum()) for i, c in enumerate(args.chars)}})
    try:
        train_loop(args, loader, out, dist, checkpoint)
        if dist.is_master:
            print(f"done: {out}", file=sys.stderr)
    finally:
        common.cleanup_distributed(dist)
    return out


def generate(args):
    """--generate N --checkpoint PATH: N samples of every class, one row per class (replaces the course's text.py)."""
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    chars = checkpoint["args"]["chars"]
    generator = build_generator(checkpoint["args"]).to(device)
    generator.load_state_dict(checkpoint["generator"])
    # The same N noise vectors in every row, so a column shows one "handwriting" as every letter.
    noise = torch.randn(args.generate, checkpoint["args"]["nz"], 1, 1, generator=torch.Generator().manual_seed(args.seed))
    noise = noise.repeat(len(chars), 1, 1, 1).to(device)
    labels = torch.arange(len(chars), device=device).repeat_interleave(args.generate)
    images = sample(generator, noise, labels)
    path = args.grid_out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    common.save_grid(images, path, nrow=args.generate, row_labels=chars)
    print(f"wrote {args.generate} samples of each of {' '.join(chars)} to {path}")
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.generate is not None:
        return generate(args)
    return train(args)


if __name__ == "__main__":
    common.run_main(main)
