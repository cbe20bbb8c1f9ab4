"""SALAD on the labeled test set and on new images.

``SaladEvaluator`` is a MONAI ``Evaluator`` whose iteration runs the trained
``scripts.scoring.salad_pipeline.SaladPipeline`` on a batch and outputs, as DDAD's evaluator does::

    {"image": (B, C, H, W), "scores": {"A_knn": (B,), "A_mse": (B,)}, "maps": {"A_mse": (B, 1, H, W)},
     "label": (B,), "mask": (B, 1, H, W) | None, "filename": [str] * B}

so the same ``scripts.handlers.reports.ScoreReport`` writes metrics.json (auc, ap, auc_ci95,
f1_max, sens_at_spec95, chi2; pixel AUROC of the A_mse map where the test images have masks),
scores.csv and the histograms, and MONAI's ``ROCAUC`` / ``AveragePrecision`` handlers
(``scripts.engines.evaluation.score_metrics``) give the AUC and AP.

``SaladScorer`` scores files (PNG, JPEG, DICOM, 2D NIfTI; a 3D NIfTI slice by slice, the volume's
score the maximum) with the stored validation threshold and writes ``scores.csv`` and
``summary.json`` (score, label per file). SALAD's score is image-level: no anomaly map is written,
and the summary says so (``map``).

Example::

    python -m ddad_bundle score path/to/folder --out runs/scored --method salad
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from monai.engines import Evaluator
from monai.data import MetaTensor

from ..data.readers import ImageLoadError, LoadMedicalImage
from ..scoring.salad_pipeline import SaladPipeline
from .inference import score_files, volume_slices, without_loading

logger = logging.getLogger("ddad")

NO_MAP = "none: SALAD's kNN score is image-level (distance of the embedding to the normal memory bank)"
COLUMNS = ["file", "status", "score_name", "score", "threshold", "label", "kind", "slices", "error"]


class SaladEvaluator(Evaluator):
    """Runs the frozen ``SaladPipeline`` over a test loader (see the module docstring)."""

    def __init__(
        self, device, val_data_loader, pipeline: SaladPipeline, additional_metrics: Optional[dict] = None, handlers=None
    ):
        metrics = dict(additional_metrics or {})
        key_name = next(iter(metrics), None)  # MONAI attaches metrics only beside a key metric
        key_metric = {key_name: metrics.pop(key_name)} if key_name else None
        super().__init__(
            device=torch.device(device),
            val_data_loader=val_data_loader,
            key_val_metric=key_metric,
            additional_metrics=metrics,
            val_handlers=handlers,
            decollate=False,
        )
        self.pipeline = pipeline.to(self.state.device).eval()

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


class SaladScorer:
    """Scores files with a trained ``SaladPipeline`` and its stored threshold (``threshold.json``)."""

    def __init__(
        self,
        pipeline: SaladPipeline,
        preprocessing,
        threshold: dict,
        channels: int = 1,
        device="cpu",
        batch_size: int = 32,
        score_name: Optional[str] = None,
    ):
        self.pipeline = pipeline.to(device).eval()
        self.score_name = score_name or threshold["score"]
        table = threshold.get("thresholds", {threshold["score"]: threshold["threshold"]})
        if self.score_name not in table:
            raise ValueError(
                f"deploy_score {self.score_name!r}: SALAD's threshold.json holds {', '.join(sorted(table))}"
            )
        self.threshold = float(table[self.score_name])
        self.array_chain = without_loading(preprocessing)
        self.loader = LoadMedicalImage(channels=channels)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def _scores(self, prepared: list) -> np.ndarray:
        out = []
        for s in range(0, len(prepared), self.batch_size):
            x = torch.stack([torch.as_tensor(p) for p in prepared[s : s + self.batch_size]]).float().to(self.device)
            out.append(self.pipeline(x)[self.score_name].cpu())
        return torch.cat(out).numpy()

    def _prepare(self, image) -> torch.Tensor:
        return self.array_chain({"image": image})["image"]

    def score_file(self, path: Path) -> dict:
        slices = volume_slices(path)
        if slices is None:
            score = float(self._scores([self._prepare(self.loader(str(path)))])[0])
            return self._row(path, score, kind="image", slices=1)
        volume, _ = slices
        if not np.isfinite(volume).all():
            raise ImageLoadError(path, "contains NaN or infinite voxels")
        prepared = []
        for k, sl in enumerate(volume):
            image = MetaTensor(torch.as_tensor(sl)[None], meta={"filename_or_obj": f"{path}[slice {k}]"})
            prepared.append(self._prepare(image if self.loader.channels == 1 else image.repeat(3, 1, 1)))
        scores = self._scores(prepared)
        row = self._row(path, float(scores.max()), kind="volume", slices=len(scores))
        row.update(slice_scores=[float(s) for s in scores], max_slice=int(np.argmax(scores)))
        return row

    def _row(self, path: Path, score: float, **extra) -> dict:
        return {
            "file": str(path),
            "status": "ok",
            "score_name": self.score_name,
            "score": score,
            "threshold": self.threshold,
            "label": "abnormal" if score > self.threshold else "normal",
            **extra,
        }

    def run(self, inputs: Iterable, out_dir) -> dict:
        """Score every file (an unreadable one is reported by name, the others still scored)."""
        header = {"method": "salad", "score_name": self.score_name, "threshold": self.threshold, "map": NO_MAP}
        return score_files(
            self.score_file,
            inputs,
            out_dir,
            COLUMNS,
            header,
            note=f" with SALAD's {self.score_name}; no anomaly maps (image-level score)",
        )
