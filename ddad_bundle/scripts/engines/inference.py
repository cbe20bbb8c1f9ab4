"""Scoring new, unlabeled images with a trained bundle: scores, labels, maps and overlays.

For every input file (PNG, JPEG, DICOM, 2D NIfTI) ``FolderScorer`` writes

- the anomaly score of ``deploy_score`` (default ``auto``, ``choose_deploy_score``: R_dual where
  its refiner is reliable, else A_inter, else A_rec_ensemble), the mean of its map;
- a label, ``abnormal`` when the score exceeds the decision threshold stored with the model
  (``threshold.json``, chosen on the validation normals at a configurable specificity,
  ``save_threshold``);
- the anomaly map at the input's resolution as NIfTI (``<name>_map.nii.gz``, same orientation
  convention as the loader: ``scripts.data.readers.to_nifti_orientation``) and as a PNG heat map
  over the input (``<name>_overlay.png``, fixed colour scale [0, 1] so images compare);
- one row in ``scores.csv`` and an entry in ``summary.json``.

A 3D NIfTI volume is scored slice by slice along its last axis: the volume's score is the
maximum over slices, its map a 3D NIfTI with the input's affine. A file that cannot be read is
reported by name in the CSV and the summary (``status``), and the other files are still scored.

Example::

    python -m ddad_bundle score path/to/folder --out runs/scored
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Resize
from PIL import Image

from ..scoring.metrics import threshold_at_specificity
from ..scoring.pipeline import DDADPipeline
from ..runtime.files import write_csv_atomic, write_json_atomic
from ..scoring.scores import image_scores
from .refinement import REFINER_SCORES
from ..data.readers import (
    SUPPORTED_EXTENSIONS,
    ImageLoadError,
    LoadMaskd,
    LoadMedicalImage,
    LoadMedicalImaged,
    detect_format,
    to_nifti_orientation,
)

logger = logging.getLogger("ddad")

# Columns of scores.csv; volumes' per-slice scores are in summary.json only.
SUMMARY_COLUMNS = [
    "file",
    "status",
    "score_name",
    "score",
    "threshold",
    "label",
    "kind",
    "slices",
    "map_file",
    "overlay_file",
    "error",
]


# ----------------------------------------------------------------------------- threshold


@torch.no_grad()
def validation_scores(pipeline: DDADPipeline, images: torch.Tensor, batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Every image score of the clean held-out normals: {score name: (N,)}."""
    parts: Dict[str, list] = {}
    for s in range(0, len(images), batch_size):
        for name, values in image_scores(pipeline(images[s : s + batch_size])).items():
            parts.setdefault(name, []).append(values)
    return {name: torch.cat(values).cpu().numpy() for name, values in parts.items()}


AUTO = "auto"


def load_selection(ckpt_dir) -> Optional[dict]:
    """Stage 2's ``asr_selection.json`` (which refiners are reliable), or None before stage 2."""
    path = Path(ckpt_dir) / "asr_selection.json"
    return json.loads(path.read_text()) if path.is_file() else None


def refiner_reliable(selection: Optional[dict], score: str) -> bool:
    """Whether stage 2 marked the refiner behind ``score`` (R_dual, R_intra) as reliable."""
    refiner = {score_name: refiner for refiner, score_name in REFINER_SCORES.items()}.get(score)
    entry = ((selection or {}).get("refiners") or {}).get(refiner) or {}
    return bool(entry.get("reliable", False))


def choose_deploy_score(score_names: Sequence[str], selection: Optional[dict]) -> tuple[str, str]:
    """``deploy_score: auto``: (score, reason). Never deploys a refiner without a learned signal.

    R_dual where stage 2 marked its refiner reliable; R_intra likewise when the run has no
    unlabeled images (no A_inter); otherwise A_inter when a UDM exists, otherwise A_rec_ensemble.
    """
    names = list(score_names)
    if "R_dual" in names and refiner_reliable(selection, "R_dual"):
        return "R_dual", "R_dual's refiner is reliable (asr_selection.json)"
    if "A_inter" not in names and "R_intra" in names and refiner_reliable(selection, "R_intra"):
        return "R_intra", "no unlabeled images, and R_intra's refiner is reliable (asr_selection.json)"
    refined = [n for n in ("R_dual", "R_intra") if n in names]
    why = f"{' and '.join(refined)} not reliable (asr_selection.json)" if refined else "no refiner trained"
    if "A_inter" in names:
        return "A_inter", f"{why}: the dual-distribution discrepancy A_inter is deployed"
    return "A_rec_ensemble", f"{why} and no unlabeled images: the ensemble reconstruction error is deployed"


