"""TorchScript export: one file with the whole pipeline that reproduces the Python maps."""

import json

import nibabel as nib
import pytest
import torch

from conftest import BUNDLE_ROOT
from ddad_bundle.cli import main as cli_main
from scripts.engines.evaluation import has_trained_udm, load_pipeline
from scripts.networks.backbones import build_backbone
from scripts.scoring.pipeline import DeployedPipeline


@pytest.fixture(scope="module")
def exported(cxr_run, tmp_path_factory):
    """The shared CXR run exported once: (model.ts path, scripted module, embedded extra files as bytes)."""
    runs_dir, _ = cxr_run
    model_ts = tmp_path_factory.mktemp("export") / "model.ts"
    assert cli_main(["export", "--runs_dir", str(runs_dir), "--image_size", "32", "--model_ts", str(model_ts)]) == 0
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(model_ts), _extra_files=extra)
    return model_ts, scripted, extra


@pytest.mark.slow
def test_model_ts_gives_the_python_pipeline_maps(cxr_run, exported):
    runs_dir, output_dir = cxr_run
    _, scripted, extra = exported
    metadata = json.loads(extra["metadata.json"])
    # deploy_score auto: the score threshold.json chose, with the reason for the choice
    score = json.loads((output_dir / "models" / "threshold.json").read_text())["score"]
    assert metadata["ddad"]["score"] == score and "threshold" in metadata["ddad"] and metadata["ddad"]["reason"]
    embedded = json.loads(extra["inference.json"])
    assert embedded["evaluator"]["_target_"] == "SupervisedEvaluator"
    assert embedded["network"]["_target_"] == "scripts.scoring.pipeline.DeployedPipeline"

    ckpt_dir = output_dir / "models"
    pipeline = load_pipeline(lambda: build_backbone("ae", 1, 32, 16), ckpt_dir, 3, has_trained_udm(ckpt_dir), False)
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = pipeline(images)[score]
        got = scripted(images)
    assert got.shape == (4, 1, 32, 32)
    assert torch.allclose(got, expected, atol=1e-5)
    # the image score the inference config derives from `pred`
    assert torch.allclose(got.flatten(1).mean(1), expected.flatten(1).mean(1), atol=1e-6)


def test_deployed_pipeline_scripts_without_refiners():
    from scripts.scoring.pipeline import DDADPipeline

    members = [build_backbone("aeu", 1, 16, 4).eval() for _ in range(2)]
    pipeline = DDADPipeline(members, [], heteroscedastic=True)
    deployed = DeployedPipeline(pipeline)
    assert deployed.score_name == "A_intra"
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(torch.jit.script(deployed)(x), pipeline(x)["A_intra"], atol=1e-6)


# ----------------------------------------------------------------------------- bundle verification

CONFIGS = BUNDLE_ROOT / "configs"


def test_metadata_promises_a_float_map():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["type"] == "series"  # float map, not cast to uint8


def test_verify_net_in_out_checks_the_deployed_architecture(tmp_path):
    from monai.bundle import verify_net_in_out

    configs = [str(CONFIGS / "common.json"), str(CONFIGS / "inference.json")]
    verify_net_in_out(
        net_id="deployed_network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=configs,
        device="cpu",
        image_size=32,
        **{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32]},
    )
    # and it can fail: metadata promising a 2-channel output is refused
    wrong = json.loads((CONFIGS / "metadata.json").read_text())
    wrong["network_data_format"]["outputs"]["pred"]["num_channels"] = 2
    (tmp_path / "metadata.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(
            net_id="deployed_network_def",
            meta_file=str(tmp_path / "metadata.json"),
            config_file=configs,
            device="cpu",
            image_size=32,
            **{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32]},
        )


def test_deployed_architecture_refuses_dual_without_udm():
    from scripts.deployment.export import deployed_architecture

    with pytest.raises(ValueError, match="has_udm"):
        deployed_architecture(lambda: build_backbone("ae", 1, 16, 4), 2, has_udm=False, refiner="dual")


