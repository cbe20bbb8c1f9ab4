"""Export a trained run as one TorchScript file for deployment (MONAI Deploy loads ``model.ts``).

The file holds ``scripts.scoring.pipeline.DeployedPipeline``: input ``image`` (B, C, H, W) already
preprocessed, output ``pred`` (B, 1, H, W), the map of the deployment score (``deploy_score``,
by default ``auto``: R_dual where its refiner is reliable, else A_inter, else A_rec_ensemble), with every NDM and UDM member, the discrepancy maps and the
ASR-Net inside. Beside the weights it carries, as extra files in the layout that
``monai.bundle ckpt_export`` writes (``extra/metadata.json``, ``extra/inference.json``):

- ``metadata.json``: the bundle metadata, with ``network_data_format`` set to the exported
  shape (``image_size``, ``channels`` of the run) and ``ddad`` = {score, threshold, ...};
- ``inference.json``: the run's *effective* configuration (the merged config files and
  command-line overrides recorded by ``config_guard.record_run``), with ``decision_threshold``
  written in as a number. A deployment parses it for ``preprocessing`` (the training transforms)
  and ``postprocessing`` (image score = spatial mean of ``pred``, label from the threshold), so
  a run trained at ``image_size`` 32 or on a data set config with its own transforms is
  preprocessed the way it was trained, not the way the repository's default files say;
- ``common.json``: the repository's shared config file as shipped, for reference.

MONAI's ``convert_to_torchscript`` scripts the module and checks that the saved file reproduces
the Python pipeline on a sample batch before the export returns.

    python -m ddad_bundle export --runs_dir runs/demo [--model_ts runs/demo/cxr_phantom_ae/models/model.ts]

``deployed_architecture`` builds the same module with fresh weights from the config alone; the
inference config exposes it as ``deployed_network_def`` so that ``monai.bundle
verify_net_in_out`` checks the deployed architecture against ``network_data_format`` offline,
without a trained run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from monai.networks.utils import convert_to_torchscript

from ..networks.asr import ASRNet
from ..scoring.pipeline import DDADPipeline, DeployedPipeline
from ..engines.refinement import REFINER_INPUTS

REFINER_CHOICES = ("dual", "intra", "none")


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


def deployed_metadata(metadata: dict, channels: int, image_size: int, threshold: dict, score_name: str) -> dict:
    """The bundle metadata with ``network_data_format`` set to the exported shape and the
    decision rule under ``ddad``."""
    meta = copy.deepcopy(metadata)
    try:
        fmt = meta["network_data_format"]
        fmt["inputs"]["image"].update(num_channels=int(channels), spatial_shape=[int(image_size)] * 2)
        fmt["outputs"]["pred"].update(spatial_shape=[int(image_size)] * 2)
    except KeyError as error:
        raise KeyError(
            f"configs/metadata.json: network_data_format needs inputs.image and outputs.pred (missing {error})"
        ) from error
    meta["ddad"] = {"score": score_name, **threshold}
    return meta


def export_torchscript(
    pipeline: DDADPipeline,
    path,
    channels: int,
    image_size: int,
    threshold: dict,
    metadata: dict | None = None,
    configs: dict | None = None,
) -> Path:
    """Script, save and verify the deployed pipeline; returns the path of ``model.ts``.

    ``configs``: {name: content} embedded as ``<name>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = DeployedPipeline(pipeline.cpu(), threshold.get("score")).eval()
    meta = deployed_metadata(
        metadata or {"network_data_format": {"inputs": {"image": {}}, "outputs": {"pred": {}}}},
        channels,
        image_size,
        threshold,
        module.score_name,
    )
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


def effective_config(output_dir, configs_dir: Path) -> dict:
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


def export_run(
    pipeline: DDADPipeline,
    path,
    channels: int,
    image_size: int,
    ckpt_dir,
    output_dir=None,
    deploy_score: str | None = None,
) -> Path:
    """Export a run folder's trained model with the metadata, the decision threshold and the
    run's effective inference config embedded (see the module docstring). ``deploy_score``: the
    score ``model.ts`` outputs; None or ``auto``: ``engines.inference.choose_deploy_score`` (R_dual
    only where its refiner is reliable, else A_inter, else A_rec_ensemble), its reason stored in the
    metadata (``ddad.reason``)."""
    from ..engines.inference import deployment_threshold, load_selection, load_threshold

    configs_dir = Path(__file__).resolve().parents[2] / "configs"
    metadata = json.loads((configs_dir / "metadata.json").read_text())
    threshold = deployment_threshold(load_threshold(ckpt_dir), pipeline, deploy_score, load_selection(ckpt_dir))
    inference = effective_config(output_dir if output_dir is not None else Path(ckpt_dir).parent, configs_dir)
    # A deployment has no run folder to read threshold.json from: the number goes in the config.
    inference["decision_threshold"] = float(threshold["threshold"])
    inference["deploy_score"] = threshold["score"]
    configs = {"inference": inference, "common": json.loads((configs_dir / "common.json").read_text())}
    out = export_torchscript(pipeline, path, channels, image_size, threshold, metadata, configs)
    print(f"exported {threshold['score']} pipeline to {out} ({threshold['reason']})")
    return out