def save_threshold(
    pipeline: DDADPipeline, validation_images: torch.Tensor, ckpt_dir, specificity: float = 0.95
) -> Path:
    """Decision thresholds on the validation normals (never the test set); writes ``threshold.json``.

    ``thresholds`` holds one per score, each chosen the same way; ``score``/``threshold`` are those
    of the ``auto`` deployment choice (``choose_deploy_score``) with its ``reason``.
    """
    scores = validation_scores(pipeline, validation_images.to(next(pipeline.parameters()).device))
    thresholds = {name: float(threshold_at_specificity(values, specificity)) for name, values in scores.items()}
    chosen, reason = choose_deploy_score(pipeline.score_names, load_selection(ckpt_dir))
    record = {
        "score": chosen,
        "threshold": thresholds[chosen],
        "reason": reason,
        "thresholds": thresholds,
        "specificity": float(specificity),
        "n_validation": int(len(scores[chosen])),
        "rule": "abnormal when score > threshold; at most (1 - specificity) of validation normals exceed it",
    }
    path = write_json_atomic(record, Path(ckpt_dir) / "threshold.json")
    logger.info(
        "deploy_score auto: %s (%s); threshold %.6g at specificity %.2f -> %s",
        chosen,
        reason,
        record["threshold"],
        specificity,
        path,
    )
    return path


def load_threshold(ckpt_dir) -> dict:
    path = Path(ckpt_dir) / "threshold.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the 'training_asr' workflow first (it stores the threshold)"
        )
    return json.loads(path.read_text())


def threshold_for(record: dict, score: Optional[str] = None, selection: Optional[dict] = None) -> dict:
    """``threshold.json``'s record for the deployed ``score`` (config key ``deploy_score``), with
    ``score``, ``threshold`` and ``reason`` set to that score's. ``auto`` (or None) resolves with
    ``choose_deploy_score`` over the stored scores and stage 2's ``selection`` at the time of use,
    so a refiner marked unreliable is never deployed by default."""
    table = dict(record.get("thresholds") or {record["score"]: record["threshold"]})
    if score in (None, AUTO):
        score, reason = choose_deploy_score(list(table), selection)
        requested = AUTO
    else:
        requested, reason = score, "requested explicitly (deploy_score)"
    if score not in table:
        raise ValueError(
            f"deploy_score {score!r}: threshold.json holds thresholds for {', '.join(sorted(table))}"
            + ("" if record.get("thresholds") else "; re-run the 'training_asr' workflow to store one for every score")
        )
    return dict(record, score=score, threshold=float(table[score]), reason=reason, requested=requested)


def deployment_threshold(
    record: dict, pipeline: DDADPipeline, score: Optional[str] = None, selection: Optional[dict] = None
) -> dict:
    """``threshold_for`` checked against the trained model: the chosen score must be one the model
    computes; an explicitly requested refined score whose refiner stage 2 did not mark reliable
    is deployed as asked, with a warning."""
    chosen = threshold_for(record, score, selection)
    if chosen["score"] not in pipeline.score_names:
        raise ValueError(
            f"deploy_score {chosen['score']!r} is not a score of this model (it has {', '.join(pipeline.score_names)})"
        )
    if (
        chosen["requested"] != AUTO
        and chosen["score"] in ("R_dual", "R_intra")
        and not refiner_reliable(selection, chosen["score"])
    ):
        logger.warning(
            "deploy_score %s: its ASR-Net is not marked reliable in asr_selection.json (no learned "
            "signal shown on held-out synthetic anomalies); deploy_score auto would choose %s",
            chosen["score"],
            choose_deploy_score(pipeline.score_names, selection)[0],
        )
    logger.info("deploying %s: %s", chosen["score"], chosen["reason"])
    return chosen


# ----------------------------------------------------------------------------- inputs


