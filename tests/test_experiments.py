"""The experiment commands (AR sweep, backbone table) and the dataset configs.

The two end-to-end tests train real cells (NDM + UDM ensembles, ASR-Nets, evaluation) on tiny
phantoms through ``python -m ddad_bundle experiment``; the others check splits, sizes, errors,
aggregation and that every configs/datasets/*.json resolves.
"""

import csv
import json
import re

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from conftest import BUNDLE_ROOT
from ddad_bundle.cli import main as cli_main
from scripts.tools import experiments
from scripts.tools.experiments import (
    AR_STEPS,
    SWEEP_SCORES,
    TABLE_SCORES,
    ExperimentError,
    Schedule,
    aggregate,
    format_entry,
    prepare,
    run_cell,
    sweep_size,
    sweep_splits,
)
from scripts.data.cache import root_cause
from scripts.data.splits import SplitError, load_split

CONFIGS = BUNDLE_ROOT / "configs"
# The smallest phantom protocol with every AR of the 20% grid feasible: |D_u| = 5 (0..5 abnormal).
TINY_SIZES = dict(n_normal=16, n_validation=4, n_test_normal=5, n_test_abnormal=5, n_unlabeled=5)
TINY_CLI = [
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
    "--lr_schedule",
    "cosine",
] + [a for k, v in TINY_SIZES.items() for a in (f"--{k}", str(v))]


def tiny_source(out, **sizes):
    return prepare("phantom", out, split_seed=0, sizes=dict(TINY_SIZES, **sizes), phantom_size=32)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- dataset configs


def dataset_parser(name, **overrides):
    parser = ConfigParser()
    parser.read_config(
        [str(CONFIGS / f) for f in ("common.json", "train.json")] + [str(CONFIGS / "datasets" / f"{name}.json")]
    )
    parser.update(overrides)
    return parser


@pytest.mark.parametrize(
    "name,modality", [("rsna", "cxr"), ("vindr", "cxr"), ("brain_tumor", "brain"), ("lag", "fundus")]
)
def test_prepared_dataset_config_resolves_the_prepared_split(tmp_path, name, modality):
    (tmp_path / "split.json").write_text("{}")
    parser = dataset_parser(name, data_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    assert (parser["dataset"], parser["modality"], parser["image_size"], parser["channels"]) == (name, modality, 64, 1)
    assert parser.get_parsed_content("split_file") == str(tmp_path / "split.json")
    assert parser.get_parsed_content("experiment") == f"{modality}_{name}_ae"
    assert len(parser.get_parsed_content("preprocessing").transforms) >= 4


@pytest.mark.parametrize("name", ["rsna", "lag"])
def test_prepared_dataset_config_without_data_dir_names_the_key_and_command(name):
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error; the CLI reports the one underneath
        dataset_parser(name).get_parsed_content("split_file")
    assert isinstance(root_cause(failure.value), SplitError)
    assert re.search(f"'data_dir'.*scripts.tools.preparation {name}", str(root_cause(failure.value)))


def test_phantom_and_folder_configs_resolve(tmp_path):
    phantom = dataset_parser(
        "phantom",
        runs_dir=str(tmp_path),
        **{
            "phantom#n_normal": 4,
            "phantom#n_validation": 0,
            "phantom#n_unlabeled": 0,
            "phantom#n_test_normal": 1,
            "phantom#n_test_abnormal": 1,
            "phantom#size": 32,
        },
    )
    assert load_split(phantom.get_parsed_content("split_file")).counts()["test"] == 2
    for folder in ("normal", "test/normal", "test/abnormal"):
        (tmp_path / "tree" / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / "tree" / folder / f"{i}.png")
    folder = dataset_parser("folder", data_dir=str(tmp_path / "tree"), runs_dir=str(tmp_path / "runs"))
    assert folder["dataset"] == "folder"
    assert load_split(folder.get_parsed_content("split_file")).counts()["test_abnormal"] == 2


# ----------------------------------------------------------------------------- splits and sizes


def test_sweep_splits_change_only_d_u_and_keep_exact_rates(tmp_path):
    source = tiny_source(tmp_path)
    size = sweep_size(source, AR_STEPS, split_seed=0)
    assert size["n_unlabeled"] == 5 and (size["free_normal"], size["free_abnormal"]) == (5, 5)
    splits = {ar: load_split(path) for ar, path in sweep_splits(source, AR_STEPS, 5, 0, tmp_path / "s").items()}
    first = splits[0.0]
    for ar, split in splits.items():
        assert split.anomaly_rate() == pytest.approx(ar) and len(split.unlabeled) == 5
        for name in ("normal", "validation", "test"):
            assert getattr(split, name) == getattr(first, name), (ar, name)
        assert all("mask" in e for e in split.test) and not any("mask" in e for e in split.unlabeled)
        assert not {e["image"] for e in split.unlabeled} & {e["image"] for e in split.test + split.normal}


def test_infeasible_ar_request_names_the_numbers(tmp_path, capsys):
    source = tiny_source(tmp_path)
    with pytest.raises(
        ExperimentError,
        match=r"\|D_u\| = 10 is infeasible at AR 0%: it needs 10 normal images "
        r"for D_u and 5 are available \(the normal pool has 30 images",
    ):
        sweep_size(source, AR_STEPS, 0, n_unlabeled=10)
    with pytest.raises(SplitError, match="not a whole number"):
        sweep_size(source, AR_STEPS, 0, n_unlabeled=4)  # 20% of 4 is 0.8 images
    with pytest.raises(ExperimentError, match="no \\|D_u\\| is feasible"):
        sweep_size(tiny_source(tmp_path / "b", n_unlabeled=0), AR_STEPS, 0)
    # the command line says the same in one line, exit status 2, before any cell runs
    code = cli_main(["experiment", "ar_sweep", "--out", str(tmp_path / "cli")] + TINY_CLI[:-2] + ["--n_unlabeled", "4"])
    assert code == 2 and "n_unlabeled 4 asks for 0.8 abnormal unlabeled images" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "cells").exists()


