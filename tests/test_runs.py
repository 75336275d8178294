"""A run's life across the seven scripts: exact resume after any interruption, budgets kept on
resume, the order of an epoch's writes, resuming from an earlier checkpoint, outputs that never
replace a model, the closing line and the precision chosen once (issues 9, 29 and 30). One
parametrised test per promise.

Promise -> test:
- SIGINT/SIGTERM save last.pt (its log meter too), a crash loses nothing, and the resumed run is bit
  for bit the straight one: test_interrupted_anywhere_the_run_resumes_exactly
- a finished run resumed without its budget trains nothing and changes no byte; a larger --epochs
  continues it (row 1): test_a_finished_run_trains_nothing_and_a_larger_epochs_continues_it_exactly
- --max-minutes and --max-steps are kept on resume unless typed again (row 1):
  test_a_resumed_run_keeps_its_time_and_step_budget
- a kill between last.pt and its copies is mended by --resume auto (row 2):
  test_a_kill_between_last_pt_and_its_copies_is_mended_on_resume
- --grid-out naming a checkpoint is refused, the checkpoint byte-identical (row 3):
  test_grid_out_never_replaces_a_checkpoint
- --png-dir must be new or empty (row 10): test_png_dir_must_be_new_or_empty
- --resume <run>/epoch_001.pt into a new folder or its own (row 11):
  test_resume_from_an_earlier_checkpoint_into_a_new_folder_or_its_own
- edited settings in a checkpoint: one `error:` line from --generate (row 8):
  test_generate_from_a_checkpoint_with_edited_settings_is_one_error_line
- the closing line with --no-progress (finished, interrupted, time budget spent): the first three
  tests
- --precision auto: bf16 where native, printed, stored, kept on resume:
  test_precision_is_chosen_once_printed_stored_and_kept
"""

import glob
import importlib
import json
import os
import re
import signal

import pytest
import torch

from conftest import (COMMON, GENERATE, SCRIPTS, assert_one_error_line, assert_same_run, last,
                      logged_steps, module, read_log, run_dir, run_in_process, snapshot, tiny,
                      train)

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
# which run of the script (its folder), not one of its settings
IDENTITY = {"dcgan_letters": ["--chars", "A"]}


class SimulatedCrash(Exception):
    """Stands for SIGKILL or a power cut in the in-process tests: the run ends at once, nothing more
    is saved."""


def after_steps(monkeypatch, script, steps, action):
    """Call `action()` right after this process's `steps`-th training step from now on (once)."""
    mod = module(script)
    real_step = getattr(mod.train_step, "real_step", mod.train_step)
    calls = []

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == steps and action == "crash":  # during the step: its update is lost
            raise SimulatedCrash
        result = real_step(*args, **kwargs)
        if len(calls) == steps and action != "crash":
            os.kill(os.getpid(), action)  # delivered now, as from the keyboard or a scheduler
        return result
    train_step.real_step = real_step
    monkeypatch.setattr(mod, "train_step", train_step)


def closing_line(stdout):
    """(how, step, epoch, folder, the rest) of the run's closing line."""
    lines = [line for line in stdout.splitlines()
             if re.match(r"^(finished|interrupted|time budget spent) at", line)]
    assert len(lines) == 1, f"no closing line (or several) in:\n{stdout}"
    how, step, epoch, folder, rest = re.match(r"^(.+?) at step (\d+) \(epoch (\d+)\): ([^;]+)(.*)$",
                                              lines[0]).groups()
    return how, int(step), int(epoch), os.path.normpath(folder), rest