@pytest.mark.slow
def test_exported_model_passes_verify_net_in_out_and_its_config_scores_like_the_pipeline(cxr_run, exported, tmp_path):
    from monai.bundle import ConfigParser, verify_net_in_out

    runs_dir, output_dir = cxr_run
    model_ts, scripted, extra = exported
    metadata, config = json.loads(extra["metadata.json"]), json.loads(extra["inference.json"])
    # the embedded metadata and config describe this run (32x32), not the repository defaults (64x64)
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    assert config["image_size"] == 32
    threshold = json.loads((output_dir / "models" / "threshold.json").read_text())
    # deploy_score auto: the tiny run's refiner is not reliable, so threshold.json's choice (A_inter) is exported
    assert config["decision_threshold"] == pytest.approx(threshold["threshold"])
    assert config["deploy_score"] == threshold["score"] == json.loads(extra["metadata.json"])["ddad"]["score"]
    (tmp_path / "metadata.json").write_bytes(extra["metadata.json"])
    verify_net_in_out(
        net_id="exported_network",
        meta_file=str(tmp_path / "metadata.json"),
        device="cpu",
        config_file=[str(CONFIGS / n) for n in ("common.json", "inference.json", "export.json")],
        model_ts=str(model_ts),
    )

    # the embedded config's evaluator, run as a deployment runs it (network = model.ts): score = spatial
    # mean of pred at the model's resolution, label from the threshold, the map at the input's resolution
    data = json.loads((runs_dir / "data" / "cxr_phantom" / "split.json").read_text())
    source = runs_dir / "data" / "cxr_phantom" / data["test"][0]["image"]
    parser = ConfigParser(config)
    parser["network"], parser["device"] = scripted, torch.device("cpu")
    parser["input_paths"], parser["inference_dir"] = [str(source)], str(tmp_path / "deployed")
    evaluator = parser.get_parsed_content("evaluator", lazy=False)
    evaluator.run()
    row = evaluator.state.inference_summary["files"][0]
    from scripts.data.readers import load_image

    image = load_image(str(source))
    prepared = parser.get_parsed_content("preprocessing")({"image": str(source)})["image"]
    with torch.no_grad():
        pred = scripted(prepared[None].float())[0]
    assert row["status"] == "ok" and row["score"] == pytest.approx(float(pred.mean()), abs=1e-6)
    assert row["label"] == ("abnormal" if row["score"] > threshold["threshold"] else "normal")
    written = nib.load(str(tmp_path / "deployed" / row["map_file"])).get_fdata()
    assert written.shape == tuple(image.shape[1:])[::-1]  # back at the input's resolution (NIfTI: x, y)


@pytest.mark.slow
def test_export_of_another_score_carries_its_map_and_threshold(cxr_run, tmp_path):
    runs_dir, output_dir = cxr_run
    model_ts = tmp_path / "model.ts"
    assert (
        cli_main(
            [
                "export",
                "--runs_dir",
                str(runs_dir),
                "--image_size",
                "32",
                "--model_ts",
                str(model_ts),
                "--deploy_score",
                "A_inter",
            ]
        )
        == 0
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(model_ts), _extra_files=extra)
    thresholds = json.loads((output_dir / "models" / "threshold.json").read_text())["thresholds"]
    inference = json.loads(extra["inference.json"])
    assert inference["deploy_score"] == "A_inter"
    assert inference["decision_threshold"] == pytest.approx(thresholds["A_inter"])
    assert json.loads(extra["metadata.json"])["ddad"]["score"] == "A_inter"
    ckpt_dir = output_dir / "models"
    pipeline = load_pipeline(lambda: build_backbone("ae", 1, 32, 16), ckpt_dir, 3, has_trained_udm(ckpt_dir), False)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(scripted(images), pipeline(images)["A_inter"], atol=1e-5)
