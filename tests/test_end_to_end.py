"""Small end-to-end runs of the bundle's workflows on generated phantoms, one per modality.

Each run trains the NDM and UDM ensembles and the ASR-Nets, then evaluates, through the same
`monai.bundle run` machinery as the documented commands, with a tiny schedule.
"""

import json

import pytest

from conftest import run_bundle
from scripts.scoring.scores import ALL_SCORES


def check_metrics(output_dir, n_test=40):
    metrics = json.loads((output_dir / "eval" / "metrics.json").read_text())
    assert list(metrics) == list(ALL_SCORES)
    for name, entry in metrics.items():
        for key in ("auc", "ap", "pixel_auroc", "auc_ci95", "f1_max", "sens_at_spec95", "chi2"):
            assert key in entry, (name, key)
        assert 0.0 <= entry["auc"] <= 1.0 and 0.0 <= entry["ap"] <= 1.0
    assert len(metrics["A_rec"]["auc_per_member"]) == 3
    csv_lines = (output_dir / "eval" / "scores.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + n_test
    assert csv_lines[0].split(",")[:2] == ["image", "label"]
    for figure in ("histograms.png", "maps.png"):
        assert (output_dir / "eval" / figure).stat().st_size > 10_000
    return metrics


@pytest.mark.slow
def test_cxr_phantoms_end_to_end(cxr_run):
    _, output_dir = cxr_run
    metrics = check_metrics(output_dir)
    assert metrics["A_inter"]["auc"] > 0.6
    # The run folder is shared with the export and deployment tests, which add their own records.
    records = {p.name for p in output_dir.glob("run_record_*.json")}
    assert records >= {"run_record_evaluating.json", "run_record_training.json", "run_record_training_asr.json"}
    record = json.loads((output_dir / "run_record_training.json").read_text())
    assert record["seed"] == 0 and record["versions"]["monai"] and record["config"]["epochs"] == 20
    selection = json.loads((output_dir / "models" / "asr_selection.json").read_text())
    assert set(selection["refiners"]) == {"dual", "intra"}
    threshold = json.loads((output_dir / "models" / "threshold.json").read_text())
    # deploy_score auto: R_dual only where stage 2 marked its refiner reliable, else A_inter
    expected = "R_dual" if selection["refiners"]["dual"]["reliable"] else "A_inter"
    assert threshold["score"] == expected and threshold["specificity"] == 0.95


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["brain", "fundus"])
def test_other_modalities_end_to_end(tmp_path, modality):
    check_metrics(run_bundle(tmp_path, modality, epochs=2))


@pytest.mark.slow
def test_without_unlabeled_images_only_one_class_scores_and_r_intra(tmp_path):
    output_dir = run_bundle(tmp_path, "cxr", epochs=2, **{"phantom#n_unlabeled": 0})
    metrics = json.loads((output_dir / "eval" / "metrics.json").read_text())
    assert list(metrics) == ["A_rec", "A_rec_ensemble", "A_intra", "R_intra"]
    assert not list((output_dir / "models").glob("udm_*"))
    selection = json.loads((output_dir / "models" / "asr_selection.json").read_text())
    expected = "R_intra" if selection["refiners"]["intra"]["reliable"] else "A_rec_ensemble"
    assert json.loads((output_dir / "models" / "threshold.json").read_text())["score"] == expected
