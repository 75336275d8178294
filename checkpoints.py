"""Checkpoints of the gan-scripts: atomic saves, safe loading (weights_only, one-line errors), exact
resume (settings, weights, optimizers, random states) and a run folder that agrees with the
checkpoint it resumes from. Checkpoints are plain dicts of tensors and plain values."""

import contextlib
import datetime
import filecmp
import glob
import os
import random
import re
import shutil
import sys
import zipfile

import numpy as np
import torch

from common import UserError, _atomic, claim_run_folder, first_line, unwrap
from image_io import check_output_path

CHECKPOINT_FORMAT = 1


def save_checkpoint(path, checkpoint):
    """torch.save, atomically. A full disk is one clear error and leaves no .tmp behind."""
    check_output_path(path, "checkpoint", "checkpoint")
    try:
        with _atomic(path, "wb") as f:
            torch.save(checkpoint, f)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        raise UserError(f"cannot write {path} ({first_line(e)}; {free / 2**20:.1f} MiB free on its "
                        f"disk): the previous {os.path.basename(path)} is intact; free space, then "
                        f"--resume auto") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def describe_file(path):
    """What a file that is not a checkpoint looks like, for error messages."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "is empty"
    if head.startswith(b"PK"):
        return "is truncated or damaged (an interrupted copy or save?)"
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8", "a JPEG image"),
                        (b"GIF8", "a GIF image"),
                        (b"{", "a JSON or text file"), (b"[", "a JSON or text file")):
        if head.startswith(magic):
            return f"is {kind}, not a checkpoint"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "is a text file, not a checkpoint"
    return "is not a checkpoint (not a file torch.save wrote)"


TRAINING_KEYS = ("args", "step", "generator", "optimizers", "rng", "history")


def load_checkpoint(path, script=None, map_location="cpu", required=("args", "generator")):
    """Load a checkpoint with weights_only=True (no code runs); refuse foreign, corrupt, unsafe or
    incomplete files with one line that says which. `required`: the entries the caller needs."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder: pass a checkpoint file (its last.pt, best.pt, ...)")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04",
                                                     b"\x80\x05"):
        raise UserError(f"cannot load checkpoint {path}: it {describe_file(path)}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure: not a checkpoint we can trust
        reason = f"it is damaged ({first_line(e)})"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds Python objects that could run code (refused, nothing was run)"
        raise UserError(f"cannot load checkpoint {path}: {reason}") from None
    ours = isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT
    if not ours or "script" not in checkpoint:
        raise UserError(f"{path} is not a gan-scripts checkpoint (format {CHECKPOINT_FORMAT})")
    exported = checkpoint.get("exported")
    if isinstance(exported, dict) and "optimizers" in required:
        raise UserError(f"{path} is a generator-only export (of {exported.get('from')}): --resume "
                        "cannot continue from it; start a new run")
    if script is not None and checkpoint["script"] != script:
        raise UserError(f"{path} was written by {checkpoint['script']}.py, not {script}.py")
    kinds = {"args": dict, "generator": dict, "optimizers": dict, "rng": dict, "history": dict,
             "step": int}
    for key in required:
        if key not in checkpoint:
            raise UserError(f"{path} is incomplete: it has no {key!r}")
        if key in kinds and not isinstance(checkpoint[key], kinds[key]):
            raise UserError(f"{path} is damaged: its {key!r} is a "
                            f"{type(checkpoint[key]).__name__}, not a "
                            f"{kinds[key].__name__}")
    if "step" in required and checkpoint["step"] < 0:
        raise UserError(f"{path} is damaged: negative step {checkpoint['step']}")
    return checkpoint


# what a generator-only export keeps of a training checkpoint, besides its settings and weights
EXPORTED_KEYS = ("format", "script", "class_names", "char", "step", "epoch", "elapsed_s")


def export_generator(checkpoint, source, settings=None):
    """A training checkpoint's averaged generator (the trained one without --ema) alone, in half
    precision, with the settings --generate and evaluate.py rebuild it from, changed by `settings`
    (e.g. the data a user's copy reads): a few MB to ship. No optimizer, discriminator or random
    states, so --resume refuses it."""
    weights = "generator_ema" if "generator_ema" in checkpoint else "generator"
    state = {key: value.half() if value.is_floating_point() else value
             for key, value in checkpoint[weights].items()}
    earlier = checkpoint.get("exported")  # an export exported again keeps what it says
    earlier = earlier if isinstance(earlier, dict) else {}
    trained = checkpoint["args"]
    args = dict(trained, out=None, resume=None, **(settings or {}))
    export = {key: checkpoint[key] for key in EXPORTED_KEYS if key in checkpoint}
    export.update(args=args, generator=state,
                  exported={"from": source, "weights": earlier.get("weights", weights),
                            "data": earlier.get("data", trained.get("data")),
                            "data_dir": earlier.get("data_dir", trained.get("data_dir"))})
    return export


def find_resume_checkpoint(resume, out, script, map_location="cpu"):
    """--resume auto -> <out>/last.pt when there is one (else None: a new run); --resume PATH ->
    PATH. The checkpoint is loaded and checked here, before anything is written."""
    if resume is None:
        return None, None
    path = os.path.join(out, "last.pt") if resume == "auto" else resume
    if resume == "auto" and not os.path.exists(path):
        return None, None
    return load_checkpoint(path, script, map_location, required=TRAINING_KEYS), path


def settings_from_checkpoint(args, checkpoint, path, changeable):
    """A resumed run keeps every setting it started with (model, data, losses, budget, precision):
    those not typed come from the checkpoint. A typed one in `changeable` (the script's list)
    replaces it; any other typed one that differs is refused with one line. --out and --resume say
    where the run is."""
    saved, typed = checkpoint["args"], set(getattr(args, "_typed", ()))
    for key, value in vars(args).items():
        if key in ("out", "resume") or key not in saved or key.startswith("_"):
            continue
        if key in typed and key in changeable:
            continue
        if key in typed and (list(value) if isinstance(value, tuple) else value) != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {value} differs from {saved[key]} in {path}: a resumed run "
                            f"keeps its settings (start a new run with another --out to change it)")
        setattr(args, key, saved[key])
    return args