# ---------------------------------------------------------------------------
# Exact resume (issue 9)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_interrupted_anywhere_the_run_resumes_exactly(script, shared_runs, tmp_path, fast_images,
                                                      monkeypatch, capsys):
    """One run stopped three ways, resumed each time, ends as the straight 8-step run, bit for bit:
    every tensor of last.pt (weights, BN buffers, EMA, optimizers, schedulers, RNG states, log meter
    and history, fixed noise) and every row of log.csv (--log-every 3, 4 steps an epoch, CPU,
    --deterministic).
    1. SIGINT after step 2: mid-epoch, with steps 1-2 still in the log's meter, which last.pt must
       carry;
    2. SIGTERM after step 4, the last batch of epoch 1: the epoch's end (log row, schedule) happens
       once;
    3. a crash (SIGKILL's stand-in) during step 8: last.pt is step 4's, log.csv has a row for step 6
       past it, which the resume drops before redoing steps 5-8."""
    reference = shared_runs.reference(script)  # made before any patch
    folder = run_dir(script, tmp_path)
    handlers = {s: signal.getsignal(s) for s in SIGNALS.values()}

    after_steps(monkeypatch, script, 2, signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        train(script, tmp_path, "--epochs", 2)
    out, err = capsys.readouterr()
    assert stopped.value.code == 130 and "SIGINT received: saving last.pt" in err, err
    # with --no-progress
    assert closing_line(out)[:4] == ("interrupted", 2, 1, os.path.normpath(folder))
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers are given back
    checkpoint = last(folder)
    assert checkpoint["step"] == 2 and checkpoint["meter"]["count"] == 2 and read_log(folder) == []

    after_steps(monkeypatch, script, 2, signal.SIGTERM)
    with pytest.raises(SystemExit):
        train(script, tmp_path, "--resume", "auto")  # the budget (--epochs 2) comes from last.pt
    assert "SIGTERM received: saving last.pt" in capsys.readouterr().err
    assert last(folder)["step"] == 4 and logged_steps(folder) == [3, 4]

    after_steps(monkeypatch, script, 4, "crash")
    with pytest.raises(SimulatedCrash):
        train(script, tmp_path, "--resume", "auto")
    assert last(folder)["step"] == 4 and logged_steps(folder) == [3, 4, 6]

    monkeypatch.setattr(module(script), "train_step", module(script).train_step.real_step)
    train(script, tmp_path, "--resume", "auto")
    assert_same_run(reference, folder)


# ---------------------------------------------------------------------------
# Budgets (row 1)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_finished_run_trains_nothing_and_a_larger_epochs_continues_it_exactly(script, shared_runs,
                                                                                tmp_path):
    """A run of --epochs 1, resumed with the same command less its budget: it says it is finished,
    trains nothing and every file of the run stays byte for byte (it used to train on toward the
    default 40 epochs). Resumed with --epochs 2 and no model or data flag at all, it takes every
    setting from last.pt and ends exactly as the straight 2-epoch run; config.json stays the one of
    its start."""
    made = shared_runs.output("finished", script)
    folder = shared_runs.copy(shared_runs.finished(script), run_dir(script, tmp_path))
    assert (closing_line(made.stdout)[:4]
            == ("finished", 4, 1, os.path.normpath(shared_runs.finished(script))))
    assert "last grid" in closing_line(made.stdout)[4]
    before = snapshot(folder)
    again = run_in_process(script, *tiny(script, tmp_path, "--resume", "auto"))  # no budget
    assert again.returncode == 0 and "this run is finished (step 4)" in again.stderr, again.stderr
    assert snapshot(folder) == before

    started = last(folder)["args"]
    changeable = set(module(script).CHANGEABLE_ON_RESUME) | {"out", "resume"}
    proc = run_in_process(script, *IDENTITY.get(script, []), *COMMON, "--out", tmp_path,
                          "--resume", "auto", "--epochs", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert closing_line(proc.stdout)[:3] == ("finished", 8, 2)
    assert_same_run(shared_runs.reference(script), folder)
    kept = {k: v for k, v in last(folder)["args"].items() if k not in changeable}
    assert kept == {k: v for k, v in started.items() if k not in changeable}
    assert snapshot(folder)["config.json"] == before["config.json"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_resumed_run_keeps_its_time_and_step_budget(script, tmp_path, fast_images):
    """--max-minutes spent after one step: the run ends (closing line: time budget spent). Resumed
    without a budget it is finished and nothing changes; with --max-minutes 60 typed it trains up to
    its kept --max-steps 3; with --max-steps 10 typed, up to its kept --epochs 1 (step 4)."""
    folder = run_dir(script, tmp_path)
    proc = run_in_process(script, *tiny(script, tmp_path, "--epochs", 1, "--max-steps", 3,
                                        "--max-minutes", "1e-9"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert closing_line(proc.stdout)[:4] == ("time budget spent", 1, 1, os.path.normpath(folder))
    assert last(folder)["step"] == 1 and last(folder)["finished"]
    before = snapshot(folder)
    proc = run_in_process(script, *tiny(script, tmp_path, "--resume", "auto"))
    assert proc.returncode == 0 and "this run is finished (step 1)" in proc.stderr, proc.stderr
    assert snapshot(folder) == before
    proc = run_in_process(script, *tiny(script, tmp_path, "--resume", "auto", "--max-minutes", 60))
    assert proc.returncode == 0 and closing_line(proc.stdout)[:2] == ("finished", 3), (
        proc.stderr[-3000:])
    proc = run_in_process(script, *tiny(script, tmp_path, "--resume", "auto", "--max-steps", 10))
    assert proc.returncode == 0 and closing_line(proc.stdout)[:2] == ("finished", 4), (
        proc.stderr[-3000:])
    assert last(folder)["args"]["max_minutes"] == 60 and last(folder)["args"]["epochs"] == 1


# ---------------------------------------------------------------------------
# The order of an epoch's writes (row 2)
# ---------------------------------------------------------------------------
BEST = {"dcgan_cifar": ("fid", min), "acgan_cifar": ("fid", min), "wgan_gp_cifar": ("fid", min),
        "cdcgan_anime": ("both_acc", max), "cgan_objects": ("validation", max)}


def scripted_scores(monkeypatch, script, values):
    """The script's in-run scorer replaced by one that returns `values` in turn (best at epochs 2
    and 3)."""
    mod, values = module(script), iter(values)
    if script in ("dcgan_cifar", "acgan_cifar", "wgan_gp_cifar"):
        monkeypatch.setattr(mod, "prepare_fid",
                            lambda *a, **k: lambda generator: {"fid": next(values)})
    elif script == "cdcgan_anime":
        def accuracy(generator):
            value = next(values)
            return {"hair_acc": value, "eye_acc": value, "both_acc": value}
        monkeypatch.setattr(mod, "prepare_scores", lambda *a, **k: accuracy)
    elif script == "cgan_objects":
        def score(generator):
            value = next(values)
            return {name: value
                    for name in ("test", "new_test", "test_mean", "new_test_mean", "validation")}
        score.ceiling = None
        monkeypatch.setattr(mod, "prepare_scores", lambda *a, **k: score)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_kill_between_last_pt_and_its_copies_is_mended_on_resume(script, tmp_path, fast_images,
                                                                   monkeypatch):
    """last.pt is written first, then its byte copies (epoch_NNN.pt, best.pt). A kill between the
    two (here: the first copy raises) at the end of epoch 2 of 3, and again at the end of the run:
    each time --resume auto writes the missing copies, so that best.pt, every epoch_NNN.pt, last.pt
    and log.csv agree, also when the run had already finished."""
    checkpoints = importlib.import_module("checkpoints")
    scored = script in BEST
    if scored:
        key, pick = BEST[script]
        scripted_scores(monkeypatch, script, [30.0, 10.0, 5.0] if pick is min else [0.1, 0.5, 0.9])
    real_copy = checkpoints.copy_file

    def copy_killed_at(name):
        def copy_file(source, target):
            if os.path.basename(target) == name and not killed:
                killed.append(name)
                raise SimulatedCrash
            return real_copy(source, target)
        return copy_file

    folder = run_dir(script, tmp_path)
    argv = ["--epochs", 3, *(["--eval-every", 1] if scored else [])]
    for epoch in (2, 3):
        killed = []
        monkeypatch.setattr(checkpoints, "copy_file", copy_killed_at(f"epoch_{epoch:03d}.pt"))
        with pytest.raises(SimulatedCrash):
            train(script, tmp_path, *argv, *(["--resume", "auto"] if epoch == 3 else []))
        assert (last(folder)["epoch"] == epoch
                and not os.path.exists(os.path.join(folder, f"epoch_{epoch:03d}.pt")))
    monkeypatch.setattr(checkpoints, "copy_file", real_copy)
    train(script, tmp_path, "--resume", "auto")  # finished: it trains nothing, but mends

    final = last(folder)
    assert final["step"] == 12 and final["finished"] and logged_steps(folder)[-1] == 12
    names = {os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.pt"))}
    assert names == ({"last.pt", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt"}
                     | ({"best.pt"} if scored else set()))
    for epoch in (1, 2, 3):
        copy = last(folder, f"epoch_{epoch:03d}.pt")
        assert (copy["epoch"], copy["step"]) == (epoch, 4 * epoch)
    with (open(os.path.join(folder, "last.pt"), "rb") as a,
          open(os.path.join(folder, "epoch_003.pt"), "rb") as b):
        assert a.read() == b.read()
    if scored:
        logged = {int(row["epoch"]): float(row[key]) for row in read_log(folder) if row.get(key)}
        assert sorted(logged) == [1, 2, 3]
        best_epoch = pick(logged, key=logged.get)
        assert best_epoch == 3 and last(folder, "best.pt")["epoch"] == best_epoch


# ---------------------------------------------------------------------------
# Resuming from an earlier checkpoint (row 11)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_from_an_earlier_checkpoint_into_a_new_folder_or_its_own(script, shared_runs,
                                                                        tmp_path, fast_images):
    """--resume <run>/epoch_001.pt --out NEW: NEW gets the run's config.json, real.png and its
    log.csv up to that step (from step 1 on, not mid-run), and ends as the run did. Into the run's
    own folder: the files of the abandoned later steps (last.pt, epoch_002.pt,
    samples/epoch_002.png) move to abandoned-<time>/ unchanged."""
    reference = shared_runs.reference(script)
    new = run_dir(script, tmp_path / "new")
    proc = run_in_process(script, *tiny(script, tmp_path / "new",
                                        "--resume", os.path.join(reference, "epoch_001.pt")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "real.png"):
        with (open(os.path.join(reference, name), "rb") as a,
              open(os.path.join(new, name), "rb") as b):
            assert a.read() == b.read(), name
    assert logged_steps(new)[0] == 3  # the first row of the run (--log-every 3), not step 6
    assert_same_run(reference, new)

    own = shared_runs.copy(reference, run_dir(script, tmp_path / "own"))
    later = {name: open(os.path.join(own, name), "rb").read()
             for name in ("last.pt", "epoch_002.pt", os.path.join("samples", "epoch_002.png"))}
    proc = run_in_process(script, *tiny(script, tmp_path / "own",
                                        "--resume", os.path.join(own, "epoch_001.pt")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [aside] = glob.glob(os.path.join(own, "abandoned-*"))
    assert snapshot(aside) == {os.path.basename(name): data for name, data in later.items()}
    assert "moved to" in proc.stderr
    assert_same_run(reference, own)


# ---------------------------------------------------------------------------
# --generate: outputs that never replace a model (rows 3 and 10), crafted settings (row 8)
# ---------------------------------------------------------------------------
def generate(script, checkpoint, *extra):
    return run_in_process(script, *GENERATE[script], "--checkpoint", checkpoint, "--device", "cpu",
                          *extra)


@pytest.mark.parametrize("script", SCRIPTS)
def test_grid_out_never_replaces_a_checkpoint(script, shared_runs, tmp_path):
    """--grid-out naming a checkpoint (epoch_001.pt, or a checkpoint saved as .png) is refused in
    one line before anything is drawn, and the file stays byte for byte."""
    source = os.path.join(shared_runs.finished(script), "epoch_001.pt")
    with open(source, "rb") as f:
        data = f.read()
    for name in ("epoch_001.pt", "grid.png"):
        victim = tmp_path / name
        victim.write_bytes(data)
        proc = generate(script, source, "--grid-out", victim, "--interpolate")
        assert_one_error_line(proc, "--grid-out")
        assert victim.read_bytes() == data
    # no sheet, no grid beside them
    assert sorted(os.listdir(tmp_path)) == ["epoch_001.pt", "grid.png"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_png_dir_must_be_new_or_empty(script, shared_runs, tmp_path):
    """--generate --png-dir into a folder that holds other files (another model's samples) is
    refused: they would be scored together by evaluate.py folder:PATH. An empty folder is fine."""
    checkpoint = os.path.join(shared_runs.finished(script), "last.pt")
    stale = tmp_path / "pngs" / "000000.png"
    stale.parent.mkdir()
    stale.write_bytes(b"\x89PNG another model's sample")
    proc = generate(script, checkpoint, "--png-dir", stale.parent,
                    "--grid-out", tmp_path / "grid.png")
    assert_one_error_line(proc, "--png-dir")
    assert os.listdir(stale.parent) == ["000000.png"] and not (tmp_path / "grid.png").exists()
    (tmp_path / "empty").mkdir()
    proc = generate(script, checkpoint, "--png-dir", tmp_path / "empty",
                    "--grid-out", tmp_path / "grid.png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(tmp_path / "empty") and (tmp_path / "grid.png").exists()


EDITED = [(script, {"nz": -1}) for script in SCRIPTS] + [
    ("acgan_cifar", {"class_names": ["airplane", "automobile"]}),
    ("dcgan_cifar", {"nz": None}), ("dcgan_cifar", {"image_size": 48}),
]


@pytest.mark.parametrize("script, edit", EDITED, ids=[f"{s}-{e}" for s, e in EDITED])
def test_generate_from_a_checkpoint_with_edited_settings_is_one_error_line(script, edit,
                                                                           shared_runs, tmp_path):
    """Settings edited by hand (nz = -1; acgan's class_names shorter than num_classes; a setting
    removed; an image size the generator has no layers for): one `error:` line naming the file, no
    traceback, no grid."""
    checkpoint = last(shared_runs.finished(script))
    for key, value in edit.items():
        if value is None:
            del checkpoint["args"][key]
        else:
            checkpoint["args"][key] = value
    torch.save(checkpoint, tmp_path / "edited.pt")
    proc = generate(script, tmp_path / "edited.pt", "--grid-out", tmp_path / "grid.png")
    assert_one_error_line(proc, "edited.pt")
    assert not (tmp_path / "grid.png").exists()


# ---------------------------------------------------------------------------
# Precision (issue 29)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script, native", [(s, i % 2 == 0) for i, s in enumerate(SCRIPTS)])
def test_precision_is_chosen_once_printed_stored_and_kept(script, native, tmp_path, fast_images,
                                                          monkeypatch):
    """--precision auto (the default) is bf16 on a CPU with native bf16 and fp32 on one without; the
    choice is printed at the start and stored in config.json and last.pt. Resumed on a machine that
    would choose otherwise, the run keeps it; typing the other precision is refused in one line."""
    common = importlib.import_module("common")
    chosen, other = ("bf16", "fp32") if native else ("fp32", "bf16")
    folder = run_dir(script, tmp_path)
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
    proc = run_in_process(script, *tiny(script, tmp_path, "--max-steps", 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f", cpu, {chosen}, step 0 of 1" in proc.stdout, proc.stdout
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["args"]["precision"] == chosen
    assert last(folder)["args"]["precision"] == chosen

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: not native)
    proc = run_in_process(script, *tiny(script, tmp_path, "--max-steps", 2, "--resume", "auto"))
    assert proc.returncode == 0 and f", cpu, {chosen}, step 1 of 2" in proc.stdout, (
        proc.stdout + proc.stderr)
    assert last(folder)["args"]["precision"] == chosen and last(folder)["step"] == 2
    proc = run_in_process(script, *tiny(script, tmp_path, "--max-steps", 3, "--resume", "auto",
                                        "--precision", other))
    assert_one_error_line(proc, f"--precision {other} differs from {chosen}")
    assert last(folder)["step"] == 2
