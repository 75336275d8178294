"""Small, stable helpers shared by the gan-scripts training scripts.

Everything a single script would otherwise repeat about *plumbing* lives here:
device/seed/DDP setup, the GPU-resident batch loader, the run folder (config.json,
log.csv, TensorBoard), atomic checkpoints and exact resume, image grids, GIFs,
loss plots, the progress bar, interruption handling and a training-health
monitor. Models, losses and training loops stay in the scripts themselves.
"""

import csv
import datetime
import errno
import functools
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import warnings

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


def run_main(main_fn, argv=None):
    """Run a script's main() and turn UserError into `error: ...` on stderr with exit status 2."""
    try:
        return main_fn(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a full disk or lost permissions mid-run: last.pt is intact (atomic saves), say so
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        print(f"error: {e.strerror}: {e.filename or ''} (the previous last.pt is intact; free space, then "
              f"--resume auto)", file=sys.stderr)
        raise SystemExit(1) from None


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
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


positive_int.__name__ = "positive integer"
positive_float.__name__ = "positive number"
non_negative_float.__name__ = "non-negative number"
unit_interval.__name__ = "number in [0, 1)"


def add_common_args(parser, *, epochs, batch_size, lr, image_size, sample_every=10, save_every=10):
    """The flags every script shares (DESIGN.md), with per-script defaults."""
    g = parser.add_argument_group("common options")
    g.add_argument("--data-dir", default="data", help="where real datasets are read from / downloaded to")
    g.add_argument("--epochs", type=positive_int, default=epochs, help="number of passes over the training set")
    g.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="images per step per process (global batch = batch size x processes)")
    if lr is not None:  # scripts with --lr-g/--lr-d or several learning rates define their own
        g.add_argument("--lr", type=positive_float, default=lr, help="Adam learning rate of both networks")
    g.add_argument("--beta1", type=non_negative_float, default=0.5, help="Adam beta1 (DCGAN: 0.5)")
    g.add_argument("--beta2", type=non_negative_float, default=0.999, help="Adam beta2")
    g.add_argument("--nz", type=positive_int, default=100, help="size of the generator's noise vector")
    g.add_argument("--image-size", type=positive_int, default=image_size, help="image height and width in pixels")
    g.add_argument("--seed", type=int, default=0, help="random seed (data, init, noise)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--out", default=None, help="run folder (default runs/<script>-<time>)")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' for <out>/last.pt")
    g.add_argument("--sample-every", type=positive_int, default=sample_every,
                   help="save a fixed-noise sample grid every N epochs (and the first and last)")
    g.add_argument("--save-every", type=positive_int, default=save_every,
                   help="keep a checkpoint epoch_NNN.pt every N epochs (last.pt is always updated)")
    g.add_argument("--log-every", type=positive_int, default=50, help="log losses every N steps")
    g.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many training steps (smoke tests, benchmarks)")
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16); ignored elsewhere")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun: use SyncBatchNorm across processes")
    g.add_argument("--track", action="store_true", help="also log to TensorBoard (<out>/tb)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (bit-exact resume on CPU; slower on CUDA)")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss is NaN/inf instead of stopping the run")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in batch jobs)")
    return parser


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
        raise UserError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
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


def cleanup_distributed(dist):
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
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


