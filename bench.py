"""Throughput benchmark: every script's own training step, and a plain reference loop to compare with.

Small GANs are bound by overheads, not by FLOPs: a DataLoader with PIL transforms, a host sync per step
for logging, many small kernels. This file measures how fast each script trains (images/s, ms/step, peak
memory) by importing its real `build` and `train_step` (nothing re-written) and feeding them as the script
does: a uint8 dataset on the device (common.DeviceLoader), losses summed on the device (as common.TrainLog),
the generator's moving average where the script keeps one, and one device sync at the end of the timed
window. `--baseline` times, in the same process, on the same images and device, the loop that the
pytorch/examples DCGAN (and PyTorch-GAN) use: the same DCGAN (dcgan_cifar.py's Generator and
Discriminator) fed by a torch DataLoader over PIL images with torchvision's ToTensor + Normalize, fp32,
plain Adam, `.item()` on every step. Every row then says how many times faster than that loop it is,
against baseline windows timed right after its own, so that on a shared machine both saw the same load.

Run:
    python bench.py                                            # all scripts, 32 px, batch 64, default device
    python bench.py --baseline --device cpu --steps 30         # with the reference loop and the ratios
    python bench.py --device cuda --image-size 64 --batch-size 128 --baseline --amp --compile
    python bench.py --scripts dcgan_cifar wgan_gp_cifar --steps 50
    python bench.py --cpu-checks --device cpu                  # every script: NCHW vs channels_last, fp32 vs bf16
    python bench.py --threads 1 --repeats 3 --baseline         # a machine shared with other jobs: docs/performance.md
    python bench.py --extraction --threads 2 --repeats 3       # evaluate.py's Inception: before vs now (vs --amp)

The images are random uint8 pixels of each script's shape (1 channel for the letters, 3 otherwise) with
random labels of the script's kind (class index, hair/eye pair, multi-hot objects): the speed of a training
step does not depend on what the pixels show. Each script runs with its own defaults (its parse_args) except
for the flags given here. A "step" is what the script counts as one: for wgan_gp_cifar one generator update
with n_critic critic updates, each on its own batch, so its images/s counts the real images the critic reads.
"""

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import os
import platform
import time

import torch
import torch.nn as nn

import common

SCRIPTS = ("dcgan_letters", "cdcgan_ab", "dcgan_cifar", "acgan_cifar", "wgan_gp_cifar", "cdcgan_anime", "cgan_objects")
CIFAR10_TRAIN_IMAGES = 50_000  # for the seconds per CIFAR-10 epoch of the CIFAR scripts
DATA_STEPS = 16  # the benchmark dataset holds this many steps' worth of images; the loaders cycle over it


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Training throughput of every script, optionally against a plain "
                                                 "reference DCGAN loop; Inception feature throughput of evaluate.py.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=["all"], choices=["all", *SCRIPTS], metavar="SCRIPT",
                        help=f"scripts to time: all, or some of {' '.join(SCRIPTS)}")
    parser.add_argument("--steps", type=common.positive_int, default=20, help="timed training steps per script")
    parser.add_argument("--warmup", type=common.positive_int, default=3,
                        help="untimed steps first (allocator, cuDNN autotuning, torch.compile)")
    parser.add_argument("--repeats", type=common.positive_int, default=1,
                        help="time this many windows of --steps steps and keep the fastest (on a shared machine "
                             "the fastest window is the one least disturbed by other work)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1")
    parser.add_argument("--image-size", type=int, choices=[32, 64], default=32, help="image height and width")
    parser.add_argument("--batch-size", type=common.positive_int, default=64, help="images per batch")
    parser.add_argument("--amp", action="store_true",
                        help="pass --amp to every script (bf16 autocast on CUDA and on CPUs with native bf16)")
    parser.add_argument("--compile", action="store_true", help="pass --compile to every script (torch.compile)")
    parser.add_argument("--deterministic", action="store_true",
                        help="pass --deterministic (no cuDNN autotuning) to every script")
    parser.add_argument("--threads", type=common.positive_int, default=None,
                        help="torch.set_num_threads for the whole run (default: torch's choice)")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the plain pytorch/examples-style DCGAN loop and print ours / baseline")
    parser.add_argument("--baseline-workers", type=int, default=None,
                        help="DataLoader workers of the baseline (default: 0 on CPU, where workers would take the "
                             "training's cores; 2 on CUDA, pytorch/examples' default)")
    parser.add_argument("--cpu-checks", action="store_true",
                        help="also time every chosen script in NCHW (not channels_last) and with --amp, and "
                             "dcgan_cifar with 1 and 2 threads: the measurements behind the CPU defaults")
    parser.add_argument("--extraction", action="store_true",
                        help="only evaluate.py's Inception feature extraction: the path before the CPU work and "
                             "today's (and --amp's) on the same images, interleaved, with the FID each gives")
    parser.add_argument("--extraction-images", type=int, default=100,
                        help="images for the feature extraction (0: skip its row in the training table)")
    parser.add_argument("--extraction-batch", type=common.positive_int, default=None,
                        help="batch size of the feature extraction (default: evaluate.py's)")
    parser.add_argument("--extraction-folder", default=None,
                        help="with --extraction: take the images from this folder (resized to 32x32), not random")
    parser.add_argument("--inception-weights", default=None, help="as evaluate.py's --inception-weights")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data, weights, noise)")
    args = parser.parse_args(argv)
    if args.extraction_images < (4 if args.extraction else 0):
        parser.error("--extraction-images must be 0 or more (with --extraction: at least 4)")
    if args.extraction_batch is None:
        import evaluate

        args.extraction_batch = evaluate.BATCH_SIZE
    if args.baseline_workers is not None and args.baseline_workers < 0:
        parser.error("--baseline-workers must be 0 or more")
    args.scripts = list(SCRIPTS) if "all" in args.scripts else list(dict.fromkeys(args.scripts))
    return args


