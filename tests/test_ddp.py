"""torchrun with 2 CPU processes (gloo): both finish, one set of outputs, identical weights, resumable in 1 process."""

import csv
import glob
import importlib
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import REPO

# script -> (tiny training flags, folder of the run inside --out that holds last.pt)
SCRIPTS = {
    "dcgan_letters": (["--chars", "A", "--n-per-class", "128", "--batch-size", "16"], "A"),
    "wgan_gp_cifar": (["--data", "synthetic", "--n-per-class", "8", "--image-size", "32", "--ngf", "8", "--ndf", "8",
                       "--batch-size", "4", "--n-critic", "2"], "."),
    "cgan_objects": (["--n-images", "64", "--image-size", "32", "--ngf", "8", "--ndf", "8", "--batch-size", "8",
                      "--eval-every", "100"], "."),
}


# Seen in CI (torch 2.14 CPU, wgan_gp_cifar): one process dies in std::terminate with only this line on
# stderr; not reproduced in 37 runs of the same command here. The likely cause: once a DistributedDataParallel
# module has existed, gloo's worker threads outlive destroy_process_group() (measured: still running when main()
# returns), so they are alive while the interpreter shuts down, and a C++ thread that takes the GIL then dies
# in std::terminate (the crash in pytorch/pytorch#190489). A run that fails with this line is run once more;
# any other failure, or this one twice, fails the test.
UPSTREAM_EXIT_ABORT = "terminate called without an active exception"


def torchrun(script, args, out, timeout=120):
    """`torchrun --nproc_per_node=2 script ARGS --out OUT`, retried once after UPSTREAM_EXIT_ABORT."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, f"{script}.py"), *args, "--out", str(out)]
    # PYTHONFAULTHANDLER: a process killed by a signal prints every thread's Python stack.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 and UPSTREAM_EXIT_ABORT in proc.stderr:
        warnings.warn(f"torchrun {script}: a process died in std::terminate; running once more:\n{proc.stderr[-3000:]}")
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    return proc


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_two_processes_then_resume_in_one(tmp_path, script):
    if not os.path.exists(os.path.join(REPO, f"{script}.py")):
        pytest.skip(f"{script}.py not present")
    flags, run_folder = SCRIPTS[script]
    out = tmp_path / "run"
    proc = torchrun(script, [*flags, "--max-steps", "3", "--log-every", "1", "--no-progress", "--device", "cpu"], out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]  # torchrun: 0 only if both ranks exit 0
    folder = out / run_folder
    # One set of outputs: one checkpoint, one log with each step once (rank 1 wrote nothing).
    assert {os.path.basename(p) for p in glob.glob(str(folder / "*.pt"))} <= {"last.pt", "best.pt"}
    assert (folder / "last.pt").exists()
    with open(folder / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]
    assert len(glob.glob(str(out / "**" / "config.json"), recursive=True)) == 1
    checkpoint = torch.load(folder / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 2
    assert checkpoint["replica_divergence"] == 0.0  # the generators of both ranks are identical
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["generator"])
    # The 2-process checkpoint continues in one process.
    module = importlib.import_module(script)
    module.main([*flags, "--max-steps", "5", "--log-every", "1", "--no-progress", "--device", "cpu",
                 "--out", str(out), "--resume", "auto"])
    resumed = torch.load(folder / "last.pt", weights_only=True)
    assert resumed["step"] == 5 and resumed["world_size"] == 1
