"""Export a trained SALAD run as one TorchScript file (``models/model.ts``).

The file holds ``scripts.scoring.salad_pipeline.DeployedSalad``: input ``image`` (B, C, H, W)
already preprocessed, output ``pred`` (B, 1), the A_knn score, with the encoder and the scoring
bank (D_n's entries by default) inside. No anomaly map: SALAD's score is image-level. Extra files
as DDAD's export writes them: ``metadata.json`` (``network_data_format`` with the exported input
shape and a (B, 1) score output; ``salad`` = {score, threshold, k, ...}) and ``inference.json``
(the run's effective configuration with ``decision_threshold`` written in as a number).
MONAI's ``convert_to_torchscript`` checks that the saved file reproduces the Python module.

    python -m ddad_bundle export --method salad --runs_dir runs/demo_salad
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from monai.networks.utils import convert_to_torchscript

from ..scoring.salad_pipeline import DeployedSalad, SaladPipeline, load_threshold
from .export import effective_config


def salad_metadata(metadata: dict, channels: int, image_size: int, threshold: dict) -> dict:
    meta = copy.deepcopy(metadata)
    fmt = meta.setdefault("network_data_format", {})
    fmt.setdefault("inputs", {}).setdefault("image", {}).update(
        num_channels=int(channels), spatial_shape=[int(image_size)] * 2
    )
    fmt.setdefault("outputs", {})["pred"] = {
        "type": "series",
        "format": "score",
        "num_channels": 1,
        "spatial_shape": [1],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {"0": "A_knn anomaly score"},
    }
    meta["salad"] = dict(threshold)
    return meta


def export_torchscript(
    pipeline: SaladPipeline,
    path,
    channels: int,
    image_size: int,
    threshold: dict,
    metadata: dict | None = None,
    configs: dict | None = None,
) -> Path:
    """Script, save and verify ``DeployedSalad``; ``configs``: {name: content} embedded as ``<name>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = DeployedSalad(pipeline.cpu()).eval()
    meta = salad_metadata(metadata or {}, channels, image_size, threshold)
    extra = {
        "metadata.json": json.dumps(meta),
        **{f"{name}.json": json.dumps(content, default=str) for name, content in (configs or {}).items()},
    }
    example = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    convert_to_torchscript(
        module,
        filename_or_obj=str(path),
        extra_files=extra,
        verify=True,
        inputs=[example],
        device=torch.device("cpu"),
        rtol=1e-4,
        atol=1e-5,
    )
    return path


def export_run(pipeline: SaladPipeline, path, channels: int, image_size: int, ckpt_dir, output_dir=None) -> Path:
    """Export a SALAD run folder's model with its threshold and effective config embedded."""
    configs_dir = Path(__file__).resolve().parents[2] / "configs"
    metadata = json.loads((configs_dir / "metadata.json").read_text())
    threshold = load_threshold(ckpt_dir)
    inference = effective_config(output_dir if output_dir is not None else Path(ckpt_dir).parent, configs_dir)
    inference["decision_threshold"] = float(threshold["threshold"])
    out = export_torchscript(pipeline, path, channels, image_size, threshold, metadata, {"inference": inference})
    print(f"exported SALAD (A_knn, no map) to {out}")
    return out
