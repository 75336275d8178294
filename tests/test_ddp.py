"""torchrun with 2 CPU processes (gloo), two launches in all: a run that finishes, and one stopped
by SIGTERM at the launcher. Both leave one set of outputs that one process resumes."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch

import checkpoints
from conftest import REPO, logged_steps, module

# CPU processes, tiny data and networks; one OpenMP thread each (2 processes on 2 cores)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
COMMON = ["--log-every", "1", "--no-progress", "--device", "cpu"]
WGAN = ["--data", "synthetic", "--n-per-class", "8", "--image-size", "32", "--ngf", "8",
        "--ndf", "8", "--batch-size", "4", "--n-critic", "2"]
OBJECTS = ["--n-images", "64", "--image-size", "32", "--ngf", "8", "--ndf", "8",
           "--batch-size", "8", "--eval-every", "100"]


def torchrun(script, args, out):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            os.path.join(REPO, f"{script}.py"), *args, "--out", str(out)]


def our_traceback_frames(text):
    """`File "...", line N` lines of a Python traceback that point into this repository's files."""
    files = re.findall(r'File "([^"]+)", line \d+', text)
    return [f for f in files if os.path.isabs(f) and os.path.dirname(f) == REPO]


def test_two_processes_finish_with_one_set_of_outputs_and_resume_in_one(tmp_path):
    """wgan_gp_cifar (gradient penalty: a double backward under DDP, n_critic batches a step):
    torchrun exits 0, no process ends in std::terminate (os._exit after the clean-up in
    common.run_main; no retry here), rank 1 wrote nothing, the generators of both ranks are
    identical, and the checkpoint continues in one process."""
    out = tmp_path / "run"
    proc = subprocess.run(torchrun("wgan_gp_cifar", [*WGAN, *COMMON, "--max-steps", "3"], out),
                          cwd=REPO, capture_output=True, text=True, timeout=240, env=ENV)
    # 0 only if both ranks exit 0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr, (
        proc.stderr[-4000:])
    assert {os.path.basename(p) for p in glob.glob(str(out / "*.pt"))} == {"last.pt"}
    assert logged_steps(out) == [1, 2, 3]  # each step once
    assert len(glob.glob(str(out / "**" / "config.json"), recursive=True)) == 1
    assert proc.stdout.count("finished at step 3 (epoch 1)") == 1  # the master's closing line only
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["finished"]
    assert checkpoint["replica_divergence"] == 0.0  # the generators of both ranks are identical
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["generator"])
    module("wgan_gp_cifar").main([*WGAN, *COMMON, "--max-steps", "5", "--out", str(out),
                                  "--resume", "auto"])
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["step"] == 5 and resumed["world_size"] == 1


def test_sigterm_to_the_launcher_leaves_a_resumable_last_pt_and_no_traceback_of_ours(tmp_path):
    """A scheduler's SIGTERM to torchrun (which passes it to both workers): the workers agree on the
    step to stop at, the master saves last.pt, and no worker prints a traceback through our files
    (torchrun's own SignalException traceback names only torch's). One process resumes the
    2-process checkpoint."""
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        torchrun("cgan_objects", [*OBJECTS, *COMMON, "--epochs", "1000"], out), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 180
    while len(logged_steps(out)) < 2:  # both workers are training
        assert launcher.poll() is None, launcher.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no training after 180 s"
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0  # interrupted, not finished
    assert not our_traceback_frames(stdout + stderr), stderr[-4000:]
    assert "terminate called" not in stderr, stderr[-4000:]
    assert stderr.count("SIGTERM received: saving last.pt") >= 1, stderr[-4000:]
    assert len(glob.glob(str(out / "**" / "config.json"), recursive=True)) == 1
    # complete, safe to load
    checkpoint = checkpoints.load_checkpoint(str(out / "last.pt"), "cgan_objects")
    assert checkpoint["world_size"] == 2 and not checkpoint["finished"]
    assert checkpoint["step"] == logged_steps(out)[-1]  # every step it holds is logged, none twice
    with open(out / "config.json") as f:
        assert json.load(f)["args"]["epochs"] == 1000
    step = checkpoint["step"]
    module("cgan_objects").main([*OBJECTS, *COMMON, "--max-steps", str(step + 2), "--out", str(out),
                                 "--resume", "auto"])
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["step"] == step + 2 and resumed["world_size"] == 1
    assert logged_steps(out) == list(range(1, step + 3))