# ---------------------------------------------------------------------------
# Timing and memory helpers
# ---------------------------------------------------------------------------
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_kib(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in KiB; None where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory a benchmark row needs above what was held when the row started (its dataset excluded).
    CUDA: torch's allocator statistics. CPU: the process's resident memory, whose peak Linux resets on
    request (/proc/self/clear_refs); elsewhere nothing is reported."""

    def __init__(self, device):
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
            return
        try:  # hand freed heap pages back to the OS, so the next row's growth shows in its resident memory
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
    """A training loop, built and ready: `window(steps)` runs that many steps and returns the seconds they took,
    waiting for the device only at the end. `setting` (a context manager) is entered around every window."""

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


# ---------------------------------------------------------------------------
# Benchmark data: random uint8 images of the script's shape, random labels of the script's kind
# ---------------------------------------------------------------------------
def benchmark_labels(module, args, n, generator):
    """Labels as the script's data loader returns them, from its EVAL description (as evaluate.py reads it)."""
    spec = module.EVAL
    kind = spec.get("conditioning", "none")
    if kind == "none":
        return None
    if kind == "class":  # class indices (N,); cdcgan_ab's classes are its --chars
        named = getattr(args, spec.get("classes_arg", ""), None)  # acgan_cifar's train() sets it from the data
        count = len(named) if named is not None else spec["num_classes"]
        return torch.randint(count, (n,), generator=generator)
    if kind == "attributes":  # one index per attribute (N, A): hair and eye colour for the faces
        return torch.stack([torch.randint(size, (n,), generator=generator) for size in spec["num_classes"]], 1)
    if kind == "multi-hot":  # 1 to 3 distinct objects per picture, as in i-CLEVR: float (N, K)
        count = spec["num_classes"]
        objects = torch.randint(1, 4, (n, 1), generator=generator)
        rank = torch.rand(n, count, generator=generator).argsort(1).argsort(1)  # a random order of the K objects
        return (rank < objects).float()
    raise ValueError(f"{module.SCRIPT}: unknown conditioning {kind!r} in EVAL")


def benchmark_images(n, channels, image_size, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, image_size, image_size), generator=generator, dtype=torch.uint8)


def script_argv(bench):
    """The bench flags as a script's command line: everything else stays at the script's own defaults."""
    argv = ["--image-size", str(bench.image_size), "--batch-size", str(bench.batch_size), "--device", str(bench.device),
            "--seed", str(bench.seed)]
    return argv + [f"--{flag}" for flag in ("amp", "compile", "deterministic") if getattr(bench, flag)]


