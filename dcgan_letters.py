"""DCGAN on handwritten characters, 32x32 grayscale: one generator per character.

Paper: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016. AIML431: grids, animation, losses, learning rates.

Run (offline, embedded letters rendered from matplotlib's fonts; a few minutes on 2 CPU cores):
    python dcgan_letters.py                                  # A and B -> <run>/A/, <run>/B/
    python dcgan_letters.py --chars O u W E H --epochs 30    # the report's set, u in u_lower/
    python dcgan_letters.py --chars A --lr 1e-4 5e-4 1e-3    # A/lr_<rate>/ + A/lr_comparison.png
    python dcgan_letters.py --data emnist --chars A B        # torchvision EMNIST (balanced split)
    python dcgan_letters.py --data folder --data-dir emnist_jpeg --folders 0 2 3 14 17   # course
    python dcgan_letters.py --resume auto --out runs/<run>   # continue every run of a stopped job
    python dcgan_letters.py --generate 64 --checkpoint runs/<run>/A/last.pt --interpolate  # samples
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 dcgan_letters.py --device cuda
"""

import argparse
import copy
import glob
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import common
import image_io

SCRIPT = common.script_name(__file__)  # a copy (my_gan.py) writes checkpoints of its own name
EVAL = {"dataset": "letters", "conditioning": "none"}  # what evaluate.py compares the samples with
# A resumed run keeps every setting it started with; these it takes anew when typed again:
CHANGEABLE_ON_RESUME = ("epochs", "max_steps", "max_minutes", "device", "data_dir", "compile",
                        "deterministic", "sync_bn", "skip_nonfinite", "log_every", "sample_every",
                        "save_every", "track", "no_progress")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="DCGAN on 32x32 characters, one per character.",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "emnist", "folder"], default="synthetic",
                   help="drawn offline, torchvision's EMNIST or the course's Train/<label>/*.jpeg")
    g.add_argument("--data-dir", default="data", help="where real datasets are read / downloaded")
    g.add_argument("--chars", nargs="+", default=["A", "B"], help="characters, one run each")
    g.add_argument("--folders", nargs="+", help="--data folder: these numbered folders")
    g.add_argument("--no-transpose", action="store_true", help="keep EMNIST images as stored")
    g.add_argument("--emnist-split", default="balanced", help="--data emnist: the EMNIST split")
    g.add_argument("--n-per-class", type=common.positive_int, default=2400,
                   help="synthetic: per character")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=32, help="height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=32, help="G's last feature maps")
    g.add_argument("--ndf", type=common.positive_int, default=32, help="D's first feature maps")
    g.add_argument("--epochs", type=common.positive_int, default=15, help="passes over the images")
    g.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per step per process")
    g.add_argument("--lr", type=common.positive_float, nargs="+", default=[5e-4],
                   help="Adam rate(s), one run each")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.0,
                   help="decay of the weights' EMA (0: off)")
    g.add_argument("--seed", type=common.seed, default=0, help="seed of data order, weights, noise")
    g = parser.add_argument_group("run")
    g.add_argument("--out", help="folder of the runs (default runs/<script>-<time>)")
    g.add_argument("--resume", help="checkpoint to continue (one run), or 'auto' (each last.pt)")
    g.add_argument("--max-steps", type=common.positive_int, help="stop each run after N steps")
    g.add_argument("--max-minutes", type=common.positive_float, help="stop a run after N minutes")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda:1, mps")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where native (CUDA 8.0+, AVX512-BF16/AMX), else fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip steps with a NaN/inf loss")
    g = parser.add_argument_group("logging, samples, checkpoints")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=10,
                   help="grid every N epochs")
    g.add_argument("--save-every", type=common.positive_int, default=10,
                   help="epoch_NNN.pt every N epochs")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<run>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, metavar="N",
                   help="N samples from --checkpoint")
    g.add_argument("--checkpoint", help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", help="with --generate: also one PNG per sample, in a new folder")
    g.add_argument("--interpolate", action="store_true", help="with --generate: a latent walk too")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.folders is not None and args.data != "folder":
        parser.error("--folders needs --data folder")
    if any(len(c) != 1 for c in args.chars):
        parser.error(f"--chars takes single characters, got {' '.join(args.chars)}")
    for flag, vals in ("--chars", args.chars), ("--folders", args.folders or []), ("--lr", args.lr):
        if len(set(vals)) != len(vals):
            parser.error(f"{flag} repeats a value: {' '.join(map(str, vals))}")
    if args.resume not in (None, "auto") and len(args.folders or args.chars) * len(args.lr) > 1:
        parser.error("--resume PATH continues one run; several: --resume auto --out <run folder>")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns {name: uint8 (N, 1, S, S)}, one per character (or --folders folder)
# ---------------------------------------------------------------------------
def load_synthetic(args):
    import synthetic  # only for the offline data: a copy with real data needs no synthetic.py
    try:  # a seed per character: one seed would give sample i of every class the same pen and pose
        return {c: synthetic.letters([c], args.n_per_class, image_size=args.image_size,
                                     seed=args.seed * 1000 + ord(c))[0] for c in args.chars}
    except ValueError as e:
        raise common.UserError(str(e)) from None


def load_emnist(args):
    letters = image_io.load_emnist(args.data_dir, args.chars, args.image_size,
                                   not args.no_transpose, args.emnist_split)
    return dict(zip(args.chars, letters))


def load_folder(args):
    """The course's layout (image_io.load_letter_folders): --folders by number, else --chars."""
    numbered = args.folders is not None
    folders = args.folders if numbered else image_io.emnist_labels(args.chars)
    letters, _ = image_io.load_letter_folders(args.data_dir, folders, args.image_size,
                                              not args.no_transpose)
    return dict(zip([f"folder_{f}" for f in folders] if numbered else args.chars, letters.values()))


def load_data(args):
    loaders = {"synthetic": load_synthetic, "emnist": load_emnist, "folder": load_folder}
    return loaders[args.data](args)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """z (nz x 1 x 1) -> 4x4 -> ... -> 1 x S x S: transposed convs with BN + ReLU, tanh output."""

    def __init__(self, nz=100, ngf=32, image_size=32, channels=1):
        super().__init__()
        doublings = {32: 3, 64: 4}[image_size]  # from 4x4 to the image size
        width = ngf * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width),
                  nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """1 x S x S -> one logit; strided convs with LeakyReLU(0.2), BN except on the first (DCGAN)."""

    def __init__(self, ndf=32, image_size=32, channels=1):
        super().__init__()
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


