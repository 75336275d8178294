"""DCGAN on handwritten characters, 32x32 grayscale: one generator per character.

Paper: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016. Coursework: AIML431 (one DCGAN per character,
sample grids every 10 epochs, progress animation, loss curves, learning-rate comparison).

Run (offline, embedded letters rendered from matplotlib's fonts; a few minutes on 2 CPU cores):
    python dcgan_letters.py
    python dcgan_letters.py --chars O u W E H --epochs 30          # the report's characters
    python dcgan_letters.py --chars A --lr 1e-4 5e-4 1e-3          # learning-rate comparison plot
    python dcgan_letters.py --data emnist --chars A B              # torchvision EMNIST (balanced split)
    python dcgan_letters.py --data folder --data-dir emnist_jpeg --folders 0 2 3 14 17   # the course's layout
    python dcgan_letters.py --generate 64 --checkpoint runs/<run>/A/last.pt             # samples from a checkpoint
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 dcgan_letters.py --device cuda
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

SCRIPT = "dcgan_letters"
EMNIST_BALANCED = synthetic.EMNIST_BALANCED  # EMNIST-Balanced label -> character
EVAL = {"dataset": "letters", "conditioning": "none"}


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="DCGAN on 32x32 handwritten characters, one generator per character.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", "emnist", "folder"], default="synthetic",
                        help="synthetic: letters rendered offline; emnist: torchvision EMNIST; "
                             "folder: the course's Train/<label>/*.jpeg layout in --data-dir")
    parser.add_argument("--chars", nargs="+", default=["A", "B"],
                        help="characters to train, one generator each, in turn")
    parser.add_argument("--folders", nargs="+", default=None,
                        help="with --data folder: train on these numbered class folders instead of --chars")
    parser.add_argument("--no-transpose", action="store_true",
                        help="with --data folder/emnist: keep images as stored (EMNIST files are transposed)")
    parser.add_argument("--emnist-split", default="balanced", help="with --data emnist: torchvision EMNIST split")
    parser.add_argument("--n-per-char", type=common.positive_int, default=2400,
                        help="with --data synthetic: images rendered per character (the course had 2,400)")
    parser.add_argument("--lr", dest="learning_rates", type=common.positive_float, nargs="+", default=[5e-4],
                        help="Adam learning rate; several values train each in turn and plot a comparison")
    parser.add_argument("--ngf", type=common.positive_int, default=32, help="generator feature maps")
    parser.add_argument("--ndf", type=common.positive_int, default=32, help="discriminator feature maps")
    parser.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                        help="no training: write N samples from --checkpoint to a PNG grid")
    parser.add_argument("--checkpoint", default=None, help="with --generate: the checkpoint to sample from")
    parser.add_argument("--grid-out", default=None, help="with --generate: output PNG (default next to the checkpoint)")
    common.add_common_args(parser, epochs=15, batch_size=64, lr=None, image_size=32, sample_every=10, save_every=10)
    args = parser.parse_args(argv)
    if args.image_size not in (32, 64):
        parser.error("--image-size must be 32 or 64")
    if args.folders is not None and args.data != "folder":
        parser.error("--folders needs --data folder")
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    for c in args.chars:
        if len(c) != 1:
            parser.error(f"--chars takes single characters separated by spaces, got {c!r}")
    args.lr = args.learning_rates[0]  # the rate of the run being trained; train() sets each in turn
    runs = len(args.folders if args.folders is not None else args.chars) * len(args.learning_rates)
    if args.resume not in (None, "auto") and runs > 1:
        parser.error("--resume PATH continues one run: with several characters or learning rates use "
                     "--resume auto --out <run folder>")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns {name: uint8 tensor (N, 1, S, S)}, one entry per character/folder
# ---------------------------------------------------------------------------
def load_synthetic(args):
    images_by_char = {}
    for c in args.chars:
        try:  # a seed per character: the same seed would give sample i of every class the same pen and pose
            images, _ = synthetic.letters([c], args.n_per_char, image_size=args.image_size, seed=args.seed * 1000 + ord(c))
        except ValueError as e:
            raise common.UserError(str(e)) from None
        images_by_char[c] = images
    return images_by_char


def load_emnist(args):
    import torchvision

    missing = [c for c in args.chars if c not in EMNIST_BALANCED]
    if missing and args.emnist_split == "balanced":
        raise common.UserError(f"EMNIST-Balanced has no class for {' '.join(missing)} (it merges c i j k l m o p s u v "
                               f"w x y z with their capitals): use the capital letter or --data synthetic")
    try:
        dataset = torchvision.datasets.EMNIST(args.data_dir, split=args.emnist_split, train=True, download=True)
    except Exception as e:  # noqa: BLE001 - offline machines raise URLError, HTTPError, RuntimeError...
        raise common.UserError(f"EMNIST is not in {args.data_dir}/EMNIST and could not be downloaded ({type(e).__name__}): "
                               f"fetch gzip.zip from the NIST EMNIST page and unpack it to {args.data_dir}/EMNIST/raw/") from None
    images = dataset.data.unsqueeze(1)  # uint8 (N, 1, 28, 28), stored transposed
    if not args.no_transpose:
        images = images.transpose(2, 3)
    return {c: common.to_uint8_images(images[dataset.targets == EMNIST_BALANCED.index(c)].contiguous(), args.image_size, 1)
            for c in args.chars}


def load_folder(args):
    """The course's layout: <data-dir>/Train/<EMNIST label>/*.jpeg (28x28 PNG data, transposed)."""
    import numpy as np
    from PIL import Image

    root = os.path.join(args.data_dir, "Train") if os.path.isdir(os.path.join(args.data_dir, "Train")) else args.data_dir
    if not os.path.isdir(root):
        raise common.UserError(f"data folder not found: {args.data_dir} (expected Train/<label>/*.jpeg inside)")
    if args.folders is not None:
        wanted = {f"folder_{f}": f for f in args.folders}
    else:
        wanted = {}
        for c in args.chars:
            if c not in EMNIST_BALANCED:
                raise common.UserError(f"no EMNIST-Balanced folder holds {c!r}: use --folders with the label numbers")
            wanted[c] = str(EMNIST_BALANCED.index(c))
    images_by_name = {}
    for name, folder in wanted.items():
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            present = sorted((d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), key=lambda d: (len(d), d))
            raise common.UserError(f"class folder {path} does not exist (present: {' '.join(present) or 'none'})")
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
        images_by_name[name] = common.to_uint8_images(images.contiguous(), args.image_size, 1)
    return images_by_name


