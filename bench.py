"""Speed and memory: every script's own training step against a plain reference loop, FID's
matrix step, and a whole training process against pytorch/examples' dcgan/main.py.

Small GANs are bound by overheads, not by FLOPs: a DataLoader with PIL transforms, a host sync per
step for logging, many small kernels. The default mode times each script's real `build`,
`train_step` and `update_ema` (nothing re-written), fed as the script feeds them: a uint8 dataset
on the device (image_io.DeviceLoader), losses summed on the device, one device sync at the end of
each timed window. `--baseline` times, in the same process, on the same images and device,
pytorch/examples' loop: dcgan_cifar.py's networks fed by a DataLoader over PIL images with
ToTensor + Normalize, fp32, plain Adam, `.item()` on every step; each row's ratio is taken against
baseline windows timed right after its own, so that on a shared machine both saw the same load.

Run:
    python bench.py                                   # all scripts, 32 px, batch 64, default device
    python bench.py --baseline --device cpu --steps 30        # with the reference loop and ratios
    python bench.py --device cuda --image-size 64 --batch-size 128 --baseline --compile
    python bench.py --scripts dcgan_cifar wgan_gp_cifar --steps 50 --precision fp32
    python bench.py --cpu-checks --device cpu         # every script: NCHW, the other precision
    python bench.py --threads 1 --repeats 3 --baseline        # a shared machine: performance.md
    python bench.py --extraction --threads 2 --repeats 3      # fid.py's Inception: before vs now
    python bench.py --frechet [--frechet-features A.npz B.npz]   # FID's matrix step: ours, sqrtm
    python bench.py --make-cifar-batches JPEG_DIR OUT_DIR     # CIFAR-10 python batches from JPEGs
    python bench.py --whole-process --peer EXAMPLES/dcgan/main.py --data-dir OUT_DIR --rounds 3

The images of the default mode are random uint8 pixels of each script's shape with random labels
of its kind (a step costs the same whatever the pixels show). Each script runs at its own
defaults except for the flags given here, its --precision resolved as its train() does. A "step"
is what the script counts as one: for wgan_gp_cifar one generator update with n_critic critic
updates, each on its own batch, so its images/s counts the real images the critic reads.
"""

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

import common
import image_io

SCRIPTS = ("dcgan_letters", "cdcgan_ab", "dcgan_cifar", "acgan_cifar", "wgan_gp_cifar",
           "cdcgan_anime", "cgan_objects")
CIFAR10_TRAIN_IMAGES = 50_000  # for the seconds per CIFAR-10 epoch of the CIFAR scripts
DATA_STEPS = 16  # the benchmark dataset holds this many steps' worth of images; loaders cycle on it
REPO = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Training throughput of every script (optionally against a plain reference "
                    "DCGAN loop), Inception feature throughput, FID's matrix step, and a whole "
                    "training process against pytorch/examples' dcgan/main.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--scripts", nargs="+", default=["all"], choices=["all", *SCRIPTS], metavar="SCRIPT",
        help=f"scripts to time: all, or some of {' '.join(SCRIPTS)}")
    add("--steps", type=common.positive_int, default=20, help="timed training steps per script")
    add("--warmup", type=common.positive_int, default=3,
        help="untimed steps first (allocator, cuDNN autotuning, torch.compile)")
    add("--repeats", type=common.positive_int, default=1,
        help="time this many windows (rounds) and keep the fastest (on a shared machine the "
             "fastest is the one least disturbed by other work)")
    add("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1")
    add("--image-size", type=int, choices=[32, 64], default=None,
        help="image height and width (default: 32; --whole-process: dcgan_cifar's, 64)")
    add("--batch-size", type=common.positive_int, default=None,
        help="images per batch (default: 64; --whole-process: dcgan_cifar's, 128)")
    add("--precision", choices=["auto", "bf16", "fp32"], default="auto",
        help="every script's --precision, resolved as the scripts do (auto: bf16 where the "
             "device has it natively); --cpu-checks adds rows in the other precision")
    add("--compile", action="store_true", help="pass --compile to every script (torch.compile)")
    add("--deterministic", action="store_true",
        help="pass --deterministic (no cuDNN autotuning) to every script")
    add("--threads", type=common.positive_int, default=None,
        help="torch.set_num_threads for the whole run (--whole-process: OMP_NUM_THREADS of both "
             "processes; default: torch's choice / the environment's)")
    add("--baseline", action="store_true",
        help="also time the plain pytorch/examples-style DCGAN loop and print ours / baseline")
    add("--baseline-workers", type=int, default=None,
        help="DataLoader workers of the baseline (default: 0 on CPU, where workers would take "
             "the training's cores; 2 on CUDA, pytorch/examples' default)")
    add("--cpu-checks", action="store_true",
        help="also time every chosen script in NCHW (not channels_last) and in the other "
             "precision, and dcgan_cifar with 1 and 2 threads: the measurements behind the "
             "CPU defaults")
    add("--extraction", action="store_true",
        help="only fid.py's Inception feature extraction: the path before the CPU work and "
             "today's (and bf16's) on the same images, interleaved, with the FID each gives")
    add("--extraction-images", type=int, default=100,
        help="images for the feature extraction (0: skip its row in the training table)")
    add("--extraction-batch", type=common.positive_int, default=None,
        help="batch size of the feature extraction (default: fid.py's)")
    add("--extraction-folder", default=None,
        help="with --extraction: take the images from this folder (resized to 32x32)")
    add("--inception-weights", default=None, help="as evaluate.py's --inception-weights")
    g = parser.add_argument_group(
        "--frechet: FID's matrix step, fid.py (Cholesky + eigvalsh) against sqrtm")
    g.add_argument("--frechet", action="store_true",
                   help="only the Frechet distance of the same statistics by fid.frechet_distance "
                        "and by scipy.linalg.sqrtm: seconds, ratio, relative difference")
    g.add_argument("--frechet-features", nargs=2, metavar=("A.npz", "B.npz"), default=None,
                   help="also these two real statistics (.npz with mu and sigma, e.g. "
                        "evaluate.py's cache, or with features only; or .npy features)")
    g.add_argument("--frechet-dims", type=common.positive_int, default=2048,
                   help="dimensions of the random statistics (Inception pool3: 2048)")
    g = parser.add_argument_group("--whole-process: dcgan_cifar.py against pytorch/examples")
    g.add_argument("--whole-process", action="store_true",
                   help="only two whole processes, run alternately: dcgan_cifar.py --max-steps "
                        "N and pytorch/examples' dcgan/main.py on the same CIFAR-10 batches, "
                        "steps and batch: wall seconds and peak resident memory of each")
    g.add_argument("--peer", default=None, metavar="PATH/main.py",
                   help="pytorch/examples' dcgan/main.py (not part of this repository)")
    g.add_argument("--data-dir", default="data",
                   help="the folder that holds cifar-10-batches-py/ (the python batches)")
    g.add_argument("--process-steps", type=common.positive_int, default=48,
                   help="training steps of each process")
    g.add_argument("--rounds", type=common.positive_int, default=3,
                   help="times each process runs (alternately, the first one alternating)")
    g = parser.add_argument_group("data")
    g.add_argument("--make-cifar-batches", nargs=2, metavar=("SRC", "DST"), default=None,
                   help="only write CIFAR-10 python batches (data_batch_1..5, test_batch, "
                        "batches.meta) into DST/cifar-10-batches-py/ from a JPEG copy "
                        "SRC/{train,test}/<class>/*.jpg")
    add("--seed", type=int, default=0, help="random seed (data, weights, noise)")
    args = parser.parse_args(argv)
    if args.extraction_images < (4 if args.extraction else 0):
        parser.error("--extraction-images must be 0 or more (with --extraction: at least 4)")
    if args.baseline_workers is not None and args.baseline_workers < 0:
        parser.error("--baseline-workers must be 0 or more")
    if args.whole_process and args.peer is None:
        parser.error("--whole-process needs --peer PATH/main.py (pytorch/examples' dcgan)")
    if args.whole_process:  # the process runs at dcgan_cifar's defaults unless told otherwise
        import dcgan_cifar

        defaults = dcgan_cifar.parse_args([])
        args.image_size = args.image_size or defaults.image_size
        args.batch_size = args.batch_size or defaults.batch_size
        if args.image_size != 64:
            parser.error("--whole-process runs at 64 px: pytorch/examples' DCGAN fits no other")
    args.image_size, args.batch_size = args.image_size or 32, args.batch_size or 64
    if args.extraction_batch is None:
        import fid

        args.extraction_batch = fid.BATCH_SIZE
    args.scripts = list(SCRIPTS) if "all" in args.scripts else list(dict.fromkeys(args.scripts))
    return args


