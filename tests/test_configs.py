"""Every config file parses, every workflow resolves its components, and typos are refused."""

import json
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT
from scripts.runtime.config_guard import ConfigKeyError, check_overrides, parse_run_argv

CONFIGS = BUNDLE_ROOT / "configs"
WORKFLOWS = {
    "training": ["common.json", "train.json"],
    "training_asr": ["common.json", "train.json", "train_asr.json"],
    "evaluating": ["common.json", "train.json", "evaluate.json"],
}


def parser_for(files, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.json")), ids=lambda p: p.name)
def test_config_files_are_valid_json(path):
    assert isinstance(json.loads(path.read_text()), dict)


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_workflow_defines_its_run_id_and_initialize(workflow):
    parser = parser_for(WORKFLOWS[workflow])
    assert isinstance(parser[workflow], list) and parser[workflow]
    assert any("record_run" in expr for expr in parser["initialize"])


@pytest.mark.parametrize("backbone,out_channels", [("ae", 1), ("memae", 1), ("aeu", 2)])
def test_network_def_builds_each_backbone(backbone, out_channels):
    net = parser_for(WORKFLOWS["training"], backbone=backbone).get_parsed_content("network_def")()
    assert net.eval()(torch.zeros(1, 1, 64, 64)).shape[1] == out_channels


@pytest.mark.parametrize("modality", ["cxr", "brain", "fundus"])
def test_modality_preprocessing_resolves(modality):
    transform = parser_for(WORKFLOWS["training"], modality=modality).get_parsed_content("preprocessing")
    assert len(transform.transforms) >= 4


def test_unknown_modality_is_named():
    with pytest.raises(Exception, match="modality"):
        parser_for(WORKFLOWS["training"], modality="ct").get_parsed_content("preprocessing")


def test_unknown_backbone_is_named():
    with pytest.raises(Exception, match="backbone"):
        parser_for(WORKFLOWS["training"], backbone="vae").get_parsed_content("network_def")()


def test_paper_defaults_are_the_config_defaults():
    parser = parser_for(WORKFLOWS["training_asr"])
    assert (parser["epochs"], parser["batch_size"], parser["learning_rate"], parser["betas"]) == (250, 64, 5e-4, [0.5, 0.999])
    assert (parser["num_members"], parser["image_size"], parser["latent_size"], parser["backbone"]) == (3, 64, 16, "ae")
    assert (parser["asr_epochs"], parser["asr_batch_size"], parser["asr_learning_rate"], parser["asr_weight_decay"]) == (100, 8, 1e-4, 1e-4)


def test_mistyped_override_is_refused_with_a_hint():
    files = [str(CONFIGS / f) for f in WORKFLOWS["training"]]
    with pytest.raises(ConfigKeyError, match="'epoch'.*did you mean 'epochs'"):
        check_overrides(files, {"epoch": 5})
    with pytest.raises(ConfigKeyError, match="phantom#n_normals"):
        check_overrides(files, {"phantom#n_normals": 5})
    check_overrides(files, {"epochs": 5, "phantom#n_normal": 10, "ndm::batches::batch_size": 8})


def test_monai_bundle_command_line_is_parsed():
    argv = ["/x/monai/bundle/__main__.py", "run", "training", "--config_file", "['a.json','b.json']",
            "--epochs", "5", "--meta_file=m.json", "--phantom#n_normal", "10"]
    assert parse_run_argv(argv) == {"config_files": ["a.json", "b.json"], "overrides": {"epochs": "5", "phantom#n_normal": "10"}}
    assert parse_run_argv(["pytest"]) is None


def test_plain_monai_bundle_run_refuses_a_typo(tmp_path):
    # The documented `python -m monai.bundle run` command, not only our wrapper, must refuse it.
    files = "['configs/common.json','configs/train.json']"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files,
         "--runs_dir", str(tmp_path), "--epoch", "1"],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(BUNDLE_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "unknown config key 'epoch'" in result.stderr and "epochs" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before any work started


def test_metadata_verifies_offline():
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
         "--filepath", "configs/metadata_schema.json"],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "metadata is verified with no error" in (result.stdout + result.stderr)


def test_loss_logs_receive_a_scalar():
    """TensorBoardStatsHandler ignores anything but a number: every loss handler's transform must give one."""
    import json

    outputs = {"ndm": {"loss": 0.3, "ndm_loss": 0.25, "udm_loss": 0.35}, "asr": {"loss": 0.7}}
    parser = parser_for(WORKFLOWS["training"])
    for module in ("ndm", "udm"):
        for k, handler in enumerate(json.loads((CONFIGS / "train.json").read_text())[module]["handlers"]):
            if "output_transform" in handler:
                value = parser.get_parsed_content(f"{module}#handlers#{k}#output_transform")(outputs["ndm"])
                assert value == outputs["ndm"][f"{module}_loss"]
    asr = json.loads((CONFIGS / "train_asr.json").read_text())["asr"]["handlers"]
    parser = parser_for(["common.json", "train.json", "train_asr.json"])
    transforms = [k for k, h in enumerate(asr) if "output_transform" in h]
    assert transforms
    for k in transforms:
        assert parser.get_parsed_content(f"asr#handlers#{k}#output_transform")(outputs["asr"]) == 0.7
