"""WGAN-GP on CIFAR-10: a Wasserstein GAN whose critic is kept 1-Lipschitz by a gradient penalty
(32 or 64 px).

Paper: Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of Wasserstein GANs",
NeurIPS 2017, Algorithm 1: the critic C minimises
    E[C(G(z))] - E[C(x)] + lambda * E[(||grad C(x_hat)||_2 - 1)^2]
at random interpolates x_hat between real and generated images; the generator minimises
-E[C(G(z))]. No sigmoid anywhere and no BatchNorm in the critic (the penalty is per sample; batch
statistics would couple the samples): LayerNorm instead, or nothing (--critic-norm none).
lambda 10 and n_critic 5 as in the paper; Adam(2e-4, betas (0.5, 0.999)), StudioGAN's and the
coursework report's optimiser, which at 32 px and batch 64 reaches the FID of 10,000 steps with
the paper's optimiser in 6,240 steps (docs/wgan_gp_cifar.md); the paper's Algorithm 1 values are
--lr 1e-4 --beta1 0 --beta2 0.9. The generator is the DCGAN one.

One training step = one generator update = n_critic critic updates before it, each on its own batch
of --batch-size real images (Algorithm 1's inner loop). So a step reads n_critic x batch-size
images, an epoch (one pass over the data) has N / (n_critic x batch-size) steps, --max-steps counts
generator updates, as the paper's "generator iterations" do, and images/s counts the real images
the critic reads.

Run:
    python wgan_gp_cifar.py                        # the report's: 64 px, batch 128, 40 epochs
    python wgan_gp_cifar.py --lambda 10 --n-critic 5       # the penalty weight and critic steps
    python wgan_gp_cifar.py --lr 1e-4 --beta1 0 --beta2 0.9        # the paper's Algorithm 1 Adam
    # the paper's DCGAN-style CIFAR-10 run, as the authors' gan_cifar.py (200,000 generator steps):
    python wgan_gp_cifar.py --image-size 32 --batch-size 64 --lr 1e-4 --beta1 0.5 --beta2 0.9
        --nz 128 --ngf 128 --ndf 128 --critic-norm none --epochs 1300 --max-steps 200000
    python wgan_gp_cifar.py --data synthetic --epochs 5            # offline: coloured letters
    python wgan_gp_cifar.py --generate 64 --checkpoint runs/<run>/last.pt --interpolate  # samples
    python evaluate.py runs/<run>                  # FID of every saved checkpoint of a run
On several GPUs (one process each; --batch-size is per process):
    torchrun --standalone --nproc_per_node=4 wgan_gp_cifar.py --device cuda

log.csv has the Wasserstein estimate E[C(x)] - E[C(G(z))] (wasserstein), the penalty term before
lambda (gradient_penalty) and the mean gradient norm at the interpolates (grad_norm, near 1 when the
penalty works).

Data: --data cifar10 reads the official python batches from <data-dir>/cifar-10-batches-py/
(downloading and unpacking cifar-10-python.tar.gz when they are missing). The images are decoded
once into a uint8 tensor on the training device and fed with random horizontal flips. --data
synthetic draws the letters A-J, each class in its own colour on a randomly tinted background.
"""

import argparse
import copy
import glob
import os

import torch
import torch.nn as nn

import checkpoints
import common
import image_io

