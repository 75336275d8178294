"""Plumbing shared by the gan-scripts training scripts: no flags, no training policy.

Device, seed and DDP setup; the device-resident batch loader; reading image files safely; the run folder (one
run per folder, config.json, an atomic log.csv with whatever train_step returns, TensorBoard); atomic checkpoints,
safe loading and exact resume (settings and random states); sample grids, GIFs and plots; interruption handling
and a training-health monitor. Models, losses, data specific to a script and the training loop stay in the
scripts themselves, where a reader finds them top to bottom.
"""

import argparse
import contextlib
import csv
import datetime
import errno
import functools
import glob
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------------
# Errors: one clear line, no traceback
# ---------------------------------------------------------------------------
class UserError(Exception):
    """A problem with the user's input (arguments, files, data). main() prints it as one line."""


def first_line(error):
    """The first line of an exception's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_main(main_fn, argv=None):
    """Run a script's main() and turn the errors a user can cause into one `error: ...` line on stderr. A run folder
    this process created is removed again when the run fails before its first checkpoint (nothing half-made stays)."""
    signal.signal(signal.SIGTERM, _terminate_during_start_up)  # GracefulExit takes over once training runs
    try:
        return _run_main_errors(main_fn, argv)
    except BaseException:
        remove_unfinished_run_folders()
        raise
    finally:
        _NEW_RUN_FOLDERS.clear()


def remove_unfinished_run_folders():
    """Delete the run folders this process created that hold no checkpoint yet (a failed or interrupted start)."""
    for out in _NEW_RUN_FOLDERS:
        if os.path.isdir(out) and not glob.glob(os.path.join(glob.escape(out), "**", "*.pt"), recursive=True):
            shutil.rmtree(out, ignore_errors=True)


def _run_main_errors(main_fn, argv):
    try:
        return main_fn(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted (a run keeps its last saved checkpoint; a run with none leaves no folder)",
              file=sys.stderr)
        raise SystemExit(130) from None
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"error: out of memory ({first_line(e)}): lower --batch-size, the model widths (--ngf, --ndf), --nz "
              f"or the number of images asked for", file=sys.stderr)
        raise SystemExit(1) from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e).lower():
            raise
        print(f"error: out of memory ({first_line(e)}): lower --batch-size, the model widths (--ngf, --ndf), --nz "
              f"or the number of images asked for", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:  # lost permissions or a full disk outside a checkpoint save (save_checkpoint says its own)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR):
            raise
        print(f"error: cannot write {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        raise SystemExit(1) from None


def _terminate_during_start_up(signum, frame):
    raise KeyboardInterrupt


# argparse types: invalid values fail inside argparse with one line.
def positive_int(text):
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def positive_float(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(text)
    return value


def non_negative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(text)
    return value


def unit_interval(text):
    """[0, 1): decays and Adam's betas (beta = 1 never forgets, and Adam divides by 1 - beta)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def seed(text):
    """A seed every generator accepts (torch takes 64 bits, numpy 32: numpy gets it modulo 2**32)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError(text)
    return value


positive_int.__name__ = "positive integer"
positive_float.__name__ = "positive number"
non_negative_float.__name__ = "non-negative number"
unit_interval.__name__ = "number in [0, 1)"
seed.__name__ = "seed in [0, 2**63)"


def script_name(file):
    """The script's name from its file, so that a copy (my_gan.py) writes checkpoints of its own name."""
    return os.path.splitext(os.path.basename(file))[0]


# ---------------------------------------------------------------------------
# Device, seeding, distributed
# ---------------------------------------------------------------------------
def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA, but torch sees no CUDA GPU here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for Apple's GPU, but torch cannot use it here")
    return device


def seed_everything(seed, deterministic=False):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


class Dist:
    """Process layout: from torchrun's environment, or a single process."""

    def __init__(self, rank=0, world_size=1, local_rank=0, device=torch.device("cpu")):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_master(self):
        return self.rank == 0


def setup_distributed(device_name="auto"):
    """nanoGPT-style: under torchrun (RANK in the environment) join the process group, else one process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(device=pick_device(device_name))
    import torch.distributed as tdist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def cleanup_distributed():
    """Leave the process group, if this process joined one (call in a `finally`)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        if sys.exc_info()[0] is None:
            # Every rank got here by finishing: wait for all of them before tearing the group down. With
            # gloo, a rank that destroys the group while a peer still uses it can abort at exit.
            tdist.barrier()
        tdist.destroy_process_group()


