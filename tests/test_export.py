"""TorchScript export: one file with the whole pipeline that reproduces the Python maps."""

import json

import pytest
import torch

from ddad_bundle.cli import main as cli_main
from scripts.evaluation import has_trained_udm, load_pipeline
from scripts.networks import build_backbone
from scripts.pipeline import DeployedPipeline


@pytest.mark.slow
def test_model_ts_gives_the_python_pipeline_maps(cxr_run, tmp_path):
    runs_dir, output_dir = cxr_run
    model_ts = tmp_path / "model.ts"
    assert cli_main(["export", "--runs_dir", str(runs_dir), "--image_size", "32", "--model_ts", str(model_ts)]) == 0

    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(model_ts), _extra_files=extra)
    metadata = json.loads(extra["metadata.json"])
    assert metadata["ddad"]["score"] == "R_dual" and "threshold" in metadata["ddad"]
    assert json.loads(extra["inference.json"])["scorer"]["_target_"] == "scripts.inference.FolderScorer"

    ckpt_dir = output_dir / "models"
    pipeline = load_pipeline(lambda: build_backbone("ae", 1, 32, 16), ckpt_dir, 3, has_trained_udm(ckpt_dir), False)
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = pipeline(images)["R_dual"]
        got = scripted(images)
    assert got.shape == (4, 1, 32, 32)
    assert torch.allclose(got, expected, atol=1e-5)
    # the image score the inference config derives from `pred`
    assert torch.allclose(got.flatten(1).mean(1), expected.flatten(1).mean(1), atol=1e-6)


def test_deployed_pipeline_scripts_without_refiners():
    from scripts.pipeline import DDADPipeline

    members = [build_backbone("aeu", 1, 16, 4).eval() for _ in range(2)]
    pipeline = DDADPipeline(members, [], heteroscedastic=True)
    deployed = DeployedPipeline(pipeline)
    assert deployed.score_name == "A_intra"
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(torch.jit.script(deployed)(x), pipeline(x)["A_intra"], atol=1e-6)
