"""The inference workflow's writer: an Ignite handler on the inference evaluator.

Per input (named by ``scripts.engines.inference.output_names``: unique and stable):

- ``<name>_map.nii.gz``: the anomaly map at the input's resolution (same orientation convention as
  the loader, ``scripts.data.readers.to_nifti_orientation``; a volume's map is 3D with its affine);
- ``<name>_overlay.png``: the map over the image, fixed colour scale [0, 1] so that images compare
  (a volume: its highest-scoring slice); an input larger than ``OVERLAY_MAX_SIDE`` (2048) pixels on
  its long side gets an overlay subsampled by an integer step to at most that size (an 8000 x 8000
  input: 2000 x 2000), since a full-size RGB overlay costs 192 MB and seconds to encode for no
  visible gain;

and per run ``scores.csv`` (one row per input) and ``summary.json`` (the deployment score, its
threshold and why it was chosen, counts, and every row; a volume's rows carry the per-slice
scores). A model without a map (SALAD's image-level A_knn) writes the tables only, and the summary
says so (``map``). An input that could not be read is a row with ``status: error`` and its error.

The score CLI, the ``inferring`` workflow and the MONAI Deploy application all write through this
handler, so their outputs carry the same names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, Resize
from PIL import Image

from ..data.chains import image_loader, slice_reader
from ..data.readers import to_nifti_orientation
from ..runtime.files import write_csv_atomic, write_json_atomic
from ..scoring.postprocessing import decision

logger = logging.getLogger("ddad")

# Columns of scores.csv; volumes' per-slice scores are in summary.json only.
SUMMARY_COLUMNS = ["file", "name", "status", "score_name", "score", "threshold", "label", "kind", "slices",
                   "map_file", "overlay_file", "error", "reason"]  # fmt: skip
HAS_MAP = "yes: <name>_map.nii.gz and <name>_overlay.png per input"


OVERLAY_MAX_SIDE = 2048  # an overlay is for looking at: larger inputs are subsampled to this long side


def overlay_step(shape) -> int:
    """The subsampling step of an overlay: 1 up to ``OVERLAY_MAX_SIDE`` pixels, then the smallest
    integer step that brings the long side within it (the map file keeps the full resolution)."""
    return max(1, -(-max(int(s) for s in shape[:2]) // OVERLAY_MAX_SIDE))


OVERLAY_ROWS = 512  # rows blended at a time: an 8000 x 8000 overlay then needs ~100 MB of float32 work space


def heat_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grayscale input with the map in a fixed [0, 1] colour scale on top.

    Full resolution, computed in float32 blocks of ``OVERLAY_ROWS`` rows through a 256-entry
    colour table, so that the work space does not grow with the image (a whole-image float64
    blend of an 8000 x 8000 input took several GB)."""
    from matplotlib import colormaps

    table = colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)
    lo, hi = float(np.min(image)), float(np.max(image))
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(image.shape[:2] + (3,), dtype=np.uint8)
    for top in range(0, image.shape[0], OVERLAY_ROWS):
        rows = slice(top, top + OVERLAY_ROWS)
        gray = (np.asarray(image[rows], dtype=np.float32) - lo) * scale
        level = np.clip(np.asarray(anomaly_map[rows], dtype=np.float32), 0.0, 1.0)
        heat = table[np.rint(level * 255).astype(np.uint8)]
        weight = (alpha * np.sqrt(level))[..., None]  # faint where nothing is anomalous
        rgb = (1 - weight) * gray[..., None] + weight * heat
        out[rows] = np.rint(255 * np.clip(rgb, 0, 1))
    return out


def _on_grid(anomaly_map: torch.Tensor, shape) -> np.ndarray:
    """The inverted map (1, H, W) as (H, W); resized where the chain held a transform without an
    inverse, so that the map always has the input's shape."""
    restored = torch.as_tensor(anomaly_map, dtype=torch.float32).detach().cpu()
    if tuple(restored.shape[1:]) != tuple(shape):
        logger.warning("map of shape %s resized to the input's %s", tuple(restored.shape[1:]), tuple(shape))
        restored = Resize(tuple(int(s) for s in shape), mode="bilinear")(restored)
    return np.asarray(restored[0], dtype=np.float32)


def _gray(image) -> np.ndarray:
    """(C, H, W) loaded image -> (H, W) float32 for the overlay; a view for one channel (no full-size copy)."""
    array = np.asarray(image, dtype=np.float32)
    return array[0] if array.shape[0] == 1 else array.mean(axis=0, dtype=np.float32)


