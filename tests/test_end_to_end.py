"""Small end-to-end runs of the bundle's workflows on generated phantoms, one per modality.

Each run trains the NDM and UDM ensembles, the ASR-Nets, and evaluates, through the same
`monai.bundle run` machinery as the documented commands, with a tiny schedule.
"""

import json

import pytest

from ddad_bundle.cli import run_workflow
from scripts.scores import ALL_SCORES

TINY = {
    "image_size": 32,
    "batch_size": 16,
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


def run_all(runs_dir, modality, epochs, **extra):
    settings = dict(TINY, modality=modality, runs_dir=str(runs_dir), epochs=epochs, **extra)
    stage1 = {k: v for k, v in settings.items() if not k.startswith("asr_") and k != "n_bootstrap"}
    run_workflow("training", stage1)
    run_workflow("training_asr", {k: v for k, v in settings.items() if k != "n_bootstrap"})
    run_workflow("evaluating", {k: v for k, v in settings.items() if not k.startswith("asr_")})
    experiment = f"{modality}_phantom_{settings.get('backbone', 'ae')}"
    return runs_dir / experiment


def check_metrics(output_dir):
    metrics = json.loads((output_dir / "eval" / "metrics.json").read_text())
    assert list(metrics) == list(ALL_SCORES)
    for name, entry in metrics.items():
        for key in ("auc", "ap", "pixel_auroc", "auc_ci95", "f1_max", "sens_at_spec95"):
            assert key in entry, (name, key)
        assert 0.0 <= entry["auc"] <= 1.0 and 0.0 <= entry["ap"] <= 1.0
    csv_lines = (output_dir / "eval" / "scores.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 40
    assert csv_lines[0].split(",")[:2] == ["image", "label"]
    return metrics


@pytest.mark.slow
def test_cxr_phantoms_end_to_end(tmp_path):
    output_dir = run_all(tmp_path, "cxr", epochs=8)
    metrics = check_metrics(output_dir)
    assert metrics["A_inter"]["auc"] > 0.6
    records = sorted(p.name for p in output_dir.glob("run_record_*.json"))
    assert records == ["run_record_evaluating.json", "run_record_training.json", "run_record_training_asr.json"]
    record = json.loads((output_dir / "run_record_training.json").read_text())
    assert record["seed"] == 0 and record["versions"]["monai"] and record["config"]["epochs"] == 8
    selection = json.loads((output_dir / "models" / "asr_selection.json").read_text())
    assert set(selection["refiners"]) == {"dual", "intra"}


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["brain", "fundus"])
def test_other_modalities_end_to_end(tmp_path, modality):
    check_metrics(run_all(tmp_path, modality, epochs=2))
