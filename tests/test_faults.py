"""Faults as a user meets them: a run killed with SIGKILL (out of memory, a pre-empted job, a
closed laptop), then started again with the same command, ends with the same numbers as a run
that was never interrupted; a second run started on the same folder while the first is live
refuses, naming the lock.

Everything runs as real processes (``python -m ddad_bundle``), killed at a checkpoint boundary
seen on disk: during stage 1 (the first NDM checkpoint written, epoch 2 of 2 under way), during
stage 2 (the first ASR-Net checkpoint written) and during export. The same seed and machine must
give identical eval/metrics.json and an identical exported model's output.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, TINY_RUN

pytestmark = pytest.mark.slow

SETTINGS = {**TINY_RUN, "epochs": 2, "asr_epochs": 2}
RUN = "cxr_phantom_ae"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def command(verb: str, runs_dir: Path, *extra) -> list[str]:
    args = [sys.executable, "-m", "ddad_bundle", verb, "--runs_dir", str(runs_dir), *map(str, extra)]
    keys = SETTINGS if verb == "fit" else {"image_size": SETTINGS["image_size"]}
    for key, value in keys.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def finish(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def kill_when(args: list[str], marker: Path, also=None) -> None:
    """Start ``args``, SIGKILL its process group as soon as ``marker`` exists; ``also(process)``
    runs once while the process is live and holding its lock."""
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert process.poll() is None, f"finished before {marker.name} appeared: {process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{marker} never appeared"
            time.sleep(0.02)
        if also is not None:
            also(process)
        assert process.poll() is None, (
            f"ended ({process.returncode}) before the kill at {marker.name}: {process.stderr.read()[-3000:]}"
        )
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def exported_output(model_ts: Path) -> torch.Tensor:
    model = torch.jit.load(str(model_ts), map_location="cpu")
    batch = torch.rand(2, 1, SETTINGS["image_size"], SETTINGS["image_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        output = model(batch * 2 - 1)
    return torch.cat([t.flatten() for t in output]) if isinstance(output, (tuple, list)) else output


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(metrics.json, exported output) of a run that was never interrupted."""
    runs = tmp_path_factory.mktemp("faults_reference")
    finish(command("fit", runs))
    finish(command("export", runs))
    run = runs / RUN
    return json.loads((run / "eval" / "metrics.json").read_text()), exported_output(run / "models" / "model.ts")


def test_fit_holds_its_lock_through_all_workflows_and_a_second_run_refuses(tmp_path):
    # Before, each workflow of `fit` released run.lock at its end: a second run started then took
    # the lock, and the first stopped at its next workflow. The lock is watched every 10 ms.
    runs = tmp_path / "runs"
    lock = runs / RUN / "run.lock"
    first = subprocess.Popen(command("fit", runs), cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while not lock.exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            time.sleep(0.01)
        second = subprocess.run(command("fit", runs), cwd=REPO_ROOT, env=ENV, capture_output=True, text=True)
        seen = []  # (lock present, holder pid) while the first run lives
        while first.poll() is None:
            try:
                seen.append((True, json.loads(lock.read_text())["pid"]))
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                seen.append((False, None))
            time.sleep(0.01)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    assert first.returncode == 0, first.stderr.read()[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run.lock is held by training" in errors[0], second.stderr[-3000:]
    present = [i for i, (held, _) in enumerate(seen) if held]
    gaps = [i for i in range(present[0], present[-1]) if not seen[i][0]]
    assert gaps == [], f"run.lock was gone {len(gaps)} times between the first and last workflow"
    assert {pid for held, pid in seen if held} == {first.pid}


def test_killed_in_stage_1_stage_2_and_export_then_rerun_gives_the_same_results(uninterrupted, tmp_path):
    runs, models = tmp_path / "runs", tmp_path / "runs" / RUN / "models"

    # stage 1, epoch 2 of 2 under way
    kill_when(command("fit", runs), models / "ndm_member0_checkpoint_1.pt")
    assert not (models / "asr_member0_checkpoint_1.pt").exists()

    # the rerun resumes stage 1, is killed in stage 2 after the first ASR-Net epoch
    kill_when(command("fit", runs), models / "asr_member0_checkpoint_1.pt")
    assert not (runs / RUN / "eval" / "metrics.json").exists()

    # the second rerun resumes stage 2 and evaluates
    rerun = finish(command("fit", runs))
    assert "is no longer running" in rerun.stdout + rerun.stderr  # the killed run's lock was taken over, with a warning
    metrics = json.loads((runs / RUN / "eval" / "metrics.json").read_text())
    assert metrics == uninterrupted[0]

    # export killed while it runs (its run record written): no truncated model.ts is left behind
    kill_when(command("export", runs), runs / RUN / "run_record_exporting.json")
    model_ts = models / "model.ts"
    assert not model_ts.exists() or torch.jit.load(str(model_ts)) is not None
    finish(command("export", runs))
    assert torch.equal(exported_output(model_ts), uninterrupted[1])