def test_aggregation_mean_and_sample_std():
    assert aggregate([0.8, 0.9]) == (pytest.approx(0.85), pytest.approx(0.0707107, abs=1e-6))
    assert format_entry([0.8, 0.9]) == "0.850 ± 0.071"
    assert format_entry([0.8125]) == "0.812" and aggregate([0.8125]) == (0.8125, None)
    assert format_entry([]) == "n/a" and format_entry([None]) == "n/a"


# ----------------------------------------------------------------------------- end to end


def check_auc(value):
    assert 0.0 <= float(value) <= 1.0


@pytest.mark.slow
def test_ar_sweep_end_to_end_then_resumes_without_rerunning(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli_main(["experiment", "ar_sweep", "--out", str(out)] + TINY_CLI) == 0
    rows = read_csv(out / "ar_sweep.csv")
    assert [float(r["anomaly_rate"]) for r in rows] == list(AR_STEPS)
    for r in rows:
        assert (
            r["n_unlabeled"] == "5"
            and r["n_seeds"] == "1"
            and int(r["n_unlabeled_abnormal"]) == round(5 * float(r["anomaly_rate"]))
        )
        for score in SWEEP_SCORES:
            check_auc(r[score])
            assert r[f"{score}_std"] == ""  # one seed: no spread
    markdown = (out / "ar_sweep.md").read_text()
    assert "|D_u| = 5 at every AR" in markdown
    assert all(f"| {round(100 * ar)}% | 5 ({round(5 * ar)}) |" in markdown for ar in AR_STEPS)
    assert all(score in markdown.splitlines()[2] for score in SWEEP_SCORES)
    assert (out / "ar_sweep.png").stat().st_size > 10_000
    assert not list(out.glob("cells/*/*/eval/histograms.png"))  # --no_figures: tables only
    metrics = json.loads((out / "cells" / "ar060_ae_seed0" / "cxr_phantom_ae" / "eval" / "metrics.json").read_text())
    assert float(rows[3]["A_inter"]) == pytest.approx(metrics["A_inter"]["auc"], abs=1e-6)

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/eval/metrics.json")}
    assert len(stamps) == len(AR_STEPS)
    capsys.readouterr()
    assert cli_main(["experiment", "ar_sweep", "--out", str(out)] + TINY_CLI) == 0
    assert capsys.readouterr().out.count("finished earlier, not rerun") == len(AR_STEPS)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert read_csv(out / "ar_sweep.csv") == rows

    # the same cell under another protocol is refused, not silently mixed into the table
    cell = experiments.Cell("ar060_ae_seed0", out / "cells" / "ar060_ae_seed0", {"epochs": 2}, None)
    with pytest.raises(ExperimentError, match="other settings"):
        run_cell(cell)


@pytest.mark.slow
def test_backbone_table_end_to_end(tmp_path):
    out = tmp_path / "table"
    assert cli_main(["experiment", "backbones", "--out", str(out)] + TINY_CLI) == 0
    rows = read_csv(out / "backbones.csv")
    assert [r["score"] for r in rows] == list(TABLE_SCORES)
    for r in rows:
        for backbone in ("ae", "memae", "aeu"):
            check_auc(r[backbone])
            assert r[f"{backbone}_n_seeds"] == "1"
    markdown = (out / "backbones.md").read_text()
    assert "| score | AE | MemAE | AE-U |" in markdown and "|D_u| = 5 at AR 60%" in markdown
    split = load_split(next((out / "splits").glob("backbones_*.json")))
    assert split.anomaly_rate() == pytest.approx(0.6)
    runs = read_csv(out / "backbones_runs.csv")
    assert sorted(r["backbone"] for r in runs) == ["ae", "aeu", "memae"]


def test_schedule_settings_pass_overrides_and_epochs():
    schedule = Schedule([0, 1], epochs=3, asr_epochs=None, overrides={"batch_size": 16})
    assert schedule.settings() == {"batch_size": 16, "progress_bar": False, "epochs": 3}
    assert "seeds 0 1" in schedule.describe()


def test_prepared_and_folder_data_become_labeled_pools(tmp_path):
    from scripts.data.phantoms import generate_phantom_dataset

    # a phantom data set stands in for a prepared one: a ddad-split/1 file with a labeled D_u
    generate_phantom_dataset(
        tmp_path / "prep",
        n_normal=12,
        n_validation=0,
        n_unlabeled=10,
        anomaly_rate=0.6,
        n_test_normal=4,
        n_test_abnormal=4,
        size=32,
    )
    source = prepare("rsna", tmp_path / "out", data_dir=tmp_path / "prep")
    assert (len(source.normal), len(source.abnormal)) == (12 + 4 + 4, 6 + 4)
    assert source.sizes == dict(n_normal=11, n_validation=1, n_unlabeled=10, n_test_normal=4, n_test_abnormal=4)
    assert source.settings["data_dir"] == str(tmp_path / "prep") and source.own_split
    with pytest.raises(ExperimentError, match="no \\|D_u\\| is feasible.*of which 4 are left for D_u"):
        sweep_size(source, AR_STEPS, 0)  # 4 normals left, and the 20% grid needs multiples of 5
    size = sweep_size(source, [0.0, 0.5], 0)  # 4 normals and 6 abnormals left: |D_u| 4 at rates 0 and 0.5
    assert (size["n_unlabeled"], size["free_normal"], size["free_abnormal"]) == (4, 4, 6)

    for folder, n in (("normal", 6), ("test/normal", 2), ("test/abnormal", 3), ("unlabeled", 2)):
        (tmp_path / "tree" / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(tmp_path / "tree" / folder / f"{i}.png")
    source = prepare("folder", tmp_path / "out2", data_dir=tmp_path / "tree")
    assert (len(source.normal), len(source.abnormal)) == (8, 3)  # unlabeled/ has no labels: not a pool
    assert source.sizes == dict(n_normal=3, n_validation=1, n_test_normal=2, n_test_abnormal=3)
