"""Shared test helpers: run a script end to end in a subprocess, find the shared reference data."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
sys.path.insert(0, REPO)


def run_script(script, *args, timeout=120, check=True, env=None):
    """Run `python <script> args...` from the repo root; return the CompletedProcess (text output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    return proc


def assert_clean_error(proc, *needles):
    """A bad-input run: non-zero exit, one `error:` line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    text = proc.stderr.lower()
    for needle in needles:
        assert needle.lower() in text, proc.stderr


@pytest.fixture
def shared_data():
    """Path of ../shared/data (the course's real files); the test is skipped when absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
