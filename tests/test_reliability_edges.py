"""Reliability, round two: what a hostile or unlucky user still broke (each case failed before its fix).

| case | test |
| --- | --- |
| two runs on one --out | test_second_run_on_the_same_folder_is_refused, test_a_killed_run_does_not_leave_its_folder_locked |
| a refused start rewrote config.json | test_refused_resume_leaves_the_run_untouched |
| resume dropped left-out settings | test_resume_keeps_the_settings_it_started_with |
| resume with other model settings | test_resume_with_other_model_settings_is_one_line |
| --resume auto on a finished run trained on | test_resuming_a_finished_run_trains_nothing |
| 16-bit PNGs loaded white | test_16_bit_png_loads_as_grey_not_white |
| symlink loops multiplied images / hung | test_symlink_loop_is_read_once |
| a real full disk: traceback and .tmp left | test_a_real_full_disk_is_one_error_line_and_leaves_no_tmp |
| atomic writes replaced /dev/null | test_output_path_that_is_not_a_regular_file_is_refused |
| flag values: traceback | test_bad_flag_values_are_one_short_error |
| huge settings: out of memory traceback | test_out_of_memory_is_one_line_naming_the_settings |
| decompression bombs | test_decompression_bomb_is_refused |
| a torn log.csv blocked --resume auto | test_torn_log_does_not_block_resume |
| crafted but loadable checkpoints | test_crafted_checkpoint_is_one_error_line |
| signals during start-up | test_signal_during_start_up_leaves_nothing |
| non-checkpoints called unsafe | test_a_file_that_is_not_a_checkpoint_says_what_it_is |
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import common
from conftest import REPO
from test_reliability import COMMON, GENERATE, TINY, cli, last, module, run_dir, train
from test_reliability import fast_images, one_thread_and_restore_determinism  # noqa: F401

SCRIPTS = list(TINY)
# A model setting of each script that changes the shape of its networks (besides --ngf, which all have).
SHAPE_SETTING = {"dcgan_letters": ["--nz", "7"], "cdcgan_ab": ["--nz", "7"], "dcgan_cifar": ["--image-size", "64"],
                 "acgan_cifar": ["--embed-dim", "6"], "wgan_gp_cifar": ["--critic-norm", "none"],
                 "cdcgan_anime": ["--embed-dim", "3"], "cgan_objects": ["--d-cond", "map"]}


def start(*argv):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, os.path.join(REPO, "dcgan_cifar.py"), *map(str, argv)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_one_error_line(status, err, needle, statuses=(2,)):
    assert status in statuses, f"exit status {status}\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle.lower() in errors[0].lower(), err


def tiny(script, out, *extra):
    return [*TINY[script], *COMMON, "--out", str(out), *map(str, extra)]


# ---------------------------------------------------------------------------
# Data loss and silent wrong results
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_second_run_on_the_same_folder_is_refused(script, tmp_path, capsys, fast_images):
    folder = run_dir(script, tmp_path)
    os.makedirs(folder, exist_ok=True)  # made by the other run, which holds it (an flock is per open file: this is another one)
    lock = common.claim_run_folder(folder)
    try:
        status, err = cli(script, tiny(script, tmp_path, "--max-steps", 1), capsys)
        assert_one_error_line(status, err, "another run is using")
        assert sorted(os.listdir(folder)) == [".lock"]  # nothing of the refused run was written
    finally:
        lock.close()


def test_a_killed_run_does_not_leave_its_folder_locked(tmp_path):
    argv = [*TINY["dcgan_cifar"], *COMMON, "--out", tmp_path, "--epochs", "100000"]
    first = start(*argv)
    deadline = time.monotonic() + 90
    while not os.path.exists(tmp_path / "log.csv") or os.path.getsize(tmp_path / "log.csv") < 60:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    second = start(*argv, "--resume", "auto")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2 and "another run is using" in err and "Traceback" not in err, err
    first.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock with the process
    first.communicate()
    third = start(*argv[:-2], "--epochs", "2", "--resume", "auto")
    _, err = third.communicate(timeout=90)
    assert third.returncode == 0, err


@pytest.mark.parametrize("script", SCRIPTS)
def test_refused_resume_leaves_the_run_untouched(script, tmp_path, capsys, fast_images):
    folder = run_dir(script, tmp_path)
    train(script, tmp_path, "--max-steps", 2)
    config = open(os.path.join(folder, "config.json")).read()
    status, err = cli(script, tiny(script, tmp_path, "--max-steps", 4, "--resume", "auto", "--seed", 5), capsys)
    assert_one_error_line(status, err, "--seed 5 differs")
    with open(os.path.join(folder, "last.pt"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(folder, "last.pt")) // 2)
    status, err = cli(script, tiny(script, tmp_path, "--max-steps", 4, "--resume", "auto"), capsys)
    assert_one_error_line(status, err, "truncated")
    assert open(os.path.join(folder, "config.json")).read() == config


def test_track_without_tensorboard_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "require_tensorboard", lambda: (_ for _ in ()).throw(common.UserError("--track needs TensorBoard")))
    status, err = cli("dcgan_cifar", tiny("dcgan_cifar", tmp_path / "run", "--max-steps", 1, "--track"), capsys)
    assert_one_error_line(status, err, "--track needs TensorBoard")
    assert not (tmp_path / "run").exists()


def test_track_writes_tensorboard_events(tmp_path, fast_images):
    """--track works after `pip install -r requirements.txt` (TensorBoard is in it)."""
    pytest.importorskip("tensorboard")
    train("dcgan_cifar", tmp_path, "--max-steps", 2, "--track")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_keeps_the_settings_it_started_with(script, tmp_path, capsys, fast_images):
    """Left out on resume, a data or model flag keeps the run's value (it used to fall back to the default)."""
    folder = run_dir(script, tmp_path)
    train(script, tmp_path, "--max-steps", 2)
    config = open(os.path.join(folder, "config.json")).read()
    before = last(folder)["args"]
    module(script).main([*COMMON, "--out", str(tmp_path), "--max-steps", "3", "--resume", "auto"])  # no TINY flags
    after = last(folder)
    assert after["step"] == 3
    assert {k: v for k, v in after["args"].items() if k not in common.RUNTIME_SETTINGS} == \
        {k: v for k, v in before.items() if k not in common.RUNTIME_SETTINGS}
    assert open(os.path.join(folder, "config.json")).read() == config  # the start time and settings stay


