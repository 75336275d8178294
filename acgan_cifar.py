"""ACGAN on CIFAR-10 (32 or 64 px): class-conditional GAN whose discriminator also names the class.

Paper: Odena, Olah & Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs", ICML
2017. The discriminator has two heads on one conv trunk: real/fake (source) and a 10-way class
head, the auxiliary classifier. With L_S the log-likelihood of the right source and L_C that of the
right class, the discriminator maximises L_S + L_C and the generator L_C - L_S (non-saturating).

How the generator gets the class decides whether each class keeps its variety (docs/acgan_cifar.md):
a learned class embedding joined to the noise (--class-input concat) outgrows it, and each class
collapses to one picture within an epoch, even with no class loss. By default the noise is
multiplied by the class's embedding (as in PyTorch-GAN's ACGAN), so no input is free of noise. The
classifier learns from real images only (as StudioGAN's ACGAN-Mod); --classifier-loss paper
also trains it on generated ones, as in the paper.

Run:
    python acgan_cifar.py                          # 64 px, batch 128, 40 epochs (coursework)
    python acgan_cifar.py --image-size 32 --batch-size 100 --classifier-loss paper  # paper's loss
    python acgan_cifar.py --class-input concat     # the collapsing class input (for comparison)
    python acgan_cifar.py --image-size 32 --batch-size 64 --ngf 96 --ndf 96  # wider networks:
        # FID-10k 29.3 after 20,000 steps, against 37.8 at the default width (docs/acgan_cifar.md)
    python acgan_cifar.py --data synthetic --epochs 5              # offline: coloured letters
    python acgan_cifar.py --data folder --data-dir my_images/      # one subfolder per class
    python acgan_cifar.py --generate 100 --checkpoint runs/<run>/last.pt --interpolate   # samples
    python evaluate.py runs/<run>                  # FID and class accuracy of a run's checkpoints
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 acgan_cifar.py --device cuda

Data: --data cifar10 reads the official python batches from <data-dir>/cifar-10-batches-py/
(downloading cifar-10-python.tar.gz when they are missing), decoded once into a uint8 tensor on the
training device and fed with random flips. --data synthetic: letters A-J, a colour per class.
"""

import argparse
import copy
import glob
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import common
import image_io

SCRIPT = common.script_name(__file__)  # a copy (my_gan.py) writes checkpoints of its own name
# What evaluate.py compares the samples with; the classes trained are in the checkpoint's args.
EVAL = {"dataset": "cifar10", "conditioning": "class", "num_classes": 10,
        "class_names": list(image_io.CIFAR10_CLASSES), "classes_arg": "class_names"}
