"""Conditional DCGAN on handwritten letters, 32x32 grayscale: one generator for A and B (or more).

Papers: Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014; Radford, Metz &
Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks", ICLR 2016. AIML431: A and B from EMNIST, a grid per epoch, text.py's letters: --generate.

The label enters each network through a branch of its own (the report's hidden_layer1 / 2):
    G:  noise z         -> ConvTranspose, BN, ReLU -> W/2 x 4 x 4 -+-> W x 4 x 4 -> stack -> image
        one-hot label   -> ConvTranspose, ReLU     -> W/2 x 4 x 4 -+   (no BN here: see Generator)
    D:  image           -> conv, LeakyReLU -> ndf/2 x 16 x 16 -+-> ndf x 16 x 16 -> stack -> logit
        label, K planes -> conv, LeakyReLU -> ndf/2 x 16 x 16 -+       (stack: DCGAN's layers)

Run (offline, embedded letters rendered from matplotlib's fonts; a few minutes on 2 CPU cores):
    python cdcgan_ab.py                                       # A and B
    python cdcgan_ab.py --chars A B C D --epochs 20           # any two or more characters
    python cdcgan_ab.py --data emnist                         # torchvision EMNIST (balanced split)
    python cdcgan_ab.py --data folder --data-dir emnist_jpeg  # the course's Train/10 (A), Train/11
    python cdcgan_ab.py --resume auto --out runs/<run>        # continue an interrupted run
    python cdcgan_ab.py --generate 10 --checkpoint runs/<run>/last.pt --interpolate   # 10 of each
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 cdcgan_ab.py --device cuda
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
DEFAULT_CHARS = ["A", "B"]
SAMPLES_PER_ROW = 8  # fixed-noise grid: this many samples per class, the same noise in every row
EVAL = {"dataset": "letters", "conditioning": "class", "classes": DEFAULT_CHARS,
        "num_classes": len(DEFAULT_CHARS), "classes_arg": "chars"}
# A resumed run keeps every setting it started with; these it takes anew when typed again:
CHANGEABLE_ON_RESUME = ("epochs", "max_steps", "max_minutes", "device", "data_dir", "compile",
                        "deterministic", "sync_bn", "skip_nonfinite", "log_every", "sample_every",
                        "save_every", "track", "no_progress")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Conditional DCGAN on 32x32 letters (A and B).",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["synthetic", "emnist", "folder"], default="synthetic",
                   help="drawn offline, torchvision's EMNIST or the course's Train/<label>/*.jpeg")
    g.add_argument("--data-dir", default="data", help="where real datasets are read / downloaded")
    g.add_argument("--chars", nargs="+", default=list(DEFAULT_CHARS),
                   help="the classes (2+); label i = i-th")
    g.add_argument("--no-transpose", action="store_true", help="keep EMNIST images as stored")
    g.add_argument("--n-per-class", type=common.positive_int, default=2400,
                   help="synthetic: per character")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=32, help="height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100, help="size of the noise vector")
    g.add_argument("--ngf", type=common.positive_int, default=32, help="G's last feature maps")
    g.add_argument("--ndf", type=common.positive_int, default=32,
                   help="D's first feature maps (even)")
    g.add_argument("--epochs", type=common.positive_int, default=10, help="passes over the images")
    g.add_argument("--batch-size", type=common.positive_int, default=64,
                   help="images per step per process")
    g.add_argument("--lr", type=common.positive_float, default=5e-4, help="Adam learning rate")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.0,
                   help="decay of the weights' EMA (0: off)")
    g.add_argument("--seed", type=common.seed, default=0, help="seed of data order, weights, noise")
    g = parser.add_argument_group("run")
    g.add_argument("--out", help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, help="stop after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, help="stop after N minutes")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda:1, mps")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where native (CUDA 8.0+, AVX512-BF16/AMX), else fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    g.add_argument("--skip-nonfinite", action="store_true", help="skip steps with a NaN/inf loss")
    g = parser.add_argument_group("logging, samples, checkpoints")
    g.add_argument("--log-every", type=common.positive_int, default=50, help="log every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=2,
                   help="grid every N epochs")
    g.add_argument("--save-every", type=common.positive_int, default=5,
                   help="epoch_NNN.pt every N epochs")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, metavar="N",
                   help="N samples of each class")
    g.add_argument("--checkpoint", help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", help="with --generate: also one PNG per sample, in a new folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: latent and label walks too")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    if args.ndf % 2:
        parser.error("--ndf must be even: D's first layer is half image, half label")
    if any(len(c) != 1 for c in args.chars) or len(set(args.chars)) != len(args.chars):
        parser.error(f"--chars takes distinct single characters, got {' '.join(args.chars)}")
    if len(args.chars) < 2:
        parser.error("--chars needs two or more characters (a conditional GAN chooses a class)")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns (uint8 images (N, 1, S, S), int64 labels (N,)), label i = args.chars[i]
# ---------------------------------------------------------------------------
def load_synthetic(args):
    import synthetic  # only for the offline data: a copy with real data needs no synthetic.py
    try:
        return synthetic.letters(args.chars, args.n_per_class, image_size=args.image_size,
                                 seed=args.seed)
    except ValueError as e:
        raise common.UserError(str(e)) from None


def load_emnist(args):
    return image_io.stack_classes(image_io.load_emnist(args.data_dir, args.chars, args.image_size,
                                                       not args.no_transpose))


def load_folder(args):
    letters, _ = image_io.load_letter_folders(args.data_dir, image_io.emnist_labels(args.chars),
                                              args.image_size, not args.no_transpose)
    return image_io.stack_classes(letters.values())


def load_data(args):
    loaders = {"synthetic": load_synthetic, "emnist": load_emnist, "folder": load_folder}
    return loaders[args.data](args)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """(z, label) -> image: the two branches of the diagram at the top, then DCGAN's stack."""

    def __init__(self, num_classes, nz=100, ngf=32, image_size=32, channels=1):
        super().__init__()
        self.num_classes = num_classes
        doublings = {32: 3, 64: 4}[image_size]  # from 4x4 to the image size
        width = ngf * 2 ** (doublings - 1)
        self.noise_branch = nn.Sequential(nn.ConvTranspose2d(nz, width // 2, 4, 1, 0, bias=False),
                                          nn.BatchNorm2d(width // 2), nn.ReLU(True))
        # No BN on the label branch: with it, the one-hot's features are at full strength from the
        # first step and G draws each class from the label alone, ignoring the noise (two classes,
        # 300 steps: a class's samples 7-8x closer together than real letters; without BN, as far).
        self.label_branch = nn.Sequential(
            nn.ConvTranspose2d(num_classes, width // 2, 4, 1, 0, bias=False), nn.ReLU(True))
        layers = []
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels):
        """labels: class indices (N,), or (N, K) float weights of the classes (--interpolate)."""
        y = labels if labels.is_floating_point() else F.one_hot(labels, self.num_classes)
        hidden = torch.cat([self.noise_branch(z.view(z.shape[0], -1, 1, 1)),
                            self.label_branch(y.to(z.dtype).view(-1, self.num_classes, 1, 1))], 1)
        return self.net(hidden)


class Discriminator(nn.Module):
    """(image, label as K constant maps) -> one logit: the two branches, then DCGAN's stack."""

    def __init__(self, num_classes, ndf=32, image_size=32, channels=1):
        super().__init__()
        self.num_classes = num_classes
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        self.image_branch = nn.Sequential(nn.Conv2d(channels, ndf // 2, 4, 2, 1, bias=False),
                                          nn.LeakyReLU(0.2, True))
        self.label_branch = nn.Sequential(nn.Conv2d(num_classes, ndf // 2, 4, 2, 1, bias=False),
                                          nn.LeakyReLU(0.2, True))
        layers, width = [], ndf
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x, labels):
        one_hot = F.one_hot(labels, self.num_classes).to(x.dtype)[..., None, None]
        y = one_hot.expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([self.image_branch(x), self.label_branch(y)], 1)).flatten()


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
    return Generator(len(settings["chars"]), settings["nz"], settings["ngf"],
                     settings["image_size"])


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = build_generator(vars(args)).apply(weights_init)
    discriminator = Discriminator(len(args.chars), args.ndf, args.image_size).apply(weights_init)
    networks = {"generator": generator, "discriminator": discriminator}
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
    """Images in [-1, 1] from noise (N, nz, 1, 1) and labels (N,) into args["chars"] (None: the
    classes in turn); batch-statistics BN on copies of its buffers (exact resume)."""
    if labels is None:
        labels = torch.arange(len(noise)) % generator.num_classes
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels.to(noise.device)))


# ---------------------------------------------------------------------------
# Training step: the conditional GAN losses, one discriminator and one generator update. This is
# the part to change: the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, real_labels = batch["images"], batch["labels"]
    n, device = real_images.shape[0], real_images.device
    noise = torch.randn(n, args.nz, 1, 1, device=device)
    fake_labels = torch.randint(len(args.chars), (n,), device=device)  # G is asked for any class
    # bf16 autocast (--precision): convolutions in bf16, BatchNorm and the losses stay fp32
    bf16 = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16")
    with bf16:
        fake_images = generator(noise, fake_labels)
        # Discriminator: maximise log D(x|y) + log(1 - D(G(z|y')|y')); fakes detached: no grad to G.
        logits_real = discriminator(real_images, real_labels)
        logits_fake = discriminator(fake_images.detach(), fake_labels)
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)

    with bf16:
        # Generator: the non-saturating loss, maximise log D(G(z|y')|y'): a B like an A is caught.
        logits_gen = discriminator(fake_images, fake_labels)
        loss_g = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),  # d_real, d_fake: health checks
            "d_real": torch.sigmoid(logits_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach().float()).mean()}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: every input error (flags, data, checkpoint) surfaces here, before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = checkpoints.find_resume_checkpoint(args.resume, out, SCRIPT, device)
    if checkpoint is not None:  # a resumed run keeps its settings: classes, model, data, budget...
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
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise and labels for the grids; then the checkpoint's state.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    num_classes = len(args.chars)
    networks, optimizers = build(args, device)
    generator = networks["generator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    noise_seed = torch.Generator().manual_seed(args.seed)
    fixed_noise = torch.randn(SAMPLES_PER_ROW, args.nz, 1, 1, generator=noise_seed)
    fixed_noise = fixed_noise.repeat(num_classes, 1, 1, 1).to(device)
    fixed_labels = torch.arange(num_classes, device=device).repeat_interleave(SAMPLES_PER_ROW)
    saved = dict(networks, **({"generator_ema": ema_generator} if ema_generator else {}))
    step = 0
    if checkpoint is not None:
        checkpoints.restore_training_state(checkpoint, resume_path, saved, optimizers)
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
    # The collapse check compares the samples of each class with up to 64 real images of it.
    reference = torch.cat([(labels == i).nonzero()[:64, 0] for i in range(num_classes)])
    real_reference = loader.to_float(images[reference].to(device))
    reference_labels = labels[reference].to(device)
    if master and checkpoint is not None:
        checkpoints.adopt_checkpoint(out, checkpoint, resume_path)
    if master and not os.path.isfile(os.path.join(out, "config.json")):
        counts = {c: int((labels == i).sum()) for i, c in enumerate(args.chars)}
        common.write_config(out, args, SCRIPT, device, {"images_per_class": counts})
        real = torch.cat([images[labels == i][:SAMPLES_PER_ROW] for i in range(num_classes)])
        image_io.save_grid(loader.to_float(real.to(device)), os.path.join(out, "real.png"),
                           nrow=SAMPLES_PER_ROW, row_labels=args.chars, title="real images")
    if master:
        print(f"{SCRIPT}: {out}, {device}, {args.precision}, step {step} of {last_step}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=" ".join(args.chars))

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    grid, epoch = None, -(-step // steps_per_epoch)
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, real_labels = loader.batch(step)
            batch = {"images": real_images, "labels": real_labels}
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
                samples = sample(ema_generator or generator, fixed_noise, fixed_labels)
                log.monitor.check_samples(samples, real_reference, epoch, step,
                                          fake_labels=fixed_labels, real_labels=reference_labels)
                grid = os.path.join(out, "samples", f"epoch_{epoch:03d}.png")
                image_io.save_grid(samples, grid, nrow=SAMPLES_PER_ROW, row_labels=args.chars,
                                   title=f"epoch {epoch}, step {step}")
                image_io.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                  os.path.join(out, "progress.gif"))
                title = f"conditional DCGAN losses: {' '.join(args.chars)}, lr {args.lr:g}"
                image_io.plot_losses(log.history, os.path.join(out, "losses.png"), title=title)
            keep = epoch_done and epoch % args.save_every == 0
            copies = [f"epoch_{epoch:03d}.pt"] if keep else []  # written after last.pt
            if master:
                checkpoint = {"format": checkpoints.CHECKPOINT_FORMAT, "script": SCRIPT,
                              "args": common.plain_args(args), "class_names": list(args.chars),
                              "step": step, "epoch": epoch, "finished": finished,
                              **{name: module.state_dict() for name, module in saved.items()},
                              "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
                              "rng": checkpoints.rng_state(), "fixed_noise": fixed_noise.cpu(),
                              "fixed_labels": fixed_labels.cpu(), **log.state_dict(),
                              "world_size": dist.world_size, "replica_divergence": divergence}
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
    return out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH: a row of N samples per class (the course's text.py)."""
    default_grid = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    grid_path = image_io.check_output_path(args.grid_out or default_grid, "--grid-out", "png")
    sheets = [f"{grid_path[:-4]}_{kind}.png" for kind in ("interpolation", "class_interpolation")]
    for path in sheets if args.interpolate else []:
        image_io.check_output_path(path, "the interpolation sheet", "png")
    if args.png_dir:
        image_io.check_empty_folder(args.png_dir, "--png-dir")
    device = common.pick_device(args.device)
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings, chars = checkpoint["args"], checkpoint["args"].get("chars")
    if not (isinstance(chars, (list, tuple)) and len(chars) > 1
            and all(isinstance(c, str) for c in chars)):
        raise common.UserError(f"{args.checkpoint}: its chars {chars!r} are not 2+ class names")
    generator = checkpoints.rebuild(build_generator, settings, args.checkpoint).to(device)
    weights = checkpoint.get("generator_ema", checkpoint["generator"])
    checkpoints.load_weights(generator, weights, args.checkpoint)
    nz = settings["nz"]
    # The same N noise vectors in every row, so a column shows one "handwriting" as every letter.
    noise = torch.randn(args.generate, nz, 1, 1, generator=torch.Generator().manual_seed(args.seed))
    labels = torch.arange(len(chars)).repeat_interleave(args.generate)
    images = sample(generator, noise.repeat(len(chars), 1, 1, 1).to(device), labels)
    written = [image_io.save_grid(images, grid_path, nrow=args.generate, row_labels=chars)]
    if args.png_dir:
        written.append(image_io.save_pngs(images, args.png_dir))
    if args.interpolate:  # 8 rows, each a latent walk between two random points, as class i % K
        rows = torch.arange(8) % len(chars)
        walks = image_io.interpolation_noise(8, 10, nz, args.seed).to(device)
        sheet = sample(generator, walks, rows.repeat_interleave(10))
        written.append(image_io.save_grid(sheet, sheets[0], nrow=10,
                                          row_labels=[chars[i] for i in rows]))
        blend = torch.zeros(10, len(chars))
        blend[:, 0], blend[:, 1] = torch.linspace(1, 0, 10), torch.linspace(0, 1, 10)
        sheet = sample(generator, walks[::10].repeat_interleave(10, 0), blend.repeat(8, 1))
        title = f"label input {chars[0]} -> {chars[1]}, fixed noise per row"
        written.append(image_io.save_grid(sheet, sheets[1], nrow=10, title=title))
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
