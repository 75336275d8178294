"""Plumbing shared by the gan-scripts training scripts: no flags, no training policy.

One-line errors; device, precision and DDP setup; the run folder (one run per folder, config.json,
log.csv of whatever train_step returns); interruption handling and a training-health monitor.
Checkpoints live in checkpoints.py, images in and out in image_io.py; models, losses, the loop and
what a student changes stay in the scripts.
"""

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

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------------------
# Errors: one clear line, no traceback
# ---------------------------------------------------------------------------
class UserError(Exception):
    """A problem with the user's input (arguments, files, data). main() prints it as one line."""


def first_line(error):
    """The first line of an exception's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_NEW_RUN_FOLDERS = []  # made by claim_run_folder in this process: removed again if the start fails
_JOINED_PROCESS_GROUP = False  # set by setup_distributed: run_main then ends the process itself
OUT_OF_MEMORY = ("out of memory ({}): lower --batch-size, the model widths (--ngf, --ndf), --nz or "
                 "the number of images asked for")


def run_main(main_fn, argv=None):
    """Run a script's main(); the errors a user can cause become one `error: ...` line on stderr. A
    run folder this process made is removed again when the run fails before its first checkpoint."""
    signal.signal(signal.SIGTERM, _interrupt)  # GracefulExit takes over once training runs
    try:
        _one_line_errors(main_fn, argv)
        status = 0
    except BaseException as e:
        for out in _NEW_RUN_FOLDERS:
            saved = glob.glob(os.path.join(glob.escape(out), "**", "*.pt"), recursive=True)
            if os.path.isdir(out) and not saved:
                shutil.rmtree(out, ignore_errors=True)
        if not (_JOINED_PROCESS_GROUP and isinstance(e, SystemExit)):
            raise
        status = e.code or 0
    finally:
        _NEW_RUN_FOLDERS.clear()
    if _JOINED_PROCESS_GROUP:
        # Under torchrun, gloo's worker threads outlive destroy_process_group once a DDP module has
        # existed; one that touches the interpreter while it shuts down ends the finished process in
        # std::terminate (pytorch/pytorch#190489). Every file is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _one_line_errors(main_fn, argv):
    try:
        return main_fn(argv)
    except UserError as e:
        message, status = str(e), 2
    except KeyboardInterrupt:
        message, status = "interrupted (a run keeps its last saved checkpoint; a run with none " \
                          "leaves no folder)", 130
    except (MemoryError, torch.OutOfMemoryError) as e:
        message, status = OUT_OF_MEMORY.format(first_line(e)), 1
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e).lower():
            raise
        message, status = OUT_OF_MEMORY.format(first_line(e)), 1
    except OSError as e:  # permissions or a full disk outside a checkpoint save (that says its own)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EISDIR):
            raise
        message, status = f"cannot write {e.filename or 'a file'}: {e.strerror}", 1
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status) from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# argparse types: an invalid value fails inside argparse with one line.
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
    """A seed every generator accepts (torch takes 64 bits; numpy gets it modulo 2**32)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError(text)
    return value


positive_int.__name__, positive_float.__name__ = "positive integer", "positive number"
non_negative_float.__name__, unit_interval.__name__ = "non-negative number", "number in [0, 1)"
seed.__name__ = "seed in [0, 2**63)"


def parse_args(parser, argv=None):
    """parser.parse_args(argv), noting which settings were typed (args._typed): a resumed run takes
    the others from its checkpoint (settings_from_checkpoint)."""
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, namespace=type(args)(**{k: unset for k in vars(args)}))
    args._typed = sorted(k for k, v in vars(probe).items() if v is not unset)
    return args


def script_name(file):
    """The script's name from its file: a copy (my_gan.py) writes checkpoints of its own name."""
    return os.path.splitext(os.path.basename(file))[0]