# A resumed run keeps every setting it started with (model, data, budget, precision); these it takes
# anew when they are typed again.
CHANGEABLE_ON_RESUME = ("epochs", "max_steps", "max_minutes", "device", "data_dir", "compile",
                        "deterministic", "sync_bn", "skip_nonfinite", "log_every", "sample_every",
                        "save_every", "eval_every", "fid_samples", "inception_weights", "track",
                        "no_progress")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ACGAN on CIFAR-10 (32 or 64 px).",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["cifar10", "folder", "synthetic"], default="cifar10",
                   help="cifar10: the official batches in --data-dir; folder: one subfolder per "
                        "class under --data-dir; synthetic: coloured letters, offline")
    g.add_argument("--data-dir", default="data",
                   help="where real datasets are read from / downloaded to")
    g.add_argument("--n-per-class", type=common.positive_int, default=1000,
                   help="--data synthetic: images per class")
    g.add_argument("--no-flip", action="store_true",
                   help="no random horizontal flips of the real images")
    g.add_argument("--image-size", type=int, choices=[32, 64], default=64,
                   help="image height and width")
    g = parser.add_argument_group("model and training")
    g.add_argument("--nz", type=common.positive_int, default=100,
                   help="size of the generator's noise vector")
    g.add_argument("--class-input", choices=["multiply", "concat"], default="multiply",
                   help="noise times the class's embedding, or joined to it (collapses classes)")
    g.add_argument("--embed-dim", type=common.positive_int, default=50,
                   help="--class-input concat: size of the class embedding")
    g.add_argument("--ngf", type=common.positive_int, default=64,
                   help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=64,
                   help="discriminator feature maps (first block)")
    g.add_argument("--classifier-loss", choices=["real", "paper"], default="real",
                   help="what D's auxiliary classifier learns from: real images only, or real "
                        "and generated ones (the paper)")
    g.add_argument("--aux-weight", type=common.non_negative_float, default=1.0,
                   help="weight of the class loss L_C in both networks' losses")
    g.add_argument("--epochs", type=common.positive_int, default=40,
                   help="passes over the training set")
    g.add_argument("--batch-size", type=common.positive_int, default=128,
                   help="images per step per process (global batch = batch size x processes)")
    g.add_argument("--lr", type=common.positive_float, default=2e-4,
                   help="Adam learning rate of both networks")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2")
    g.add_argument("--ema", type=common.unit_interval, default=0.999,
                   help="decay of the generator's moving average (samples, evaluate.py; 0: off)")
    g.add_argument("--seed", type=common.seed, default=0,
                   help="random seed (data order, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", default=None,
                   help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, default=None,
                   help="stop after this many steps")
    g.add_argument("--max-minutes", type=common.positive_float, default=None,
                   help="stop after this many minutes of training (a wall-clock budget)")
    g.add_argument("--device", default="auto",
                   help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast or fp32; auto: bf16 where the hardware has it natively "
                        "(CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX), else fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: SyncBatchNorm across processes")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (slower on CUDA)")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss is NaN/inf instead of stopping")
    g = parser.add_argument_group("logging, samples, checkpoints, scores")
    g.add_argument("--log-every", type=common.positive_int, default=50,
                   help="log losses every N steps")
    g.add_argument("--sample-every", type=common.positive_int, default=5,
                   help="sample grid every N epochs")
    g.add_argument("--grid-columns", type=common.positive_int, default=10,
                   help="samples per class (columns) in the sample grids")
    g.add_argument("--save-every", type=common.positive_int, default=5,
                   help="keep epoch_NNN.pt every N epochs")
    g.add_argument("--eval-every", type=common.positive_int, default=None, metavar="N",
                   help="FID every N epochs (fid.py): logged, plotted, best.pt kept")
    g.add_argument("--fid-samples", type=common.positive_int, default=10000,
                   help="with --eval-every: images per FID")
    g.add_argument("--inception-weights", default=None,
                   help="FID Inception weights (default: fid.py's)")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    g = parser.add_argument_group("generate (no training)")
    g.add_argument("--generate", type=common.positive_int, default=None, metavar="N",
                   help="draw N samples from --checkpoint into a grid, the classes in turn")
    g.add_argument("--checkpoint", default=None,
                   help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", default=None,
                   help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None,
                   help="with --generate: also one PNG per sample in this new or empty folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: also latent and class interpolation sheets")
    args = common.parse_args(parser, argv)
    if args.generate is not None and args.checkpoint is None:
        parser.error("--generate needs --checkpoint PATH")
    return args


