"""SALAD through the bundle's workflows on phantoms: fit (training + evaluating), the report, the
stored threshold, scoring new files, TorchScript export, and the experiment commands.

One small run (32 px, 140 training images, a shortened schedule) is trained once per session
through ``python -m ddad_bundle fit --method salad`` and shared by the tests.
"""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE_ROOT
from ddad_bundle.cli import main as cli_main
from scripts.runtime.workflows import run_workflow
from scripts.data.cache import cache_images
from scripts.data.splits import datalist, load_split
from scripts.scoring.salad_pipeline import SaladPipeline, load_pipeline
from scripts.networks.salad import SALADNet

TINY = [
    "--image_size",
    "32",
    "--phantom#size",
    "64",
    "--phantom#n_normal",
    "80",
    "--phantom#n_validation",
    "12",
    "--phantom#n_unlabeled",
    "60",
    "--phantom#n_test_normal",
    "20",
    "--phantom#n_test_abnormal",
    "20",
    "--n_bootstrap",
    "50",
    "--progress_bar",
    "false",
    "--save_every",
    "4",
    "--salad_k",
    "20",
]
SCHEDULE = [
    "--salad_pretrain_epochs",
    "6",
    "--salad_round_epochs",
    "2",
    "--salad_neighbours",
    "[2, 4, 6]",
    "--salad_prototype_fractions",
    "[0.5, 0.75, 1.0]",
]
METRIC_KEYS = {"auc", "ap", "auc_ci95", "f1_max", "sens_at_spec95"}


@pytest.fixture(scope="module")
def salad_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("salad_runs")
    assert cli_main(["fit", "--method", "salad", "--runs_dir", str(runs)] + TINY + SCHEDULE) == 0
    return runs, runs / "cxr_phantom_salad"


def overrides(runs, **extra):
    pairs = dict(zip(TINY[::2], TINY[1::2]))
    settings = {
        k[2:]: json.loads(v) if v[0] in "0123456789[tf" else v for k, v in pairs.items() if k != "--n_bootstrap"
    }  # an evaluation key: the export's configs do not define it
    return dict(settings, runs_dir=str(runs), **extra)


def _pipeline(run) -> SaladPipeline:
    net = lambda: SALADNet(1, 32)  # noqa: E731
    return load_pipeline(net, run / "models", k=20)


@pytest.mark.slow
def test_fit_writes_ddads_report_for_salads_scores_and_separates_lesions(salad_run):
    _, run = salad_run
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics) == ["A_knn", "A_mse"]
    for entry in metrics.values():
        assert METRIC_KEYS <= set(entry)
        assert entry["auc_ci95"][0] <= entry["auc"] <= entry["auc_ci95"][1]
    assert "pixel_auroc" in metrics["A_mse"] and "pixel_auroc" not in metrics["A_knn"]
    # phantom lesions are separated after a short schedule
    assert metrics["A_knn"]["auc"] >= 0.75, metrics["A_knn"]
    with open(run / "eval" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {"image", "label", "A_knn", "A_mse"} <= set(rows[0])
    assert all(0.0 <= float(r["A_knn"]) <= 1.0 for r in rows)
    assert (run / "eval" / "histograms.png").is_file()
    assert (run / "models" / "salad_member0.pt").is_file()
    report = (run / "eval" / "report.html").read_text()  # the evaluation page, galleries on the score with maps
    assert "Score: <b>A_mse</b>" in report and "<td>A_knn</td>" in report and "Trivial baselines" in report


@pytest.mark.slow
def test_threshold_is_chosen_on_validation_normals(salad_run):
    _, run = salad_run
    record = json.loads((run / "models" / "threshold.json").read_text())
    assert record["method"] == "salad" and record["score"] == "A_knn" and record["n_validation"] == 12
    assert record["n_normal"] == 80 and record["scoring_bank_entries"] == 80
    pipeline = _pipeline(run)
    split_file = next((run.parent / "data").rglob("split.json"))
    split = load_split(split_file)
    parser_pre = _preprocessing()
    validation = cache_images(datalist(split.validation), parser_pre, "validation")
    with torch.no_grad():
        scores = pipeline(validation)["A_knn"].numpy()
    # at most 5% of the validation normals above it, and it is one of their scores' order statistics
    assert np.mean(scores > record["threshold"]) <= 0.05
    assert np.min(np.abs(scores - record["threshold"])) < 1e-5


def _preprocessing():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / "common.json")])
    parser.update({"image_size": 32})
    return parser.get_parsed_content("preprocessing")