def load_data(args):
    return {"synthetic": load_synthetic, "emnist": load_emnist, "folder": load_folder}[args.data](args)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """z (nz x 1 x 1) -> 4x4 -> ... -> image; transposed convs with BN + ReLU, tanh output (DCGAN)."""

    def __init__(self, nz=100, ngf=32, channels=1, image_size=32):
        super().__init__()
        blocks = {32: 3, 64: 4}[image_size]  # each block doubles the resolution from 4x4
        width = ngf * 2 ** (blocks - 1)
        layers = [nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(blocks - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """image -> one logit; strided convs with LeakyReLU(0.2), BN except on the first layer (DCGAN)."""

    def __init__(self, ndf=32, channels=1, image_size=32):
        super().__init__()
        blocks = {32: 3, 64: 4}[image_size]
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(blocks - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


def build_generator(args):
    """Rebuild the generator from the plain args dict stored in a checkpoint (evaluate.py uses this)."""
    return Generator(args["nz"], args["ngf"], 1, args["image_size"])


def build(args, device):
    # The course template's init never ran (it matched lower-case 'conv'); ours does.
    generator = common.prepare_model(Generator(args.nz, args.ngf, 1, args.image_size).apply(common.dcgan_init), device)
    discriminator = common.prepare_model(Discriminator(args.ndf, 1, args.image_size).apply(common.dcgan_init), device)
    betas = (args.beta1, args.beta2)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, betas, device),
                  "discriminator": common.adam(discriminator.parameters(), args.lr, betas, device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1), with batch-statistics BN as in training.
    The running statistics are used by eval mode only; we sample on copies of them so that drawing samples
    never changes the model (exact resume depends on that)."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise,))


# ---------------------------------------------------------------------------
# Training step: the DCGAN losses, one discriminator and one generator update
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
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(logits_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach().float()).mean()}


# ---------------------------------------------------------------------------
# Training loop for one character at one learning rate
# ---------------------------------------------------------------------------
LOG_FIELDS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s"]


def train_one(args, name, images, out, dist):
    """Train one generator on `images` (uint8) into run folder `out`; returns its history."""
    device, master = dist.device, dist.is_master
    if master:
        common.prepare_run_dir(out, resume=args.resume is not None)
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    models, optimizers = build(args, device)
    fixed_noise = torch.randn(64, args.nz, 1, 1, generator=torch.Generator().manual_seed(args.seed)).to(device)
    loader = common.DeviceLoader(images, None, args.batch_size, device, seed=args.seed, rank=dist.rank,
                                 world_size=dist.world_size)
    epoch, batch_in_epoch, step = 0, 0, 0
    history = {"step": [], "loss_d": [], "loss_g": [], "d_real": [], "d_fake": []}
    meter = common.LossMeter()

    resume_path = common.resolve_resume(args.resume, out)
    if resume_path:
        checkpoint = common.load_checkpoint(resume_path, SCRIPT, map_location=device)
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
            print(f"[{name}] resumed from {resume_path} at epoch {epoch}, step {step}", file=sys.stderr)
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
            "format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args), "char": name,
            "lr": args.lr, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "finished": finished,
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
        images_now = sample(models["generator"], fixed_noise)
        monitor.check_samples(images_now, real_reference, label, step)
        common.save_grid(images_now, os.path.join(out, "samples", f"epoch_{label:03d}.png"), nrow=8)
        common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))), os.path.join(out, "progress.gif"))
        common.plot_losses(history, os.path.join(out, "losses.png"), title=f"DCGAN losses: {name}, lr {args.lr:g}")

    bar = common.progress_bar(total_steps, initial=step, desc=f"{name} lr={args.lr:g}", disable=not master or args.no_progress)
    interval_start, interval_steps, stopped, divergence = time.perf_counter(), 0, False, 0.0
    with common.GracefulExit() as stop:
        while epoch < args.epochs and not stopped:
            for images_batch, _ in loader.epoch(epoch, batch_in_epoch):
                meter.add(train_step(train_models, optimizers, {"images": images_batch, "labels": None}, args))
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
                if batch_in_epoch == 0 and epoch % args.save_every == 0:
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
    images_by_name = load_data(args)  # data and checkpoint errors surface before anything is written
    for name, images in images_by_name.items():
        if len(images) // dist.world_size < args.batch_size:
            raise common.UserError(f"{name}: {len(images)} images, fewer than one batch of {args.batch_size} per "
                                   f"process; lower --batch-size")
    if args.resume not in (None, "auto"):
        common.load_checkpoint(args.resume, SCRIPT)
    if dist.is_master:
        common.prepare_run_dir(out, resume=True)
        common.write_config(out, args, SCRIPT, dist.device,
                            {"images_per_character": {k: len(v) for k, v in images_by_name.items()}})
    learning_rates = args.learning_rates
    try:
        for name, images in images_by_name.items():
            folder = f"{name}_lower" if len(name) == 1 and name.islower() else name  # 'u' and 'U' apart anywhere
            histories = {}
            for lr in learning_rates:
                run_args = argparse.Namespace(**{**vars(args), "lr": lr})
                run_out = os.path.join(out, folder) if len(learning_rates) == 1 else os.path.join(out, folder, f"lr_{lr:g}")
                histories[lr] = train_one(run_args, name, images, run_out, dist)
            if dist.is_master and len(learning_rates) > 1:
                plot_lr_comparison(histories, name, os.path.join(out, folder, "lr_comparison.png"))
        if dist.is_master:
            print(f"done: {out}", file=sys.stderr)
    finally:
        common.cleanup_distributed(dist)
    return out


def plot_lr_comparison(histories, name, path):
    """Overlay the loss curves of one character trained at several learning rates (the report's study)."""
    series = {}
    for lr, h in histories.items():
        series[f"D, lr {lr:g}"] = (h["step"], h["loss_d"])
        series[f"G, lr {lr:g}"] = (h["step"], h["loss_g"])
    common.plot_curves(series, path, title=f"learning rates: {name}")


def generate(args):
    """--generate N --checkpoint PATH: write N samples to a PNG grid (replaces the course's text.py)."""
    device = common.pick_device(args.device)
    checkpoint = common.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    generator = build_generator(checkpoint["args"]).to(device)
    generator.load_state_dict(checkpoint["generator"])
    noise = torch.randn(args.generate, checkpoint["args"]["nz"], 1, 1, generator=torch.Generator().manual_seed(args.seed))
    images = sample(generator, noise.to(device))
    path = args.grid_out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    common.save_grid(images, path, nrow=min(8, args.generate))
    print(f"wrote {args.generate} samples of {checkpoint.get('char', '?')!r} to {path}")
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.generate is not None:
        return generate(args)
    return train(args)


if __name__ == "__main__":
    common.run_main(main)