# ---------------------------------------------------------------------------
# Data: each source returns (uint8 images (N, 3, S, S), int64 labels (N,), class names)
# ---------------------------------------------------------------------------
def load_data(args):
    """All data errors surface here, before anything is written."""
    if args.data == "cifar10":
        images, labels = image_io.load_cifar10(args.data_dir)  # 32 px: the loader resizes per batch
        return images, labels, list(image_io.CIFAR10_CLASSES)
    if args.data == "folder":
        return image_io.load_image_folder(args.data_dir, args.image_size)
    import synthetic  # the offline data only: a copy trained on real data needs no synthetic.py

    return synthetic.coloured_letters(args.n_per_class, args.image_size, args.seed)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """(z, class) -> 3 x S x S: the class's learned embedding times the noise (or joined to it with
    class_input="concat"), then the DCGAN generator: transposed convs with BN + ReLU, tanh output.
    32 px: 4 transposed convs; 64 px: 5."""

    def __init__(self, nz=100, ngf=64, image_size=64, num_classes=10, embed_dim=50, channels=3,
                 class_input="multiply"):
        super().__init__()
        self.multiply = class_input == "multiply"
        self.label_embedding = nn.Embedding(num_classes, nz if self.multiply else embed_dim)
        doublings = {32: 3, 64: 4}[image_size]  # from 4x4 to the image size
        width = ngf * 2 ** (doublings - 1)
        in_features = nz if self.multiply else nz + embed_dim
        layers = [nn.ConvTranspose2d(in_features, width, 4, 1, 0, bias=False),
                  nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels):
        # Class indices (N,) pick an embedding; class weights (N, classes) blend them.
        table = self.label_embedding.weight
        embedded = (self.label_embedding(labels) if labels.dim() == 1
                    else labels.to(table.dtype) @ table)
        z = z.flatten(1) * embedded if self.multiply else torch.cat([z.flatten(1), embedded], 1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """3 x S x S -> (source logit, class logits). One DCGAN conv trunk (LeakyReLU(0.2), BN except
    on the first layer) down to 4x4, then two heads: real/fake and the auxiliary classifier."""

    def __init__(self, ndf=64, image_size=64, num_classes=10, channels=3):
        super().__init__()
        halvings = {32: 3, 64: 4}[image_size]  # from the image size down to 4x4
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(halvings - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        self.trunk = nn.Sequential(*layers)
        self.source_head = nn.Conv2d(width, 1, 4, 1, 0)  # real or generated
        self.aux_classifier = nn.Conv2d(width, num_classes, 4, 1, 0)  # which class

    def forward(self, x):
        features = self.trunk(x)
        return self.source_head(features).flatten(), self.aux_classifier(features).flatten(1)


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
    # Checkpoints from before --class-input joined the embedding to the noise.
    return Generator(settings["nz"], settings["ngf"], settings["image_size"],
                     settings["num_classes"], settings["embed_dim"],
                     class_input=settings.get("class_input", "concat"))


def build(args, device):
    """The networks and their optimizers (train() and bench.py use this)."""
    generator = common.prepare_model(build_generator(vars(args)).apply(weights_init), device)
    discriminator = Discriminator(args.ndf, args.image_size, args.num_classes).apply(weights_init)
    discriminator = common.prepare_model(discriminator, device)
    betas = (args.beta1, args.beta2)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, betas, device),
                  "discriminator": common.adam(discriminator.parameters(), args.lr, betas, device)}
    return {"generator": generator, "discriminator": discriminator}, optimizers


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights, decay warmed up as (1 + step) / (10 + step) so a
    short run's average does not stay near the initial weights; BN statistics are copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1) and classes (N,) or class weights (N, classes); by
    default the classes take turns. Batch-statistics BN as in training (this also suits the EMA
    generator), on copies of its buffers: sampling never changes the model (exact resume)."""
    if labels is None:
        num_classes = common.unwrap(generator).label_embedding.num_embeddings
        labels = torch.arange(noise.shape[0], device=noise.device) % num_classes
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise, labels))


# ---------------------------------------------------------------------------
# Training step: the ACGAN losses, one discriminator and one generator update. This is the part to
# change: the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def source_loss(logits, is_real):
    """-L_S for one batch: binary cross-entropy of the real/fake head (stable, on logits)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(is_real)))


def class_loss(class_logits, labels):
    """-L_C for one batch: cross-entropy of a class head against the true class."""
    return F.cross_entropy(class_logits.float(), labels)