# ---------------------------------------------------------------------------
# Timing and memory helpers
# ---------------------------------------------------------------------------
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_kib(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in KiB; None where /proc
    has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory a benchmark row needs above what was held when the row started (its dataset
    excluded). CUDA: torch's allocator statistics. CPU: the process's resident memory, whose peak
    Linux resets on request (/proc/self/clear_refs); elsewhere nothing is reported."""

    def __init__(self, device):
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
            return
        try:  # hand freed heap pages back to the OS, so the next row's growth shows in its RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak resident set size (VmHWM) to the current one
            self.start = _resident_kib("VmRSS")
        except OSError:
            self.start = None

    def mib(self):
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        peak = _resident_kib("VmHWM")
        return None if self.start is None or peak is None else (peak - self.start) / 1024


class TimedLoop:
    """A training loop, built and ready: `window(steps)` runs that many steps and returns the
    seconds they took, waiting for the device only at the end. `setting` (a context manager) is
    entered around every window."""

    def __init__(self, run_steps, device, setting=None):
        self.run_steps, self.device = run_steps, device
        self.setting = setting or contextlib.nullcontext

    def window(self, steps):
        with self.setting():
            synchronize(self.device)
            start = time.perf_counter()
            self.run_steps(steps)
            synchronize(self.device)
            return time.perf_counter() - start


@contextlib.contextmanager
def thread_setting(threads=None):
    """The thread-count check: torch.set_num_threads(threads) for the window, restored after."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def best_of(rounds, calls):
    """Run `calls` ({label: (fn, args)}, fn(*args) -> (seconds, value)) interleaved, round by
    round: {label: [seconds of each round]} and {label: the last round's value}."""
    seconds, values = {label: [] for label in calls}, {}
    for _ in range(rounds):
        for label, (fn, args) in calls.items():
            elapsed, values[label] = fn(*args)
            seconds[label].append(elapsed)
    return seconds, values


# ---------------------------------------------------------------------------
# Benchmark data: random uint8 images of the script's shape, random labels of the script's kind
# ---------------------------------------------------------------------------
def benchmark_labels(module, args, n, generator):
    """Labels as the script's data loader returns them, from its EVAL description (as evaluate.py
    reads it)."""
    spec = module.EVAL
    kind = spec.get("conditioning", "none")
    if kind == "none":
        return None
    if kind == "class":  # class indices (N,); cdcgan_ab's classes are its --chars
        named = getattr(args, spec.get("classes_arg", ""), None)  # acgan_cifar's train() sets it
        count = len(named) if named is not None else spec["num_classes"]
        return torch.randint(count, (n,), generator=generator)
    if kind == "attributes":  # one index per attribute (N, A): hair and eye colour for the faces
        return torch.stack([torch.randint(size, (n,), generator=generator)
                            for size in spec["num_classes"]], 1)
    if kind == "multi-hot":  # 1 to 3 distinct objects per picture, as in i-CLEVR: float (N, K)
        count = spec["num_classes"]
        objects = torch.randint(1, 4, (n, 1), generator=generator)
        rank = torch.rand(n, count, generator=generator).argsort(1).argsort(1)  # random order
        return (rank < objects).float()
    raise ValueError(f"{module.SCRIPT}: unknown conditioning {kind!r} in EVAL")


def benchmark_images(n, channels, image_size, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, image_size, image_size), generator=generator,
                         dtype=torch.uint8)