# ---------------------------------------------------------------------------
# Device, precision, seeding, distributed
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


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """True on CPUs whose oneDNN kernels run bf16 natively (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device):
    """bf16 in hardware: CUDA GPUs of compute capability 8.0 or newer (older ones emulate it,
    whatever torch.cuda.is_bf16_supported() says) and CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_has_native_bf16()


def pick_precision(choice, device):
    """--precision auto|bf16|fp32 -> "bf16" or "fp32": auto is bf16 where the hardware has it."""
    if choice == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if choice == "bf16" and device.type not in ("cpu", "cuda"):
        raise UserError(f"--precision bf16 runs on CPUs and CUDA GPUs, not {device.type}: use fp32")
    return choice


def amp_enabled(device, requested):
    """evaluate.py --amp (bf16 Inception): on CUDA and CPUs with native bf16, elsewhere a no-op."""
    return bool(requested) and (device.type == "cuda"
                                or (device.type == "cpu" and cpu_has_native_bf16()))


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


class Dist:
    """Process layout: from torchrun's environment, or a single process."""

    def __init__(self, rank=0, world_size=1, device=torch.device("cpu")):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.enabled, self.is_master = world_size > 1, rank == 0


def setup_distributed(device_name="auto"):
    """nanoGPT-style: under torchrun (RANK in the environment) join the process group."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(device=pick_device(device_name))
    import torch.distributed as tdist

    global _JOINED_PROCESS_GROUP
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _JOINED_PROCESS_GROUP = True
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device)


def cleanup_distributed():
    """Leave the process group, if this process joined one (call in a `finally`)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        if sys.exc_info()[0] is None:  # finished: no rank tears the group down while a peer uses it
            tdist.barrier()
        tdist.destroy_process_group()


def wrap_ddp(model, dist, sync_bn=False):
    """DistributedDataParallel around a model when running under torchrun; unchanged otherwise."""
    if not dist.enabled:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # No buffer sync in forward: D runs twice per step (real, fake) and a broadcast between the two
    # would overwrite BN statistics in place; each rank keeps its own unless --sync-bn. The weights
    # stay identical: DDP averages gradients and every rank starts from rank 0's parameters.
    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else "broadcast_buffers"
    return DDP(model, device_ids=[dist.device] if dist.device.type == "cuda" else None,
               **{sync: False})


def unwrap(model):
    """The plain module inside DDP / torch.compile wrappers (state_dicts without prefixes)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def replica_divergence(model, dist):
    """Largest difference of any parameter between DDP processes (0.0 when they agree, as they
    must), saved in the final checkpoint: a user and the tests can check a multi-process run."""
    if not dist.enabled:
        return 0.0
    import torch.distributed as tdist

    flat = torch.cat([p.detach().float().flatten() for p in unwrap(model).parameters()])
    high, low = flat.clone(), flat.clone()
    tdist.all_reduce(high, op=tdist.ReduceOp.MAX)
    tdist.all_reduce(low, op=tdist.ReduceOp.MIN)
    return (high - low).max().item()


def uses_channels_last(device):
    """NHWC weights and batches on CUDA (cuDNN) and on the CPU (oneDNN): measured faster for every
    script on both (docs/performance.md); not on MPS."""
    return torch.device(device).type in ("cuda", "cpu")


def prepare_model(model, device):
    """Move to the device, channels_last where uses_channels_last says so."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if uses_channels_last(device) else model


def maybe_compile(fn, enabled):
    """torch.compile behind --compile (the first steps are slow while it compiles)."""
    return torch.compile(fn) if enabled else fn