@pytest.mark.parametrize("script, flag", [(s, f) for s in SCRIPTS for f in (["--ngf", "16"], SHAPE_SETTING[s])])
def test_resume_with_other_model_settings_is_one_line(script, flag, tmp_path, capsys, fast_images):
    train(script, tmp_path, "--max-steps", 2)
    status, err = cli(script, tiny(script, tmp_path, "--max-steps", 4, "--resume", "auto", *flag), capsys)
    assert_one_error_line(status, err, f"{flag[0]} {flag[1]} differs")


@pytest.mark.parametrize("flag", [["--step-lr", "3"], ["--ema", "0.9"]])
def test_objects_optional_flag_changed_on_resume_is_one_line(flag, tmp_path, capsys, fast_images):
    train("cgan_objects", tmp_path, "--max-steps", 2)
    status, err = cli("cgan_objects", tiny("cgan_objects", tmp_path, "--max-steps", 4, "--resume", "auto", *flag), capsys)
    assert_one_error_line(status, err, "differs")


@pytest.mark.parametrize("script", SCRIPTS)
def test_resuming_a_finished_run_trains_nothing(script, tmp_path, capsys, fast_images):
    folder = run_dir(script, tmp_path)
    train(script, tmp_path, "--max-steps", 2)
    for _ in range(2):
        status, err = cli(script, tiny(script, tmp_path, "--max-steps", 2, "--resume", "auto"), capsys)
        assert status == 0 and "finished" in err and "--max-steps" in err, err
    assert last(folder)["step"] == 2