def weights_init(module):
    """DCGAN's init: conv weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(settings):
    """The generator from a run's settings: training, --generate and evaluate.py build it here."""
    return Generator(settings["nz"], settings["ngf"], settings["image_size"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    networks = {"generator": build_generator(vars(args)).apply(weights_init),
                "discriminator": Discriminator(args.ndf, args.image_size).apply(weights_init)}
    networks = {key: common.prepare_model(net, device) for key, net in networks.items()}
    optimizers = {key: common.adam(net.parameters(), args.lr, (args.beta1, args.beta2), device)
                  for key, net in networks.items()}
    return networks, optimizers


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights, decay warmed up so short runs move; BN copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise; batch-statistics BN on copies of its buffers (exact resume)."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise,))


# ---------------------------------------------------------------------------
# Training step: the DCGAN losses, one discriminator and one generator update. This is the part to
# change: the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images = batch["images"]
    noise = torch.randn(real_images.shape[0], args.nz, 1, 1, device=real_images.device)
    # bf16 autocast (--precision): convolutions in bf16, BatchNorm and the losses stay fp32
    bf16 = torch.autocast(real_images.device.type, torch.bfloat16, enabled=args.precision == "bf16")
    with bf16:
        fake_images = generator(noise)
        # Discriminator: maximise log D(x) + log(1 - D(G(z))); fakes detached: no gradient to G.
        logits_real = discriminator(real_images)
        logits_fake = discriminator(fake_images.detach())
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)

    with bf16:
        # Generator: the non-saturating loss, maximise log D(G(z)).
        logits_gen = discriminator(fake_images)
        loss_g = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),  # d_real, d_fake: health checks
            "d_real": torch.sigmoid(logits_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach().float()).mean()}