def adam(params, lr, betas, device):
    """Adam with the fused CUDA kernel where available."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=(device.type == "cuda"))


# ---------------------------------------------------------------------------
# Run folder: one run per folder, checked output paths, config.json, log.csv
# ---------------------------------------------------------------------------
def default_run_dir(script):
    return os.path.join("runs", f"{script}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")


def claim_run_folder(out, resume=False):
    """Create the run folder, check it is writable and lock it for this process (after every other
    check): an flock on <out>/.lock refuses a second run on the folder and dies with a killed run.
    Returns the open lock file (keep it until the run ends)."""
    import fcntl

    try:
        if not os.path.exists(out):
            _NEW_RUN_FOLDERS.append(os.path.abspath(out))
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, ".lock"), "a+")
    except OSError as e:
        raise UserError(f"cannot write to the run folder {out!r}: {e.strerror or e}") from None
    problem = None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        problem = f"another run is using {out} right now: wait for it to end, or pass another --out"
    if problem is None and not os.access(out, os.W_OK):
        problem = f"cannot write to the run folder {out!r}: permission denied"
    if problem is None and not resume and os.path.exists(os.path.join(out, "last.pt")):
        problem = f"{out} holds a run (last.pt): --resume auto continues it; or pass another --out"
    if problem:
        lock.close()
        raise UserError(problem)
    return lock


def write_config(out, args, script, device, extra=None):
    """config.json of a new run (a resumed run keeps the one of its start)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # from the package metadata: importing torchvision costs seconds at every start
        torchvision_version = version("torchvision")
    except PackageNotFoundError:
        torchvision_version = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    config = {"script": script, "args": plain_args(args), "torch": torch.__version__,
              "torchvision": torchvision_version, "python": platform.python_version(),
              "device": str(device), "git_commit": commit,
              "started": datetime.datetime.now().isoformat(), **(extra or {})}
    if device.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(device)
    atomic_write_text(os.path.join(out, "config.json"), json.dumps(config, indent=2))


def plain_args(args):
    """argparse Namespace -> dict of plain values (safe for weights_only checkpoints and JSON)."""
    plain = (int, float, str, bool, type(None))
    out = {}
    for k, v in (args if isinstance(args, dict) else vars(args)).items():
        if k.startswith("_"):  # bookkeeping such as parse_args' _typed
            continue
        if isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, plain) else str(x) for x in v]
        else:
            out[k] = v if isinstance(v, plain) else str(v)
    return out