SCRIPT = common.script_name(__file__)  # a copy (my_gan.py) writes checkpoints of its own name
EVAL = {"dataset": "cifar10", "conditioning": "none"}  # what evaluate.py compares the samples with
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
    parser = argparse.ArgumentParser(description="WGAN-GP on CIFAR-10 (32 or 64 px).",
                                     usage="%(prog)s [options] (see --help)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=["cifar10", "folder", "synthetic"], default="cifar10",
                   help="cifar10: the official batches in --data-dir; folder: every image under "
                        "--data-dir; synthetic: coloured letters, offline")
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
    g.add_argument("--ngf", type=common.positive_int, default=64,
                   help="generator feature maps (last block)")
    g.add_argument("--ndf", type=common.positive_int, default=64,
                   help="critic feature maps (first block)")
    g.add_argument("--critic-norm", choices=["layer", "none"], default="layer",
                   help="critic norm: layer (LayerNorm over C, H, W) or none; never BatchNorm")
    g.add_argument("--lambda", dest="lambda_gp", metavar="LAMBDA", type=common.non_negative_float,
                   default=10.0, help="weight of the gradient penalty (the paper's lambda)")
    g.add_argument("--n-critic", type=common.positive_int, default=5,
                   help="critic updates per generator update (each on its own batch)")
    g.add_argument("--epochs", type=common.positive_int, default=40,
                   help="passes over the training set")
    g.add_argument("--batch-size", type=common.positive_int, default=128,
                   help="images per critic update per process (global batch = batch size x "
                        "processes)")
    g.add_argument("--lr", type=common.positive_float, default=2e-4,
                   help="Adam learning rate of both networks (the paper's: 1e-4)")
    g.add_argument("--beta1", type=common.unit_interval, default=0.5,
                   help="Adam beta1 (the paper's: 0)")
    g.add_argument("--beta2", type=common.unit_interval, default=0.999,
                   help="Adam beta2 (the paper's: 0.9)")
    g.add_argument("--ema", type=common.unit_interval, default=0.999,
                   help="decay of the moving average of the generator's weights that samples and "
                        "evaluate.py use (0: off)")
    g.add_argument("--seed", type=common.seed, default=0,
                   help="random seed (data order, weights, noise)")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", default=None,
                   help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--max-steps", type=common.positive_int, default=None,
                   help="stop after this many steps (generator updates)")
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
                   help="draw N samples from --checkpoint into a grid")
    g.add_argument("--checkpoint", default=None,
                   help="with --generate: the checkpoint to sample from")
    g.add_argument("--grid-out", default=None,
                   help="with --generate: grid PNG (default next to the checkpoint)")
    g.add_argument("--png-dir", default=None,
                   help="with --generate: also one PNG per sample in this new or empty folder")
    g.add_argument("--interpolate", action="store_true",
                   help="with --generate: also a latent interpolation sheet "
                        "(<grid>_interpolation.png)")
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
    import synthetic  # offline data only: a copied script with real data needs no synthetic.py

    return synthetic.coloured_letters(args.n_per_class, args.image_size, args.seed)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class Generator(nn.Module):
    """z (nz x 1 x 1) -> 4x4 -> ... -> 3 x S x S; transposed convs with BN + ReLU, tanh output
    (DCGAN). 32 px: 4 transposed convs (4 -> 8 -> 16 -> 32); 64 px: 5 (one more doubling)."""

    def __init__(self, nz=100, ngf=64, image_size=64, channels=3):
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


class Critic(nn.Module):
    """3 x S x S -> one unbounded score (no sigmoid). Strided convs with LeakyReLU(0.2), like the
    DCGAN discriminator but without BatchNorm: the gradient penalty is computed per sample, and
    batch norm would make each score depend on the rest of the batch. LayerNorm (GroupNorm with one
    group: mean and variance over C, H, W of each sample) takes its place, as in the paper.
    32 px: 4 convs; 64 px: 5."""

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


def weights_init(module):
    """DCGAN's init: conv weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), biases 0. The
    critic's LayerNorm (GroupNorm) keeps PyTorch's scale 1, shift 0 and draws no random numbers."""
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
    generator = common.prepare_model(build_generator(vars(args)).apply(weights_init), device)
    critic = Critic(args.ndf, args.image_size, args.critic_norm).apply(weights_init)
    critic = common.prepare_model(critic, device)
    betas = (args.beta1, args.beta2)
    optimizers = {"generator": common.adam(generator.parameters(), args.lr, betas, device),
                  "critic": common.adam(critic.parameters(), args.lr, betas, device)}
    return {"generator": generator, "critic": critic}, optimizers