def sixteen_bit_png(path, value):
    from PIL import Image

    Image.fromarray(np.full((40, 40), value, dtype=np.uint16)).save(path)  # PIL mode I;16
    return path


def test_16_bit_png_loads_as_grey_not_white(tmp_path):
    (tmp_path / "grey").mkdir()
    path = sixteen_bit_png(tmp_path / "grey" / "mid.png", 32896)  # 128 * 257: mid-grey in 16 bits
    assert np.asarray(common.read_image(str(path), "L")).mean() == 128
    assert np.asarray(common.read_image(str(path), "RGB")).mean() == 128
    images, _, _ = module("dcgan_cifar").load_image_folder(str(tmp_path), 32)
    assert images.float().mean().item() == 128  # the training images, not white (255)


def test_symlink_loop_is_read_once(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "cats" / "a.png")
    os.symlink(tmp_path, tmp_path / "cats" / "loop")  # cats/loop/cats/loop/... forever
    os.symlink(tmp_path / "cats", tmp_path / "again")  # the same folder under a second name
    assert common.list_image_files(str(tmp_path)) == [str(tmp_path / "again" / "a.png")]
    images, _, _ = module("dcgan_cifar").load_image_folder(str(tmp_path), 32)
    assert len(images) == 1


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs), where the machine allows mounting one (root in a container, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk_is_one_error_line_and_leaves_no_tmp(tiny_disk, capsys):
    out = tiny_disk / "run"  # a 32 px DCGAN with --ngf 64: last.pt (about 20 MB) cannot fit in 2 MiB
    argv = [*TINY["dcgan_cifar"], *COMMON, "--ngf", "64", "--ema", "0", "--out", out, "--max-steps", "1"]
    status, err = cli("dcgan_cifar", argv, capsys)
    assert_one_error_line(status, err, "cannot write")
    assert "free space, then --resume auto" in err
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(tiny_disk) for f in files if f.endswith(".tmp")]
    assert not leftovers and not os.path.exists(out / "last.pt")


@pytest.mark.parametrize("script", SCRIPTS)
def test_output_path_that_is_not_a_regular_file_is_refused(script, tmp_path, capsys, fast_images):
    folder = run_dir(script, tmp_path)
    train(script, tmp_path, "--max-steps", 1)
    checkpoint = os.path.join(folder, "last.pt")
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, tmp_path / "link.png")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for grid_out, needle in (("/dev/null", "not a regular file"), (tmp_path / "link.png", "not a regular file"),
                             (tmp_path, "not a regular file"), (blocker / "grid.png", "is a file, not a folder")):
        status, err = cli(script, [*GENERATE[script], "--checkpoint", checkpoint, "--grid-out", grid_out], capsys)
        assert_one_error_line(status, err, needle)
        assert "last.pt is intact" not in err  # not the disk-full advice
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert target.read_text() == "keep me" and os.path.islink(tmp_path / "link.png")


# ---------------------------------------------------------------------------
# One `error:` line where a traceback was
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", [["--beta1", "1.5"], ["--beta2", "1"], ["--seed", "1" * 24], ["--device", "meta"]])
def test_bad_flag_values_are_one_short_error(script, flag, tmp_path, capsys):
    if flag[0].startswith("--beta") and flag[0] not in open(os.path.join(REPO, f"{script}.py")).read():
        pytest.skip(f"{script} has no {flag[0]}")
    status, err = cli(script, tiny(script, tmp_path / "run", "--max-steps", 1, *flag), capsys)
    assert_one_error_line(status, err, flag[0].lstrip("-") if flag[0] != "--device" else "meta")
    assert len(err.strip().splitlines()) <= 3, err  # the usage line stays short
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_line_naming_the_settings(tmp_path, capsys):
    status, err = cli("dcgan_cifar", tiny("dcgan_cifar", tmp_path / "run", "--max-steps", 1, "--ngf", 10**8), capsys)
    assert_one_error_line(status, err, "out of memory", statuses=(1,))
    assert "--ngf" in err and not (tmp_path / "run").exists()
    train("dcgan_cifar", tmp_path, "--max-steps", 1)
    status, err = cli("dcgan_cifar", ["--generate", 10**10, "--checkpoint", tmp_path / "last.pt"], capsys)
    assert_one_error_line(status, err, "out of memory", statuses=(1,))


