"""Scoring the labeled test set with the trained modules: the DDAD evaluator.

``DiscrepancyEvaluator`` is a MONAI ``Evaluator`` (an Ignite engine) whose iteration runs the
trained model (``scripts.scoring.pipeline.DDADPipeline``: NDM and UDM members, and the ASR-Nets after
stage 2) on a batch (B, C, H, W) and outputs, per batch::

    {"image": (B, C, H, W), "scores": {name: (B,)}, "maps": {name: (B, 1, H, W)}, "label": (B,),
     "mask": (B, 1, H, W) | None,
     "member_A_rec": (K, B), "filename": [str] * B}

Image-level AUC and AP are MONAI's ``ROCAUC`` and ``AveragePrecision`` handlers attached as
metrics named ``<score>/auc`` and ``<score>/ap``. Pixel-level AUROC (when every test image has a
mask) is computed by ``scripts.handlers.reports.ScoreReport`` with scikit-learn: MONAI's ROC metric loops
in Python and takes minutes on the ~10^6 pixels of a test set.

Example (config)::

    "evaluator": {"_target_": "scripts.engines.evaluation.DiscrepancyEvaluator", "device": "@device",
                  "val_data_loader": "@test#loader", "ndm_members": "@ndm#members", ...,
                  "additional_metrics": "$scripts.engines.evaluation.score_metrics(@score_names)"}
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from monai.engines import Evaluator
from monai.handlers import AveragePrecision, ROCAUC
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from ..handlers.training import final_weights_path
from ..runtime.checkpoints import load_checkpoint
from ..scoring.pipeline import DDADPipeline
from .refinement import selected_refiners
from ..scoring.scores import image_scores

logger = logging.getLogger("ddad")


def load_members(factory: Callable[[], nn.Module], ckpt_dir, module: str, num_members: int, device="cpu"):
    """The trained members of ``module`` in eval mode; a missing file is named with the fix."""
    members = []
    for k in range(num_members):
        path = final_weights_path(ckpt_dir, module, k)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: the {module.upper()} member {k} has not finished training. Run the "
                f"'training' workflow with the same output_dir (and num_members={num_members}) first"
            )
        state = load_checkpoint(path)  # a corrupt file is named as such, not as a mismatch
        net = factory()
        try:
            net.load_state_dict(state)
        except RuntimeError as error:
            raise RuntimeError(
                f"{path} does not fit the configured network (backbone, image_size, channels?): {error}"
            ) from error
        members.append(net.to(device).eval())
    return members


def test_datalist(entries: Sequence[dict]) -> list[dict]:
    """Test entries for MONAI: masks kept only when every image has one (pixel metrics need all)."""
    with_mask = sum("mask" in e for e in entries)
    if 0 < with_mask < len(entries):
        logger.warning("%d of %d test images have masks; pixel-level AUROC is skipped", with_mask, len(entries))
    keep = with_mask == len(entries)
    return [{k: v for k, v in e.items() if keep or k != "mask"} for e in entries]


def _pick_scores(name: str):
    return lambda output: (output["scores"][name], output["label"])


def score_metrics(score_names: Sequence[str]) -> dict:
    """MONAI metric handlers for every score: image-level AUC and AP."""
    metrics = {}
    for name in score_names:
        metrics[f"{name}/auc"] = ROCAUC(output_transform=_pick_scores(name))
        metrics[f"{name}/ap"] = AveragePrecision(output_transform=_pick_scores(name))
    return metrics


def split_key_metric(metrics: Optional[dict]) -> tuple[Optional[dict], dict]:
    """(key metric, the others): MONAI attaches metrics only beside a key metric, so the first plays that role."""
    metrics = dict(metrics or {})
    key_name = next(iter(metrics), None)
    return ({key_name: metrics.pop(key_name)} if key_name else None), metrics


class ScoringEvaluator(Evaluator):
    """A MONAI ``Evaluator`` running a frozen trained model over a test loader; the subclass's
    ``_iteration`` says what one batch outputs. Metrics: the first of ``additional_metrics``
    becomes the key metric (``split_key_metric``)."""

    def __init__(self, device, val_data_loader, pipeline: nn.Module, additional_metrics=None, val_handlers=None,
                 amp: bool = False):  # fmt: skip
        key_metric, metrics = split_key_metric(additional_metrics)
        super().__init__(
            device=torch.device(device),
            val_data_loader=val_data_loader,
            key_val_metric=key_metric,
            additional_metrics=metrics,
            val_handlers=val_handlers,
            amp=amp,
            decollate=False,
        )
        self.pipeline = pipeline.to(self.state.device).eval()


class DiscrepancyEvaluator(ScoringEvaluator):
    """Runs the frozen trained model (``scripts.scoring.pipeline.DDADPipeline``) over a test loader.

    Args:
        device: where the networks run.
        val_data_loader: MONAI DataLoader yielding {"image", "label", optional "mask"}.
        pipeline: the trained ``DDADPipeline`` (NDM, UDM, selected ASR-Nets).
        additional_metrics: MONAI metric handlers (``score_metrics``).
        val_handlers: evaluation handlers (``scripts.handlers.reports.ScoreReport``).
        inferer: runs the pipeline on a batch (MONAI ``Inferer``; default ``SimpleInferer``, one pass).
    """

    def __init__(
        self,
        device,
        val_data_loader,
        pipeline: nn.Module,
        additional_metrics: Optional[dict] = None,
        val_handlers=None,
        amp: bool = False,
        inferer: Optional[Inferer] = None,
    ):
        super().__init__(device, val_data_loader, pipeline, additional_metrics, val_handlers, amp)
        self.inferer = inferer if inferer is not None else SimpleInferer()

    def _iteration(self, engine, batchdata: dict) -> dict:
        image = batchdata["image"]
        x = torch.as_tensor(image).to(engine.state.device)
        with torch.no_grad(), engine.mode(self.pipeline):
            maps, member_scores = self.inferer(x, self.pipeline.maps_and_member_scores)
        meta = getattr(image, "meta", {})
        return {
            "image": x,
            "maps": maps,
            "scores": image_scores(maps),
            "member_A_rec": member_scores,
            "label": torch.as_tensor(batchdata["label"]).to(x.device),
            "mask": batchdata["mask"].to(x.device) if "mask" in batchdata else None,
            "filename": list(meta.get("filename_or_obj", [])),
        }


def load_pipeline(
    network_def,
    ckpt_dir,
    num_members: int,
    has_unlabeled: bool,
    heteroscedastic: bool,
    device="cpu",
    asr_width: int = 128,
) -> DDADPipeline:
    """The trained model of a run folder: NDM and UDM members and, after stage 2, the selected ASR-Nets."""
    ndm = load_members(network_def, ckpt_dir, "ndm", num_members, device)
    udm = load_members(network_def, ckpt_dir, "udm", num_members, device) if has_unlabeled else []
    refiners, scales = selected_refiners(ckpt_dir, device, asr_width)
    return DDADPipeline(ndm, udm, refiners, scales, heteroscedastic).to(device)


def has_trained_udm(ckpt_dir) -> bool:
    """Whether a run trained a UDM (it had unlabeled images), read from its checkpoint folder."""
    return final_weights_path(ckpt_dir, "udm", 0).is_file()