@torch.no_grad()
def update_ema(ema_generator, generator, decay, step):
    """ema <- decay * ema + (1 - decay) * weights, the decay warmed up as (1 + step) / (10 + step)
    so that a short run's average does not stay near the random initial weights; BN statistics are
    copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_generator.parameters(), generator.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_generator.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def sample(generator, noise, labels=None):
    """Images in [-1, 1] from noise (N, nz, 1, 1), with batch-statistics BN as in training (this
    also suits the EMA generator, whose weights never produced running statistics). BN runs on
    copies of its buffers, so drawing samples never changes the model (exact resume)."""
    buffers = {name: b.clone() for name, b in generator.named_buffers()}
    return torch.func.functional_call(generator, buffers, (noise,))


def images_per_step(args):
    """Real images one step reads: n_critic batches (the loader, images/s and bench.py use this)."""
    return args.batch_size * args.n_critic


# ---------------------------------------------------------------------------
# Training step: n_critic critic updates with the gradient penalty, then one generator update.
# This is the part to change: the loop logs, plots and checks whatever values it returns.
# ---------------------------------------------------------------------------
def gradient_penalty(critic, real_images, fake_images):
    """E[(||grad_x_hat C(x_hat)||_2 - 1)^2] at x_hat = eps * x + (1 - eps) * G(z), eps ~ U[0, 1] per
    sample (the paper's eq. 3). Returns (penalty, mean gradient norm). create_graph=True: the
    penalty is itself differentiated when the critic is updated."""
    eps = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device)
    interpolates = eps * real_images.detach() + (1 - eps) * fake_images.detach()
    interpolates.requires_grad_(True)
    scores = critic(interpolates)
    (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    # +1e-12: a finite gradient at norm 0
    norms = gradients.float().flatten(1).square().sum(1).add(1e-12).sqrt()
    return (norms - 1).square().mean(), norms.detach().mean()


def train_step(models, optimizers, batch, args):
    """n_critic critic updates, one per --batch-size slice of batch["images"], then one generator
    update."""
    generator, critic = models["generator"], models["critic"]
    opt_g, opt_c = optimizers["generator"], optimizers["critic"]
    # torch.compile cannot differentiate twice: the penalty runs the critic's uncompiled code.
    eager_critic = getattr(critic, "_orig_mod", critic)
    # bf16 autocast (--precision): convolutions in bf16, the norms and the losses stay fp32
    device = batch["images"].device
    bf16 = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16")
    critic_losses, wasserstein, penalties, grad_norms = [], [], [], []
    for real_images in batch["images"].split(args.batch_size):
        noise = torch.randn(real_images.shape[0], args.nz, 1, 1, device=device)
        with bf16:
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

    noise = torch.randn(args.batch_size, args.nz, 1, 1, device=device)
    with bf16:
        loss_g = -critic(generator(noise)).float().mean()  # the generator minimises -E[C(G(z))]
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    common.optimizer_step(opt_g, loss_g, args.skip_nonfinite)
    # all but loss_g: means over the critic updates
    return {"loss_d": torch.stack(critic_losses).mean(), "loss_g": loss_g.detach(),
            "wasserstein": torch.stack(wasserstein).mean(),
            "gradient_penalty": torch.stack(penalties).mean(),
            "grad_norm": torch.stack(grad_norms).mean()}


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
    images, _labels, class_names = load_data(args)
    if len(images) // dist.world_size < images_per_step(args):
        raise common.UserError(f"{len(images)} images are fewer than one step's n_critic x batch "
                               f"size = {images_per_step(args)} per process: lower --batch-size "
                               f"or --n-critic")
    # One loader batch = one step = n_critic critic batches.
    loader = image_io.DeviceLoader(images, None, images_per_step(args), device, seed=args.seed,
                                   flip=not args.no_flip, rank=dist.rank,
                                   world_size=dist.world_size, image_size=args.image_size)
    steps_per_epoch = len(loader)
    last_step = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        last_step = min(last_step, args.max_steps)
    score_fid = prepare_fid(args, images, device) if args.eval_every and master else None
    if args.track and master:
        common.require_tensorboard()

    # Models, optimizers, fixed noise for the sample grids; then the checkpoint's state over them.
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    networks, optimizers = build(args, device)
    generator = networks["generator"]
    ema_generator = copy.deepcopy(generator).requires_grad_(False) if args.ema > 0 else None
    shown_generator = ema_generator or generator  # what the grids and evaluate.py use
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
            return out
    if dist.rank > 0:  # different noise per rank, same weights
        torch.manual_seed(args.seed + 1000 * dist.rank + step)
    models = {name: common.maybe_compile(common.wrap_ddp(net, dist, args.sync_bn), args.compile)
              for name, net in networks.items()}

    # The run folder: claimed once every check has passed; only the master process writes.
    lock = common.claim_run_folder(out, resume=checkpoint is not None) if master else None
    real_reference = loader.to_float(images[:64].to(device))
    if master and checkpoint is not None:
        checkpoints.adopt_checkpoint(out, checkpoint, resume_path)
    if master and not os.path.isfile(os.path.join(out, "config.json")):
        common.write_config(out, args, SCRIPT, device, {"training_images": len(images)})
        image_io.save_grid(real_reference, os.path.join(out, "real.png"), nrow=8,
                           scale=64 // args.image_size, title="real images")
    if master:
        print(f"{SCRIPT}: {out}, {device}, {args.precision}, step {step} of {last_step}")
    log = common.TrainLog(out, args, dist, last_step, step, checkpoint, desc=SCRIPT,
                          images_per_step=images_per_step(args))  # the real images the critic reads

    # The loop: `step` is the only counter; an epoch ends every steps_per_epoch steps.
    grid, epoch = None, -(-step // steps_per_epoch)
    with common.GracefulExit() as stop:
        while step < last_step:
            real_images, _ = loader.batch(step)
            values = train_step(models, optimizers, {"images": real_images, "labels": None}, args)
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
            drawing = finished or stopping or epoch == 1 or epoch % args.sample_every == 0
            if master and drawing:
                samples = sample(shown_generator, fixed_noise)
                log.monitor.check_samples(samples, real_reference, epoch, step)
                grid = os.path.join(out, "samples", f"epoch_{epoch:03d}.png")
                image_io.save_grid(samples, grid, nrow=8, scale=64 // args.image_size,
                                   title=f"epoch {epoch}, step {step}")
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
                              **log.state_dict(), "world_size": dist.world_size,
                              "replica_divergence": divergence}
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
    sheet_path = grid_path[:-len(".png")] + "_interpolation.png"
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
        walks = image_io.interpolation_noise(8, 10, settings["nz"], args.seed)
        sheet = sample(generator, walks.to(device))
        written.append(image_io.save_grid(sheet, sheet_path, nrow=10))
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