# ---------------------------------------------------------------------------
# Training: one run per character and learning rate
# ---------------------------------------------------------------------------
def setup(args, name, lr, dist):
    """Settings, data and checkpoint of one run (`name` at `lr`): input errors surface here."""
    one = {"folders": [name[len("folder_"):]]} if args.folders is not None else {"chars": [name]}
    # u_lower/: u and U stay apart on a disk that ignores case
    folder = f"{name}_lower" if len(name) == 1 and name.islower() else name
    out = os.path.join(args.out, folder, *([f"lr_{lr:g}"] if len(args.lr) > 1 else []))
    args = argparse.Namespace(**{**vars(args), **one, "lr": lr, "out": out})
    checkpoint, resume_path = checkpoints.find_resume_checkpoint(args.resume, out, SCRIPT,
                                                                 dist.device)
    if checkpoint is not None:  # a resumed run keeps its settings: model, data, budget, precision
        args = checkpoints.settings_from_checkpoint(args, checkpoint, resume_path,
                                                    CHANGEABLE_ON_RESUME)
    args.precision = common.pick_precision(args.precision, dist.device)  # auto: bf16 if native
    images = load_data(args)[name]
    loader = image_io.DeviceLoader(images, None, args.batch_size, dist.device, seed=args.seed,
                                   rank=dist.rank, world_size=dist.world_size)  # batch <= the data
    return args, name, images, loader, checkpoint, resume_path


