"""DCGAN on handwritten characters, 32x32 grayscale: one generator per character.

Paper: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks", ICLR 2016: transposed-conv generator with BatchNorm + ReLU and a tanh output, strided-conv
discriminator with LeakyReLU(0.2) and BatchNorm, weights ~ N(0, 0.02), Adam (beta1 0.5). Coursework: AIML431 (one
DCGAN per character, sample grids every 10 epochs, progress animation, loss curves, learning-rate comparison).

Run (offline, embedded letters rendered from matplotlib's fonts; a few minutes on 2 CPU cores):
    python dcgan_letters.py                                        # A and B -> runs/<run>/A/, runs/<run>/B/
    python dcgan_letters.py --chars O u W E H --epochs 30          # the report's characters
    python dcgan_letters.py --chars A --lr 1e-4 5e-4 1e-3          # one run per rate + A/lr_comparison.png
    python dcgan_letters.py --data emnist --chars A B              # torchvision EMNIST (balanced split)
    python dcgan_letters.py --data folder --data-dir emnist_jpeg --folders 0 2 3 14 17   # the course's layout
    python dcgan_letters.py --resume auto --out runs/<run>         # continue every run of an interrupted job
    python dcgan_letters.py --generate 64 --checkpoint runs/<run>/A/last.pt --interpolate   # samples, no training
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 dcgan_letters.py --device cuda
Each character (and learning rate) is a run in its own folder of --out: A/, u_lower/, A/lr_0.0005/ (several --lr).
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
EVAL = {"dataset": "letters", "conditioning": "none"}  # what evaluate.py compares this script's samples with


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="DCGAN on 32x32 handwritten characters, one generator per character.",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "emnist", "folder"], default="synthetic",
                   help="synthetic: letters rendered offline; emnist: torchvision EMNIST; folder: the course's "
                        "Train/<EMNIST label>/*.jpeg in --data-dir")
    g.add_argument("--data-dir", default="data", help="where real datasets are read from / downloaded to")
    g.add_argument("--chars", nargs="+", default=["A", "B"], help="characters to train, one generator each, in turn")
    g.add_argument("--folders", nargs="+", default=None, help="--data folder: these numbered class folders, not --chars")
    g.add_argument("--no-transpose", action="store_true",
                   help="with --data folder/emnist: keep images as stored (EMNIST files are transposed)")
    g.add_argument("--emnist-split", default="balanced", help="with --data emnist: torchvision EMNIST split")
    g.add_argument("--n-per-class", type=common.positive_int, default=2400, help="--data synthetic: images per character")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=32, help="image height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=32, help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=32, help="discriminator feature maps (first block)")
    g.add_argument("--epochs", type=common.positive_int, default=15, help="passes over each character's images")
    g.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per step per process (global batch = batch size x processes)")
    g.add_argument("--lr", type=common.positive_float, nargs="+", default=[5e-4],
                   help="Adam learning rate of both networks; several values train one run each and plot a comparison")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.0,
                   help="decay of the moving average of the generator's weights that samples and evaluate.py use (0: off)")
    g.add_argument("--seed", type=common.seed, default=0, help="random seed (data order, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="folder of the runs (default runs/<script>-<time>)")
    g.add_argument("--resume", default=None, help="checkpoint to continue (one run), or 'auto' for every run's last.pt")
    g.add_argument("--max-steps", type=common.positive_int, default=None, help="stop each run after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, default=None,
                   help="stop each run after this many minutes of training (a wall-clock budget)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA and on CPUs with native bf16")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm across processes")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on CUDA)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip a step whose loss is NaN/inf instead of stopping")
    g = parser.add_argument_group("logging, samples, checkpoints")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log losses every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=10, help="sample grid every N epochs")
    g.add_argument("--save-every", type=common.positive_int, default=10, help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<run>/tb)")
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
    if args.folders is not None and args.data != "folder":
        parser.error("--folders needs --data folder")
    if any(len(c) != 1 for c in args.chars):
        parser.error(f"--chars takes single characters separated by spaces, got {' '.join(args.chars)}")
    for flag, values in (("--chars", args.chars), ("--folders", args.folders or []), ("--lr", args.lr)):
        if len(set(values)) != len(values):
            parser.error(f"{flag} repeats a value: {' '.join(map(str, values))}")
    if args.resume not in (None, "auto") and len(args.folders or args.chars) * len(args.lr) > 1:
        parser.error("--resume PATH continues one run: with several characters or learning rates use "
                     "--resume auto --out <run folder>")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns {name: uint8 tensor (N, 1, S, S)}, one entry per character (or per --folders folder)
# ---------------------------------------------------------------------------
def load_synthetic(args):
    import synthetic  # only for the offline data: a copied script with real data needs no synthetic.py

    try:  # a seed per character: the same seed would give sample i of every class the same pen and pose
        return {c: synthetic.letters([c], args.n_per_class, image_size=args.image_size, seed=args.seed * 1000 + ord(c))[0]
                for c in args.chars}
    except ValueError as e:
        raise common.UserError(str(e)) from None


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


def read_class_folder(root, folder, args):
    """uint8 (N, 1, S, S) from every image under <root>/<folder>: the course's files are 28x28 PNG data named .jpeg,
    stored transposed as EMNIST is."""
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
        present = sorted((d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), key=lambda d: (len(d), d))
        raise common.UserError(f"class folder {path} does not exist (present: {' '.join(present) or 'none'})")
    try:
        files = common.list_image_files(path)
    except common.UserError:
        raise common.UserError(f"class folder {path} holds no .jpeg/.jpg/.png images") from None
    images = torch.from_numpy(np.stack([np.asarray(common.read_image(f, "L").resize((28, 28))) for f in files]))[:, None]
    return common.to_uint8_images((images if args.no_transpose else images.transpose(2, 3)).contiguous(), args.image_size, 1)


def load_folder(args):
    """The course's layout: <data-dir>/Train/<EMNIST label>/*.jpeg (28x28 PNG data, transposed)."""
    root = os.path.join(args.data_dir, "Train") if os.path.isdir(os.path.join(args.data_dir, "Train")) else args.data_dir
    if not os.path.isdir(root):
        raise common.UserError(f"data folder not found: {args.data_dir} (expected Train/<label>/*.jpeg inside)")
    if args.folders is not None:
        wanted = {f"folder_{f}": f for f in args.folders}
    else:
        unknown = [c for c in args.chars if c not in EMNIST_BALANCED]
        if unknown:
            raise common.UserError(f"no EMNIST-Balanced folder holds {' '.join(unknown)}: use --folders with the label numbers")
        wanted = {c: str(EMNIST_BALANCED.index(c)) for c in args.chars}
    return {name: read_class_folder(root, folder, args) for name, folder in wanted.items()}