def list_inputs(paths: Iterable) -> list[Path]:
    """Files to score: given files as they are, folders searched recursively for supported images."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _supported_name(f))
            if not found:
                raise FileNotFoundError(f"{p}: no image files found (supported: {', '.join(SUPPORTED_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise FileNotFoundError("no input files given")
    return files


def _supported_name(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS)


def without_loading(preprocessing: Compose) -> Compose:
    """The modality chain minus its file loaders, to apply it to arrays (slices of a volume)."""
    kept = [t for t in preprocessing.transforms if not isinstance(t, (LoadMedicalImaged, LoadMaskd))]
    return Compose(kept)


def volume_slices(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(slices (Z, H, W) in the loader's orientation, affine) of a 3D NIfTI, or None for a 2D file."""
    if detect_format(path) != "nifti":
        return None
    image = nib.load(str(path))
    shape = tuple(d for d in image.shape[3:] if d != 1)
    if len(image.shape) < 3 or image.shape[2] == 1 or shape:
        return None
    data = np.asarray(image.dataobj, dtype=np.float32)
    return np.stack([to_nifti_orientation(data[:, :, k]) for k in range(data.shape[2])]), image.affine


# ----------------------------------------------------------------------------- outputs


def heat_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grayscale input with the map in a fixed [0, 1] colour scale on top."""
    from matplotlib import colormaps

    gray = image.astype(np.float64)
    span = gray.max() - gray.min()
    gray = (gray - gray.min()) / span if span > 0 else np.zeros_like(gray)
    heat = colormaps["inferno"](np.clip(anomaly_map, 0.0, 1.0))[..., :3]
    weight = alpha * np.clip(anomaly_map, 0.0, 1.0)[..., None] ** 0.5  # faint where nothing is anomalous
    rgb = (1 - weight) * gray[..., None] + weight * heat
    return (255 * np.clip(rgb, 0, 1)).round().astype(np.uint8)


def _stem(path: Path) -> str:
    name = path.name
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


# ----------------------------------------------------------------------------- scorer


class FolderScorer:
    """Scores files with a trained ``DDADPipeline``; see the module docstring.

    Args:
        pipeline: the trained model.
        preprocessing: the modality's transform chain (the same as in training).
        threshold: ``threshold.json`` content ({"score", "threshold", "thresholds", ...}).
        score_name: the score to report (config key ``deploy_score``); None or ``auto``: ``choose_deploy_score``.
        selection: stage 2's ``asr_selection.json`` content (``load_selection``), for ``auto``.
        channels: image channels the model expects.
        device: where the networks run.
    """

    def __init__(
        self,
        pipeline: DDADPipeline,
        preprocessing: Compose,
        threshold: dict,
        channels: int = 1,
        device="cpu",
        batch_size: int = 32,
        score_name: Optional[str] = None,
        selection: Optional[dict] = None,
    ):
        self.pipeline = pipeline.to(device).eval()
        threshold = deployment_threshold(threshold, pipeline, score_name, selection)
        self.reason = threshold["reason"]
        self.score_name = threshold["score"]
        self.threshold = float(threshold["threshold"])
        self.preprocessing = preprocessing
        self.array_chain = without_loading(preprocessing)
        self.loader = LoadMedicalImage(channels=channels)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def _maps(self, prepared: list[torch.Tensor]) -> np.ndarray:
        """Primary anomaly maps (N, H, W) of preprocessed images, in batches."""
        out = []
        for s in range(0, len(prepared), self.batch_size):
            x = torch.stack([torch.as_tensor(p) for p in prepared[s : s + self.batch_size]]).float().to(self.device)
            out.append(self.pipeline(x)[self.score_name][:, 0].cpu())
        return torch.cat(out).numpy()

    def _back_to_input(self, anomaly_map: np.ndarray, prepared: MetaTensor, shape) -> np.ndarray:
        """The map at the input's resolution: MONAI inverts the chain's crops, resizes and pads."""
        tracked = MetaTensor(
            torch.as_tensor(anomaly_map)[None],
            meta=dict(prepared.meta),
            applied_operations=list(prepared.applied_operations),
        )
        try:
            restored = self.array_chain.inverse({"image": tracked})["image"][0]
        except Exception:  # a transform without an inverse: fall back to a plain resize
            restored = torch.as_tensor(anomaly_map)
        restored = torch.as_tensor(restored, dtype=torch.float32)
        if tuple(restored.shape) != tuple(shape):
            restored = Resize(tuple(shape), mode="bilinear")(restored[None])[0]
        return np.asarray(restored, dtype=np.float32)

    def _prepare(self, image: MetaTensor) -> MetaTensor:
        return self.array_chain({"image": image})["image"]

    def score_file(self, path: Path, out_dir: Path) -> dict:
        slices = volume_slices(path)
        if slices is not None:
            return self._score_volume(path, out_dir, *slices)
        image = self.loader(str(path))
        prepared = self._prepare(image)
        anomaly_map = self._maps([prepared])[0]
        score = float(anomaly_map.mean())  # at model resolution, as in evaluation
        full = self._back_to_input(anomaly_map, prepared, image.shape[1:])
        stem = _stem(path)
        nib.save(nib.Nifti1Image(to_nifti_orientation(full), np.eye(4)), str(out_dir / f"{stem}_map.nii.gz"))
        gray = np.asarray(image).mean(axis=0)
        Image.fromarray(heat_overlay(gray, full)).save(out_dir / f"{stem}_overlay.png")
        return self._row(
            path, score, kind="image", slices=1, map_file=f"{stem}_map.nii.gz", overlay_file=f"{stem}_overlay.png"
        )

    def _score_volume(self, path: Path, out_dir: Path, slices: np.ndarray, affine: np.ndarray) -> dict:
        if not np.isfinite(slices).all():
            raise ImageLoadError(path, "contains NaN or infinite voxels")
        prepared, images = [], []
        for k, sl in enumerate(slices):
            image = MetaTensor(torch.as_tensor(sl)[None], meta={"filename_or_obj": f"{path}[slice {k}]"})
            images.append(image if self.loader.channels == 1 else image.repeat(3, 1, 1))
            prepared.append(self._prepare(images[-1]))
        maps = self._maps(prepared)
        scores = maps.reshape(len(maps), -1).mean(axis=1)
        full = np.stack([self._back_to_input(m, p, sl.shape) for m, p, sl in zip(maps, prepared, slices)])
        stem = _stem(path)
        volume_map = np.stack([to_nifti_orientation(m) for m in full], axis=-1)
        nib.save(nib.Nifti1Image(volume_map.astype(np.float32), affine), str(out_dir / f"{stem}_map.nii.gz"))
        worst = int(np.argmax(scores))
        Image.fromarray(heat_overlay(slices[worst], full[worst])).save(out_dir / f"{stem}_overlay.png")
        row = self._row(
            path,
            float(scores.max()),
            kind="volume",
            slices=len(scores),
            map_file=f"{stem}_map.nii.gz",
            overlay_file=f"{stem}_overlay.png",
        )
        row["slice_scores"] = [float(s) for s in scores]
        row["max_slice"] = worst
        return row

    def _row(self, path: Path, score: float, **extra) -> dict:
        label = "abnormal" if score > self.threshold else "normal"
        return {
            "file": str(path),
            "status": "ok",
            "score_name": self.score_name,
            "score": score,
            "threshold": self.threshold,
            "label": label,
            **extra,
        }

    def run(self, inputs: Iterable, out_dir) -> dict:
        """Score every file; returns the summary also written as ``summary.json``."""
        out_dir = Path(out_dir)
        return score_files(
            lambda path: self.score_file(path, out_dir),
            inputs,
            out_dir,
            SUMMARY_COLUMNS,
            {"score_name": self.score_name, "score_reason": self.reason, "threshold": self.threshold},
        )


def score_files(
    score_file: Callable[[Path], dict], inputs: Iterable, out_dir, columns, header: dict, note: str = ""
) -> dict:
    """``score_file`` on every input; a file that cannot be read is reported by name and the others
    are still scored. Writes ``summary.json`` (``header``, counts, rows) and ``scores.csv``;
    ``note`` is added to the printed line."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in list_inputs(inputs):
        try:
            rows.append(score_file(path))
        except (ImageLoadError, ValueError, OSError, RuntimeError) as error:
            logger.error("%s: not scored: %s", path, error)
            rows.append({"file": str(path), "status": "error", "error": str(error)})
    summary = {
        **header,
        "n_files": len(rows),
        "n_scored": sum(r["status"] == "ok" for r in rows),
        "n_abnormal": sum(r.get("label") == "abnormal" for r in rows),
        "n_errors": sum(r["status"] == "error" for r in rows),
        "files": rows,
    }
    write_json_atomic(summary, out_dir / "summary.json")
    write_csv_atomic(rows, out_dir / "scores.csv", columns, extrasaction="ignore")
    print(
        f"scored {summary['n_scored']} of {summary['n_files']} files ({summary['n_abnormal']} abnormal, "
        f"{summary['n_errors']} unreadable){note}; results in {out_dir}"
    )
    return summary
