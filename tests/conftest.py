"""Shared test set-up: the bundle root goes on the import path, as `monai.bundle run` expects,
so that tests import the bundle's code as `scripts.<module>` exactly like the configs do."""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "ddad_bundle"
SHARED = REPO_ROOT.parent / "shared"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers each get one thread: two workers with two threads each on a 2-core
    # machine spin against each other and run several times slower than one thread apiece.
    import torch

    torch.set_num_threads(1)


import pytest  # noqa: E402

# A tiny but complete schedule: both stages and the evaluation run in well under a minute.
TINY_RUN = {
    "image_size": 32,
    "batch_size": 16,
    "lr_schedule": "cosine",
    "progress_bar": False,
    "phantom#size": 64,
    "phantom#n_normal": 80,
    "phantom#n_validation": 12,
    "phantom#n_unlabeled": 60,
    "phantom#n_test_normal": 20,
    "phantom#n_test_abnormal": 20,
    "asr_epochs": 1,
    "asr_batch_size": 8,
    "n_bootstrap": 50,
}
STAGE2_ONLY = ("asr_epochs", "asr_batch_size")
EVAL_ONLY = ("n_bootstrap",)


def run_bundle(runs_dir, modality="cxr", epochs=8, **extra) -> Path:
    """Train both stages and evaluate through the bundle's workflows; returns the run folder."""
    from scripts.runtime.workflows import run_workflow

    settings = dict(TINY_RUN, modality=modality, runs_dir=str(runs_dir), epochs=epochs, **extra)
    pick = lambda drop: {k: v for k, v in settings.items() if k not in drop}  # noqa: E731
    run_workflow("training", pick(STAGE2_ONLY + EVAL_ONLY))
    run_workflow("training_asr", pick(EVAL_ONLY))
    run_workflow("evaluating", pick(STAGE2_ONLY))
    return Path(runs_dir) / f"{modality}_phantom_{settings.get('backbone', 'ae')}"


@pytest.fixture(scope="session")
def cxr_run(tmp_path_factory):
    """A trained and evaluated CXR phantom run shared by the end-to-end and inference tests."""
    runs_dir = tmp_path_factory.mktemp("cxr_runs")
    return runs_dir, run_bundle(runs_dir, "cxr", epochs=20)
