"""Scoring new, unlabeled images: the ``inferring`` workflow, in MONAI's inference idiom.

``configs/inference.json`` declares the parts, and the MONAI Deploy application parses the same
config (embedded in ``model.ts``), so the bundle and a deployment score an image with the same code:

- ``inference#entries`` (``inference_datalist``): the input files, folders searched recursively,
  each with a unique, stable output name; a 3D NIfTI volume becomes one entry per slice;
- ``inference#dataset`` (``InferenceDataset``): the modality chain (``preprocessing``) per entry; a
  file that cannot be read becomes an entry with its ``error`` and a placeholder image, so the
  other files are still scored and the unreadable one is reported by name;
- ``network``: the deployed model (``scripts.scoring.pipeline.DeployedPipeline``, or ``model.ts``
  in a deployment): ``image`` (B, C, H, W) in, ``pred`` out: the map of the deployment score
  (B, 1, H, W), or an image-level score (B, 1) for SALAD;
- ``postprocessing`` (``scripts.scoring.postprocessing``): ``ImageScored`` (the image score: ``scores.spatial_mean`` of ``pred``, at the
  model's resolution, as in evaluation), ``ThresholdLabeld`` (``abnormal`` above the stored
  validation threshold) and ``InvertMapd`` (MONAI's ``Invertd``: the map back to the input's grid);
- a MONAI ``SupervisedEvaluator`` with ``scripts.handlers.inference_writer.InferenceWriter``,
  which writes per input ``<name>_map.nii.gz`` and ``<name>_overlay.png`` (where there is a map),
  and per run ``scores.csv`` and ``summary.json``.

The deployment score (``deploy_score``, default ``auto``: ``choose_deploy_score``) and its
threshold (``threshold.json``, chosen on the validation normals by ``save_threshold``, never on
the test set) are resolved here too.

Example::

    python -m ddad_bundle score path/to/folder --out runs/scored
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose

from ..data.cache import root_cause
from ..data.chains import image_loader, slice_reader, without_loading
from ..data.readers import SUPPORTED_EXTENSIONS, ImageLoadError, detect_format
from ..runtime.files import write_json_atomic
from ..scoring.metrics import read_threshold, threshold_at_specificity
from ..scoring.pipeline import DDADPipeline
from ..scoring.scores import SCORE_REFINERS, image_scores

logger = logging.getLogger("ddad")

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
    refiner = SCORE_REFINERS.get(score)
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
    """DDAD's ``threshold.json`` (stage 2 writes it)."""
    return read_threshold(ckpt_dir, "training_asr")


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

# What a file that cannot be scored raises: ImageLoadError (a ValueError) names the file and the problem.
LOAD_ERRORS = (ImageLoadError, ValueError, OSError, RuntimeError)
# Output names: the path below the input folder, folders joined by this (a name of its own cannot clash with it
# unless it holds the same sequence; a numeric suffix settles any clash left).
NAME_SEPARATOR = "__"


def _supported_name(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS)


