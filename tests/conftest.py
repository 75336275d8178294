"""Shared test helpers: the seven scripts' tiny settings, in-process and subprocess runs, and tiny
runs made once per test session and shared by the tests that only read them (or copy them before
changing anything).

Most tests call a script's main() in this process, through the same common.run_main as
`python script.py` (one torch import for the whole suite). Only what needs a real process starts
one: a signal from outside, SIGKILL, torchrun, a copied script next to its own helpers.
"""

import contextlib
import csv
import importlib
import io
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
sys.path.insert(0, REPO)

SCRIPTS = ["dcgan_letters", "cdcgan_ab", "dcgan_cifar", "acgan_cifar", "wgan_gp_cifar",
           "cdcgan_anime", "cgan_objects"]
NO_FILE = os.path.join(REPO, "no-such-file.pt")
CIFAR = ["--data", "synthetic", "--n-per-class", "4", "--image-size", "32", "--ngf", "8",
         "--ndf", "8"]
# Tiny data and networks, 4 steps per epoch for every script: a stop at step 2 or 3 is mid-epoch,
# step 4 is the last batch of epoch 1.
TINY = {
    "dcgan_letters": ["--chars", "A", "--n-per-class", "32", "--ngf", "8", "--ndf", "8",
                      "--batch-size", "8"],
    "cdcgan_ab": ["--n-per-class", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8"],
    # EMA on (the default): its weights must resume too
    "dcgan_cifar": [*CIFAR, "--batch-size", "10"],
    "acgan_cifar": [*CIFAR, "--batch-size", "10", "--grid-columns", "2"],
    "wgan_gp_cifar": [*CIFAR, "--batch-size", "5", "--n-critic", "2"],
    "cdcgan_anime": ["--n-images", "32", "--image-size", "32", "--ngf", "8", "--ndf", "8",
                     "--batch-size", "8", "--classifier", NO_FILE],
    "cgan_objects": ["--n-images", "32", "--image-size", "32", "--ngf", "8", "--ndf", "8",
                     "--batch-size", "8", "--eval-every", "100",
                     "--step-lr", "1"],  # a scheduler that changes the rate every epoch
}
# Not a budget: a resumed run keeps its budget (--epochs, --max-steps, --max-minutes) unless one
# is typed.
COMMON = ["--log-every", "3", "--no-progress", "--device", "cpu", "--deterministic",
          "--sample-every", "100", "--save-every", "1"]
RUN_SUBDIR = {"dcgan_letters": "A"}  # dcgan_letters keeps one run folder per character
GENERATE = {"dcgan_letters": ["--generate", "4"], "cdcgan_ab": ["--generate", "2"],
            "dcgan_cifar": ["--generate", "4"], "acgan_cifar": ["--generate", "4"],
            "wgan_gp_cifar": ["--generate", "4"], "cdcgan_anime": ["--generate", "1"],
            "cgan_objects": ["--generate", "2", "--objects", "red cube"]}
# A run that ends by its budget is scored then (cgan_objects, when it has a classifier): a run
# stopped at step K and resumed holds one score more than the straight run. Only evaluation
# records; the training state must match.
END_OF_RUN_SCORES = {"cgan_objects": ("scores",)}
TIMING_COLUMNS = {"images_per_s", "minutes"}


# ---------------------------------------------------------------------------
# Running scripts
# ---------------------------------------------------------------------------
def module(script):
    return importlib.import_module(script)


def run_dir(script, out):
    """The folder that holds last.pt of a run with --out OUT."""
    return os.path.join(str(out), RUN_SUBDIR.get(script, ""))


def tiny(script, out, *extra):
    """The tiny command line of `script` (no budget: pass --epochs or --max-steps in `extra`)."""
    return [*TINY[script], *COMMON, "--out", str(out), *map(str, extra)]


def train(script, out, *extra):
    """`python <script>.py <tiny flags> --out OUT extra...` in this process (exceptions propagate);
    returns the folder holding last.pt."""
    module(script).main(tiny(script, out, *extra))
    return run_dir(script, out)


def run_in_process(script, *argv):
    """`python <script>.py argv` in this process, through common.run_main: a CompletedProcess as a
    subprocess would give it (exit status, stdout, stderr). The signal handlers are given back
    afterwards."""
    import common

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stdout, stderr, status = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            common.run_main(module(script).main, [str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return subprocess.CompletedProcess([f"{script}.py", *map(str, argv)], status, stdout.getvalue(),
                                       stderr.getvalue())


def run_script(script, *args, timeout=120, check=True, env=None, cwd=REPO):
    """Run `python <script> args...` in a real process; return the CompletedProcess (text
    output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1",
                    OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-3000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-3000:]}")
    return proc


def assert_clean_error(proc, *needles):
    """A bad-input run: non-zero exit, no traceback, every needle on stderr."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    text = proc.stderr.lower()
    for needle in needles:
        assert needle.lower() in text, proc.stderr


def assert_one_error_line(proc, needle, statuses=(2,)):
    """Exit status 2 (or `statuses`), exactly one `error:` line on stderr and it says `needle`, no
    traceback."""
    assert proc.returncode in statuses, f"exit status {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle.lower() in errors[0].lower(), proc.stderr
    return errors[0]


# ---------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------
def last(folder, name="last.pt"):
    return torch.load(os.path.join(str(folder), name), map_location="cpu", weights_only=True)


def read_log(folder):
    """log.csv's rows without the timing columns."""
    with open(os.path.join(str(folder), "log.csv"), newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                for row in csv.DictReader(f)]


def logged_steps(folder):
    try:
        with open(os.path.join(str(folder), "log.csv"), newline="") as f:
            return [int(row["step"]) for row in csv.DictReader(f) if row.get("step")]
    except (OSError, ValueError, KeyError):
        return []


def snapshot(folder):
    """Every file under `folder`: relative path -> bytes."""
    files = {}
    for root, _, names in os.walk(str(folder)):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, str(folder))] = f.read()
    return files


def assert_same(expected, actual, where="last.pt"):
    """Bit-for-bit equality of two checkpoint trees (tensors with torch.equal, NaN equal to NaN)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: tensor vs {type(actual).__name__}"
        assert expected.dtype == actual.dtype and expected.shape == actual.shape, (
            f"{where}: dtype/shape differ")
        same = torch.equal(expected, actual)
        if not same and expected.is_floating_point():
            same = bool(((expected == actual) | (expected.isnan() & actual.isnan())).all())
        assert same, (f"{where} differs (max |diff| "
                      f"{(expected.double() - actual.double()).abs().max().item():.3g})")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(expected) == set(actual), \
            f"{where}: keys differ: {sorted(map(str, set(expected) ^ set(actual or {})))}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(expected) == len(actual), (
            f"{where}: lengths differ")
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: nan vs {actual}"
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def assert_same_run(reference, folder, ignore_history=()):
    """Same last.pt (all but the command line and the training time) and the same log.csv as
    `reference`."""
    expected, actual = last(reference), last(folder)
    for checkpoint in (expected, actual):
        # the command lines and the training times differ
        del checkpoint["args"], checkpoint["elapsed_s"]
        for key in ignore_history:
            checkpoint["history"].pop(key, None)
    assert_same(expected, actual)
    assert read_log(folder) == read_log(reference)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One thread in this process: the models are tiny (a second OpenMP thread only waits on a busy
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_determinism():
    """--deterministic switches torch's global flag in this process: leave it as found."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _picture_writers():
    """(module, name) of the functions that encode grids, GIFs and plots."""
    import common

    modules = [common]
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module("image_io"))
    return [(mod, name) for mod in modules for name in ("save_grid", "save_gif", "plot_curves")
            if name in vars(mod)]