def train_step(models, optimizers, batch, args):
    generator, discriminator = models["generator"], models["discriminator"]
    opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
    real_images, real_labels = batch["images"], batch["labels"]
    noise = torch.randn(real_images.shape[0], args.nz, 1, 1, device=real_images.device)
    fake_labels = torch.randint(args.num_classes, noise.shape[:1], device=real_images.device)
    # bf16 autocast (--precision): convolutions in bf16, BatchNorm and the losses stay fp32
    bf16 = torch.autocast(real_images.device.type, torch.bfloat16, enabled=args.precision == "bf16")
    with bf16:
        fake_images = generator(noise, fake_labels)
        # Discriminator: maximise L_S + L_C. Its classifier learns the classes of real images; the
        # paper's L_C also those of generated ones (eq. 2-3).
        source_real, classes_real = discriminator(real_images)
        source_fake, classes_fake = discriminator(fake_images.detach())
        class_term = class_loss(classes_real, real_labels)
        if args.classifier_loss == "paper":
            class_term = class_term + class_loss(classes_fake, fake_labels)
        loss_d = (source_loss(source_real, True) + source_loss(source_fake, False)
                  + args.aux_weight * class_term)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    common.optimizer_step(opt_d, loss_d, args.skip_nonfinite)

    with bf16:
        # Generator: maximise L_C - L_S, with the non-saturating source loss (maximise log D(G(z))).
        source_gen, classes_gen = discriminator(fake_images)
        loss_g = (source_loss(source_gen, True)
                  + args.aux_weight * class_loss(classes_gen, fake_labels))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),  # d_real, d_fake: health checks
            "d_real": torch.sigmoid(source_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(source_fake.detach().float()).mean(),
            "acc_real": (classes_real.detach().argmax(1) == real_labels).float().mean(),
            "acc_fake": (classes_fake.detach().argmax(1) == fake_labels).float().mean()}


# ---------------------------------------------------------------------------
# Scores during training
# ---------------------------------------------------------------------------
def prepare_fid(args, images, device):
    """--eval-every: FID/KID against a fixed subset of the training images (fid.py, imported only
    then; its Inception weights are checked now, not after an epoch). Returns score(generator)."""
    import fid

    fid_of = fid.fid_scorer(images, args.fid_samples, device, args.inception_weights)
    noise = lambda n: torch.randn(n, args.nz, 1, 1, device=device)  # noqa: E731
    return lambda generator: fid_of(lambda n: sample(generator, noise(n)))