def wrap_ddp(model, dist, sync_bn=False):
    """DistributedDataParallel around a model when running under torchrun; unchanged otherwise."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # No buffer sync in forward: D runs twice per step (real, fake) and a broadcast between the two would
    # overwrite BN statistics in place; each rank keeps its own BN running stats unless --sync-bn. Weights stay
    # identical because DDP averages gradients and every rank starts from rank 0's parameters.
    import inspect

    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=[dist.device] if dist.device.type == "cuda" else None, **no_sync)


def unwrap(model):
    """The plain module inside DDP / torch.compile wrappers (state_dicts without `module.` prefixes)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def replica_divergence(model, dist):
    """Largest difference of any parameter between DDP processes (0.0 when they are in sync, as they must be).
    One all-reduce; saved in the final checkpoint so a user (and the tests) can check a multi-process run."""
    if not dist.enabled:
        return 0.0
    import torch.distributed as tdist

    flat = torch.cat([p.detach().float().flatten() for p in unwrap(model).parameters()])
    high, low = flat.clone(), flat.clone()
    tdist.all_reduce(high, op=tdist.ReduceOp.MAX)
    tdist.all_reduce(low, op=tdist.ReduceOp.MIN)
    return (high - low).max().item()


def uses_channels_last(device):
    """NHWC weights and batches on CUDA (cuDNN) and on the CPU (oneDNN): measured faster for every script on
    both (bench.py --cpu-checks, docs/performance.md); not on MPS."""
    return torch.device(device).type in ("cuda", "cpu")


def prepare_model(model, device):
    """Move to the device, channels_last where uses_channels_last says so."""
    model = model.to(device)
    if uses_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(fn, enabled):
    """torch.compile behind --compile (first steps are slow while it compiles)."""
    return torch.compile(fn) if enabled else fn


def adam(params, lr, betas, device):
    """Adam with the fused CUDA kernel where available."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=(device.type == "cuda"))


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """True on CPUs whose oneDNN kernels run bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_enabled(device, requested):
    """--amp takes effect on CUDA and on CPUs with native bf16; elsewhere (MPS, older CPUs) it is a no-op."""
    return bool(requested) and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()))


def autocast(device, enabled):
    """bf16 autocast behind --amp (see amp_enabled); BatchNorm and the losses stay fp32 under autocast."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_enabled(device, enabled))


def dcgan_init(module):
    """DCGAN weight init (Radford et al.): conv weights ~ N(0, 0.02), BN scale ~ N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------
# GPU-resident batch loader
# ---------------------------------------------------------------------------
class DeviceLoader:
    """Batches drawn by index from a uint8 tensor that lives on the training device.

    No DataLoader workers and no PIL in the loop: a batch is an index_select plus a float conversion on the
    device. `batch(step)` depends only on (seed, step): the shuffle order of an epoch comes from (seed, epoch),
    so a run resumed at any step sees exactly the batches it would have seen. Under DDP every rank takes a
    disjoint slice of the same permutation.
    """

    def __init__(self, images, labels=None, batch_size=64, device="cpu", seed=0, flip=False,
                 rank=0, world_size=1, normalize=True):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("DeviceLoader expects a uint8 tensor of shape (N, C, H, W)")
        per_rank = len(images) // world_size
        if per_rank < batch_size:
            raise UserError(f"the dataset has {len(images)} images: fewer than one batch of {batch_size} "
                            f"per process; lower --batch-size")
        self.images = images.to(device)
        self.labels = None if labels is None else labels.to(device)
        self.batch_size, self.device, self.seed, self.flip = batch_size, torch.device(device), seed, flip
        self.rank, self.world_size, self.normalize = rank, world_size, normalize
        self.steps_per_epoch = per_rank // batch_size  # drop_last: fixed shapes for BN and torch.compile
        self._order_epoch, self._order = None, None

    def __len__(self):
        return self.steps_per_epoch

    def batch(self, step):
        """(images in [-1, 1] as float, labels or None) of training step `step`."""
        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            self._order, self._order_epoch = order[self.rank::self.world_size].to(self.device), epoch
        index = self._order[index_in_epoch * self.batch_size:(index_in_epoch + 1) * self.batch_size]
        labels = None if self.labels is None else self.labels.index_select(0, index)
        return self.to_float(self.images.index_select(0, index), flip=self.flip), labels

    def to_float(self, images, flip=False):
        images = images.float().div_(255)
        if self.normalize:
            images = images.mul_(2).sub_(1)  # [-1, 1] to match the generator's tanh
        if flip:
            mask = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
            images = torch.where(mask, images.flip(3), images)
        if uses_channels_last(self.device):
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def to_uint8_images(images, image_size, channels):
    """Convert a uint8 (N, C, H, W) tensor to `channels` (1 or 3) and `image_size`, once, before training."""
    if images.shape[1] == 3 and channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif images.shape[1] != channels:
        images = images[:, :channels].contiguous()
    if images.shape[-2:] != (image_size, image_size):
        shrink = images.shape[-1] > image_size
        images = torch.cat([
            F.interpolate(chunk.float(), size=(image_size, image_size), mode="area" if shrink else "bilinear",
                          align_corners=None if shrink else False).round().clamp(0, 255).to(torch.uint8)
            for chunk in images.split(4096)])
    return images


