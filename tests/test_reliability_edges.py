"""Reliability, round two: what a hostile or unlucky user still broke
(each case failed before its fix).

| case | test |
| --- | --- |
| two runs on one --out | test_second_run_on_the_same_folder_is_refused; a killed run frees it:
  test_reliability.py |
| a refused start rewrote config.json | test_refused_resume_leaves_the_run_untouched |
| resume dropped left-out settings | test_runs.py (a finished run ... a larger --epochs continues
  it exactly) |
| resume with other model settings | test_resume_with_other_model_settings_is_one_line |
| --resume auto on a finished run trained on | test_runs.py (a finished run trains nothing ...) |
| 16-bit PNGs loaded white | test_16_bit_png_loads_as_grey_not_white |
| symlink loops multiplied images / hung | test_symlink_loop_is_read_once |
| a real full disk: traceback and .tmp left |
  test_a_real_full_disk_is_one_error_line_and_leaves_no_tmp |
| atomic writes replaced /dev/null | test_output_path_that_is_not_a_regular_file_is_refused |
| flag values: traceback | test_bad_flag_values_are_one_short_error |
| huge settings: out of memory traceback | test_out_of_memory_is_one_line_naming_the_settings |
| decompression bombs | test_decompression_bomb_is_refused |
| a torn log.csv blocked --resume auto | test_torn_log_does_not_block_resume |
| crafted but loadable checkpoints | test_crafted_checkpoint_is_one_error_line (crafted settings
  for --generate: test_runs.py) |
| signals during start-up | test_signal_during_start_up_leaves_nothing |
| non-checkpoints called unsafe | test_a_file_that_is_not_a_checkpoint_says_what_it_is |
"""

import contextlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

import common
import image_io
from conftest import (GENERATE, SCRIPTS, assert_one_error_line, logged_steps, module, run_dir,
                      run_in_process, snapshot, tiny, train)

# A model setting of each script that changes the shape of its networks
# (besides --ngf, which all have).
SHAPE_SETTING = {"dcgan_letters": ["--nz", "7"], "cdcgan_ab": ["--nz", "7"],
                 "dcgan_cifar": ["--image-size", "64"], "acgan_cifar": ["--class-input", "concat"],
                 "wgan_gp_cifar": ["--critic-norm", "none"], "cdcgan_anime": ["--embed-dim", "3"],
                 "cgan_objects": ["--d-cond", "map"]}


# ---------------------------------------------------------------------------
# Data loss and silent wrong results
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_second_run_on_the_same_folder_is_refused(script, tmp_path, fast_images):
    folder = run_dir(script, tmp_path)
    # made by the other run, which holds it (an flock is per open file: this is another one)
    os.makedirs(folder, exist_ok=True)
    lock = common.claim_run_folder(folder)
    try:
        proc = run_in_process(script, *tiny(script, tmp_path, "--max-steps", 1))
        assert_one_error_line(proc, "another run is using")
        assert sorted(os.listdir(folder)) == [".lock"]  # nothing of the refused run was written
    finally:
        lock.close()


@pytest.mark.parametrize("script", SCRIPTS)
def test_refused_resume_leaves_the_run_untouched(script, shared_runs, tmp_path):
    folder = shared_runs.copy(shared_runs.finished(script), run_dir(script, tmp_path))
    before = snapshot(folder)
    proc = run_in_process(script,
                          *tiny(script, tmp_path, "--epochs", 2, "--resume", "auto", "--seed", 5))
    assert_one_error_line(proc, "--seed 5 differs")
    assert snapshot(folder) == before
    with open(os.path.join(folder, "last.pt"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(folder, "last.pt")) // 2)
    proc = run_in_process(script, *tiny(script, tmp_path, "--epochs", 2, "--resume", "auto"))
    assert_one_error_line(proc, "truncated")
    assert snapshot(folder)["config.json"] == before["config.json"]


def test_track_without_tensorboard_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "require_tensorboard", lambda: (_ for _ in ()).throw(
        common.UserError("--track needs TensorBoard")))
    proc = run_in_process("dcgan_cifar",
                          *tiny("dcgan_cifar", tmp_path / "run", "--max-steps", 1, "--track"))
    assert_one_error_line(proc, "--track needs TensorBoard")
    assert not (tmp_path / "run").exists()


def test_track_writes_tensorboard_events(tmp_path, fast_images):
    """--track works after `pip install -r requirements.txt` (TensorBoard is in it)."""
    pytest.importorskip("tensorboard")
    train("dcgan_cifar", tmp_path, "--max-steps", 2, "--track")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