def epoch_accuracy(history, steps_per_epoch):
    """D's class accuracy over each whole epoch on real and on generated images (plot_curves
    series), from the logged rows: each holds the mean since the row before; none spans two
    epochs."""
    sums, previous = {}, 0  # epoch -> [steps, sum on real images, sum on generated ones]
    for step, real, fake in zip(history["step"], history["acc_real"], history["acc_fake"]):
        weight, previous = step - previous, step
        total = sums.setdefault(-(-step // steps_per_epoch), [0, 0.0, 0.0])
        total[:] = total[0] + weight, total[1] + weight * real, total[2] + weight * fake
    epochs = [epoch for epoch, total in sums.items() if total[0] == steps_per_epoch]
    return {"real images": (epochs, [sums[e][1] / steps_per_epoch for e in epochs]),
            "generated images": (epochs, [sums[e][2] / steps_per_epoch for e in epochs])}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(args):
    # Setup: processes and device, the run's settings, precision, seeds, data. Every input error
    # (flags, data, checkpoint, FID weights) surfaces here, before anything is written.
    dist = common.setup_distributed(args.device)
    device, master = dist.device, dist.is_master
    out = args.out = args.out or common.default_run_dir(SCRIPT)
    checkpoint, resume_path = checkpoints.find_resume_checkpoint(args.resume, out, SCRIPT, device)
    if checkpoint is not None:  # a resumed run keeps its settings: model, data, budget, precision
        args = checkpoints.settings_from_checkpoint(args, checkpoint, resume_path,
                                                    CHANGEABLE_ON_RESUME)
    args.precision = common.pick_precision(args.precision, device)  # auto: bf16 where it is native
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls and convolutions: TF32 on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    common.seed_everything(args.seed, args.deterministic)
    images, labels, class_names = load_data(args)
    if len(class_names) < 2:
        raise common.UserError(
            f"ACGAN needs classes: one subfolder per class under {args.data_dir}")
    args.num_classes, args.class_names = len(class_names), list(class_names)  # kept in checkpoints
    loader = image_io.DeviceLoader(images, labels, args.batch_size, device, seed=args.seed,
                                   flip=not args.no_flip, rank=dist.rank,
                                   world_size=dist.world_size, image_size=args.image_size)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        last_step = min(last_step, args.max_steps)
    score_fid = prepare_fid(args, images, device) if args.eval_every and master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise and labels for the sample grids; then the checkpoint's state.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator, discriminator = networks["generator"], networks["discriminator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    shown_generator = ema_generator or generator  # what the grids and evaluate.py use
    # Sample grid: row c shows class c; column j uses noise vector j in every row (one "style").
    noise_seed = torch.Generator().manual_seed(args.seed)
    fixed_noise = torch.randn(args.grid_columns, args.nz, 1, 1, generator=noise_seed)
    fixed_noise = fixed_noise.repeat(args.num_classes, 1, 1, 1).to(device)
    fixed_labels = torch.arange(args.num_classes).repeat_interleave(args.grid_columns).to(device)
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
    real_reference, real_labels = loader.to_float(images[:100].to(device)), labels[:100].to(device)
    if master and checkpoint is not None:
        checkpoints.adopt_checkpoint(out, checkpoint, resume_path)
    if master and not os.path.isfile(os.path.join(out, "config.json")):
        common.write_config(out, args, SCRIPT, device, {"training_images": len(images)})
        image_io.save_grid(real_reference[:64], os.path.join(out, "real.png"), nrow=8,
                           scale=64 // args.image_size, title="real images")
    if master:
        print(f"{SCRIPT}: {out}, {device}, {args.precision}, step {step} of {last_step}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT)

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    grid, epoch = None, -(-step // steps_per_epoch)
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, batch_labels = loader.batch(step)
            batch = {"images": real_images, "labels": batch_labels}
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

            # End of an epoch, of the run, or an interruption: log, samples, scores, checkpoints.
            if epoch_done or finished:  # an interrupted run keeps its unlogged steps in last.pt
                log.flush(step, epoch)
            # an all-reduce on every rank: the processes' weights must agree
            divergence = common.replica_divergence(generator, dist) if finished else 0.0
            if master and epoch_done:  # D's class accuracy over the epoch: printed and plotted
                accuracy = epoch_accuracy(log.history, steps_per_epoch)
                real, fake = accuracy["real images"][1][-1], accuracy["generated images"][1][-1]
                log.bar.write(f"epoch {epoch}: D's class accuracy {real:.3f} on real, {fake:.3f} "
                              f"on generated images", file=sys.stderr)
                image_io.plot_curves(accuracy, os.path.join(out, "accuracy.png"), xlabel="epoch",
                                     title="discriminator's class accuracy", ylabel="accuracy")
            drawing = finished or stopping or epoch == 1 or epoch % args.sample_every == 0
            if master and drawing:
                samples = sample(shown_generator, fixed_noise, fixed_labels)
                log.monitor.check_samples(samples, real_reference, epoch, step, fixed_labels,
                                          real_labels)
                grid = os.path.join(out, "samples", f"epoch_{epoch:03d}.png")
                image_io.save_grid(samples, grid, nrow=args.grid_columns, row_labels=class_names,
                                   scale=64 // args.image_size, title=f"epoch {epoch}, step {step}")
                image_io.save_gif(sorted(glob.glob(os.path.join(out, "samples", "epoch_*.png"))),
                                  os.path.join(out, "progress.gif"))
                image_io.plot_losses(log.history, os.path.join(out, "losses.png"),
                                     title=f"{SCRIPT} losses")
            keep = epoch_done and epoch % args.save_every == 0
            copies = [f"epoch_{epoch:03d}.pt"] if keep else []  # written after last.pt
            if score_fid is not None and epoch_done and not stop and epoch % args.eval_every == 0:
                log.record(step, epoch, **score_fid(shown_generator))
                scores = log.history["scores"]
                copies += ["best.pt"] if scores["fid"][-1] <= min(scores["fid"]) else []
                curve = {"FID": (scores["epoch"], scores["fid"])}
                image_io.plot_curves(curve, os.path.join(out, "fid.png"), title=f"{SCRIPT}: FID",
                                     xlabel="epoch", ylabel="FID")
            if master:
                checkpoint = {"format": checkpoints.CHECKPOINT_FORMAT, "script": SCRIPT,
                              "args": common.plain_args(args), "class_names": list(class_names),
                              "step": step, "epoch": epoch, "finished": finished,
                              **{name: module.state_dict() for name, module in saved.items()},
                              "optimizers": {name: opt.state_dict()
                                             for name, opt in optimizers.items()},
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
        checkpoints.say_how_it_ended(how, out, step, epoch, grid, log.best("fid", min))
    if stop:
        raise SystemExit(130)
    return out


# ---------------------------------------------------------------------------
# Generate from a checkpoint (no training)
# ---------------------------------------------------------------------------
def generate(args):
    """--generate N --checkpoint PATH: a grid of N samples (+ one PNG each, + interpolations)."""
    default_grid = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "generated.png")
    grid_path = image_io.check_output_path(args.grid_out or default_grid, "--grid-out", "png")
    sheets = [grid_path[:-len(".png")] + f"_{kind}interpolation.png" for kind in ("", "class_")]
    for sheet_path in sheets if args.interpolate else []:
        image_io.check_output_path(sheet_path, "an interpolation sheet", "png")
    if args.png_dir:
        image_io.check_empty_folder(args.png_dir, "--png-dir")
    device = common.pick_device(args.device)
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, SCRIPT, map_location=device)
    settings = checkpoint["args"]
    generator = checkpoints.rebuild(build_generator, settings, args.checkpoint).to(device)
    weights = checkpoint.get("generator_ema", checkpoint["generator"])  # the average, if trained
    checkpoints.load_weights(generator, weights, args.checkpoint)
    names, count = [str(name) for name in settings.get("class_names", [])], settings["num_classes"]
    if len(names) != count:
        raise common.UserError(f"{args.checkpoint}: {len(names)} class names for {count} classes")
    noise_seed = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.generate, settings["nz"], 1, 1, generator=noise_seed)
    labels = torch.arange(args.generate) % count  # column c of the grid: class c
    images = sample(generator, noise.to(device), labels.to(device))
    image_io.save_grid(images, grid_path, nrow=min(count, args.generate),
                       captions=[names[i] for i in labels])
    written = [grid_path]
    if args.png_dir:
        written.append(image_io.save_pngs(images, args.png_dir))
    if args.interpolate:
        rows = torch.arange(8) % count  # 8 latent walks between two random points, one class each
        walks = image_io.interpolation_noise(8, 10, settings["nz"], args.seed)
        sheet = sample(generator, walks.to(device), rows.repeat_interleave(10).to(device))
        written.append(image_io.save_grid(sheet, sheets[0], nrow=10,
                                          row_labels=[names[i] for i in rows]))
        # One row per class c: its noise fixed, the class embedding blended from class c to c + 1.
        one_hot = F.one_hot(torch.arange(count), count)[:, None].float()
        t = torch.linspace(0, 1, 10).view(1, 10, 1)
        weights = (1 - t) * one_hot + t * one_hot.roll(-1, 0)
        noise = torch.randn(count, settings["nz"], 1, 1,
                            generator=noise_seed.manual_seed(args.seed))
        noise, weights = noise.repeat_interleave(10, 0), weights.reshape(-1, count)
        sheet = sample(generator, noise.to(device), weights.to(device))
        row_labels = [f"{names[c]} > {names[(c + 1) % count]}" for c in range(count)]
        written.append(image_io.save_grid(sheet, sheets[1], nrow=10, row_labels=row_labels))
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