class InferenceWriter:
    """Writes the results of the inference evaluator (see the module docstring).

    Args:
        output_dir: the results folder (config key ``inference_dir``).
        preprocessing: the modality chain; its loader reads the image an overlay is drawn on.
        score_name, threshold, reason: the deployed score, its decision threshold and why it was chosen.
        method: ``ddad`` or ``salad``, recorded in the summary.
        map_note: what the summary says about maps (default: whether the model gave one).
    """

    def __init__(
        self,
        output_dir,
        preprocessing: Compose,
        score_name: str,
        threshold: float,
        reason: str = "",
        method: str = "ddad",
        map_note: Optional[str] = None,
    ):
        self.output_dir = Path(output_dir)
        self.loader = image_loader(preprocessing)
        self.header = {"method": method, "score_name": score_name, "score_reason": reason,
                       "threshold": float(threshold)}  # fmt: skip
        self.rows: list[dict] = []
        self._volumes: dict = {}
        self._has_map: Optional[bool] = None
        self.map_note = map_note

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_iteration)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def start(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.rows, self._volumes = [], {}

    def write_iteration(self, engine: Engine) -> None:
        for entry, output in zip(engine.state.batch, engine.state.output):
            self.add(entry, output)

    # ------------------------------------------------------------------------- one result

    def add(self, entry: dict, output: dict) -> None:
        """One decollated result: ``entry`` from the dataset (file, name, slice, depth, error) and
        ``output`` after postprocessing (pred, score, label)."""
        file, name, index = str(entry["file"]), str(entry["name"]), int(entry["slice"])
        if index >= 0:
            self._add_slice(entry, output, file, name, index)
        elif entry["error"]:
            self.rows.append(self._error_row(file, name, str(entry["error"])))
        else:
            self.rows.append(self._write_image(file, name, output))

    def _base_row(self, file: str, name: str, score: float, kind: str, slices: int) -> dict:
        label = decision(score, self.header["threshold"])
        return {"file": file, "name": name, "status": "ok", "score_name": self.header["score_name"],
                "score": float(score), "threshold": self.header["threshold"], "label": label,
                "kind": kind, "slices": slices}  # fmt: skip

    def _error_row(self, file: str, name: str, error: str) -> dict:
        return {"file": file, "name": name, "status": "error", "error": error}

    def _map_of(self, output: dict) -> Optional[torch.Tensor]:
        pred = torch.as_tensor(output["pred"])
        self._has_map = pred.ndim >= 3
        return pred if self._has_map else None

    def _write_image(self, file: str, name: str, output: dict) -> dict:
        row = dict(self._base_row(file, name, output["score"], "image", 1), label=str(output["label"]))
        pred = self._map_of(output)
        if pred is None:
            return row
        image = _gray(self.loader(file))
        full = _on_grid(pred, image.shape)
        return dict(row, **self._save_map(name, to_nifti_orientation(full), np.eye(4), image, full))

    def _save_map(self, name: str, nifti_map: np.ndarray, affine, image: np.ndarray, full: np.ndarray) -> dict:
        map_file, overlay_file = f"{name}_map.nii.gz", f"{name}_overlay.png"
        nifti_map = np.asarray(nifti_map, dtype=np.float32)  # no copy when it is float32 already
        nib.save(nib.Nifti1Image(nifti_map, affine), str(self.output_dir / map_file))
        step = overlay_step(image.shape)  # views, no copies: a huge input's overlay is drawn at a capped size
        Image.fromarray(heat_overlay(image[::step, ::step], full[::step, ::step])).save(self.output_dir / overlay_file)
        return {"map_file": map_file, "overlay_file": overlay_file}

    # ------------------------------------------------------------------------- volumes

    def _add_slice(self, entry: dict, output: dict, file: str, name: str, index: int) -> None:
        volume = self._volumes.setdefault(name, {"file": file, "depth": int(entry["depth"]), "slices": {}})
        volume["slices"][index] = (str(entry["error"]), output)
        if len(volume["slices"]) == volume["depth"]:
            self.rows.append(self._write_volume(name, self._volumes.pop(name)))

    def _write_volume(self, name: str, volume: dict) -> dict:
        file, slices = volume["file"], [volume["slices"][k] for k in range(volume["depth"])]
        errors = [error for error, _ in slices if error]
        if errors:
            return self._error_row(file, name, errors[0])
        scores = np.array([float(output["score"]) for _, output in slices])
        worst = int(np.argmax(scores))
        row = self._base_row(file, name, float(scores.max()), "volume", len(scores))
        row.update(slice_scores=[float(s) for s in scores], max_slice=worst)
        if self._map_of(slices[0][1]) is None:
            return row
        images = [_gray(self.loader(file, reader=slice_reader(self.loader, k))) for k in range(len(slices))]
        maps = [_on_grid(output["pred"], image.shape) for (_, output), image in zip(slices, images)]
        volume_map = np.stack([to_nifti_orientation(m) for m in maps], axis=-1)
        affine = nib.load(file).affine
        return dict(row, **self._save_map(name, volume_map, affine, images[worst], maps[worst]))

    # ------------------------------------------------------------------------- the run

    def finish(self, engine: Optional[Engine] = None) -> dict:
        """Write ``summary.json`` and ``scores.csv``; returns the summary (also ``engine.state.inference_summary``)."""
        for name, volume in list(self._volumes.items()):  # a volume some of whose slices never arrived
            self.rows.append(self._error_row(volume["file"], name, "not every slice of the volume was scored"))
        self._volumes = {}
        header = dict(self.header, map=self.map_note or (HAS_MAP if self._has_map else "none"))
        summary = write_tables(self.rows, header, self.output_dir)
        if engine is not None:
            engine.state.inference_summary = summary
        return summary


def write_tables(rows: list[dict], header: dict, output_dir) -> dict:
    """``summary.json`` (``header``, counts, every row) and ``scores.csv``; prints one line and
    returns the summary. A row's ``status`` is ``ok``, ``error`` (unreadable) or ``skipped``
    (not an input the deployment scores)."""
    output_dir = Path(output_dir)
    summary = {
        **header,
        "n_files": len(rows),
        "n_scored": sum(r["status"] == "ok" for r in rows),
        "n_abnormal": sum(r.get("label") == "abnormal" for r in rows),
        "n_errors": sum(r["status"] == "error" for r in rows),
        "n_skipped": sum(r["status"] == "skipped" for r in rows),
        "files": rows,
    }
    write_json_atomic(summary, output_dir / "summary.json")
    write_csv_atomic(rows, output_dir / "scores.csv", SUMMARY_COLUMNS, extrasaction="ignore")
    skipped = f", {summary['n_skipped']} skipped" if summary["n_skipped"] else ""
    print(
        f"scored {summary['n_scored']} of {summary['n_files']} files with {header['score_name']} "
        f"({summary['n_abnormal']} abnormal, {summary['n_errors']} unreadable{skipped}); results in {output_dir}"
    )
    return summary