# ---------------------------------------------------------------------------
# Image files: listing and decoding with clear errors
# ---------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 4096 * 4096  # far above any GAN training image; bigger is refused (decompression bombs)


def list_image_files(root, extensions=IMAGE_EXTENSIONS):
    """Every image file under `root` (searched recursively, symlinks followed), each file once, sorted.
    A folder reached twice (a symlink loop, or two links to one folder) is read once, not forever."""
    if not os.path.isdir(root):
        raise UserError(f"image folder not found: {root}")
    by_target, seen_folders = {}, set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.lower().endswith(extensions) and os.path.isfile(path):
                by_target.setdefault(os.path.realpath(path), path)
    if not by_target:
        raise UserError(f"no images ({', '.join(extensions)}) found under {root}")
    return sorted(by_target.values())


def read_image(path, mode="RGB"):
    """Decode an image file to a PIL image in `mode` ("RGB" or "L"). 16-bit and float images are scaled to
    8 bits (PIL's convert() clips them: a 16-bit PNG would load as white); huge images are refused."""
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only: the size is known before any pixel is decoded
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise UserError(f"cannot read image {path}: {im.width}x{im.height} pixels is too large "
                                f"(more than {MAX_IMAGE_PIXELS:,}; a decompression bomb?)")
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                values = np.asarray(im, dtype=np.float64)
                if im.mode == "F":
                    top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
                else:
                    top = 65535.0 if im.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
                im = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
            return im.convert(mode)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise UserError(f"cannot read image {path}: {first_line(e)}") from None


# ---------------------------------------------------------------------------
# Run folder: one run per folder, nothing written before every check, config, output paths
# ---------------------------------------------------------------------------
_NEW_RUN_FOLDERS = []  # created by claim_run_folder in this process; run_main removes them if the start fails


def default_run_dir(script):
    return os.path.join("runs", f"{script}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def claim_run_folder(out, resume=False):
    """Create the run folder, check it is writable and lock it for this process (call after every other check).

    The lock is an flock on <out>/.lock: a second run on the same folder is refused, and a killed run's lock
    goes with its process, so it never stays stuck. Returns the open lock file (keep it until the run ends)."""
    import fcntl

    try:
        if not os.path.exists(out):
            _NEW_RUN_FOLDERS.append(os.path.abspath(out))
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, ".lock"), "a+")
    except OSError as e:
        raise UserError(f"cannot write to the run folder {out!r}: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(f"another run is using {out} right now: wait for it to end, or pass another --out") from None
    if not os.access(out, os.W_OK):
        lock.close()
        raise UserError(f"cannot write to the run folder {out!r}: permission denied")
    if not resume and os.path.exists(os.path.join(out, "last.pt")):
        lock.close()
        raise UserError(f"{out} already holds a run (last.pt): pass --resume auto to continue it, or another --out")
    return lock


def check_output_path(path, what="output"):
    """Refuse an output path that is not a regular file or a new file (a device, a folder, a symlink), or whose
    folder cannot be written: atomic writes rename over the path, and this is checked before any work."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        raise UserError(f"{what} {path} exists and is not a regular file: pass a new file name")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {what} {path}: {existing} is not writable")
    return path


def write_config(out, args, script, device, extra=None):
    """config.json of a new run (a resumed run keeps the one of its start)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # the version from package metadata: importing torchvision costs seconds at every start
        torchvision_version = version("torchvision")
    except PackageNotFoundError:
        torchvision_version = None
    config = {"script": script, "args": plain_args(args), "torch": torch.__version__,
              "torchvision": torchvision_version, "python": platform.python_version(),
              "device": str(device), "git_commit": git_commit(), "started": datetime.datetime.now().isoformat()}
    if device.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(device)
    config.update(extra or {})
    atomic_write_text(os.path.join(out, "config.json"), json.dumps(config, indent=2))


def plain_args(args):
    """argparse Namespace -> dict of plain values (safe for weights_only checkpoints and JSON)."""
    d = vars(args) if not isinstance(args, dict) else args
    out = {}
    for k, v in d.items():
        if k.startswith("_"):  # bookkeeping such as parse_args' _typed
            continue
        if isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (int, float, str, bool, type(None))) else str(x) for x in v]
        elif isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        else:
            out[k] = str(v)
    return out


