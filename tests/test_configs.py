"""Every config file parses, every workflow resolves its components, and typos are refused."""

import re
import subprocess
import sys

import numpy as np

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT
from scripts.runtime.config_guard import ConfigKeyError, check_overrides, known_keys, parse_overrides, parse_run_argv
from scripts.runtime.workflows import SALAD_WORKFLOW_CONFIGS, WORKFLOW_CONFIGS, config_files_for

CONFIGS = BUNDLE_ROOT / "configs"
WORKFLOWS = WORKFLOW_CONFIGS


def parser_for(files, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    return parser


REFERENCE = re.compile(r"[@%]([A-Za-z_][\w#]*)")


OVERLAYS = [("ddad", w, o) for w in sorted(WORKFLOW_CONFIGS) for o in (None, "demo.json", "datasets/folder.json")]
OVERLAYS.append(("ddad", "training", "multi_gpu_train.json"))  # the torchrun overlay is for stage 1
OVERLAYS += [("salad", w, None) for w in sorted(SALAD_WORKFLOW_CONFIGS)]


@pytest.mark.parametrize("method,workflow,overlay", OVERLAYS)
def test_every_reference_names_a_key_the_workflow_defines(method, workflow, overlay):
    files = config_files_for(workflow, [CONFIGS / overlay] if overlay else None, method)
    merged = ConfigParser.load_config_files(files)
    known = known_keys(files)
    dangling = sorted({ref for text in _strings(merged) for ref in REFERENCE.findall(text)} - known)
    assert not dangling, f"{workflow} + {overlay}: references to undefined keys {dangling}"


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_each_workflow_file_runs_its_own_steps_as_run():
    for workflow in WORKFLOW_CONFIGS:
        merged = ConfigParser.load_config_files(config_files_for(workflow))
        assert merged["run"] == f"%{workflow}", workflow


@pytest.mark.parametrize("backbone,out_channels", [("ae", 1), ("memae", 1), ("aeu", 2)])
def test_network_def_builds_each_backbone(backbone, out_channels):
    net = parser_for(WORKFLOWS["training"], backbone=backbone).get_parsed_content("network_def")()
    assert net.eval()(torch.zeros(1, 1, 64, 64)).shape[1] == out_channels


def test_fundus_takes_the_brain_chain_and_cxr_keeps_the_whole_image(tmp_path):
    from PIL import Image

    # a bright disc off-centre on a dark background: the brain/fundus chain crops to it, cxr does not
    yy, xx = np.mgrid[:96, :128]
    image = np.where((yy - 40) ** 2 + (xx - 50) ** 2 < 30**2, 200, 2).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "disc.png")
    out = {}
    for modality in ("cxr", "brain", "fundus"):
        chain = parser_for(WORKFLOWS["training"], modality=modality).get_parsed_content("preprocessing")
        out[modality] = chain({"image": str(tmp_path / "disc.png")})["image"]
        assert out[modality].shape == (1, 64, 64)
    assert torch.equal(out["brain"], out["fundus"])
    assert not torch.allclose(out["cxr"], out["brain"])
    assert float((out["brain"] > 0).float().mean()) > float((out["cxr"] > 0).float().mean())  # cropped: more disc


def test_unknown_modality_is_named():
    with pytest.raises(Exception, match="modality"):
        parser_for(WORKFLOWS["training"], modality="ct").get_parsed_content("preprocessing")


def test_unknown_backbone_is_named():
    with pytest.raises(Exception, match="backbone"):
        parser_for(WORKFLOWS["training"], backbone="vae").get_parsed_content("network_def")()


def test_mistyped_override_is_refused_with_a_hint():
    files = [str(CONFIGS / f) for f in WORKFLOWS["training"]]
    with pytest.raises(ConfigKeyError, match="'epoch'.*did you mean 'epochs'"):
        check_overrides(files, {"epoch": 5})
    with pytest.raises(ConfigKeyError, match="phantom#n_normals"):
        check_overrides(files, {"phantom#n_normals": 5})
    check_overrides(files, {"epochs": 5, "phantom#n_normal": 10, "ndm::batches::batch_size": 8})


def test_monai_bundle_command_line_is_parsed():
    argv = [
        "/x/monai/bundle/__main__.py",
        "run",
        "training",
        "--config_file",
        "['a.json','b.json']",
        "--epochs",
        "5",
        "--meta_file=m.json",
        "--phantom#n_normal",
        "10",
    ]
    assert parse_run_argv(argv) == {
        "config_files": ["a.json", "b.json"],
        "overrides": {"epochs": 5, "phantom#n_normal": 10},
    }
    assert parse_run_argv(["pytest"]) is None


def test_command_line_overrides_are_parsed_as_literals():
    assert parse_overrides(["--epochs", "5", "--amp=false", "--betas", "[0.5, 0.9]", "--backbone", "aeu"]) == {
        "epochs": 5,
        "amp": False,
        "betas": [0.5, 0.9],
        "backbone": "aeu",
    }
    with pytest.raises(ValueError, match="--epochs has no value"):
        parse_overrides(["--epochs"])
    with pytest.raises(ValueError, match="unexpected argument '5'"):
        parse_overrides(["5"])


def test_plain_monai_bundle_run_refuses_a_typo(tmp_path):
    # The documented `python -m monai.bundle run` command, not only our wrapper, must refuse it.
    files = "['configs/common.json','configs/train.json']"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            files,
            "--runs_dir",
            str(tmp_path),
            "--epoch",
            "1",
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(BUNDLE_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "unknown config key 'epoch'" in result.stderr and "epochs" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before any work started


def test_metadata_verifies_offline():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            "configs/metadata.json",
            "--filepath",
            "configs/metadata_schema.json",
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "metadata is verified with no error" in (result.stdout + result.stderr)


def test_loss_logs_receive_a_scalar():
    """TensorBoardStatsHandler ignores anything but a number: every loss handler's transform must give one."""
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    outputs = {"loss": 0.7, "ndm_loss": 0.25, "udm_loss": 0.35}
    parser = parser_for(WORKFLOWS["training_asr"], runs_dir="/nonexistent", output_dir="/tmp/ddad-config-test")
    checked = 0
    for key, expected in (("ndm#handlers", 0.25), ("udm#handlers", 0.35), ("asr#handlers", 0.7)):
        for handler in parser.get_parsed_content(key):
            if isinstance(handler, (StatsHandler, TensorBoardStatsHandler)):
                assert handler.output_transform(outputs) == expected, key
                checked += 1
    assert checked == 6
