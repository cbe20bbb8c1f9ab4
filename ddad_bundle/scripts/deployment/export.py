"""Export a trained run as one TorchScript file for deployment (MONAI Deploy loads ``model.ts``).

The file holds the inference config's ``network``: for DDAD ``scripts.scoring.pipeline.DeployedPipeline``
(input ``image`` (B, C, H, W) already preprocessed, output ``pred`` (B, 1, H, W), the map of the
deployment score, ``deploy_score``, by default ``auto``: R_dual where its refiner is reliable,
else A_inter, else A_rec_ensemble; every NDM and UDM member, the discrepancy maps and the ASR-Net
inside); for SALAD ``scripts.scoring.salad_pipeline.DeployedSalad`` (output the A_knn score (B, 1),
no map). Beside the weights it carries, as extra files in the layout that ``monai.bundle
ckpt_export`` writes (``extra/metadata.json``, ``extra/inference.json``):

- ``metadata.json``: the bundle metadata, with ``network_data_format`` set to the exported
  shapes (``image_size``, ``channels`` of the run; ``pred`` a map or a score) and, under the
  method's name (``ddad`` or ``salad``), the deployed score, its threshold and why;
- ``inference.json``: the run's *effective* configuration (the merged config files and
  command-line overrides recorded by ``config_guard.record_run``), with the deployed score, its
  reason and ``decision_threshold`` written in as values. A deployment parses it and runs its
  ``evaluator`` with ``network`` set to ``model.ts``: the same dataset, ``preprocessing`` (the
  training transforms), ``postprocessing`` (image score, label, inverted map) and writer as
  ``python -m ddad_bundle score``, so a run trained at ``image_size`` 32 or on a data set config
  with its own transforms is preprocessed the way it was trained;
- ``common.json``: the repository's shared config file as shipped, for reference.

MONAI's ``convert_to_torchscript`` scripts the module and checks that the saved file reproduces
the Python module on a sample batch before the export returns.

    python -m ddad_bundle export --runs_dir runs/demo [--model_ts runs/demo/cxr_phantom_ae/models/model.ts]

``deployed_architecture`` builds DDAD's module with fresh weights from the config alone; the
inference config exposes it as ``deployed_network_def`` so that ``monai.bundle
verify_net_in_out`` checks the deployed architecture against ``network_data_format`` offline,
without a trained run.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from monai.networks.utils import convert_to_torchscript
from torch import nn

from ..networks.asr import ASRNet
from ..scoring.pipeline import DDADPipeline, DeployedPipeline
from ..scoring.scores import REFINER_INPUTS

REFINER_CHOICES = ("dual", "intra", "none")
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
# The config keys a deployment reads as values: it has no run folder to resolve them from.
DEPLOYED_KEYS = ("deploy_score", "deployed_score", "deployed_reason", "decision_threshold")


def deployed_architecture(
    network_def,
    num_members: int = 3,
    has_udm: bool = True,
    refiner: str = "dual",
    heteroscedastic: bool = False,
    asr_width: int = 128,
) -> DeployedPipeline:
    """The deployed pipeline with freshly initialised weights: K NDM and K UDM members from
    ``network_def`` (a callable returning one reconstruction network) and the ASR-Net ``refiner``
    ("dual" = R_dual on [A_inter, A_intra], "intra" = R_intra, "none" = the A_inter/A_intra map).
    The map scales are 1; a trained export carries the stored ones."""
    if refiner not in REFINER_CHOICES:
        raise ValueError(f"refiner must be one of {REFINER_CHOICES}, got {refiner!r}")
    if refiner == "dual" and not has_udm:
        raise ValueError("refiner='dual' needs has_udm=True (R_dual refines A_inter, which needs the UDM)")
    if int(num_members) < 2:
        raise ValueError(f"num_members must be at least 2 (A_intra is a standard deviation), got {num_members}")
    ndm = [network_def() for _ in range(int(num_members))]
    udm = [network_def() for _ in range(int(num_members))] if has_udm else []
    refiners = {} if refiner == "none" else {refiner: ASRNet(len(REFINER_INPUTS[refiner]), int(asr_width))}
    scales = {"A_inter": 1.0, "A_intra": 1.0} if refiners else None
    return DeployedPipeline(DDADPipeline(ndm, udm, refiners, scales, heteroscedastic)).eval()


def score_output_format(score_name: str) -> dict:
    """``network_data_format`` of an image-level score output (B, 1)."""
    return {"type": "series", "format": "score", "num_channels": 1, "spatial_shape": [1], "dtype": "float32",
            "value_range": [0, 1], "is_patch_data": False, "channel_def": {"0": f"{score_name} anomaly score"}}  # fmt: skip


def deployed_metadata(
    metadata: dict, channels: int, image_size: int, deployment: dict, method: str = "ddad", pred_is_map: bool = True
) -> dict:
    """The bundle metadata with ``network_data_format`` set to the exported shapes and the
    decision rule (``deployment``: score, threshold, reason, ...) under the method's name."""
    meta = copy.deepcopy(metadata)
    fmt = meta.setdefault("network_data_format", {})
    fmt.setdefault("inputs", {}).setdefault("image", {}).update(
        num_channels=int(channels), spatial_shape=[int(image_size)] * 2
    )
    outputs = fmt.setdefault("outputs", {})
    if pred_is_map:
        outputs.setdefault("pred", {}).update(spatial_shape=[int(image_size)] * 2)
    else:
        outputs["pred"] = score_output_format(deployment["score"])
    meta[method] = dict(deployment)
    return meta