OTHER_SETTINGS = [(s, f) for s in SCRIPTS for f in (["--ngf", "16"], SHAPE_SETTING[s])] + [
    ("cdcgan_ab", ["--chars", "A", "C"]),  # a list-valued setting
    ("cgan_objects", ["--step-lr", "3"]), ("cgan_objects", ["--ema", "0.9"]),  # optional ones
]


@pytest.mark.parametrize("script, flag", OTHER_SETTINGS,
                         ids=[f"{s}{' '.join(f)}" for s, f in OTHER_SETTINGS])
def test_resume_with_other_model_settings_is_one_line(script, flag, shared_runs, tmp_path):
    folder = shared_runs.copy(shared_runs.finished(script), run_dir(script, tmp_path))
    before = snapshot(folder)
    proc = run_in_process(script, *tiny(script, tmp_path, "--epochs", 2, "--resume", "auto", *flag))
    assert_one_error_line(proc, f"{flag[0]} {flag[1] if len(flag) == 2 else flag[1:]} differs")
    assert snapshot(folder) == before


def sixteen_bit_png(path, value):
    from PIL import Image

    Image.fromarray(np.full((40, 40), value, dtype=np.uint16)).save(path)  # PIL mode I;16
    return path


def test_16_bit_png_loads_as_grey_not_white(tmp_path):
    (tmp_path / "grey").mkdir()
    path = sixteen_bit_png(tmp_path / "grey" / "mid.png", 32896)  # 128 * 257: mid-grey in 16 bits
    assert np.asarray(image_io.read_image(str(path), "L")).mean() == 128
    assert np.asarray(image_io.read_image(str(path), "RGB")).mean() == 128
    images, _, _ = image_io.load_image_folder(str(tmp_path), 32)
    assert images.float().mean().item() == 128  # the training images, not white (255)


def test_symlink_loop_is_read_once(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "cats" / "a.png")
    os.symlink(tmp_path, tmp_path / "cats" / "loop")  # cats/loop/cats/loop/... forever
    os.symlink(tmp_path / "cats", tmp_path / "again")  # the same folder under a second name
    assert image_io.list_image_files(str(tmp_path)) == [str(tmp_path / "again" / "a.png")]
    images, _, _ = image_io.load_image_folder(str(tmp_path), 32)
    assert len(images) == 1


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs), where the machine allows mounting one (root in a container,
    as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk_is_one_error_line_and_leaves_no_tmp(tiny_disk):
    # a 32 px DCGAN with --ngf 64: last.pt (about 20 MB) cannot fit in 2 MiB
    out = tiny_disk / "run"
    proc = run_in_process("dcgan_cifar", *tiny("dcgan_cifar", out, "--ngf", "64", "--ema", "0",
                                               "--max-steps", "1"))
    assert_one_error_line(proc, "cannot write")
    assert "free space, then --resume auto" in proc.stderr
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(tiny_disk) for f in files
                 if f.endswith(".tmp")]
    assert not leftovers and not os.path.exists(out / "last.pt")


@pytest.mark.parametrize("script", SCRIPTS)
def test_output_path_that_is_not_a_regular_file_is_refused(script, shared_runs, tmp_path):
    checkpoint = os.path.join(shared_runs.finished(script), "last.pt")
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, tmp_path / "link.png")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for grid_out, needle in (("/dev/null", "not a regular file"),
                             (tmp_path / "link.png", "not a regular file"),
                             (tmp_path, "not a regular file"),
                             (blocker / "grid.png", "is a file, not a folder")):
        proc = run_in_process(script, *GENERATE[script], "--checkpoint", checkpoint,
                              "--grid-out", grid_out)
        assert_one_error_line(proc, needle)
        assert "last.pt is intact" not in proc.stderr  # not the disk-full advice
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert target.read_text() == "keep me" and os.path.islink(tmp_path / "link.png")


# ---------------------------------------------------------------------------
# One `error:` line where a traceback was
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", [["--beta1", "1.5"], ["--beta2", "1"], ["--seed", "1" * 24],
                                  ["--device", "meta"]])