@pytest.mark.slow
def test_score_new_files_gives_score_and_label_and_says_there_is_no_map(salad_run, tmp_path):
    runs, run = salad_run
    split = load_split(next((run.parent / "data").rglob("split.json")))
    folder = tmp_path / "new"
    folder.mkdir()
    test = split.test[:3]
    for k, entry in enumerate(test):
        Image.open(entry["image"]).save(folder / f"case{k}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "scored"
    assert (
        cli_main(
            [
                "score",
                str(folder),
                "--out",
                str(out),
                "--method",
                "salad",
                "--runs_dir",
                str(runs),
                "--image_size",
                "32",
                "--salad_k",
                "20",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "salad" and summary["map"].startswith("none")
    assert summary["n_files"] == 4 and summary["n_scored"] == 3 and summary["n_errors"] == 1
    broken = [r for r in summary["files"] if r["status"] == "error"]
    assert "broken.png" in broken[0]["file"]
    with open(run / "eval" / "scores.csv", newline="") as f:
        evaluated = {r["image"]: float(r["A_knn"]) for r in csv.DictReader(f)}
    for k, entry in enumerate(test):
        row = next(r for r in summary["files"] if r["file"].endswith(f"case{k}.png"))
        assert row["score"] == pytest.approx(evaluated[entry["image"]], abs=1e-4)
        assert row["label"] == ("abnormal" if row["score"] > summary["threshold"] else "normal")
    assert not list(out.glob("*_map.nii.gz"))


@pytest.mark.slow
def test_export_reproduces_the_python_scores(salad_run):
    runs, run = salad_run
    run_workflow("exporting", overrides(runs), method="salad")
    path = run / "models" / "model.ts"
    extra = {"metadata.json": "", "inference.json": ""}
    exported = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["salad"]["score"] == "A_knn" and meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [
        32,
        32,
    ]
    assert json.loads(extra["inference.json"])["decision_threshold"] == pytest.approx(meta["salad"]["threshold"])
    pipeline = _pipeline(run)
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert exported(x).shape == (5, 1)
        assert torch.allclose(exported(x)[:, 0], pipeline(x)["A_knn"], atol=1e-5)


@pytest.mark.slow
def test_deploy_app_runs_a_salad_model_like_the_score_command(salad_run, tmp_path):
    """The MONAI Deploy application on SALAD's model.ts: the same scores and labels as
    ``score --method salad``, the same output names, and no map (A_knn is image-level)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("monai.deploy", reason="the deploy extra (monai-deploy-app-sdk) is not installed")
    from conftest import REPO_ROOT

    runs, run = salad_run
    run_workflow("exporting", overrides(runs), method="salad")
    split = load_split(next((run.parent / "data").rglob("split.json")))
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    for k, entry in enumerate(split.test[:2]):
        Image.open(entry["image"]).save(inputs / ("sub" if k else ".") / f"case{k}.png")
    out = tmp_path / "deployed"
    env = dict(os.environ, OMP_NUM_THREADS="1", DDAD_DEVICE="cpu", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "ddad_bundle.deploy", "-i", str(inputs), "-o", str(out), "-m", str(run / "models")]
    proc = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scored = tmp_path / "scored"
    args = ["score", str(inputs), "--out", str(scored), "--method", "salad", "--runs_dir", str(runs)]
    assert cli_main(args + ["--image_size", "32", "--salad_k", "20"]) == 0
    deployed = {r["name"]: r for r in json.loads((out / "summary.json").read_text())["files"]}
    python = {r["name"]: r for r in json.loads((scored / "summary.json").read_text())["files"]}
    assert set(deployed) == set(python) == {"case0", "sub__case1"}
    for name, row in deployed.items():
        assert row["status"] == "ok" and row["score_name"] == "A_knn"
        assert row["score"] == pytest.approx(python[name]["score"], abs=1e-5) and row["label"] == python[name]["label"]
    assert json.loads((out / "summary.json").read_text())["map"].startswith("none")
    assert not list(out.glob("*_overlay.png")) and not list(out.glob("*_map.nii.gz"))


def test_salad_configs_stack_on_common_and_reject_a_mistyped_key(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / f) for f in ("common.json", "salad_train.json")])
    parser.update({"runs_dir": str(tmp_path)})
    assert parser.get_parsed_content("experiment") == "cxr_phantom_salad"
    net = parser.get_parsed_content("salad_network_def")()
    assert net.to_embedding.out_features == 200 and net.image_size == 64
    assert parser["salad_k"] == 100 and parser["salad_tau"] == 0.1 and parser["salad_weight"] == 0.25
    assert len(parser["salad_neighbours"]) == 10 and parser["salad_pretrain_epochs"] == 50
    with pytest.raises(ValueError, match="unknown salad workflow 'training_asr'"):
        run_workflow("training_asr", {}, method="salad")
    assert cli_main(["fit", "--method", "salad", "--runs_dir", str(tmp_path), "--salad_kk", "3"]) == 2