REAL_PICTURE_WRITERS = {(mod, name): getattr(mod, name) for mod, name in _picture_writers()}


def _skip_pictures(patch):
    """No PNG/GIF/plot files (the samples are still drawn: sample() runs, just not encoded)."""
    for mod, name in _picture_writers():
        patch.setattr(mod, name, lambda first, path, *a, **k: path)
    # scores with 2 noise draws (same code path)
    patch.setattr(module("cgan_objects"), "SCORE_REPEATS", 2)


@pytest.fixture
def fast_images(monkeypatch):
    _skip_pictures(monkeypatch)


@pytest.fixture
def shared_data():
    """Path of ../shared/data (the course's real files); the test is skipped when absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


class SharedRuns:
    """Tiny runs made at most once per test session, with every file a run writes (grids, GIF,
    plots): `finished(script)` is 1 epoch (4 steps, epoch_001.pt), `reference(script)` 2 epochs
    straight (8 steps, epoch_001.pt and epoch_002.pt). Tests read them, or copy them (`copy`) before
    changing anything."""

    def __init__(self, root):
        self.root, self.runs, self.outputs = root, {}, {}

    def _make(self, kind, script, epochs):
        if (kind, script) not in self.runs:
            out = os.path.join(self.root, f"{kind}_{script}")
            # every picture, even inside a fast_images test
            with pytest.MonkeyPatch.context() as patch:
                for (mod, name), function in REAL_PICTURE_WRITERS.items():
                    patch.setattr(mod, name, function)
                proc = run_in_process(script, *tiny(script, out, "--epochs", epochs))
            assert proc.returncode == 0, proc.stderr[-3000:]
            self.runs[kind, script], self.outputs[kind, script] = run_dir(script, out), proc
            assert last(self.runs[kind, script])["step"] == 4 * epochs
        return self.runs[kind, script]

    def finished(self, script):
        return self._make("finished", script, 1)

    def reference(self, script):
        return self._make("reference", script, 2)

    def output(self, kind, script):
        """The CompletedProcess (stdout, stderr) of the run that made a shared run."""
        getattr(self, kind)(script)
        return self.outputs[kind, script]

    @staticmethod
    def copy(folder, to):
        """A copy of the run folder `folder` at `to` (returned)."""
        shutil.copytree(folder, str(to), dirs_exist_ok=True)
        return str(to)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    return SharedRuns(str(tmp_path_factory.mktemp("shared_runs")))
