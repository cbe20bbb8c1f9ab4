"""Facts kept in one place: the version, the application image's requirements, published metrics."""

import json
import re
import tomllib

import pytest

from conftest import BUNDLE_ROOT, REPO_ROOT
from ddad_bundle import __version__
from ddad_bundle.cli import main as cli_main
from ddad_bundle.deploy.package import image_requirements
from scripts.tools.publish import eval_metric_entries, eval_metrics_problems, publish_eval_metrics

CONFIGS = BUNDLE_ROOT / "configs"


def test_pyproject_takes_the_version_from_the_package():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ddad_bundle.__version__"}


def test_metadata_and_app_manifest_state_the_package_version():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["version"] == __version__
    assert __version__ in metadata["changelog"]
    manifest = (BUNDLE_ROOT / "deploy" / "app.yaml").read_text()
    assert re.search(r"^\s+version:\s*(\S+)", manifest, re.M).group(1) == __version__


def test_image_requirements_are_generated_from_pyproject():
    written = (BUNDLE_ROOT / "deploy" / "requirements.txt").read_text()
    assert written == image_requirements(), (
        "deploy/requirements.txt is stale: python -m ddad_bundle.deploy.package --write_requirements"
    )


def test_image_requirements_follow_a_changed_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["torch>=2.3", "fire>=0.5", "numpy"]\n'
        '[project.optional-dependencies]\ndeploy = ["highdicom>=0.22", "holoscan-cli>=4.0"]\n'
    )
    lines = [line for line in image_requirements(pyproject).splitlines() if not line.startswith("#")]
    assert lines == ["torch>=2.3", "numpy", "highdicom>=0.22"]  # fire and the packaging tool stay out


METRICS = {"A_inter": {"auc": 0.94812, "ap": 0.9}, "R_dual": {"auc": 0.97751, "ap": 0.95}}


def test_eval_metrics_are_copied_from_a_run(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    metadata = tmp_path / "metadata.json"
    metadata.write_text(
        json.dumps(
            {
                "version": "1.0.0",
                "eval_metrics": {
                    "demo_cxr_phantom_R_dual_image_auc": 0.248,
                    "demo_cxr_phantom_R_intra_image_auc": 0.5,
                    "kermany_cxr_A_inter_image_auc": 0.931,
                },
            }
        )
    )
    assert cli_main(["publish_metrics", str(metrics), "--name", "demo_cxr_phantom", "--metadata", str(metadata)]) == 0
    published = json.loads(metadata.read_text())["eval_metrics"]
    assert published == {
        "demo_cxr_phantom_A_inter_image_auc": 0.948,
        "demo_cxr_phantom_R_dual_image_auc": 0.978,
        "kermany_cxr_A_inter_image_auc": 0.931,
    }  # the run's R_intra-less entries replace the old
    assert json.loads(metadata.read_text())["version"] == "1.0.0"


def test_metadata_eval_metrics_are_what_their_published_runs_give():
    problems = eval_metrics_problems(CONFIGS / "metadata.json")
    assert not problems, "eval_metrics not from a run: python -m ddad_bundle publish_metrics ...\n" + "\n".join(
        problems
    )


def test_an_eval_metric_edited_or_typed_by_hand_is_caught(tmp_path):
    metrics = tmp_path / "run" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(METRICS))
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"version": "1.0.0", "eval_metrics": {}}))
    publish_eval_metrics(metrics, metadata, "demo", ["R_dual"])
    assert eval_metrics_problems(metadata) == []
    content = json.loads(metadata.read_text())
    content["eval_metrics"]["demo_R_dual_image_auc"] = 0.99  # a better number than the run measured
    content["eval_metrics"]["kermany_A_inter_image_auc"] = 0.931  # no run behind it
    metadata.write_text(json.dumps(content))
    problems = eval_metrics_problems(metadata)
    assert len(problems) == 2
    assert "demo_R_dual_image_auc: 0.99" in problems[1] and "gives 0.978" in problems[1]
    assert "kermany_A_inter_image_auc" in problems[0] and "no published run" in problems[0]


def test_a_refined_score_without_learned_signal_is_not_published(tmp_path):
    metrics = {**METRICS, "R_intra": {"auc": 0.859, "selection_reliable": False}}
    metrics["R_dual"] = {**METRICS["R_dual"], "selection_reliable": True}
    assert eval_metric_entries(metrics, "demo") == {"demo_A_inter_image_auc": 0.948, "demo_R_dual_image_auc": 0.978}
    with pytest.raises(ValueError, match="R_intra: the refiner showed no learned signal"):
        eval_metric_entries(metrics, "demo", ["A_inter", "R_intra"])


def test_publishing_a_score_the_run_lacks_is_refused():
    with pytest.raises(KeyError, match="no auc for R_intra"):
        eval_metric_entries(METRICS, "demo", ["R_intra"])
    with pytest.raises(FileNotFoundError, match="evaluating"):
        publish_eval_metrics("/nonexistent/metrics.json", "/nonexistent/metadata.json", "demo")


def test_no_bundle_module_imports_the_command_line_or_the_deploy_app():
    import ast

    offenders = []
    for path in sorted((BUNDLE_ROOT / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(BUNDLE_ROOT)}: {n}" for n in names if n.startswith("ddad_bundle")]
    assert not offenders, offenders