def load_weights(module, state, path):
    """module.load_state_dict(state), with a mismatch (other --ngf, --nz, ...) as one clear line."""
    try:
        unwrap(module).load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise UserError(f"{path} does not fit this model ({type(e).__name__}: "
                        f"{first_line(e)[:200]})") from None
    return module


def rebuild(build_generator, settings, path):
    """build_generator(settings) for a checkpoint's settings; bad ones are one line, not a trace."""
    try:
        return build_generator(settings)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise UserError(f"{path}: its settings cannot rebuild the generator ({type(e).__name__}: "
                        f"{first_line(e)})") from None


def restore_training_state(checkpoint, path, modules, optimizers, schedulers=None):
    """Load weights, optimizers, schedulers and random states; a mismatch is one line."""
    try:
        for name, module in modules.items():
            unwrap(module).load_state_dict(checkpoint[name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        for name, scheduler in (schedulers or {}).items():
            scheduler.load_state_dict(checkpoint["schedulers"][name])
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise UserError(f"{path} does not fit this model and run ({type(e).__name__}: "
                        f"{first_line(e)[:200]}): "
                        f"resume with the script and settings that wrote it") from None


def rng_state():
    """All random states as tensors and plain values, so weights_only=True loading works."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64),
                       "gauss": gauss},
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"].cpu())
    n, p = state["numpy"], state["python"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def save_run_checkpoint(out, checkpoint, copies=()):
    """last.pt first, atomically: the run's commit point. Then its byte copies `copies`
    (epoch_NNN.pt, best.pt), listed in it, so that a kill between the two is mended on resume
    (adopt_checkpoint)."""
    checkpoint["copies"] = list(copies)
    last = save_checkpoint(os.path.join(out, "last.pt"), checkpoint)
    for name in copies:
        copy_file(last, os.path.join(out, name))


def copy_file(source, target):
    """Atomic byte copy."""
    with _atomic(target, "wb") as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)
    return target


def adopt_checkpoint(out, checkpoint, resume_path):
    """Make the run folder agree with the checkpoint a run resumes from (after every check has
    passed): - copies that last.pt lists but a kill prevented (epoch_NNN.pt, best.pt) are written
    now; - resumed from an older checkpoint of the same folder: the checkpoints and sample grids of
    the
      abandoned later steps move to <out>/abandoned-<time>/ (evaluate.py would score them as the
      run's);
    - resumed into a new folder: config.json, real.png and log.csv come from the checkpoint's
    folder."""
    source_folder, step = os.path.dirname(os.path.abspath(resume_path)), checkpoint["step"]
    if source_folder != os.path.abspath(out):
        for name in ("config.json", "real.png", "log.csv"):
            if os.path.isfile(os.path.join(source_folder,
                                           name)) and not os.path.exists(os.path.join(out, name)):
                copy_file(os.path.join(source_folder, name), os.path.join(out, name))
    later = []
    for path in glob.glob(os.path.join(glob.escape(out), "*.pt")):
        if not os.path.samefile(path, resume_path):
            with contextlib.suppress(UserError):
                if load_checkpoint(path, required=("step",))["step"] > step:
                    later.append(path)
    later += [path for path in glob.glob(os.path.join(glob.escape(out), "samples", "epoch_*.png"))
              if int(re.findall(r"\d+", os.path.basename(path))[0]) > checkpoint.get("epoch", 0)]
    if later:
        aside = os.path.join(out, f"abandoned-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(aside, exist_ok=True)
        for path in later:
            os.replace(path, os.path.join(aside, os.path.basename(path)))
        print(f"{len(later)} files of steps after {step} moved to {aside}", file=sys.stderr)
    last = os.path.join(out, "last.pt")
    if os.path.isfile(last) and os.path.samefile(resume_path, last):
        _write_missing_copies(out, checkpoint)


def _missing_copies(out, checkpoint):
    """The copies of <out>/last.pt that it lists but a kill prevented (or that differ from it)."""
    last = os.path.join(out, "last.pt")
    return [name for name in checkpoint.get("copies", [])
            if not os.path.isfile(os.path.join(out, name))
            or not filecmp.cmp(last, os.path.join(out, name), shallow=False)]


def _write_missing_copies(out, checkpoint):
    for name in _missing_copies(out, checkpoint):
        copy_file(os.path.join(out, "last.pt"), os.path.join(out, name))


def say_finished(path, step, master=True):
    """A resumed run with nothing left to do says so (and how to extend it) and trains nothing. The
    copies its last.pt lists are mended first: a run killed after its final last.pt lacks them."""
    if not master:
        return
    out = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) == "last.pt" and _missing_copies(out, load_checkpoint(path)):
        with contextlib.suppress(UserError):  # another process holds the folder: leave it alone
            lock = claim_run_folder(out, resume=True)
            try:
                _write_missing_copies(out, load_checkpoint(path))
            finally:
                lock.close()
    print(f"{path}: this run is finished (step {step}); to train further, resume with a larger "
          f"--epochs, --max-steps or --max-minutes", file=sys.stderr)


def say_how_it_ended(how, out, step, epoch, grid=None, best=None):
    """The run's closing line (also with --no-progress): how it ended, where, what to look at."""
    parts = [f"{how} at step {step} (epoch {epoch}): {out}"]
    parts += [f"last grid {grid}"] if grid else []
    parts += [best] if best else []
    print("; ".join(parts), flush=True)