def load_data(args):
    return {"synthetic": load_synthetic, "emnist": load_emnist, "folder": load_folder}[args.data](args)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """z (nz x 1 x 1) -> 4x4 -> ... -> 1 x S x S; transposed convs with BN + ReLU, tanh output (DCGAN).
    32 px: 4 transposed convs (4 -> 8 -> 16 -> 32); 64 px: 5 (one more doubling)."""

    def __init__(self, nz=100, ngf=32, image_size=32, channels=1):
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
    """1 x S x S -> one logit; strided convs with LeakyReLU(0.2), BN except on the first layer (DCGAN)."""

    def __init__(self, ndf=32, image_size=32, channels=1):
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
    EMA generator). BN runs on copies of its buffers, so drawing samples never changes the model (exact resume)."""
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
# Training: one run per character and learning rate
# ---------------------------------------------------------------------------
def setup(args, name, lr, dist):
    """The settings, data and checkpoint of one run (`name` at rate `lr`): every input error surfaces here."""
    one = {"folders": [name[len("folder_"):]]} if args.folders is not None else {"chars": [name]}
    folder = f"{name}_lower" if len(name) == 1 and name.islower() else name  # 'u' and 'U' apart on any disk
    out = os.path.join(args.out, folder, *([f"lr_{lr:g}"] if len(args.lr) > 1 else []))
    args = argparse.Namespace(**{**vars(args), **one, "lr": lr, "out": out})
    checkpoint, resume_path = common.find_resume_checkpoint(args.resume, out, SCRIPT, map_location=dist.device)
    if checkpoint is not None:  # a resumed run keeps its settings (model shapes, data, learning rate)
        args = common.settings_from_checkpoint(args, checkpoint, resume_path)
    images = load_data(args)[name]
    loader = common.DeviceLoader(images, None, args.batch_size, dist.device, seed=args.seed,
                                 rank=dist.rank, world_size=dist.world_size)  # refuses a batch larger than the data
    return args, name, images, loader, checkpoint, resume_path


def train_one(args, name, images, loader, checkpoint, resume_path, dist):
    """Train one generator into its run folder args.out; returns its loss history."""
    device, master, out = dist.device, dist.is_master, args.out
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)

    # Models, optimizers, fixed noise for the sample grids; then the checkpoint's state over them.
    common.seed_everything(args.seed, args.deterministic)  # identical initial weights on every rank
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
            return checkpoint["history"]
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {"generator": common.maybe_compile(common.wrap_ddp(generator, dist, args.sync_bn), args.compile),
              "discriminator": common.maybe_compile(common.wrap_ddp(discriminator, dist, args.sync_bn), args.compile)}
    shown_generator = ema_generator if ema_generator is not None else generator  # what grids and evaluate.py use

    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None  # all checks passed
    real_reference = loader.to_float(images[:64].to(device))
    if master and checkpoint is None:
        common.write_config(out, args, SCRIPT, device, {"character": name, "training_images": len(images)})
        common.save_grid(real_reference, os.path.join(out, "real.png"), nrow=8, title=f"real images: {name}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=f"{name} lr={args.lr:g}")

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
                samples = sample(shown_generator, fixed_noise)
                log.monitor.check_samples(samples, real_reference, epoch, step)
                common.save_grid(samples, os.path.join(out, "samples", f"epoch_{epoch:03d}.png"), nrow=8,
                                 title=f"epoch {epoch}, step {step}")
                common.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                os.path.join(out, "progress.gif"))
                common.plot_losses(log.history, os.path.join(out, "losses.png"), title=f"DCGAN losses: {name}, lr {args.lr:g}")
            checkpoint = {"format": common.CHECKPOINT_FORMAT, "script": SCRIPT, "args": common.plain_args(args),
                          "char": name, "step": step, "epoch": epoch, "finished": finished,
                          **{key: module.state_dict() for key, module in saved.items()},
                          "optimizers": {key: opt.state_dict() for key, opt in optimizers.items()},
                          "rng": common.rng_state(), "fixed_noise": fixed_noise.cpu(), **log.state_dict(),
                          "world_size": dist.world_size, "replica_divergence": divergence}
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
    return log.history


def train(args):
    """Every run (one per character and learning rate) in turn, once all of them are set up and checked."""
    dist = common.setup_distributed(args.device)
    args.out = args.out or common.default_run_dir(SCRIPT)
    if args.track and dist.is_master:
        common.require_tensorboard()
    names = [f"folder_{f}" for f in args.folders] if args.folders is not None else args.chars
    runs = {(name, lr): setup(args, name, lr, dist) for name in names for lr in args.lr}
    for name in names:
        histories = {lr: train_one(*runs[name, lr], dist) for lr in args.lr}
        if dist.is_master and len(histories) > 1:  # the report's study: one character's loss curves at every rate
            series = {f"{key}, lr {lr:g}": (history["step"], values) for lr, history in histories.items()
                      for key, values in history.items() if key.startswith("loss")}
            common.plot_curves(series, os.path.join(os.path.dirname(runs[name, args.lr[0]][0].out), "lr_comparison.png"),
                               title=f"learning rates: {name}")
    return args.out


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
    print(f"wrote {args.generate} samples of {checkpoint.get('char', '?')!r}: " + ", ".join(written))
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