def all_reduce_mean(tensor, dist):
    if dist.enabled:
        import torch.distributed as tdist

        tensor = tensor.clone()
        tdist.all_reduce(tensor)
        tensor /= dist.world_size
    return tensor


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
    both (bench.py --cpu-checks, README "Performance"); not on MPS."""
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

    No DataLoader workers and no PIL in the loop: a batch is an index_select plus a
    float conversion on the device. The shuffle order of epoch e depends only on
    (seed, e), so a run resumed mid-epoch sees exactly the batches it would have
    seen. Under DDP every rank takes a disjoint slice of the same permutation.
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

    def __len__(self):
        return self.steps_per_epoch

    def epoch(self, epoch, start_batch=0):
        """Yield (images, labels) for one epoch, skipping the first `start_batch` batches."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        order = order[self.rank::self.world_size].to(self.device)
        for b in range(start_batch, self.steps_per_epoch):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            images = self.images.index_select(0, index)
            yield self.to_float(images, flip=self.flip), (None if self.labels is None else self.labels.index_select(0, index))

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
# Run folder, config, logging
# ---------------------------------------------------------------------------
def default_run_dir(script):
    return os.path.join("runs", f"{script}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_run_dir(out, resume=False):
    """Create the run folder and check it is writable *before* any training starts."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to the run folder {out!r}: {e.strerror or e}") from None
    if not resume and os.path.exists(os.path.join(out, "last.pt")):
        raise UserError(f"{out} already holds a run (last.pt): pass --resume auto to continue it, or another --out")
    return out


def write_config(out, args, script, device, extra=None):
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
        if isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (int, float, str, bool, type(None))) else str(x) for x in v]
        elif isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        else:
            out[k] = str(v)
    return out


class CSVLogger:
    """log.csv with a fixed header; optional TensorBoard mirror. On resume, rows past `resume_step` are dropped
    so a resumed run's log is the same as an uninterrupted one."""

    def __init__(self, path, fields, resume_step=None, tensorboard_dir=None):
        self.path, self.fields = path, list(fields)
        if resume_step is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            with open(f"{path}.tmp", "w", newline="") as f:  # atomic: a kill now must not lose the log
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(f"{path}.tmp", path)
        else:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        self.tb = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--track needs TensorBoard: pip install tensorboard") from None
            self.tb = SummaryWriter(tensorboard_dir)

    def log(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


class LossMeter:
    """Sums step losses on the device; one host sync per log interval instead of one `.item()` per step."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, values):
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self):
        if not self.count:
            return {}
        keys = list(self.sums)
        values = (torch.stack([self.sums[k] for k in keys]) / self.count).tolist()  # the one sync
        self.sums, self.count = {}, 0
        return dict(zip(keys, values))

    def state_dict(self):
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state, device):
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = state["count"]


# ---------------------------------------------------------------------------
# Checkpoints: atomic save, safe load, RNG state
# ---------------------------------------------------------------------------
def atomic_write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path, checkpoint):
    """torch.save to path.tmp, fsync, rename: a crash at any moment leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path, script=None, map_location="cpu"):
    """Load a checkpoint with weights_only=True (no code runs); refuse foreign, corrupt or unsafe files."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: not a checkpoint we can trust
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains Python objects that could run code when loaded (refused, nothing was run)"
        raise UserError(f"cannot load checkpoint {path}: {reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "script" not in checkpoint:
        raise UserError(f"{path} is not a gan-scripts checkpoint (format {CHECKPOINT_FORMAT})")
    if script is not None and checkpoint["script"] != script:
        raise UserError(f"{path} was written by {checkpoint['script']}.py, not {script}.py")
    return checkpoint


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


def resolve_resume(resume, out):
    """--resume auto -> <out>/last.pt if it exists (else start fresh); --resume PATH -> PATH."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(out, "last.pt")
        return path if os.path.exists(path) else None
    return resume


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


def stop_requested(stop, dist):
    """True when a signal asked to stop; under DDP every rank agrees (one tiny all-reduce), so none hangs."""
    flag = bool(stop)
    if dist.enabled:
        import torch.distributed as tdist

        t = torch.tensor([float(flag)], device=dist.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        flag = t.item() > 0
    return flag


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


def save_grid(images, path, nrow=8, row_labels=None, normalized=True, scale=None):
    """Save a sample grid as PNG. `row_labels` writes a name left of each row (class-conditional grids)."""
    from PIL import Image, ImageDraw

    grid = image_grid(to_image_uint8(images, normalized), nrow)
    picture = Image.fromarray(grid)
    h = images.shape[-1]
    scale = scale or max(1, 128 // h) if h < 64 else (scale or 1)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if row_labels:
        margin = 8 + 7 * max(len(str(s)) for s in row_labels)
        canvas = Image.new("RGB", (picture.width + margin, picture.height), "white")
        canvas.paste(picture, (margin, 0))
        draw = ImageDraw.Draw(canvas)
        row_height = picture.height / math.ceil(len(images) / nrow)
        for r, label in enumerate(row_labels):
            draw.text((4, int(r * row_height + row_height / 2 - 5)), str(label), fill="black")
        picture = canvas
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.png"
    picture.save(tmp)
    os.replace(tmp, path)
    return path


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


def plot_curves(series, path, title="losses", xlabel="step", ylabel="loss"):
    """series: {name: (xs, ys)} -> one PNG with a curve each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        if len(xs):
            ax.plot(xs, ys, label=name, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_losses(history, path, keys=("loss_d", "loss_g"), title="losses"):
    """history: {"step": [...], key: [...]} as kept in the checkpoint."""
    return plot_curves({k: (history["step"], history[k]) for k in keys if k in history}, path, title=title)


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

    def check_samples(self, fake, real, epoch, step=None):
        if self.real_spread is None:
            self.real_spread = mean_pairwise_distance(real)
        spread = mean_pairwise_distance(fake)
        if (step is None or step >= self.min_step) and self.real_spread > 0 and spread < self.collapse_ratio * self.real_spread:
            self._warn("collapse", f"epoch {epoch}: the fixed-noise samples look alike (mean pairwise distance "
                                   f"{spread:.2f} vs {self.real_spread:.2f} for real images): mode collapse. Try a "
                                   f"lower learning rate, a smaller embedding, or restart with another --seed.")
        return spread

    def _warn(self, key, message):
        if self.enabled and key not in self.warned:
            self.warned.add(key)
            print(f"\nwarning: {message}", file=sys.stderr, flush=True)