def require_tensorboard():
    """TensorBoard's SummaryWriter for --track (check it in setup, before anything is written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--track needs TensorBoard: pip install tensorboard") from None
    return SummaryWriter


def read_log_rows(path, last_step):
    """The rows of an existing log.csv up to `last_step`, and its columns. A torn file (NUL bytes after a power cut,
    rows merged by a crash mid-write) loses only its damaged rows."""
    with open(path, "rb") as f:
        text = f.read().replace(b"\0", b"").decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for row in reader:
        try:
            ok = None not in row and None not in row.values() and int(row["step"]) <= last_step
        except (KeyError, TypeError, ValueError):
            ok = False
        if ok:
            rows.append(row)
    return rows, list(reader.fieldnames or [])


class TrainLog:
    """log.csv, TensorBoard, the progress bar and the loss history kept in checkpoints, for whatever values
    train_step returns.

    add(values) every step: values are summed on the device and read once every --log-every steps (one host
    sync), then checked for NaN, watched by the health monitor, written as a log.csv row with images/s and
    training minutes, and shown on the progress bar. record(step, epoch, fid=...) logs scores. Every rank keeps
    the same numbers (each checks its losses), only the master writes."""

    def __init__(self, out, args, dist, total_steps, step=0, state=None, desc="train", images_per_step=None):
        self.log_every, self.skip_nonfinite = args.log_every, args.skip_nonfinite
        self.images_per_step = (images_per_step or args.batch_size) * dist.world_size  # real images read per step
        self.master = dist.is_master
        self.path = os.path.join(out, "log.csv")
        state = state or {}
        self.history = state.get("history", {"step": [], "scores": {}})
        meter = state.get("meter", {"sums": {}, "count": 0})
        self.sums = {k: v.to(dist.device) for k, v in meter["sums"].items()}
        self.count = meter["count"]
        self.elapsed_before = state.get("elapsed_s", 0.0)  # training seconds of earlier processes of this run
        self.started = self.interval_start = time.perf_counter()
        self.interval_steps = 0
        self.monitor = HealthMonitor(enabled=self.master)
        self.fields, self.tb, self.bar = ["step", "epoch"], None, None
        if not self.master:
            return
        if args.track:
            self.tb = require_tensorboard()(os.path.join(out, "tb"))
        rows = []
        if state and os.path.exists(self.path):  # resumed: drop rows past the checkpoint (they will be redone)
            rows, fields = read_log_rows(self.path, step)
            self.fields = fields or self.fields
        self._rewrite(rows)
        self.bar = progress_bar(total_steps, initial=step, desc=desc, disable=args.no_progress)

    def minutes(self):
        """Minutes of training in this run so far, over all its processes (--max-minutes)."""
        return (self.elapsed_before + time.perf_counter() - self.started) / 60

    def add(self, values, step, epoch):
        """Values of one training step (tensors); logs every log_every steps."""
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1
        self.interval_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.log_every == 0:
            self.flush(step, epoch)

    def flush(self, step, epoch):
        """Log the steps added since the last row (also at an epoch's end and when a run stops)."""
        if not self.count:
            return
        keys = list(self.sums)
        means = dict(zip(keys, (torch.stack([self.sums[k] for k in keys]) / self.count).tolist()))  # the one sync
        self.sums, self.count = {}, 0
        check_finite(means, step, self.skip_nonfinite)
        self.monitor.update(means, step)
        self.history["step"].append(step)
        for k, v in means.items():
            self.history.setdefault(k, []).append(v)
        seconds = max(time.perf_counter() - self.interval_start, 1e-9)
        images_per_s = self.interval_steps * self.images_per_step / seconds
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        self._write({"step": step, "epoch": epoch, **means, "images_per_s": images_per_s, "minutes": self.minutes()})
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in list(means.items())[:3]} | {"img/s": f"{images_per_s:.0f}"},
                                 refresh=False)

    def record(self, step, epoch, **scores):
        """Log scores (FID, accuracy, ...) of the generator at this step; kept in history["scores"]."""
        table = self.history.setdefault("scores", {})
        for k, v in {"step": step, "epoch": epoch, **scores}.items():
            table.setdefault(k, []).append(v)
        self._write({"step": step, "epoch": epoch, **scores, "minutes": self.minutes()})
        if self.bar is not None:
            self.bar.write(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()), file=sys.stderr)

    def _write(self, row):
        if not self.master:
            return
        if set(row) - set(self.fields):  # a new column: rewrite the file with the wider header
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields += [k for k in row if k not in self.fields]
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def _rewrite(self, rows):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())  # a kill now must not lose the log

    def state_dict(self):
        """What a checkpoint keeps to resume the log exactly."""
        return {"history": self.history, "meter": {"sums": dict(self.sums), "count": self.count},
                "elapsed_s": self.minutes() * 60}

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------
# Checkpoints: atomic save, safe load, RNG state
# ---------------------------------------------------------------------------
def atomic_write_text(path, text):
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def save_checkpoint(path, checkpoint):
    """torch.save to path.tmp, fsync, rename: a crash at any moment leaves the old file or the new one. A full
    disk is one clear error and leaves no .tmp behind."""
    check_output_path(path, "checkpoint")
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        raise UserError(f"cannot write {path} ({first_line(e)}; {free / 2**20:.1f} MiB free on its disk): the "
                        f"previous {os.path.basename(path)} is intact; free space, then --resume auto") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def describe_file(path):
    """What a file that is not a checkpoint looks like, for error messages."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "is empty"
    if head.startswith(b"PK"):
        return "is truncated or damaged (an interrupted copy or save?)"
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8", "a JPEG image"), (b"GIF8", "a GIF image"),
                        (b"{", "a JSON or text file"), (b"[", "a JSON or text file")):
        if head.startswith(magic):
            return f"is {kind}, not a checkpoint"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "is a text file, not a checkpoint"
    return "is not a checkpoint (not a file torch.save wrote)"


TRAINING_KEYS = ("args", "step", "generator", "optimizers", "rng", "history")


def load_checkpoint(path, script=None, map_location="cpu", required=("args", "generator")):
    """Load a checkpoint with weights_only=True (no code runs); refuse foreign, corrupt, unsafe or incomplete files
    with one line that says which. `required`: the entries the caller needs (TRAINING_KEYS to resume)."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder: pass a checkpoint file (its last.pt, best.pt or epoch_NNN.pt)")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise UserError(f"cannot load checkpoint {path}: it {describe_file(path)}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: not a checkpoint we can trust
        reason = f"it is damaged ({first_line(e)})"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains Python objects that could run code when loaded (refused, nothing was run)"
        raise UserError(f"cannot load checkpoint {path}: {reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "script" not in checkpoint:
        raise UserError(f"{path} is not a gan-scripts checkpoint (format {CHECKPOINT_FORMAT})")
    if script is not None and checkpoint["script"] != script:
        raise UserError(f"{path} was written by {checkpoint['script']}.py, not {script}.py")
    kinds = {"args": dict, "generator": dict, "optimizers": dict, "rng": dict, "history": dict, "step": int}
    for key in required:
        if key not in checkpoint:
            raise UserError(f"{path} is incomplete: it has no {key!r}")
        if key in kinds and not isinstance(checkpoint[key], kinds[key]):
            raise UserError(f"{path} is damaged: its {key!r} is a {type(checkpoint[key]).__name__}, not a "
                            f"{kinds[key].__name__}")
    if "step" in required and checkpoint["step"] < 0:
        raise UserError(f"{path} is damaged: negative step {checkpoint['step']}")
    return checkpoint


def find_resume_checkpoint(resume, out, script, map_location="cpu"):
    """--resume auto -> <out>/last.pt when there is one (else None: a new run); --resume PATH -> PATH.
    The checkpoint is loaded and checked here, before anything is written."""
    if resume is None:
        return None, None
    path = os.path.join(out, "last.pt") if resume == "auto" else resume
    if resume == "auto" and not os.path.exists(path):
        return None, None
    return load_checkpoint(path, script, map_location, required=TRAINING_KEYS), path


# Settings that may change when a run is resumed: its budget, where and how often it writes, how it runs.
# Every other setting (model shapes, data, losses, learning rates) is the run's own and comes from the checkpoint.
RUNTIME_SETTINGS = {"epochs", "max_steps", "max_minutes", "out", "resume", "device", "data_dir", "log_every",
                    "sample_every", "save_every", "eval_every", "fid_samples", "inception_weights", "classifier",
                    "test_dir", "show", "tags_file", "cascade", "no_progress", "track", "skip_nonfinite", "compile",
                    "amp", "deterministic", "sync_bn"}


def parse_args(parser, argv=None):
    """parser.parse_args(argv), noting which settings were typed on the command line (args._typed): a resumed run
    takes the settings left out from its checkpoint and refuses a typed one that differs from its own."""
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in vars(args)}))
    args._typed = sorted(k for k, v in vars(probe).items() if v is not unset)  # argparse fills only missing names
    return args