def test_bad_flag_values_are_one_short_error(script, flag, tmp_path):
    proc = run_in_process(script, *tiny(script, tmp_path / "run", "--max-steps", 1, *flag))
    assert_one_error_line(proc, flag[0].lstrip("-") if flag[0] != "--device" else "meta")
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # the usage line stays short
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_line_naming_the_settings(shared_runs, tmp_path):
    proc = run_in_process("dcgan_cifar",
                          *tiny("dcgan_cifar", tmp_path / "run", "--max-steps", 1, "--ngf", 10**8))
    assert_one_error_line(proc, "out of memory", statuses=(1,))
    assert "--ngf" in proc.stderr and not (tmp_path / "run").exists()
    checkpoint = os.path.join(shared_runs.finished("dcgan_cifar"), "last.pt")
    proc = run_in_process("dcgan_cifar", "--generate", 10**10, "--checkpoint", checkpoint,
                          "--grid-out", tmp_path / "grid.png")
    assert_one_error_line(proc, "out of memory", statuses=(1,))


def test_decompression_bomb_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "bombs").mkdir()
    Image.new("L", (5000, 5000)).save(tmp_path / "bombs" / "big.png")  # 25 M pixels in a few KB
    with pytest.raises(common.UserError, match="too large"):
        image_io.load_image_folder(str(tmp_path), 32)


def test_torn_log_does_not_block_resume(shared_runs, tmp_path, fast_images):
    # log.csv rows at steps 3 and 4
    folder = shared_runs.copy(shared_runs.finished("dcgan_cifar"), tmp_path)
    with open(os.path.join(folder, "log.csv"), "ab") as f:
        f.write(b"6,2,0.5,0.4,6,2,0.5\0\0\0\0")  # a merged row and the NUL tail of a power cut
    train("dcgan_cifar", tmp_path, "--epochs", 2, "--resume", "auto")
    assert logged_steps(folder) == [3, 4, 6, 8]


def crafted(path, change):
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


CRAFTED = {  # what is wrong -> (change to a real last.pt, what the error line says)
    "no generator": (lambda c: c.pop("generator"), "no 'generator'"),
    "no optimizers": (lambda c: c.pop("optimizers"), "no 'optimizers'"),
    "no rng": (lambda c: c.pop("rng"), "no 'rng'"),
    "tensor for a dict": (lambda c: c.update(generator=torch.zeros(3)), "'generator' is a tensor"),
    "negative step": (lambda c: c.update(step=-4), "negative step"),
    "optimizer of another shape": (
        lambda c: c["optimizers"].update(generator={"state": {}, "param_groups": []}),
        "does not fit"),
}


@pytest.mark.parametrize("what", list(CRAFTED))
def test_crafted_checkpoint_is_one_error_line(what, shared_runs, tmp_path):
    folder = shared_runs.copy(shared_runs.finished("dcgan_cifar"), tmp_path)
    crafted(os.path.join(folder, "last.pt"), CRAFTED[what][0])
    proc = run_in_process("dcgan_cifar",
                          *tiny("dcgan_cifar", tmp_path, "--epochs", 2, "--resume", "auto"))
    assert_one_error_line(proc, CRAFTED[what][1])


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_leaves_nothing(script, signum, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while the data is read: one line, no traceback, no half-made run folder."""
    mod = module(script)
    real_load = mod.load_data

    def load_data_then_signal(*args, **kwargs):
        data = real_load(*args, **kwargs)
        os.kill(os.getpid(), signum)  # delivered now, as from the keyboard or a scheduler
        time.sleep(0.1)
        return data
    monkeypatch.setattr(mod, "load_data", load_data_then_signal)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # Python's Ctrl-C handler, as in a terminal: a shell starts background jobs (pytest ... &) with
    # SIGINT ignored, and then Python keeps ignoring it, so the run would rightly go on
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = run_in_process(script, *tiny(script, tmp_path / "run", "--max-steps", 1))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert (proc.returncode == 130 and "Traceback" not in proc.stderr
            and "error: interrupted" in proc.stderr), proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, needle", [
    (json.dumps({"script": "dcgan_cifar"}), "json or text file"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "png image"),
    ("step,epoch,loss_d\n1,1,0.5\n", "text file"),
    ("# README\n", "text file"),
    (b"x", "text file"),
    (b"", "empty"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(content, needle, tmp_path):
    path = tmp_path / "file.pt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    proc = run_in_process("dcgan_cifar", *tiny("dcgan_cifar", tmp_path / "run", "--resume", path))
    assert_one_error_line(proc, needle)
    assert "could run code" not in proc.stderr
    with contextlib.suppress(FileNotFoundError):
        assert not os.listdir(tmp_path / "run")
