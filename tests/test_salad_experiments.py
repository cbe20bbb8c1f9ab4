"""SALAD in the experiment commands: the method comparison (DDAD, SALAD, trivial baselines on one
split) and the AR sweep with ``--method salad``, on tiny phantoms; the baselines by hand."""

import csv

import numpy as np
import pytest

from ddad_bundle.cli import main as cli_main
from scripts.tools.baselines import baseline_statistics
from scripts.tools.experiments import SALAD_SCORES, TABLE_SCORES, Schedule

TINY_SIZES = dict(n_normal=16, n_validation=4, n_test_normal=5, n_test_abnormal=5, n_unlabeled=5)
TINY = [
    "--no_figures",
    "--epochs",
    "1",
    "--asr_epochs",
    "1",
    "--phantom_size",
    "32",
    "--image_size",
    "32",
    "--num_members",
    "2",
    "--batch_size",
    "8",
    "--asr_batch_size",
    "8",
    "--n_bootstrap",
    "10",
    "--salad_pretrain_epochs",
    "1",
    "--salad_round_epochs",
    "1",
    "--salad_neighbours",
    "[2]",
    "--salad_prototype_fractions",
    "[1.0]",
    "--salad_k",
    "5",
] + [a for k, v in TINY_SIZES.items() for a in (f"--{k}", str(v))]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_baselines_are_the_image_statistics():
    train = np.stack([np.full((1, 2, 2), v) for v in (0.0, 1.0)])  # mean normal: 0.5 everywhere
    test = np.array([[[[0.0, 1.0], [1.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    stats = baseline_statistics(train, test)
    assert stats["mean intensity"].tolist() == [0.5, 0.5]
    assert stats["intensity std"].tolist() == [0.5, 0.0]
    assert stats["L2 to mean normal"].tolist() == [1.0, 0.0]


def test_salad_cells_get_salad_keys_and_not_ddads_epochs():
    schedule = Schedule(
        [0],
        epochs=5,
        asr_epochs=2,
        overrides={"image_size": 32, "asr_batch_size": 8},
        salad={"salad_pretrain_epochs": 3},
    )
    salad = schedule.settings_for("salad")
    assert salad["salad_pretrain_epochs"] == 3 and salad["image_size"] == 32
    assert "epochs" not in salad and "asr_epochs" not in salad and "asr_batch_size" not in salad
    ddad = schedule.settings_for("ddad")
    assert ddad["epochs"] == 5 and "salad_pretrain_epochs" not in ddad


@pytest.mark.slow
def test_compare_trains_both_methods_on_one_split_beside_the_baselines(tmp_path, capsys):
    out = tmp_path / "compare"
    args = ["experiment", "compare", "--dataset", "phantom", "--out", str(out)] + TINY
    assert cli_main(args) == 0
    rows = read_csv(out / "compare.csv")
    methods = {(r["method"], r["score"]) for r in rows}
    assert {("DDAD (AE)", s) for s in TABLE_SCORES} <= methods
    assert {("SALAD", s) for s in SALAD_SCORES} <= methods
    assert {("baseline", b) for b in ("mean intensity", "intensity std", "L2 to mean normal")} <= methods
    assert all(0.0 <= float(r["auc"]) <= 1.0 for r in rows)
    markdown = (out / "compare.md").read_text()
    assert "| SALAD | A_knn |" in markdown and "| trivial baseline | intensity std |" in markdown
    runs = read_csv(out / "compare_runs.csv")
    assert sorted(r["method"] for r in runs) == ["ddad", "salad"]
    # both cells read the one split file
    split_files = list((out / "splits").glob("*.json"))
    assert len(split_files) == 1
    for cell in ("ddad_ae_seed0", "salad_seed0"):
        assert str(split_files[0]) in (out / "cells" / cell / "cell.json").read_text()
    capsys.readouterr()
    assert cli_main(args) == 0  # finished cells are not rerun
    assert capsys.readouterr().out.count("finished earlier, not rerun") == 2


@pytest.mark.slow
def test_ar_sweep_runs_salad_cells(tmp_path):
    out = tmp_path / "sweep"
    assert (
        cli_main(
            [
                "experiment",
                "ar_sweep",
                "--method",
                "salad",
                "--dataset",
                "phantom",
                "--ars",
                "0",
                "0.2",
                "--out",
                str(out),
            ]
            + TINY
        )
        == 0
    )
    rows = read_csv(out / "ar_sweep.csv")
    assert [float(r["anomaly_rate"]) for r in rows] == [0.0, 0.2]
    assert all(r["A_knn"] != "" and r["A_mse"] != "" for r in rows)
    assert "method SALAD" in (out / "ar_sweep.md").read_text()
    assert (out / "cells" / "ar000_salad_seed0" / "cxr_phantom_salad" / "eval" / "metrics.json").is_file()
