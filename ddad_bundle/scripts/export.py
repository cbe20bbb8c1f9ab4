"""Export a trained run as one TorchScript file for deployment (MONAI Deploy loads ``model.ts``).

The file holds ``scripts.pipeline.DeployedPipeline`` (every NDM and UDM member, the discrepancy
maps and the ASR-Net), its metadata and the configs it was trained with, embedded as extra files
the way ``monai.bundle ckpt_export`` embeds them. MONAI's ``convert_to_torchscript`` scripts the
module and checks that the saved file reproduces the Python pipeline on a sample batch.

    python -m ddad_bundle export --runs_dir runs/demo [--out runs/demo/cxr_phantom_ae/models/model.ts]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.networks.utils import convert_to_torchscript

from .pipeline import DDADPipeline, DeployedPipeline


def export_torchscript(pipeline: DDADPipeline, path, channels: int, image_size: int, threshold: dict,
                       metadata: dict | None = None, configs: dict | None = None) -> Path:
    """Script, save and verify the deployed pipeline; returns the path of ``model.ts``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = DeployedPipeline(pipeline.cpu()).eval()
    extra = {"metadata.json": json.dumps(dict(metadata or {}, ddad={"score": module.score_name, **threshold})),
             **{f"{name}.json": json.dumps(content) for name, content in (configs or {}).items()}}
    example = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    convert_to_torchscript(module, filename_or_obj=str(path), extra_files=extra, verify=True, inputs=[example],
                           device=torch.device("cpu"), rtol=1e-4, atol=1e-5)
    return path


def export_run(pipeline: DDADPipeline, path, channels: int, image_size: int, ckpt_dir) -> Path:
    """Export a run folder's trained model with the bundle's metadata and configs embedded."""
    from .inference import load_threshold

    configs_dir = Path(__file__).resolve().parents[1] / "configs"
    metadata = json.loads((configs_dir / "metadata.json").read_text())
    configs = {name: json.loads((configs_dir / f"{name}.json").read_text()) for name in ("common", "inference")}
    out = export_torchscript(pipeline, path, channels, image_size, load_threshold(ckpt_dir), metadata, configs)
    print(f"exported {DeployedPipeline(pipeline).score_name} pipeline to {out}")
    return out