def settings_from_checkpoint(args, checkpoint, path):
    """A resumed run keeps the settings it started with (model shapes, data, losses): those not typed come from the
    checkpoint, a typed one with another value is refused (one line). RUNTIME_SETTINGS may change."""
    saved, typed = checkpoint["args"], set(getattr(args, "_typed", ()))
    for key, value in vars(args).items():
        if key in RUNTIME_SETTINGS or key not in saved or key.startswith("_"):
            continue
        same = (list(value) if isinstance(value, tuple) else value) == saved[key]
        if key in typed and not same:
            raise UserError(f"--{key.replace('_', '-')} {value} differs from {saved[key]} in {path}: a resumed run "
                            f"keeps its settings (start a new run with another --out to change it)")
        setattr(args, key, saved[key])
    return args


def load_weights(module, state, path):
    """module.load_state_dict(state), with a mismatch (other --ngf, --nz, ...) as one clear line."""
    try:
        unwrap(module).load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise UserError(f"{path} does not fit this model ({type(e).__name__}: {first_line(e)[:200]})") from None
    return module


def rebuild(build_generator, settings, path):
    """build_generator(settings) for a checkpoint's settings, with missing or unsupported ones as one clear line."""
    try:
        return build_generator(settings)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise UserError(f"{path}: its settings cannot rebuild the generator ({type(e).__name__}: {first_line(e)})") from None


