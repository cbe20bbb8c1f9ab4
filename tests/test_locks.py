"""One run per output folder: run.lock refuses a second live run, and a dead run's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from scripts.runtime.locks import LOCK_NAME, OutputFolderError, RunLockedError, acquire_run_lock, release_held_locks


def _holder(folder):
    """A separate process that takes the lock and sleeps; returns it once the lock exists."""
    code = f"import sys, time; sys.path.insert(0, {str(os.getcwd())!r}); "
    code += "from scripts.runtime.locks import acquire_run_lock; "
    code += f"acquire_run_lock({str(folder)!r}, 'training'); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=os.path.dirname(__file__) + "/../ddad_bundle")
    for _ in range(200):
        if (folder / LOCK_NAME).exists():
            return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the holder process did not take the lock")


def test_a_live_run_holding_the_lock_refuses_a_second(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"{LOCK_NAME} is held by training \\(pid {holder.pid}"):
            acquire_run_lock(tmp_path, "training")
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = _holder(tmp_path)
    holder.kill()  # SIGKILL: no chance to remove its lock
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    path = acquire_run_lock(tmp_path, "evaluating")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "is no longer running" in caplog.text
    release_held_locks()
    assert not path.exists()


def test_a_lock_from_another_host_is_refused_with_the_fix(tmp_path):
    lock = {"pid": 1, "host": socket.gethostname() + "-other", "workflow": "training", "started": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(RunLockedError, match="remove the lock"):
        acquire_run_lock(tmp_path)


def test_an_output_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputFolderError, match="cannot create the output folder .*file/run"):
        acquire_run_lock(tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputFolderError, match="not writable"):
            acquire_run_lock(folder)
    finally:
        folder.chmod(0o755)