def test_decompression_bomb_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "bombs").mkdir()
    Image.new("L", (5000, 5000)).save(tmp_path / "bombs" / "big.png")  # 25 M pixels in a few KB
    with pytest.raises(common.UserError, match="too large"):
        module("dcgan_cifar").load_image_folder(str(tmp_path), 32)


def test_torn_log_does_not_block_resume(tmp_path, fast_images):
    train("dcgan_cifar", tmp_path, "--max-steps", 2)
    with open(tmp_path / "log.csv", "ab") as f:
        f.write(b"3,1,0.5,0.4,3,1,0.5\0\0\0\0")  # a merged row and the NUL tail of a power cut
    train("dcgan_cifar", tmp_path, "--max-steps", 4, "--resume", "auto")
    with open(tmp_path / "log.csv") as f:
        assert [line.split(",")[0] for line in f.read().split()][1:] == ["1", "2", "3", "4"]


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
    "optimizer of another shape": (lambda c: c["optimizers"].update(generator={"state": {}, "param_groups": []}),
                                   "does not fit"),
}


@pytest.mark.parametrize("what", list(CRAFTED))
def test_crafted_checkpoint_is_one_error_line(what, tmp_path, capsys, fast_images):
    train("dcgan_cifar", tmp_path, "--max-steps", 1)
    crafted(str(tmp_path / "last.pt"), CRAFTED[what][0])
    status, err = cli("dcgan_cifar", tiny("dcgan_cifar", tmp_path, "--max-steps", 2, "--resume", "auto"), capsys)
    assert_one_error_line(status, err, CRAFTED[what][1])


@pytest.mark.parametrize("change, needle", [(lambda c: c["args"].pop("nz"), "cannot rebuild"),
                                            (lambda c: c["args"].update(image_size=48), "cannot rebuild")])
def test_crafted_settings_are_one_error_line_for_generate(change, needle, tmp_path, capsys, fast_images):
    train("dcgan_cifar", tmp_path, "--max-steps", 1)
    crafted(str(tmp_path / "last.pt"), change)
    status, err = cli("dcgan_cifar", ["--generate", 4, "--checkpoint", tmp_path / "last.pt"], capsys)
    assert_one_error_line(status, err, needle)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_leaves_nothing(script, signum, tmp_path, capsys, monkeypatch):
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
    # Python's Ctrl-C handler, as in a terminal: a shell starts background jobs (pytest ... &) with SIGINT
    # ignored, and then Python keeps ignoring it, so the run would rightly go on
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status, err = cli(script, tiny(script, tmp_path / "run", "--max-steps", 1), capsys)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert status == 130 and "Traceback" not in err and "error: interrupted" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, needle", [
    (json.dumps({"script": "dcgan_cifar"}), "json or text file"), (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "png image"),
    ("step,epoch,loss_d\n1,1,0.5\n", "text file"), ("# README\n", "text file"), (b"x", "text file"), (b"", "empty"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(content, needle, tmp_path, capsys):
    path = tmp_path / "file.pt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    status, err = cli("dcgan_cifar", tiny("dcgan_cifar", tmp_path / "run", "--resume", path), capsys)
    assert_one_error_line(status, err, needle)
    assert "could run code" not in err
    with contextlib.suppress(FileNotFoundError):
        assert not os.listdir(tmp_path / "run")