def say_finished(path, step, master=True):
    """A resumed run that has nothing left to do says so (and how to extend it) instead of training a step."""
    if master:
        print(f"{path}: this run is finished (step {step}); to train further, resume with a larger --epochs, "
              f"--max-steps or --max-minutes", file=sys.stderr)


@torch.no_grad()
def update_ema(ema_model, model, decay, step):
    """ema <- decay * ema + (1 - decay) * weights. The decay warms up as (1 + step) / (10 + step), so a short
    run's average is not stuck near the random initial weights. Buffers (BN statistics) are copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_model.parameters(), model.parameters()):
        ema_param.lerp_(param.detach(), 1 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def restore_training_state(checkpoint, path, modules, optimizers, schedulers=None):
    """Load weights, optimizer, scheduler and random states from a checkpoint; a mismatch is one clear line."""
    try:
        for name, module in modules.items():
            unwrap(module).load_state_dict(checkpoint[name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        for name, scheduler in (schedulers or {}).items():
            scheduler.load_state_dict(checkpoint["schedulers"][name])
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise UserError(f"{path} does not fit this model and run ({type(e).__name__}: {first_line(e)[:200]}): "
                        f"resume with the script and settings that wrote it") from None


def rng_state():
    """All random states as tensors and plain values, so weights_only=True loading works."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": {"version": random.getstate()[0], "state": torch.tensor(random.getstate()[1], dtype=torch.int64),
                        "gauss": random.getstate()[2]},
             "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------
# Interruption and divergence
# ---------------------------------------------------------------------------
class GracefulExit:
    """Turn SIGINT/SIGTERM into a flag the training loop checks after each step, so it saves last.pt first.
    A second Ctrl-C exits at once."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name} received: saving last.pt, then stopping "
              f"(again to quit without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def __bool__(self):
        return self.signal is not None


def check_finite(losses, step, skip):
    """Return True when all losses are finite. Non-finite: stop the run (UserError), or with skip just say so."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if not bad:
        return True
    names = ", ".join(f"{k}={v}" for k, v in bad.items())
    if skip:
        warnings.warn(f"step {step}: non-finite loss ({names}); step skipped")
        return False
    raise UserError(f"training diverged at step {step}: non-finite loss ({names}); "
                    f"last.pt holds the last good checkpoint (try a lower --lr, or --skip-nonfinite)")