def export_torchscript(module: nn.Module, path, channels: int, image_size: int, extra: dict) -> Path:
    """Script ``module``, save it with the ``extra`` files ({name: text}) and verify that the
    saved file reproduces the Python module on a sample batch.

    The file is written in a temporary folder beside it and moved into place once verified, so an
    export killed half-way leaves the previous ``model.ts`` (or none), never a truncated one. The
    file keeps its name there: TorchScript names the archive's root folder after the file, and
    MONAI Deploy finds ``extra/inference.json`` under that folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial"
    staging.mkdir(exist_ok=True)
    partial = staging / path.name
    example = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    convert_to_torchscript(
        module.cpu().eval(),
        filename_or_obj=str(partial),
        extra_files=extra,
        verify=True,
        inputs=[example],
        device=torch.device("cpu"),
        rtol=1e-4,
        atol=1e-5,
    )
    os.replace(partial, path)
    staging.rmdir()
    return path


def effective_config(output_dir, configs_dir: Path = CONFIGS_DIR) -> dict:
    """The run's merged raw config with its overrides, as ``record_run`` wrote it for this export;
    the repository's common + inference files when the export was not started through a
    recorded invocation."""
    from monai.bundle import ConfigParser

    record = Path(output_dir) / "run_record_exporting.json"
    if record.is_file():
        config = json.loads(record.read_text()).get("config")
        if config:
            return config
    return ConfigParser.load_config_files([str(configs_dir / "common.json"), str(configs_dir / "inference.json")])


def deployed_config(output_dir, deployment: dict) -> dict:
    """The effective config with the deployment's values written in (``DEPLOYED_KEYS``)."""
    config = effective_config(output_dir)
    config.update(deploy_score=deployment["score"], deployed_score=deployment["score"],
                  deployed_reason=deployment.get("reason", ""), decision_threshold=float(deployment["threshold"]))  # fmt: skip
    return config


def export_run(
    network: nn.Module, path, channels: int, image_size: int, deployment: dict, output_dir, method: str = "ddad"
) -> Path:
    """Export the inference config's ``network`` (the deployed module of either method) with the
    metadata, the decision threshold and the run's effective inference config embedded (see the
    module docstring). ``deployment``: the resolved score, threshold and reason (``deployment``)."""
    example = torch.zeros(1, channels, image_size, image_size)
    with torch.no_grad():
        pred_is_map = network.cpu().eval()(example).ndim == 4
    metadata = json.loads((CONFIGS_DIR / "metadata.json").read_text())
    meta = deployed_metadata(metadata, channels, image_size, deployment, method, pred_is_map)
    configs = {"inference": deployed_config(output_dir, deployment),
               "common": json.loads((CONFIGS_DIR / "common.json").read_text())}  # fmt: skip
    extra = {"metadata.json": json.dumps(meta), **{f"{k}.json": json.dumps(v, default=str) for k, v in configs.items()}}
    out = export_torchscript(network, path, channels, image_size, extra)
    print(f"exported {method} {deployment['score']} pipeline to {out} ({deployment.get('reason', '')})")
    return out