def require_tensorboard():
    """TensorBoard's SummaryWriter for --track (checked in setup, before anything is written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--track needs TensorBoard: pip install tensorboard") from None
    return SummaryWriter


class TrainLog:
    """log.csv, TensorBoard, the progress bar and the history kept in checkpoints, for whatever
    values train_step returns.

    add(values) every step: values are summed on the device and read once every --log-every steps
    (one host sync), then checked for NaN, watched by the health monitor, written as a log.csv row
    with images/s and training minutes, and shown on the progress bar. record(step, epoch, fid=...)
    logs scores (a new column widens the file's header). Every rank keeps the same numbers; the
    master writes. A resumed log drops its rows past the checkpoint, and rows torn by a crash."""

    def __init__(self, out, args, dist, total_steps, step=0, state=None, desc="train",
                 images_per_step=None):
        from tqdm import tqdm

        self.log_every, self.skip_nonfinite = args.log_every, args.skip_nonfinite
        self.images_per_step = (images_per_step or args.batch_size) * dist.world_size
        self.master, self.path = dist.is_master, os.path.join(out, "log.csv")
        state = state or {}
        self.history = state.get("history", {"step": [], "scores": {}})
        meter = state.get("meter", {"sums": {}, "count": 0})
        self.sums = {k: v.to(dist.device) for k, v in meter["sums"].items()}
        self.count = meter["count"]
        self.elapsed_before = state.get("elapsed_s", 0.0)  # seconds of this run's earlier processes
        self.started = self.interval_start = time.perf_counter()
        self.interval_steps = 0
        self.monitor = HealthMonitor(enabled=self.master)
        self.fields, self.tb, self.bar = ["step", "epoch"], None, None
        if not self.master:
            return
        if args.track:
            self.tb = require_tensorboard()(os.path.join(out, "tb"))
        rows = []
        if state and os.path.exists(self.path):
            rows, self.fields = self._read_rows(step)
        self._rewrite(rows)
        self.bar = tqdm(total=total_steps, initial=step, desc=desc, unit="step", dynamic_ncols=True,
                        disable=args.no_progress, file=sys.stderr, mininterval=1.0)

    def _read_rows(self, last_step):
        """The rows of log.csv up to last_step and its columns; NUL bytes (a power cut) and rows
        merged by a crash mid-write are dropped."""
        with open(self.path, "rb") as f:
            text = f.read().replace(b"\0", b"").decode("utf-8", "replace")
        reader, rows = csv.DictReader(io.StringIO(text)), []
        for row in reader:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                whole = None not in row and None not in row.values()
                if whole and int(row["step"]) <= last_step:
                    rows.append(row)
        return rows, list(reader.fieldnames or self.fields)

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
        means = torch.stack([self.sums[k] for k in keys]) / self.count
        means = dict(zip(keys, means.tolist()))  # the one host sync
        self.sums, self.count = {}, 0
        check_finite(means, step, self.skip_nonfinite)
        self.monitor.update(means, step)
        self.history["step"].append(step)
        for k, v in means.items():
            self.history.setdefault(k, []).append(v)
        seconds = max(time.perf_counter() - self.interval_start, 1e-9)
        images_per_s = self.interval_steps * self.images_per_step / seconds
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        self._write({"step": step, "epoch": epoch, **means, "images_per_s": images_per_s,
                     "minutes": self.minutes()})
        if self.bar is not None:
            shown = {k: f"{v:.3f}" for k, v in list(means.items())[:3]}
            self.bar.set_postfix(shown | {"img/s": f"{images_per_s:.0f}"}, refresh=False)

    def record(self, step, epoch, **scores):
        """Log scores (FID, accuracy, ...) of the generator at this step (in history["scores"])."""
        table = self.history.setdefault("scores", {})
        for k, v in {"step": step, "epoch": epoch, **scores}.items():
            table.setdefault(k, []).append(v)
        self._write({"step": step, "epoch": epoch, **scores, "minutes": self.minutes()})
        if self.bar is not None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
            self.bar.write(f"epoch {epoch}: {shown}", file=sys.stderr)

    def best(self, key, pick=min):
        """'best <key> V at epoch E (best.pt)' of the recorded scores; None if unscored."""
        scores = self.history.get("scores", {})
        if not scores.get(key):
            return None
        i = max(j for j, v in enumerate(scores[key]) if v == pick(scores[key]))  # ties: best.pt's
        return f"best {key} {scores[key][i]:.4g} at epoch {scores['epoch'][i]} (best.pt)"

    def _write(self, row):
        if not self.master:
            return
        if set(row) - set(self.fields):  # a new column: rewrite the file with the wider header
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields += [k for k in row if k not in self.fields]
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                                                     for k, v in row.items()})
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


def mean_pairwise_distance(images, labels=None):
    """Mean L2 distance between two images (of the same label, averaged over the labels, when labels
    are given): it falls towards 0 when a generator draws one picture whatever the noise."""
    flat = images.detach().float().flatten(1)
    groups = [flat] if labels is None else [flat[labels == c] for c in labels.unique()]
    spreads = [torch.cdist(g, g).sum() / (len(g) * (len(g) - 1)) for g in groups if len(g) > 1]
    return torch.stack(spreads).mean().item() if spreads else 0.0


class HealthMonitor:
    """Warns students, once each, in plain words, about the two classic GAN failures.

    1. The discriminator has won: D(G(z)) stays near 0 and the generator loss climbs for 5 log
       intervals in a row, so the generator's gradients vanish.
    2. Mode collapse: the fixed-noise samples are far more alike than real images are (within each
       class for a conditional model: a class drawn as one picture whatever the noise). Not before
       step 300, when an untrained generator's outputs all look alike anyway."""

    def __init__(self, enabled=True):
        self.enabled, self.d_won_count, self.warned, self.last_loss_g = enabled, 0, set(), None

    def update(self, means, step):
        """`means` has d_fake (D's mean output on fakes, a probability) and loss_g, if any."""
        if "d_fake" not in means or "loss_g" not in means:
            return
        climbing = self.last_loss_g is not None and means["loss_g"] >= self.last_loss_g
        losing = (means["d_fake"] < 0.05 and climbing) or means["d_fake"] < 0.01
        self.d_won_count = self.d_won_count + 1 if losing else 0
        self.last_loss_g = means["loss_g"]
        if self.d_won_count >= 5:
            self._warn("d_won", f"step {step}: the discriminator is winning (D(G(z)) = "
                                f"{means['d_fake']:.3f}, generator loss {means['loss_g']:.2f} and "
                                f"climbing): the generator gets almost no gradient. Try a lower "
                                f"discriminator learning rate, label smoothing, or fewer D steps.")

    def check_samples(self, fake, real, epoch, step, fake_labels=None, real_labels=None):
        """The spread of the fixed-noise samples against that of real images; returns the former."""
        real_spread = mean_pairwise_distance(real, real_labels)
        spread = mean_pairwise_distance(fake, fake_labels)
        if step >= 300 and spread < 0.2 * real_spread:
            where = " within each class" if fake_labels is not None else ""
            self._warn("collapse", f"epoch {epoch}: the fixed-noise samples look alike{where} "
                                   f"(mean pairwise distance {spread:.2f} vs {real_spread:.2f} for "
                                   f"real images): mode collapse. Try a lower learning rate, a "
                                   f"smaller embedding, or restart with another --seed.")
        return spread

    def _warn(self, key, message):
        if self.enabled and key not in self.warned:
            self.warned.add(key)
            print(f"\nwarning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------
def atomic_write_text(path, text):
    with _atomic(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def _atomic(path, mode):
    """Write to path.tmp, fsync, rename: a crash at any moment leaves the old file or the new."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------------
# Interruption and divergence
# ---------------------------------------------------------------------------
class GracefulExit:
    """SIGINT/SIGTERM become a flag the training loop checks after each step, so it saves last.pt
    first. A second Ctrl-C exits at once."""

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name} received: saving last.pt, then stopping (again to "
              f"quit without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def __bool__(self):
        return self.signal is not None


def check_finite(losses, step, skip):
    """True when all losses are finite. Otherwise stop the run (UserError), or with skip say so."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if not bad:
        return True
    names = ", ".join(f"{k}={v}" for k, v in bad.items())
    if skip:
        warnings.warn(f"step {step}: non-finite loss ({names}); step skipped")
        return False
    raise UserError(f"training diverged at step {step}: non-finite loss ({names}); last.pt holds "
                    f"the last good checkpoint (try a lower --lr, or --skip-nonfinite)")


def optimizer_step(optimizer, loss, skip_nonfinite):
    """optimizer.step(), except that with --skip-nonfinite a step whose loss is NaN/inf is dropped
    (only that option pays for the host sync of checking the loss here)."""
    if skip_nonfinite and not torch.isfinite(loss.detach()).all():
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def stop_requested(signal_received, time_is_up, dist, step, every):
    """Why the run stops now: "signal" (Ctrl-C, SIGTERM), "time" (--max-minutes spent) or None.
    Under DDP it is decided every `every` steps with one tiny all-reduce, so that all processes stop
    at the same step for the same reason (each has its own clock) and none waits for the others."""
    code = 2 if signal_received else 1 if time_is_up else 0
    if dist.enabled:
        if step % every:
            return None
        import torch.distributed as tdist

        t = torch.tensor([float(code)], device=dist.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        code = int(t.item())
    return {0: None, 1: "time", 2: "signal"}[code]