# ---------------------------------------------------------------------------
# Ours: the script's own training iteration
# ---------------------------------------------------------------------------
def prepare_script(name, bench, device, threads=None, nchw=False, amp=False):
    """`name`'s training iteration as its train() runs it: DeviceLoader batch -> train_step -> losses summed
    (-> its EMA update). Returns (TimedLoop, info): info has images_per_step, parameters, note, cifar, memory
    (a PeakMemory started after the dataset went to the device) and check() (the losses are finite).
    The checks: threads (a torch thread count), nchw (contiguous NCHW weights and batches instead of the
    channels_last that common.prepare_model and DeviceLoader use), amp (the script's --amp)."""
    module = importlib.import_module(name)
    args = module.parse_args(script_argv(bench) + (["--amp"] if amp and not bench.amp else []))
    if "class_names" in module.EVAL and not hasattr(args, "class_names"):  # acgan_cifar's train() sets them from the data
        args.num_classes, args.class_names = module.EVAL["num_classes"], module.EVAL["class_names"]
    if isinstance(getattr(args, "lr", None), list):  # dcgan_letters compares several rates: one run each
        args.lr = args.lr[0]
    common.seed_everything(args.seed, args.deterministic)
    images_per_step = module.images_per_step(args) if hasattr(module, "images_per_step") else args.batch_size
    channels = 1 if module.EVAL["dataset"] == "letters" else 3
    n = images_per_step * DATA_STEPS
    images = benchmark_images(n, channels, args.image_size, bench.seed)
    labels = benchmark_labels(module, args, n, torch.Generator().manual_seed(bench.seed))
    loader = common.DeviceLoader(images, labels, images_per_step, device, seed=args.seed,
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
    # Scripts whose step is one D update count --n-critic in steps (batch["update_generator"]); wgan_gp_cifar
    # does its n_critic critic updates inside one step.
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
                common.update_ema(ema_generator, models["generator"], args.ema, step)
            state["step"] = step + 1

    def check():
        means = {k: (v / max(state["step"], 1)).item() for k, v in state["sums"].items()}  # the host sync of a log
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
    """Images kept as torchvision's CIFAR10 keeps them, an (N, H, W, C) uint8 array; each item becomes a
    PIL image and goes through the transforms, in __getitem__, as in every torchvision dataset."""

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
    """pytorch/examples dcgan/main.py's training loop: DataLoader + PIL + ToTensor/Normalize, fp32, plain Adam,
    no channels_last, D's real and fake losses backpropagated separately, `.item()` of every logged number
    on every step (its print line is formatted and dropped). Same networks, init and sizes as dcgan_cifar.
    Returns (TimedLoop, info) as prepare_script does."""
    import torchvision.transforms as transforms

    import dcgan_cifar

    args = dcgan_cifar.parse_args(script_argv(bench))
    torch.manual_seed(bench.seed)
    torch.backends.cudnn.benchmark = not bench.deterministic  # pytorch/examples sets it too
    images = benchmark_images(bench.batch_size * DATA_STEPS, 3, bench.image_size, bench.seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    workers = baseline_workers(bench, device)
    # Persistent workers: our small dataset ends an epoch every few steps; restarting the workers each time
    # would be a cost the real loop (390 steps per CIFAR-10 epoch) hardly pays.
    dataloader = torch.utils.data.DataLoader(PILImageDataset(images, transform), batch_size=bench.batch_size,
                                             shuffle=True, num_workers=workers, drop_last=True,
                                             persistent_workers=workers > 0)
    memory = PeakMemory(device)
    net_g = dcgan_cifar.Generator(args.nz, args.ngf, args.image_size).apply(common.dcgan_init).to(device)
    net_d = dcgan_cifar.Discriminator(args.ndf, args.image_size).apply(common.dcgan_init).to(device)
    criterion = nn.BCEWithLogitsLoss()  # pytorch/examples: Sigmoid in D + BCELoss; the same numbers, stabler
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
            log_lines[:] = [f"Loss_D: {err_d.item():.4f} Loss_G: {err_g.item():.4f} D(x): {d_x:.4f} "
                            f"D(G(z)): {d_g_z1:.4f} / {d_g_z2:.4f}"]

    info = {"images_per_step": bench.batch_size, "workers": workers, "memory": memory, "cifar": True,
            "parameters": sum(p.numel() for model in (net_g, net_d) for p in model.parameters())}
    return TimedLoop(run_steps, device), info


# ---------------------------------------------------------------------------
# evaluate.py's Inception feature extraction: the path before the CPU work and today's, on the same images
# ---------------------------------------------------------------------------
def extraction_images(n, folder=None, seed=0):
    """uint8 (N, 3, 32, 32): n random images of a folder (common.list_image_files/read_image), else random pixels
    (the speed does not depend on what they show; the FID comparison between the paths does not either)."""
    if folder is None:
        return benchmark_images(n, 3, 32, seed)
    import numpy as np

    files = common.list_image_files(folder)
    chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    arrays = [np.asarray(common.read_image(files[i], "RGB").resize((32, 32))) for i in sorted(chosen)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def extractors(inception_weights=None, device="cpu"):
    """(before, now, name): the extractor as evaluate.py built it before (conv, then a separate ReLU pass) and as
    it builds it now (load_inception: conv + ReLU fused on the CPU); random weights when the file is missing."""
    import evaluate

    device = torch.device(device)
    try:
        state = evaluate.load_inception_state_dict(evaluate.find_inception_weights(inception_weights))
        name = "real weights"
    except common.UserError:
        state, name = evaluate.random_inception_state_dict(), "random weights (no Inception file found)"
    before = evaluate.InceptionFeatures(state, evaluate.INCEPTION_SIZE).to(device)
    if common.uses_channels_last(device):
        before = before.to(memory_format=torch.channels_last)
    now = evaluate.InceptionFeatures(state, evaluate.INCEPTION_SIZE).to(device)
    if common.uses_channels_last(device):
        now = now.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        now.fuse_conv_relu()
    return before, now, name


@torch.inference_mode()
def time_extraction(extractor, images, batch_size, bf16=False):
    """(seconds, features) of one pass over `images`, batch by batch, waiting for the device at the end."""
    device = next(extractor.parameters()).device
    synchronize(device)
    start = time.perf_counter()
    features = torch.cat([extractor(chunk.to(device), bf16=bf16) for chunk in images.split(batch_size)])
    features = features.cpu()
    return time.perf_counter() - start, features


def extraction_throughput(device="cpu", n_images=100, batch_size=100, inception_weights=None, images=None):
    """Images per second of evaluate.py's feature extraction as it runs now (one pass after a warm-up batch)."""
    _, now, _ = extractors(inception_weights, device)
    images = extraction_images(n_images) if images is None else images
    time_extraction(now, images[:min(batch_size, 8)], batch_size)
    seconds, _ = time_extraction(now, images, batch_size)
    return len(images) / seconds


def run_extraction_benchmark(bench, device):
    """The paths side by side on the same images, interleaved round by round, best round of each (on a shared
    machine the best round is the least disturbed): before (batch 100, as evaluate.py did), now (fused, --extraction-
    batch), and now in bf16 (--amp) where the CPU has native bf16. FID between the two halves of the images by each
    path shows that fp32 scores do not move."""
    import evaluate

    images = extraction_images(bench.extraction_images, bench.extraction_folder, bench.seed)
    before, now, weights = extractors(bench.inception_weights, device)
    paths = {"before: batch 100, conv + ReLU pass": (before, 100, False),
             f"now: fused conv+ReLU, batch {bench.extraction_batch}": (now, bench.extraction_batch, False)}
    # now: conv + ReLU as one oneDNN call on weights reordered once (evaluate.FusedConvReLU)
    if evaluate.amp_inception(device, True):
        paths[f"now + --amp (bf16), batch {bench.extraction_batch}"] = (now, bench.extraction_batch, True)
    print(f"bench.py --extraction: {device_description(device)}; torch {torch.__version__}; {load_average()}")
    print(f"{len(images)} images 32x32 ({bench.extraction_folder or 'random pixels'}) -> 299x299 Inception pool3, "
          f"{weights}; {bench.repeats} interleaved rounds, best of each", flush=True)
    for extractor, batch_size, bf16 in paths.values():  # warm-up: allocator, oneDNN primitives
        time_extraction(extractor, images[:min(batch_size, 8)], batch_size, bf16)
    seconds, features = {label: [] for label in paths}, {}
    for _ in range(bench.repeats):
        for label, (extractor, batch_size, bf16) in paths.items():
            elapsed, features[label] = time_extraction(extractor, images, batch_size, bf16)
            seconds[label].append(elapsed)
    labels = list(paths)
    base_rate = len(images) / min(seconds[labels[0]])
    half = len(images) // 2
    results = {}
    print(f"{'path':<42} {'images/s':>9} {'x before':>9} {'max |dfeature|':>15} {'FID halves':>12} {'FID rel. diff':>14}")
    for label in labels:
        rate = len(images) / min(seconds[label])
        difference = (features[label] - features[labels[0]]).abs().max().item()
        fid = evaluate.fid_from_features(features[label][:half].double().numpy(), features[label][half:].double().numpy()) \
            if half >= 2 else float("nan")
        results[label] = {"images_per_s": rate, "ratio": rate / base_rate, "fid": fid, "max_feature_diff": difference}
        reference_fid = results[labels[0]]["fid"]
        print(f"{label:<42} {rate:>9.2f} {rate / base_rate:>9.2f} {difference:>15.3g} {fid:>12.6g} "
              f"{abs(fid - reference_fid) / abs(reference_fid) if reference_fid else 0.0:>14.2g}", flush=True)
    print(f"  {torch.get_num_threads()} torch threads; {load_average()} at the end")
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def device_description(device):
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load_average():
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (OSError, AttributeError):
        return "load average unknown"


def speed(info, seconds, steps):
    """images/s, ms/step and seconds per CIFAR-10 epoch (the CIFAR scripts) of a window of `steps` steps."""
    images = steps * info["images_per_step"]
    return {"images_per_s": images / seconds, "ms_per_step": 1000 * seconds / steps,
            "cifar_epoch_s": CIFAR10_TRAIN_IMAGES * seconds / images if info["cifar"] else None}


LABEL_WIDTH = 40
HEADER = (f"{'row':<{LABEL_WIDTH}} {'G+D params':>10} {'img/step':>8} {'images/s':>10} {'ms/step':>9} {'peak MiB':>9} "
          f"{'s/CIFAR ep':>10} {'x base':>7}")


def format_row(label, info, result, peak_mib, ratio):
    peak = "-" if peak_mib is None else f"{peak_mib:.0f}"
    epoch = "-" if result["cifar_epoch_s"] is None else f"{result['cifar_epoch_s']:.0f}"
    ratio = "-" if ratio is None else f"{ratio:.2f}"
    return (f"{label:<{LABEL_WIDTH}} {info['parameters'] / 1e6:>9.2f}M {info['images_per_step']:>8} "
            f"{result['images_per_s']:>10.1f} {result['ms_per_step']:>9.1f} {peak:>9} {epoch:>10} {ratio:>7}")


def main(argv=None):
    bench = parse_args(argv)
    device = common.pick_device(bench.device)
    bench.device = device
    previous_threads = torch.get_num_threads()
    if bench.threads is not None:
        torch.set_num_threads(bench.threads)
    try:
        if bench.extraction:
            return run_extraction_benchmark(bench, device)
        run_benchmark(bench, device)
    finally:
        torch.set_num_threads(previous_threads)  # main() may be called in-process (tests)


def run_benchmark(bench, device):
    precision = "bf16 autocast (--amp)" if common.amp_enabled(device, bench.amp) else "fp32"
    if bench.amp and not common.amp_enabled(device, True):
        precision += " (--amp does nothing on this device: no native bf16)"
    print(f"bench.py: {device_description(device)}; torch {torch.__version__}; {load_average()}")
    mode = "torch.compile" if bench.compile else "eager"
    print(f"{bench.image_size} px, batch {bench.batch_size}, {precision}, {mode}"
          f"{', deterministic' if bench.deterministic else ''}; {bench.warmup} warm-up steps, then "
          f"{'the fastest of %d windows of ' % bench.repeats if bench.repeats > 1 else ''}{bench.steps} timed steps",
          flush=True)
    baseline_loop = None
    if bench.baseline:
        baseline_loop, baseline_info = prepare_baseline(bench, device)
        baseline_loop.window(bench.warmup)
        baseline_seconds = [baseline_loop.window(bench.steps)]
        baseline_peak = baseline_info["memory"].mib()
    print(HEADER, flush=True)
    rows = [(name, {}) for name in bench.scripts]
    if bench.cpu_checks:  # the levers behind the defaults: memory format and bf16 per script, threads on one
        rows = [(name, variant) for name in bench.scripts
                for variant in ({}, {"nchw": True}, *([] if bench.amp else [{"amp": True}]))]
        rows += [("dcgan_cifar", {"threads": 1}), ("dcgan_cifar", {"threads": 2})]
    variant_names = {"nchw": "NCHW", "amp": "--amp"}
    failed, notes = [], []
    for name, variant in rows:
        label = " ".join([name, " + ".join(f"threads={v}" if k == "threads" else variant_names[k]
                                           for k, v in variant.items())]).strip()
        try:
            loop, info = prepare_script(name, bench, device, **variant)
            loop.window(bench.warmup)
            seconds = [loop.window(bench.steps)]
            peak = info["memory"].mib()  # before a baseline window runs in between
            # With --baseline, each window of ours is paired with a window of the baseline right after it, so
            # that a change in the load of a shared machine hits both sides of the ratio.
            paired = []
            for repeat in range(bench.repeats):
                if repeat:
                    seconds.append(loop.window(bench.steps))
                if baseline_loop is not None:
                    paired.append(baseline_loop.window(bench.steps))
            info["check"]()
        except Exception as e:  # noqa: BLE001 - one broken script must not hide the others' numbers
            failed.append(name)
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"{label:<{LABEL_WIDTH}} FAILED: {type(e).__name__}: {message}", flush=True)
            continue
        result = speed(info, min(seconds), bench.steps)
        ratio = None
        if paired:
            ratio = result["images_per_s"] / speed(baseline_info, min(paired), bench.steps)["images_per_s"]
            baseline_seconds += paired
        print(format_row(label, info, result, peak, ratio), flush=True)
        if info["note"]:
            notes.append(f"{name}: {info['note']}")  # printed once per script, below
    if baseline_loop is not None:
        print(format_row("baseline: DCGAN, DataLoader+PIL", baseline_info,
                         speed(baseline_info, min(baseline_seconds), bench.steps), baseline_peak, 1.0))
    if bench.extraction_images:
        n, batch_size = bench.extraction_images, min(bench.extraction_batch, bench.extraction_images)
        rate = extraction_throughput(device, n_images=n, batch_size=batch_size, inception_weights=bench.inception_weights)
        print(f"{'evaluate.py feature extraction':<{LABEL_WIDTH}} {'':>10} {'':>8} {rate:>10.1f}   ({n} uint8 32 px "
              f"images -> Inception at 299 px -> 2048 features, batch {batch_size})")
    print("notes:")
    for note in dict.fromkeys(notes):
        print(f"  {note}")
    print("  ours: DeviceLoader batch (uint8 on the device) + the script's train_step + losses summed (+ its EMA "
          "update), one device sync per timed window; G+D params: both networks' weights; img/step: real images "
          "one step reads")
    if baseline_loop is not None:
        print(f"  baseline: dcgan_cifar's Generator/Discriminator, torch DataLoader over PIL images, ToTensor + "
              f"Normalize, num_workers={baseline_info['workers']}, fp32, plain Adam, .item() every step; its row: "
              f"its fastest window of all")
        print("  x base: images/s over the baseline's images/s in the baseline window(s) timed right after this "
              "row's, so that both sides of the ratio saw the same load")
    print("  peak MiB: memory the row needed above what was held when it started (CUDA: allocated tensors; "
          "CPU: resident memory)")
    if bench.cpu_checks:
        print("  cpu checks: NCHW: contiguous models and batches instead of the channels_last that the scripts use "
              "on CPU and CUDA; --amp: the script's bf16 autocast; threads=N: torch.set_num_threads(N)")
    print(f"  s/CIFAR ep: seconds per pass over CIFAR-10's {CIFAR10_TRAIN_IMAGES} training images at this speed")
    print(f"  {load_average()} at the end")
    if failed:
        raise SystemExit(f"error: {len(failed)} script(s) failed: {' '.join(failed)}")


if __name__ == "__main__":
    common.run_main(main)