def script_argv(bench, precision=None):
    """The bench flags as a script's command line: everything else stays at its own defaults."""
    argv = ["--image-size", bench.image_size, "--batch-size", bench.batch_size,
            "--device", bench.device, "--seed", bench.seed,
            "--precision", precision or bench.precision]
    argv += [f"--{flag}" for flag in ("compile", "deterministic") if getattr(bench, flag)]
    return [str(a) for a in argv]


def precision_label(choice, device):
    """The header's words for --precision `choice` on `device`: what the scripts resolve it to."""
    resolved = common.pick_precision(choice, device)
    label = "bf16 autocast" if resolved == "bf16" else "fp32"
    if choice == "auto":
        label += " (--precision auto: " + ("native bf16 here)" if resolved == "bf16"
                                           else "no native bf16 here)")
    elif resolved == "bf16" and not common.native_bf16(device):
        label += " (emulated: no native bf16 on this device)"
    return label


# ---------------------------------------------------------------------------
# Ours: the script's own training iteration
# ---------------------------------------------------------------------------
def prepare_script(name, bench, device, threads=None, nchw=False, precision=None):
    """`name`'s training iteration as its train() runs it: DeviceLoader batch -> train_step ->
    losses summed (-> its update_ema). Returns (TimedLoop, info): info has images_per_step,
    parameters, note, cifar, memory (a PeakMemory started after the dataset went to the device)
    and check() (the losses are finite). The checks: threads (a torch thread count), nchw
    (contiguous NCHW weights and batches instead of the channels_last that common.prepare_model
    and DeviceLoader use), precision (instead of bench's --precision)."""
    module = importlib.import_module(name)
    args = module.parse_args(script_argv(bench, precision))
    args.precision = common.pick_precision(args.precision, device)  # as the script's train()
    if "class_names" in module.EVAL and not hasattr(args, "class_names"):  # acgan: from the data
        args.num_classes, args.class_names = module.EVAL["num_classes"], module.EVAL["class_names"]
    if isinstance(getattr(args, "lr", None), list):  # dcgan_letters compares rates: one run each
        args.lr = args.lr[0]
    common.seed_everything(args.seed, args.deterministic)
    images_per_step = getattr(module, "images_per_step", lambda a: a.batch_size)(args)
    n = images_per_step * DATA_STEPS
    channels = 1 if module.EVAL["dataset"] == "letters" else 3
    images = benchmark_images(n, channels, args.image_size, bench.seed)
    labels = benchmark_labels(module, args, n, torch.Generator().manual_seed(bench.seed))
    loader = image_io.DeviceLoader(images, labels, images_per_step, device, seed=args.seed,
                                   flip=not getattr(args, "no_flip", True),
                                   normalize=not getattr(args, "no_normalize", False))
    memory = PeakMemory(device)
    models, optimizers = module.build(args, device)
    if nchw:
        for model in models.values():
            model.to(memory_format=torch.contiguous_format)
    train_models = {k: common.maybe_compile(m, args.compile) for k, m in models.items()}
    ema_generator = None
    if getattr(args, "ema", 0) > 0:
        ema_generator = copy.deepcopy(models["generator"]).requires_grad_(False)
    # Scripts whose step is one D update count --n-critic in steps (batch["update_generator"]);
    # wgan_gp_cifar does its n_critic critic updates inside one step.
    counts_critic_steps = hasattr(args, "n_critic") and not hasattr(module, "images_per_step")
    state = {"step": 0, "sums": {}}

    def run_steps(count):
        for _ in range(count):
            step = state["step"]
            real_images, real_labels = loader.batch(step)
            if nchw:
                real_images = real_images.contiguous()
            batch = {"images": real_images, "labels": real_labels}
            if counts_critic_steps:
                batch["update_generator"] = (step + 1) % args.n_critic == 0
            for key, value in module.train_step(train_models, optimizers, batch, args).items():
                state["sums"][key] = state["sums"].get(key, 0) + value.detach().float()
            if ema_generator is not None:
                module.update_ema(ema_generator, models["generator"], args.ema, step)
            state["step"] = step + 1

    def check():  # the host sync of a log line
        means = {k: (v / max(state["step"], 1)).item() for k, v in state["sums"].items()}
        common.check_finite(means, state["step"], skip=False)

    note = ""
    if hasattr(module, "images_per_step"):
        note = (f"1 step = 1 generator + {args.n_critic} critic updates; images/s counts the "
                f"{images_per_step} real images the critic reads per step")
    info = {"images_per_step": images_per_step, "note": note, "memory": memory, "check": check,
            "parameters": sum(p.numel() for model in models.values() for p in model.parameters()),
            "cifar": module.EVAL["dataset"] == "cifar10"}
    return TimedLoop(run_steps, device, lambda: thread_setting(threads)), info


# ---------------------------------------------------------------------------
# Baseline: the plain loop of pytorch/examples' dcgan/main.py, on dcgan_cifar.py's networks
# ---------------------------------------------------------------------------
class PILImageDataset(torch.utils.data.Dataset):
    """Images kept as torchvision's CIFAR10 keeps them, an (N, H, W, C) uint8 array; each item
    becomes a PIL image and goes through the transforms, in __getitem__, as in every torchvision
    dataset."""

    def __init__(self, images, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), 0


def baseline_workers(bench, device):
    if bench.baseline_workers is not None:
        return bench.baseline_workers
    return 0 if device.type == "cpu" else 2