def train_one(args, name, images, loader, checkpoint, resume_path, dist):
    """One run into its folder args.out; returns its loss history (None: it had finished before)."""
    device, master, out = dist.device, dist.is_master, args.out
    steps_per_epoch = len(loader)
    last_step = min(args.epochs * steps_per_epoch, args.max_steps or float("inf"))

    # Models, optimizers, fixed noise for the sample grids; then the checkpoint's state over them.
    common.seed_everything(args.seed, args.deterministic)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator = networks["generator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    noise_seed = torch.Generator().manual_seed(args.seed)
    fixed_noise = torch.randn(64, args.nz, 1, 1, generator=noise_seed).to(device)
    saved = dict(networks, **({"generator_ema": ema_generator} if ema_generator else {}))
    step = 0
    if checkpoint is not None:
        checkpoints.restore_training_state(checkpoint, resume_path, saved, optimizers)
        step = checkpoint["step"]
        time_spent = checkpoint.get("elapsed_s", 0.0) >= 60 * (args.max_minutes or float("inf"))
        if step >= last_step or time_spent:
            checkpoints.say_finished(resume_path, step, master)
            return None
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {key: common.maybe_compile(common.wrap_ddp(net, dist, args.sync_bn), args.compile)
              for key, net in networks.items()}

    # The run folder: claimed once every check has passed; only the master process writes.
    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None
    real_reference = loader.to_float(images[:64].to(device))
    if master and checkpoint is not None:
        checkpoints.adopt_checkpoint(out, checkpoint, resume_path)
    if master and not os.path.isfile(os.path.join(out, "config.json")):
        common.write_config(out, args, SCRIPT, device,
                            {"character": name, "training_images": len(images)})
        image_io.save_grid(real_reference, os.path.join(out, "real.png"),
                           title=f"real images: {name}")
    if master:
        print(f"{SCRIPT}: {out}, {device}, {args.precision}, step {step} of {last_step}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, f"{name} lr={args.lr:g}")

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    grid, epoch = None, -(-step // steps_per_epoch)
    with common.GracefulExit() as stop:
        while step < last_step:
            batch = {"images": loader.batch(step)[0], "labels": None}
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

            # End of an epoch, of the run, or an interruption: log, samples, checkpoints.
            if epoch_done or finished:  # an interrupted run keeps its unlogged steps in last.pt
                log.flush(step, epoch)
            # an all-reduce on every rank: the processes' weights must agree
            divergence = common.replica_divergence(generator, dist) if finished else 0.0
            drawing = finished or stopping or epoch == 1 or epoch % args.sample_every == 0
            if master and drawing:
                samples = sample(ema_generator or generator, fixed_noise)  # the average, if any
                log.monitor.check_samples(samples, real_reference, epoch, step)
                grid = os.path.join(out, "samples", f"epoch_{epoch:03d}.png")
                image_io.save_grid(samples, grid, nrow=8, title=f"epoch {epoch}, step {step}")
                image_io.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                  os.path.join(out, "progress.gif"))
                image_io.plot_losses(log.history, os.path.join(out, "losses.png"),
                                     title=f"DCGAN losses: {name}, lr {args.lr:g}")
            keep = epoch_done and epoch % args.save_every == 0
            copies = [f"epoch_{epoch:03d}.pt"] if keep else []  # written after last.pt
            if master:
                checkpoint = {"format": checkpoints.CHECKPOINT_FORMAT, "script": SCRIPT,
                              "char": name, "args": common.plain_args(args), "step": step,
                              "epoch": epoch, "finished": finished, "world_size": dist.world_size,
                              **{key: module.state_dict() for key, module in saved.items()},
                              "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
                              "rng": checkpoints.rng_state(), "fixed_noise": fixed_noise.cpu(),
                              **log.state_dict(), "replica_divergence": divergence}
                checkpoints.save_run_checkpoint(out, checkpoint, copies)
            if stopping or finished:
                break
    log.close()
    if lock is not None:
        lock.close()
    if master:
        how = "interrupted" if stop else "time budget spent" if stopping == "time" else "finished"
        checkpoints.say_how_it_ended(how, out, step, epoch, grid)
    if stop:
        raise SystemExit(130)
    return log.history


def train(args):
    """Every run (one per character and learning rate) in turn, once all are set up and checked."""
    dist = common.setup_distributed(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls and convolutions: TF32 on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    args.out = args.out or common.default_run_dir(SCRIPT)
    if args.track and dist.is_master:
        common.require_tensorboard()
    names = [f"folder_{f}" for f in args.folders] if args.folders is not None else args.chars
    runs = {(name, lr): setup(args, name, lr, dist) for name in names for lr in args.lr}
    for name in names:
        histories = {lr: train_one(*runs[name, lr], dist) for lr in args.lr}
        if dist.is_master and len(args.lr) > 1 and any(histories.values()):  # the report's study
            histories = {lr: h or runs[name, lr][4]["history"] for lr, h in histories.items()}
            series = {f"{key}, lr {lr:g}": (h["step"], values) for lr, h in histories.items()
                      for key, values in h.items() if key.startswith("loss")}
            path = os.path.join(os.path.dirname(runs[name, args.lr[0]][0].out), "lr_comparison.png")
            image_io.plot_curves(series, path, title=f"learning rates: {name}")
    return args.out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH: a grid of N samples (+ one PNG each, + interpolations)."""
    default_grid = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    grid_path = image_io.check_output_path(args.grid_out or default_grid, "--grid-out", "png")
    sheet_path = grid_path[:-len(".png")] + "_interpolation.png"
    if args.interpolate:
        image_io.check_output_path(sheet_path, "the interpolation sheet", "png")
    if args.png_dir:
        image_io.check_empty_folder(args.png_dir, "--png-dir")
    device = common.pick_device(args.device)
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings = checkpoint["args"]
    generator = checkpoints.rebuild(build_generator, settings, args.checkpoint).to(device)
    weights = checkpoint.get("generator_ema", checkpoint["generator"])  # the average, if trained
    checkpoints.load_weights(generator, weights, args.checkpoint)
    noise_seed = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.generate, settings["nz"], 1, 1, generator=noise_seed)
    images = sample(generator, noise.to(device))
    written = [image_io.save_grid(images, grid_path, nrow=min(8, args.generate))]
    if args.png_dir:
        written.append(image_io.save_pngs(images, args.png_dir))
    if args.interpolate:  # 8 rows, each a walk through the latent space between two random points
        walks = image_io.interpolation_noise(8, 10, settings["nz"], args.seed).to(device)
        sheet = sample(generator, walks)
        written.append(image_io.save_grid(sheet, sheet_path, nrow=10))
    print(f"wrote {args.generate} samples of {checkpoint.get('char', '?')!r}: {', '.join(written)}")
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