def list_inputs(paths: Iterable, root=None) -> list[tuple[Path, Path]]:
    """(file, root) per input: folders searched recursively for supported images (root: the folder),
    files as they are (root: ``root`` when given, else the file's folder)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _supported_name(f))
            if not found:
                raise FileNotFoundError(f"{p}: no image files found (supported: {', '.join(SUPPORTED_EXTENSIONS)})")
            files.extend((f, p) for f in found)
        elif not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        else:
            files.append((p, Path(root) if root is not None else p.parent))
    if not files:
        raise FileNotFoundError("no input files given")
    return files


def _strip_extension(name: str) -> str:
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def output_names(files: Sequence[tuple[Path, Path]]) -> list[str]:
    """A unique, stable output name per input: its path below its root without the extension,
    folders joined by ``NAME_SEPARATOR`` (``a/x.png`` -> ``a__x``), and ``_2``, ``_3``, ... in input
    order where two inputs still share one (``x.png`` and ``x.dcm``)."""
    names, taken = [], set()
    for path, root in files:
        try:
            relative = path.resolve().relative_to(root.resolve())
        except ValueError:  # a file outside the given root: its own name
            relative = Path(path.name)
        base = NAME_SEPARATOR.join(relative.parent.parts + (_strip_extension(relative.name),))
        candidate, k = base, 2
        while candidate in taken:
            candidate, k = f"{base}_{k}", k + 1
        taken.add(candidate)
        names.append(candidate)
    return names


def volume_depth(path: Path) -> int:
    """The number of axial slices of a 3D NIfTI volume; 1 for every other file (a 2D image, or a
    file whose header cannot be read: its error is reported when it is loaded)."""
    try:
        if detect_format(path) != "nifti":
            return 1
        shape = tuple(int(d) for d in nib.load(str(path)).shape)
    except Exception:  # nibabel raises several types for damaged headers; loading reports it by name
        return 1
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape[2] if len(shape) == 3 and shape[2] > 1 else 1


def inference_datalist(input_paths: Iterable, input_root=None) -> list[dict]:
    """The entries to score: {"image": path, "name": output name, "slice": index (-1 for a 2D
    image), "depth": slices of the file}; a 3D NIfTI volume gives one entry per slice."""
    files = list_inputs(input_paths, input_root)
    entries = []
    for (path, _), name in zip(files, output_names(files)):
        depth = volume_depth(path)
        slices = range(depth) if depth > 1 else [-1]
        entries.extend({"image": str(path), "name": name, "slice": k, "depth": depth} for k in slices)
    return entries


class InferenceDataset(Dataset):
    """The entries of ``inference_datalist`` through the modality chain ``transform``.

    A slice entry is read by the chain's own loader at that slice and transformed by the rest of
    the chain. An entry that cannot be read is not dropped: it gets its ``error`` (the loader's
    message, which names the file) and a placeholder image through the same chain, so a batch
    stays well formed, the writer reports it, and the other files are still scored.
    """

    def __init__(self, data: Sequence[dict], transform: Compose):
        super().__init__(data, transform)
        self.array_chain = without_loading(transform)
        self.loader = image_loader(transform)

    def _prepare(self, entry: dict) -> dict:
        if entry["slice"] < 0:
            return self.transform({"image": entry["image"]})
        image = self.loader(entry["image"], reader=slice_reader(self.loader, entry["slice"]))
        return self.array_chain({"image": image})

    def _placeholder(self, entry: dict) -> dict:
        ramp = torch.linspace(0, 1, 16 * 16).reshape(1, 16, 16).repeat(self.loader.channels, 1, 1)
        return self.array_chain({"image": MetaTensor(ramp, meta={"filename_or_obj": entry["image"]})})

    def _transform(self, index: int) -> dict:
        entry = dict(self.data[index])
        try:
            prepared, error = self._prepare(entry), ""
        except LOAD_ERRORS as wrapped:
            problem = root_cause(wrapped)  # under MONAI's 'applying transform ...' wrapper
            logger.error("%s: not scored: %s", entry["image"], problem)
            prepared, error = self._placeholder(entry), str(problem)
        return {"image": prepared["image"], "file": entry["image"], "name": entry["name"],
                "slice": entry["slice"], "depth": entry["depth"], "error": error}  # fmt: skip


def check_output_dir(inference_dir, overwrite: bool = False) -> Path:
    """Refuse to write into a folder holding another scoring run's results unless ``overwrite``."""
    folder = Path(inference_dir)
    previous = folder / "summary.json"
    if previous.is_file() and not overwrite:
        raise FileExistsError(
            f"{folder} already holds scoring results ({previous.name}); choose another output folder or "
            "pass --overwrite true to replace them"
        )
    return folder


class DecisionThreshold:
    """Stage 2's last step, as a handler: when the ASR-Net trainer completes (after
    ``RefinerSelection`` has kept the selected refiners), load the trained model with
    ``pipeline_loader`` and write ``threshold.json`` from the validation normals (``save_threshold``).

    Args:
        pipeline_loader: callable returning the trained ``DDADPipeline`` (the config declares
            ``scripts.engines.evaluation.load_pipeline`` with its keyword arguments, ``_mode_: callable``).
        validation_images: the clean held-out normals (N, C, H, W).
        ckpt_dir: the run's ``models/`` folder.
        specificity: share of validation normals at or below the threshold.
    """

    def __init__(self, pipeline_loader, validation_images: torch.Tensor, ckpt_dir, specificity: float = 0.95):
        self.pipeline_loader = pipeline_loader
        self.validation_images = validation_images
        self.ckpt_dir = ckpt_dir
        self.specificity = float(specificity)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> Path:
        return save_threshold(self.pipeline_loader(), self.validation_images, self.ckpt_dir, self.specificity)