def prepare_baseline(bench, device):
    """pytorch/examples dcgan/main.py's training loop: DataLoader + PIL + ToTensor/Normalize, fp32,
    plain Adam, no channels_last, D's real and fake losses backpropagated separately, `.item()` of
    every logged number on every step (its print line is formatted and dropped). Same networks,
    init and sizes as dcgan_cifar. Returns (TimedLoop, info) as prepare_script does."""
    import torchvision.transforms as transforms

    import dcgan_cifar

    args = dcgan_cifar.parse_args(script_argv(bench))
    torch.manual_seed(bench.seed)
    torch.backends.cudnn.benchmark = not bench.deterministic  # pytorch/examples sets it too
    images = benchmark_images(bench.batch_size * DATA_STEPS, 3, bench.image_size, bench.seed)
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    workers = baseline_workers(bench, device)
    # Persistent workers: our small dataset ends an epoch every few steps; restarting the workers
    # each time would be a cost the real loop (390 steps per CIFAR-10 epoch) hardly pays.
    dataloader = torch.utils.data.DataLoader(PILImageDataset(images, transform),
                                             batch_size=bench.batch_size, shuffle=True,
                                             num_workers=workers, drop_last=True,
                                             persistent_workers=workers > 0)
    memory = PeakMemory(device)
    net_g = dcgan_cifar.Generator(args.nz, args.ngf, args.image_size)
    net_g = net_g.apply(dcgan_cifar.weights_init).to(device)
    net_d = dcgan_cifar.Discriminator(args.ndf, args.image_size)
    net_d = net_d.apply(dcgan_cifar.weights_init).to(device)
    criterion = nn.BCEWithLogitsLoss()  # pytorch/examples: Sigmoid in D + BCELoss; stabler here
    optimizer_d = torch.optim.Adam(net_d.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optimizer_g = torch.optim.Adam(net_g.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    real_label, fake_label = 1.0, 0.0

    def batches():
        while True:
            yield from dataloader

    stream = batches()
    log_lines = []

    def run_steps(count):
        for _ in range(count):
            real_cpu, _ = next(stream)
            net_d.zero_grad()
            real = real_cpu.to(device)
            batch_size = real.size(0)
            label = torch.full((batch_size,), real_label, dtype=real.dtype, device=device)
            output = net_d(real)
            err_d_real = criterion(output, label)
            err_d_real.backward()
            d_x = torch.sigmoid(output).mean().item()
            noise = torch.randn(batch_size, args.nz, 1, 1, device=device)
            fake = net_g(noise)
            label.fill_(fake_label)
            output = net_d(fake.detach())
            err_d_fake = criterion(output, label)
            err_d_fake.backward()
            d_g_z1 = torch.sigmoid(output).mean().item()
            err_d = err_d_real + err_d_fake
            optimizer_d.step()
            net_g.zero_grad()
            label.fill_(real_label)
            output = net_d(fake)
            err_g = criterion(output, label)
            err_g.backward()
            d_g_z2 = torch.sigmoid(output).mean().item()
            optimizer_g.step()
            log_lines[:] = [(f"Loss_D: {err_d.item():.4f} Loss_G: {err_g.item():.4f} "
                             f"D(x): {d_x:.4f} D(G(z)): {d_g_z1:.4f} / {d_g_z2:.4f}")]

    info = {"images_per_step": bench.batch_size, "workers": workers, "memory": memory,
            "cifar": True,
            "parameters": sum(p.numel() for model in (net_g, net_d) for p in model.parameters())}
    return TimedLoop(run_steps, device), info


# ---------------------------------------------------------------------------
# fid.py's Inception feature extraction: the path before the CPU work and today's, same images
# ---------------------------------------------------------------------------
def extraction_images(n, folder=None, seed=0):
    """uint8 (N, 3, 32, 32): n random images of a folder, else random pixels (the speed does not
    depend on what they show; the FID comparison between the paths does not either)."""
    if folder is None:
        return benchmark_images(n, 3, 32, seed)
    files = image_io.list_image_files(folder)
    chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n]
    arrays = [np.asarray(image_io.read_image(files[i], "RGB").resize((32, 32)))
              for i in sorted(chosen.tolist())]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def extractors(inception_weights=None, device="cpu"):
    """(before, now, name): the extractor as fid.py built it before (conv, then a separate ReLU
    pass) and as it builds it now (load_inception: conv + ReLU fused on the CPU); random weights
    when the file is missing."""
    import fid

    device = torch.device(device)
    try:
        state = fid.load_inception_state_dict(fid.find_inception_weights(inception_weights))
        name = "real weights"
    except common.UserError:
        state, name = fid.random_inception_state_dict(), "random weights (no Inception file found)"
    before, now = (common.prepare_model(fid.InceptionFeatures(state, fid.INCEPTION_SIZE), device)
                   for _ in range(2))
    if device.type == "cpu":
        now.fuse_conv_relu()
    return before, now, name


@torch.inference_mode()
def time_extraction(extractor, images, batch_size, bf16=False):
    """(seconds, features) of one pass over `images`, batch by batch, waiting for the device at
    the end."""
    device = next(extractor.parameters()).device
    synchronize(device)
    start = time.perf_counter()
    features = torch.cat([extractor(chunk.to(device), bf16=bf16)
                          for chunk in images.split(batch_size)])
    features = features.cpu()
    return time.perf_counter() - start, features


def extraction_throughput(device="cpu", n_images=100, batch_size=100, inception_weights=None,
                          images=None):
    """Images per second of fid.py's feature extraction as it runs now (one pass after a warm-up
    batch)."""
    _, now, _ = extractors(inception_weights, device)
    images = extraction_images(n_images) if images is None else images
    time_extraction(now, images[:min(batch_size, 8)], batch_size)
    seconds, _ = time_extraction(now, images, batch_size)
    return len(images) / seconds


def run_extraction_benchmark(bench, device):
    """The paths side by side on the same images, interleaved round by round, best round of each:
    before (batch 100, as evaluate.py did), now (fused, --extraction-batch), and now in bf16
    (evaluate.py --amp) where the CPU has native bf16. FID between the two halves of the images
    by each path shows that fp32 scores do not move."""
    from fid import amp_inception, fid_from_features

    images = extraction_images(bench.extraction_images, bench.extraction_folder, bench.seed)
    before, now, weights = extractors(bench.inception_weights, device)
    batch = bench.extraction_batch
    paths = {"before: batch 100, conv + ReLU pass": (before, 100, False),
             f"now: fused conv+ReLU, batch {batch}": (now, batch, False)}
    # now: conv + ReLU as one oneDNN call on weights reordered once (fid.FusedConvReLU)
    if amp_inception(device, True):
        paths[f"now + --amp (bf16), batch {batch}"] = (now, batch, True)
    print(f"bench.py --extraction: {device_description(device)}; torch {torch.__version__}; "
          f"{load_average()}")
    print(f"{len(images)} images 32x32 ({bench.extraction_folder or 'random pixels'}) -> 299x299 "
          f"Inception pool3, {weights}; {bench.repeats} interleaved rounds, best of each",
          flush=True)
    for extractor, batch_size, bf16 in paths.values():  # warm-up: allocator, oneDNN primitives
        time_extraction(extractor, images[:min(batch_size, 8)], batch_size, bf16)
    seconds, features = best_of(bench.repeats, {
        label: (time_extraction, (extractor, images, batch_size, bf16))
        for label, (extractor, batch_size, bf16) in paths.items()})
    labels = list(paths)
    base_rate = len(images) / min(seconds[labels[0]])
    half = len(images) // 2
    results = {}
    print(f"{'path':<42} {'images/s':>9} {'x before':>9} {'max |dfeature|':>15} "
          f"{'FID halves':>12} {'FID rel. diff':>14}")
    for label in labels:
        rate = len(images) / min(seconds[label])
        difference = (features[label] - features[labels[0]]).abs().max().item()
        halves = features[label].double().numpy()
        score = fid_from_features(halves[:half], halves[half:]) if half >= 2 else float("nan")
        results[label] = {"images_per_s": rate, "ratio": rate / base_rate, "fid": score,
                          "max_feature_diff": difference}
        reference = results[labels[0]]["fid"]
        relative = abs(score - reference) / abs(reference) if reference else 0.0
        print(f"{label:<42} {rate:>9.2f} {rate / base_rate:>9.2f} {difference:>15.3g} "
              f"{score:>12.6g} {relative:>14.2g}", flush=True)
    print(f"  {torch.get_num_threads()} torch threads; {load_average()} at the end")
    return results


# ---------------------------------------------------------------------------
# FID's matrix step: fid.frechet_distance (Cholesky + eigvalsh) against scipy.linalg.sqrtm, same
# statistics
# ---------------------------------------------------------------------------
def sqrtm_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The Frechet distance as evaluate.py computed it before fid.py (and as TTUR and pytorch-fid
    do): scipy.linalg.sqrtm of sigma1 sigma2, both diagonals nudged by eps when the product is
    singular, the real part of the trace."""
    import scipy.linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's "matrix is singular" notice: handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def frechet_statistics(path):
    """(mu, sigma, n) of a statistics file: an .npz with mu and sigma (evaluate.py's cache,
    pytorch-fid's --save-stats) or with features only, or an .npy of features (N, D)."""
    import fid

    try:
        if path.endswith(".npy"):
            arrays = {"features": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files if k in ("mu", "sigma", "n", "features")}
    except Exception as e:  # noqa: BLE001 - a missing, broken or foreign file
        raise common.UserError(f"cannot read statistics {path}: {common.first_line(e)}") from None
    if "mu" in arrays and "sigma" in arrays:
        n = arrays.get("n", arrays["features"].shape[0] if "features" in arrays else None)
        mu, sigma = arrays["mu"], arrays["sigma"]
    elif "features" in arrays and arrays["features"].ndim == 2:
        mu, sigma = fid.feature_statistics(arrays["features"].astype(np.float64))
        n = len(arrays["features"])
    else:
        raise common.UserError(f"{path} holds neither mu and sigma nor features (N, D)")
    return np.asarray(mu, np.float64), np.asarray(sigma, np.float64), n


def random_statistics(n, dims, seed, shift=0.0):
    """(mu, sigma, n) of n draws of a correlated Gaussian in `dims` dimensions (the mixing is the
    same for every seed, as tests/test_evaluate.py's gaussian_features): rank min(n - 1, dims)."""
    import fid

    mixing = np.random.default_rng(12345).normal(size=(dims, dims)) / np.sqrt(dims)
    features = np.random.default_rng(seed).normal(size=(n, dims)) @ mixing + shift
    return (*fid.feature_statistics(features), n)


def frechet_cases(bench):
    """{label: (statistics A, statistics B)}: the files of --frechet-features, then random ones,
    full rank (N = 2 D) and rank-deficient (N = D / 4, so N1 + N2 < D as in quick runs)."""
    cases = {}
    if bench.frechet_features:
        a, b = bench.frechet_features
        label = f"real: {os.path.basename(a)} vs {os.path.basename(b)}"
        cases[label] = frechet_statistics(a), frechet_statistics(b)
        if cases[label][0][0].shape != cases[label][1][0].shape:
            raise common.UserError(f"{a} and {b} hold statistics of different dimensions")
    dims, seed = bench.frechet_dims, bench.seed
    for label, n in (("random, full rank (N = 2 D)", 2 * dims),
                     ("random, rank-deficient (N = D / 4)", max(dims // 4, 2))):
        cases[label] = (random_statistics(n, dims, seed + 1),
                        random_statistics(n, dims, seed + 2, shift=0.1))
    return cases


def run_frechet_benchmark(bench):
    """fid.frechet_distance and sqrtm_frechet_distance on the same statistics, interleaved, best
    of --repeats rounds each: seconds, sqrtm / ours, and the relative difference of the values."""
    import scipy

    import fid

    print(f"bench.py --frechet: {device_description(torch.device('cpu'))}; numpy "
          f"{np.__version__}, scipy {scipy.__version__}; BLAS threads from OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; {load_average()}")
    print(f"FID's matrix step on the same statistics: fid.frechet_distance (Cholesky + eigvalsh, "
          f"float64) against scipy.linalg.sqrtm (evaluate.py before fid.py); best of "
          f"{bench.repeats} interleaved rounds", flush=True)
    cases = frechet_cases(bench)
    functions = (("ours", fid.frechet_distance), ("sqrtm", sqrtm_frechet_distance))
    for _, fn in functions:  # warm-up: scipy.linalg's import and first call out of the first row
        fn(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))
    print(f"{'statistics':<36} {'N1':>6} {'N2':>6} {'dims':>5} {'ours s':>8} {'sqrtm s':>8} "
          f"{'x faster':>8} {'distance (ours)':>16} {'rel. diff':>9}", flush=True)
    results = {}
    for label, ((mu1, sigma1, n1), (mu2, sigma2, n2)) in cases.items():
        seconds, values = best_of(bench.repeats, {
            name: (timed_call, (fn, mu1, sigma1, mu2, sigma2)) for name, fn in functions})
        ours_s, sqrtm_s = min(seconds["ours"]), min(seconds["sqrtm"])
        relative = abs(values["ours"] - values["sqrtm"]) / abs(values["sqrtm"])
        results[label] = {"ours_s": ours_s, "sqrtm_s": sqrtm_s, "ratio": sqrtm_s / ours_s,
                          "ours": values["ours"], "sqrtm": values["sqrtm"], "rel_diff": relative}
        counts = ["?" if n is None else str(int(n)) for n in (n1, n2)]
        print(f"{label:<36} {counts[0]:>6} {counts[1]:>6} {len(mu1):>5} {ours_s:>8.3f} "
              f"{sqrtm_s:>8.3f} {sqrtm_s / ours_s:>8.1f} {values['ours']:>16.10g} "
              f"{relative:>9.2g}", flush=True)
    print("  x faster: sqrtm seconds / our seconds; rel. diff: |ours - sqrtm| / |sqrtm| (the "
          "target: x faster >= 10, rel. diff <= 1e-6)")
    print(f"  rank-deficient: evaluate.py scores N1 + N2 < D features in their span "
          f"(fid.fid_from_features), not with these D x D matrices; {load_average()} at the end")
    return results


def timed_call(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


# ---------------------------------------------------------------------------
# Whole process: python dcgan_cifar.py --max-steps N against pytorch/examples' dcgan/main.py
# ---------------------------------------------------------------------------
PEER_WRAPPER = '''"""Written by bench.py --whole-process: runs pytorch/examples'
dcgan/main.py unchanged, except that torchvision's CIFAR10 takes batches and batches.meta without
the official MD5s (so it never downloads) and the DataLoader stops after STEPS batches (with
main.py --niter 1). Usage: python peer_wrapper.py STEPS PATH/main.py [main.py's arguments]"""
import itertools
import os
import runpy
import sys

import torch.utils.data
import torchvision.datasets.cifar

STEPS = int(sys.argv[1])
# CIFAR10._check_integrity (the batches) and _load_meta (batches.meta) both call this one
torchvision.datasets.cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)


class FirstBatches(torch.utils.data.DataLoader):
    def __iter__(self):
        return itertools.islice(super().__iter__(), STEPS)

    def __len__(self):
        return min(super().__len__(), STEPS)


torch.utils.data.DataLoader = FirstBatches
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def run_measured(command, log_path, env):
    """(wall seconds, peak resident MiB, exit code) of a child process, as /usr/bin/time -v
    reports them: ru_maxrss from wait4 (the child's, or a waited-for descendant's if larger)."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    kib = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # macOS: bytes
    return seconds, kib / 1024, proc.returncode


def whole_process_commands(bench, folder, round_index):
    """{name: argv}: ours (dcgan_cifar.py at its defaults but for the shared settings) and the
    peer (through the wrapper), on the same data, steps, batch and image size."""
    data_dir = os.path.abspath(bench.data_dir)
    shared = {"steps": bench.process_steps, "batch": bench.batch_size, "size": bench.image_size}
    ours = [sys.executable, os.path.join(REPO, "dcgan_cifar.py"), "--data", "cifar10",
            "--data-dir", data_dir, "--max-steps", shared["steps"], "--image-size", shared["size"],
            "--batch-size", shared["batch"], "--precision", bench.precision,
            "--seed", bench.seed, "--out", os.path.join(folder, f"ours-{round_index}")]
    if bench.device != "auto":
        ours += ["--device", bench.device]
    peer = [sys.executable, os.path.join(folder, "peer_wrapper.py"), shared["steps"],
            os.path.abspath(bench.peer), "--dataset", "cifar10", "--dataroot", data_dir,
            "--imageSize", shared["size"], "--batchSize", shared["batch"], "--niter", 1,
            "--manualSeed", bench.seed, "--outf", os.path.join(folder, f"peer-{round_index}")]
    if common.pick_device(bench.device).type != "cpu":
        peer.append("--accel")
    return {"ours": [str(a) for a in ours], "peer": [str(a) for a in peer]}


def run_whole_process(bench):
    """--rounds rounds of both processes, who goes first alternating: wall seconds, ours/peer per
    round and the median, peak resident memory of each and the ratio."""
    if not os.path.isfile(bench.peer):
        raise common.UserError(f"--peer {bench.peer}: no such file (pytorch/examples' "
                               f"dcgan/main.py)")
    batches = os.path.join(bench.data_dir, image_io.CIFAR10_FOLDER)
    if not all(os.path.isfile(os.path.join(batches, name))
               for names in image_io.CIFAR10_BATCHES.values() for name in names):
        raise common.UserError(f"--data-dir {bench.data_dir} holds no CIFAR-10 python batches "
                               f"({batches}/data_batch_1..5, test_batch): make them with "
                               f"--make-cifar-batches SRC DST")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if bench.threads is not None:
        env["OMP_NUM_THREADS"] = str(bench.threads)
    folder = tempfile.mkdtemp(prefix="bench-whole-process-")
    try:
        with open(os.path.join(folder, "peer_wrapper.py"), "w") as f:
            f.write(PEER_WRAPPER)
        commands = whole_process_commands(bench, folder, 1)
        print(f"bench.py --whole-process: {device_description(torch.device('cpu'))}; torch "
              f"{torch.__version__}; OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}; "
              f"{load_average()}")
        for name, argv in commands.items():  # as a reader would type them
            line = " ".join(argv[1:]).replace(folder, "$TMP").replace(REPO + os.sep, "")
            print(f"{name}: python {line}")
        print(f"  (peer through a wrapper: CIFAR10's MD5 checks off, its DataLoader stops after "
              f"{bench.process_steps} batches; {bench.rounds} rounds, who goes first "
              f"alternating)", flush=True)
        print(f"{'round':>5} {'first':>5} {'ours s':>8} {'peer s':>8} {'ours/peer':>9} "
              f"{'ours peak MiB':>13} {'peer peak MiB':>13} {'ours/peer':>9}", flush=True)
        rows, used = [], None
        for r in range(1, bench.rounds + 1):
            commands = whole_process_commands(bench, folder, r)
            order = ["ours", "peer"] if r % 2 else ["peer", "ours"]
            measured = {}
            for name in order:
                log = os.path.join(folder, f"{name}-{r}.log")
                seconds, peak, code = run_measured(commands[name], log, env)
                if code != 0:
                    with open(log, errors="replace") as f:
                        tail = "".join(f.readlines()[-15:])
                    raise common.UserError(f"{name} exited {code} in round {r}:\n{tail}")
                measured[name] = (seconds, peak)
            used = used or ours_precision(os.path.join(folder, f"ours-{r}.log"))
            (ours_s, ours_mib), (peer_s, peer_mib) = measured["ours"], measured["peer"]
            rows.append({"ours_s": ours_s, "peer_s": peer_s, "ratio": ours_s / peer_s,
                         "ours_mib": ours_mib, "peer_mib": peer_mib,
                         "memory_ratio": ours_mib / peer_mib})
            print(f"{r:>5} {order[0]:>5} {ours_s:>8.1f} {peer_s:>8.1f} {ours_s / peer_s:>9.2f} "
                  f"{ours_mib:>13.0f} {peer_mib:>13.0f} {ours_mib / peer_mib:>9.2f}", flush=True)
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{'median':>11} {median['ours_s']:>8.1f} {median['peer_s']:>8.1f} "
              f"{median['ratio']:>9.2f} {median['ours_mib']:>13.0f} {median['peer_mib']:>13.0f} "
              f"{median['memory_ratio']:>9.2f}")
        native = common.native_bf16(common.pick_device(bench.device))
        print(f"  ours trained in {used or 'an unknown precision'}; this device has "
              f"{'native bf16' if native else 'no native bf16'}. Targets: wall ours/peer <= 0.6 "
              f"on a CPU with native bf16 (<= 1.0 where the default stays fp32), peak memory "
              f"ours/peer <= 1.2")
        print(f"  ours/peer (wall): median of the rounds' ratios; peak MiB: ru_maxrss of each "
              f"process (/usr/bin/time -v's maximum resident set size; the peer's DataLoader "
              f"workers are not added to it); {load_average()} at the end")
        return {"rounds": rows, "median": median, "precision": used}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ours_precision(log_path):
    """The precision dcgan_cifar.py printed at its start ("dcgan_cifar: OUT, DEVICE, bf16, ...")."""
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if line.startswith("dcgan_cifar: ") and ", step " in line:
                    return line.split(", ")[-2]
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------
# CIFAR-10 python batches from a JPEG copy (for --whole-process: both processes read them)
# ---------------------------------------------------------------------------
def make_cifar_batches(source, target, seed=0):
    """Write data_batch_1..5, test_batch and batches.meta in the official layout (pickled dicts
    with 'data' uint8 (N, 3072) as R, G, B planes, 'labels', 'filenames', 'batch_label') into
    target/cifar-10-batches-py/ from source/{train,test}/<class>/*.jpg; the training images in a
    shuffled order (seed), as the official batches are. Returns the folder."""
    import pickle

    folder = os.path.join(target, image_io.CIFAR10_FOLDER)
    os.makedirs(folder, exist_ok=True)
    counts = {}
    for split, names in image_io.CIFAR10_BATCHES.items():
        files, labels = [], []
        for label, name in enumerate(image_io.CIFAR10_CLASSES):
            found = image_io.list_image_files(os.path.join(source, split, name))
            files += found
            labels += [label] * len(found)
        order = np.random.default_rng(seed).permutation(len(files))
        data = np.empty((len(files), 3 * 32 * 32), np.uint8)
        for row, i in enumerate(order):
            picture = image_io.read_image(files[i], "RGB")
            if picture.size != (32, 32):
                picture = picture.resize((32, 32))
            data[row] = np.asarray(picture).transpose(2, 0, 1).reshape(-1)
        for index, part in enumerate(np.array_split(np.arange(len(files)), len(names))):
            entry = {"batch_label": f"{split} batch {index + 1} of {len(names)}",
                     "labels": [labels[order[j]] for j in part], "data": data[part],
                     "filenames": [os.path.basename(files[order[j]]) for j in part]}
            with open(os.path.join(folder, names[index]), "wb") as f:
                pickle.dump(entry, f, protocol=2)
        counts[split] = len(files)
    meta = {"num_cases_per_batch": -(-counts["train"] // len(image_io.CIFAR10_BATCHES["train"])),
            "label_names": list(image_io.CIFAR10_CLASSES), "num_vis": 3 * 32 * 32}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    print(f"wrote {folder}: {counts['train']} training images in "
          f"{len(image_io.CIFAR10_BATCHES['train'])} batches, {counts['test']} test images")
    return folder


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def device_description(device):
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load_average():
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (OSError, AttributeError):
        return "load average unknown"


def speed(info, seconds, steps):
    """images/s, ms/step and seconds per CIFAR-10 epoch (the CIFAR scripts) of a window."""
    images = steps * info["images_per_step"]
    return {"images_per_s": images / seconds, "ms_per_step": 1000 * seconds / steps,
            "cifar_epoch_s": CIFAR10_TRAIN_IMAGES * seconds / images if info["cifar"] else None}


LABEL_WIDTH = 40
HEADER = (f"{'row':<{LABEL_WIDTH}} {'G+D params':>10} {'img/step':>8} {'images/s':>10} "
          f"{'ms/step':>9} {'peak MiB':>9} {'s/CIFAR ep':>10} {'x base':>7}")


def format_row(label, info, result, peak_mib, ratio):
    peak = "-" if peak_mib is None else f"{peak_mib:.0f}"
    epoch = "-" if result["cifar_epoch_s"] is None else f"{result['cifar_epoch_s']:.0f}"
    ratio = "-" if ratio is None else f"{ratio:.2f}"
    return (f"{label:<{LABEL_WIDTH}} {info['parameters'] / 1e6:>9.2f}M "
            f"{info['images_per_step']:>8} {result['images_per_s']:>10.1f} "
            f"{result['ms_per_step']:>9.1f} {peak:>9} {epoch:>10} {ratio:>7}")


def main(argv=None):
    bench = parse_args(argv)
    if bench.make_cifar_batches:
        return make_cifar_batches(*bench.make_cifar_batches, seed=bench.seed)
    if bench.whole_process:
        return run_whole_process(bench)
    previous_threads = torch.get_num_threads()
    if bench.threads is not None:
        torch.set_num_threads(bench.threads)
    try:
        if bench.frechet:
            return run_frechet_benchmark(bench)
        device = bench.device = common.pick_device(bench.device)
        if bench.extraction:
            return run_extraction_benchmark(bench, device)
        run_benchmark(bench, device)
    finally:
        torch.set_num_threads(previous_threads)  # main() may be called in-process (tests)


def time_row(loop, memory, bench, baseline_loop):
    """(seconds of our windows, peak MiB, seconds of the baseline windows paired with ours): each
    window of ours is followed by a baseline window, so that a change in the load of a shared
    machine hits both sides of the ratio."""
    loop.window(bench.warmup)
    seconds, paired = [], []
    for repeat in range(bench.repeats):
        seconds.append(loop.window(bench.steps))
        if repeat == 0:
            peak = memory.mib()  # before a baseline window runs in between
        if baseline_loop is not None:
            paired.append(baseline_loop.window(bench.steps))
    return seconds, peak, paired


def run_benchmark(bench, device):
    mode = "torch.compile" if bench.compile else "eager"
    windows = f"the fastest of {bench.repeats} windows of " if bench.repeats > 1 else ""
    print(f"bench.py: {device_description(device)}; torch {torch.__version__}; {load_average()}")
    print(f"{bench.image_size} px, batch {bench.batch_size}, "
          f"{precision_label(bench.precision, device)}, {mode}"
          f"{', deterministic' if bench.deterministic else ''}; {bench.warmup} warm-up steps, "
          f"then {windows}{bench.steps} timed steps", flush=True)
    baseline_loop = None
    if bench.baseline:
        baseline_loop, baseline_info = prepare_baseline(bench, device)
        baseline_loop.window(bench.warmup)
        baseline_seconds = [baseline_loop.window(bench.steps)]
        baseline_peak = baseline_info["memory"].mib()
    print(HEADER, flush=True)
    rows = [(name, {}) for name in bench.scripts]
    if bench.cpu_checks:  # the levers behind the defaults: memory format, precision, threads
        other = "fp32" if common.pick_precision(bench.precision, device) == "bf16" else "bf16"
        rows = [(name, variant) for name in bench.scripts
                for variant in ({}, {"nchw": True}, {"precision": other})]
        rows += [("dcgan_cifar", {"threads": 1}), ("dcgan_cifar", {"threads": 2})]
    words = {"nchw": lambda v: "NCHW", "precision": lambda v: f"--precision {v}",
             "threads": lambda v: f"threads={v}"}
    failed, notes = [], []
    for name, variant in rows:
        label = " ".join([name, " + ".join(words[k](v) for k, v in variant.items())]).strip()
        try:
            loop, info = prepare_script(name, bench, device, **variant)
            seconds, peak, paired = time_row(loop, info["memory"], bench, baseline_loop)
            info["check"]()
        except Exception as e:  # noqa: BLE001 - one broken script must not hide the others
            failed.append(name)
            print(f"{label:<{LABEL_WIDTH}} FAILED: {type(e).__name__}: {common.first_line(e)}",
                  flush=True)
            continue
        result = speed(info, min(seconds), bench.steps)
        ratio = None
        if paired:
            baseline = speed(baseline_info, min(paired), bench.steps)
            ratio = result["images_per_s"] / baseline["images_per_s"]
            baseline_seconds += paired
        print(format_row(label, info, result, peak, ratio), flush=True)
        if info["note"]:
            notes.append(f"{name}: {info['note']}")  # printed once per script, below
    if baseline_loop is not None:
        print(format_row("baseline: DCGAN, DataLoader+PIL", baseline_info,
                         speed(baseline_info, min(baseline_seconds), bench.steps),
                         baseline_peak, 1.0))
    if bench.extraction_images:
        n, batch_size = bench.extraction_images, min(bench.extraction_batch,
                                                     bench.extraction_images)
        rate = extraction_throughput(device, n_images=n, batch_size=batch_size,
                                     inception_weights=bench.inception_weights)
        print(f"{'evaluate.py feature extraction':<{LABEL_WIDTH}} {'':>10} {'':>8} {rate:>10.1f}"
              f"   ({n} uint8 32 px images -> Inception at 299 px -> 2048 features, batch "
              f"{batch_size})")
    print_notes(bench, notes, baseline_info if baseline_loop is not None else None)
    if failed:
        raise SystemExit(f"error: {len(failed)} script(s) failed: {' '.join(failed)}")


def print_notes(bench, notes, baseline_info):
    lines = list(dict.fromkeys(notes))
    lines.append("ours: DeviceLoader batch (uint8 on the device) + the script's train_step + "
                 "losses summed (+ its update_ema), one device sync per timed window; G+D "
                 "params: both networks' weights; img/step: real images one step reads")
    if baseline_info is not None:
        lines.append(f"baseline: dcgan_cifar's Generator/Discriminator, torch DataLoader over PIL "
                     f"images, ToTensor + Normalize, num_workers={baseline_info['workers']}, fp32, "
                     f"plain Adam, .item() every step; its row: its fastest window of all")
        lines.append("x base: images/s over the baseline's images/s in the baseline window(s) "
                      "timed right after this row's, so that both sides of the ratio saw the same "
                      "load")
    lines.append("peak MiB: memory the row needed above what was held when it started (CUDA: "
                 "allocated tensors; CPU: resident memory)")
    if bench.cpu_checks:
        lines.append("cpu checks: NCHW: contiguous models and batches instead of the "
                     "channels_last that the scripts use on CPU and CUDA; --precision: the "
                     "script's other precision; threads=N: torch.set_num_threads(N)")
    lines.append(f"s/CIFAR ep: seconds per pass over CIFAR-10's {CIFAR10_TRAIN_IMAGES} training "
                 f"images at this speed")
    lines.append(f"{load_average()} at the end")
    print("notes:\n" + "\n".join(f"  {line}" for line in lines))


if __name__ == "__main__":
    common.run_main(main)
