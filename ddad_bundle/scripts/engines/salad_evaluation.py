"""SALAD on the labeled test set (new images go through the shared inference workflow,
``configs/inference.json`` with ``configs/salad_inference.json``).

``SaladEvaluator`` is a MONAI ``Evaluator`` whose iteration runs the trained
``scripts.scoring.salad_pipeline.SaladPipeline`` on a batch and outputs, as DDAD's evaluator does::

    {"image": (B, C, H, W), "scores": {"A_knn": (B,), "A_mse": (B,)}, "maps": {"A_mse": (B, 1, H, W)},
     "label": (B,), "mask": (B, 1, H, W) | None, "filename": [str] * B}

so the same ``scripts.handlers.reports.ScoreReport`` writes metrics.json (auc, ap, auc_ci95,
f1_max, sens_at_spec95, chi2; pixel AUROC of the A_mse map where the test images have masks),
scores.csv and the histograms, and MONAI's ``ROCAUC`` / ``AveragePrecision`` handlers
(``scripts.engines.evaluation.score_metrics``) give the AUC and AP.

Example::

    python -m ddad_bundle run evaluating --method salad --runs_dir runs/demo_salad
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from ..scoring.salad_pipeline import SaladPipeline
from .evaluation import ScoringEvaluator

logger = logging.getLogger("ddad")


class SaladEvaluator(ScoringEvaluator):
    """Runs the frozen ``SaladPipeline`` over a test loader (see the module docstring)."""

    def __init__(
        self, device, val_data_loader, pipeline: SaladPipeline, additional_metrics: Optional[dict] = None, handlers=None
    ):
        super().__init__(device, val_data_loader, pipeline, additional_metrics, handlers)

    def _iteration(self, engine, batchdata: dict) -> dict:
        image = batchdata["image"]
        x = torch.as_tensor(image).to(engine.state.device)
        with torch.no_grad():
            scores, maps = self.pipeline(x), self.pipeline.maps(x)
        meta = getattr(image, "meta", {})
        return {
            "image": x,
            "scores": scores,
            "maps": maps,
            "label": torch.as_tensor(batchdata["label"]).to(x.device),
            "mask": batchdata["mask"].to(x.device) if "mask" in batchdata else None,
            "filename": list(meta.get("filename_or_obj", [])),
        }