def optimizer_step(optimizer, loss, skip_nonfinite):
    """optimizer.step(), except that with --skip-nonfinite a step whose loss is NaN/inf is dropped.
    Only that option pays for the host sync of checking the loss here."""
    if skip_nonfinite and not torch.isfinite(loss.detach()).all():
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def stop_requested(signal_received, time_is_up, dist, step, every):
    """Why the run stops now: "signal" (Ctrl-C, SIGTERM), "time" (--max-minutes spent) or None. Under DDP it is
    decided every `every` steps with one tiny all-reduce, so that all processes stop at the same step for the same
    reason (each has its own clock) and none waits for the others."""
    code = 2 if signal_received else 1 if time_is_up else 0
    if dist.enabled:
        if step % every:
            return None
        import torch.distributed as tdist

        t = torch.tensor([float(code)], device=dist.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        code = int(t.item())
    return {0: None, 1: "time", 2: "signal"}[code]


# ---------------------------------------------------------------------------
# Images, GIFs, plots
# ---------------------------------------------------------------------------
def to_image_uint8(images, normalized=True):
    """(N, C, H, W) float in [-1, 1] (or [0, 1]) -> uint8 on the CPU."""
    images = images.detach().float().cpu()
    if normalized:
        images = (images + 1) / 2
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def image_grid(images, nrow, padding=2, pad_value=255):
    """uint8 (N, C, H, W) -> uint8 (H', W', 3) grid, rows of `nrow` images."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    ncol = nrow
    nrows = math.ceil(n / ncol)
    grid = torch.full((3, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y:y + h, x:x + w] = images[i, :3]
    return grid.permute(1, 2, 0).numpy()


def save_grid(images, path, nrow=8, row_labels=None, normalized=True, scale=None, title=None, captions=None):
    """Save a sample grid as PNG. `row_labels`: a name left of each row (class-conditional grids); `title`: a line
    above the grid (the epoch); `captions`: a short text under each picture (the condition it was drawn for)."""
    from PIL import Image, ImageDraw

    grid = image_grid(to_image_uint8(images, normalized), nrow)
    picture = Image.fromarray(grid)
    h = images.shape[-1]
    scale = scale or max(1, 128 // h) if h < 64 else (scale or 1)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    cell = picture.width / nrow
    if captions:  # a strip of text under every row of pictures
        rows = math.ceil(len(images) / nrow)
        lines = max(len(str(c).split("\n")) for c in captions)
        strip, tile = 11 * lines + 2, picture.height / rows
        canvas = Image.new("RGB", (picture.width, picture.height + rows * strip), "white")
        draw = ImageDraw.Draw(canvas)
        for r in range(rows):
            canvas.paste(picture.crop((0, round(r * tile), picture.width, round((r + 1) * tile))),
                         (0, round(r * (tile + strip))))
        for i, caption in enumerate(captions[:len(images)]):
            r, c = divmod(i, nrow)
            draw.multiline_text((c * cell + 3, round((r + 1) * tile + r * strip)), str(caption), fill="black",
                                spacing=1)
        picture = canvas
    if row_labels:
        margin = 8 + 7 * max(len(str(s)) for s in row_labels)
        canvas = Image.new("RGB", (picture.width + margin, picture.height), "white")
        canvas.paste(picture, (margin, 0))
        draw = ImageDraw.Draw(canvas)
        row_height = picture.height / math.ceil(len(images) / nrow)
        for r, label in enumerate(row_labels):
            draw.text((4, int(r * row_height + row_height / 2 - 5)), str(label), fill="black")
        picture = canvas
    if title:
        canvas = Image.new("RGB", (picture.width, picture.height + 16), "white")
        canvas.paste(picture, (0, 16))
        ImageDraw.Draw(canvas).text((4, 2), str(title), fill="black")
        picture = canvas
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.png"
    picture.save(tmp)
    os.replace(tmp, path)
    return path


def save_pngs(images, folder, normalized=True):
    """One PNG per image (000000.png, ...): the layout FID tools and evaluate.py folder: read."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    pixels = to_image_uint8(images, normalized).permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(pixels):
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(os.path.join(folder, f"{i:06d}.png"))
    return folder


def interpolation_noise(rows, steps, nz, seed):
    """Noise for a latent interpolation sheet: each of `rows` rows walks in `steps` steps from one random noise
    vector to another along the great circle (slerp: every point has the norm typical of Gaussian noise)."""
    generator = torch.Generator().manual_seed(seed)
    start, end = torch.randn(rows, nz, generator=generator), torch.randn(rows, nz, generator=generator)
    angle = torch.acos((F.normalize(start, dim=1) * F.normalize(end, dim=1)).sum(1).clamp(-1, 1)).unsqueeze(1)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    angle, start, end = angle.unsqueeze(1), start.unsqueeze(1), end.unsqueeze(1)
    noise = (torch.sin((1 - t) * angle) * start + torch.sin(t * angle) * end) / torch.sin(angle).clamp_min(1e-6)
    return noise.reshape(rows * steps, nz, 1, 1)


def save_gif(frame_paths, path, duration_ms=400):
    """Animate the sample grids written so far (one frame per saved epoch)."""
    from PIL import Image

    frames = [Image.open(p).convert("RGB") for p in frame_paths if os.path.exists(p)]
    if not frames:
        return None
    tmp = f"{path}.tmp.gif"
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    os.replace(tmp, path)
    return path


def save_figure(fig, path):
    """Write a matplotlib figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(series, path, title="losses", xlabel="step", ylabel="loss"):
    """series: {name: (xs, ys)} -> one PNG with a curve each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        if len(xs):
            ax.plot(xs, ys, label=name, linewidth=1.2, marker="o" if len(xs) <= 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return save_figure(fig, path)


def plot_losses(history, path, title="losses"):
    """Every series of a TrainLog history against step: the losses in one panel, the rest (D outputs, accuracies)
    in a second, whatever train_step returned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history if k not in ("step", "scores") and len(history[k]) == len(history["step"])]
    panels = [[k for k in keys if k.startswith("loss")], [k for k in keys if not k.startswith("loss")]]
    panels = [p for p in panels if p]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3 + 2 * len(panels)), sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for k in panel:
            ax.plot(history["step"], history[k], label=k, linewidth=1.2)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Progress bar and training-health monitor
# ---------------------------------------------------------------------------
def progress_bar(total, initial=0, desc="train", disable=False):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=disable, file=sys.stderr, mininterval=1.0)


def mean_pairwise_distance(images, max_images=64):
    """Mean L2 distance between pairs of images: falls towards 0 when a generator collapses to one output."""
    flat = images[:max_images].detach().float().flatten(1)
    d = torch.cdist(flat, flat)
    n = flat.shape[0]
    return (d.sum() / max(n * (n - 1), 1)).item()


class HealthMonitor:
    """Warns students, once each, in plain words, about the two classic GAN failures.

    1. The discriminator has won: D(G(z)) stays near 0 and the generator loss climbs for many log
       intervals, so the generator's gradients vanish.
    2. Mode collapse: the fixed-noise samples are far more alike than real images are.
    """

    def __init__(self, patience=5, collapse_ratio=0.2, enabled=True, min_step=300):
        # Before `min_step` an untrained generator's outputs all look alike: no collapse warning then.
        self.patience, self.collapse_ratio, self.enabled, self.min_step = patience, collapse_ratio, enabled, min_step
        self.d_won_count, self.warned, self.last_loss_g = 0, set(), None
        self.real_spread = None

    def update(self, means, step):
        """`means` has d_real / d_fake (mean D outputs as probabilities) and loss_g, when the loss has them."""
        if "d_fake" in means and "loss_g" in means:
            climbing = self.last_loss_g is not None and means["loss_g"] >= self.last_loss_g
            self.d_won_count = self.d_won_count + 1 if (means["d_fake"] < 0.05 and climbing) or means["d_fake"] < 0.01 else 0
            self.last_loss_g = means["loss_g"]
            if self.d_won_count >= self.patience:
                self._warn("d_won", f"step {step}: the discriminator is winning (D(G(z)) = {means['d_fake']:.3f}, "
                                    f"generator loss {means['loss_g']:.2f} and climbing): the generator gets almost no "
                                    f"gradient. Try a lower discriminator learning rate, label smoothing, or fewer D steps.")

    def check_samples(self, fake, real, epoch, step):
        if self.real_spread is None:
            self.real_spread = mean_pairwise_distance(real)
        spread = mean_pairwise_distance(fake)
        if step >= self.min_step and self.real_spread > 0 and spread < self.collapse_ratio * self.real_spread:
            self._warn("collapse", f"epoch {epoch}: the fixed-noise samples look alike (mean pairwise distance "
                                   f"{spread:.2f} vs {self.real_spread:.2f} for real images): mode collapse. Try a "
                                   f"lower learning rate, a smaller embedding, or restart with another --seed.")
        return spread

    def _warn(self, key, message):
        if self.enabled and key not in self.warned:
            self.warned.add(key)
            print(f"\nwarning: {message}", file=sys.stderr, flush=True)
