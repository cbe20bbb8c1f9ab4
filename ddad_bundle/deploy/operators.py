"""MONAI Deploy operators of the DDAD application: find the images, score them with ``model.ts``,
write the results.

``ImageFolderLoaderOperator`` (source, output ``items``)
    Lists the input folder (recursively, or the one file given) and classifies each file by its
    content: DICOM instances of modality CR or DX and PNG/JPEG images are kept; other DICOM
    modalities, NIfTI and unreadable files are reported with the reason and not scored. DICOM
    headers are read here (without pixels) because the writer needs the patient and study
    identifiers; pixels are decoded later, by the bundle's own loader.
``BundleInferenceOperator`` (input ``items``, output ``results``)
    Loads ``model.ts`` and parses the inference config embedded in it (the run's effective
    config, see ``scripts.deployment.export``) with the SDK's ``get_bundle_config``. Each image is read by the
    loader of the config's ``preprocessing`` (``scripts.data.readers.LoadMedicalImage``: rescale,
    VOI window, MONOCHROME1 inversion, exactly as in training), transformed by
    ``array_preprocessing`` (the rest of that chain), scored by the TorchScript pipeline and
    passed through ``postprocessing``: image score = spatial mean of ``pred``, label from the
    stored threshold, and ``pred`` inverted back to the input's resolution.
``ResultWriterOperator`` (input ``results``)
    Per image: ``<name>.json`` (score, label, threshold), ``<name>_heatmap.png`` (the map over
    the image) and, for DICOM inputs, ``<name>_heatmap.dcm`` (a Secondary Capture, see
    ``dicom_sc``); for the run: ``results.json``.

Why not the SDK's ``MonaiBundleInferenceOperator``: it receives images from the SDK's DICOM
series-to-volume path, which does not apply the VOI window and MONOCHROME1 handling the model
was trained with, and it emits only the ``network_data_format`` outputs, so the score and label
that the postprocessing computes would be dropped. This operator uses the same bundle parts
(``model.ts``, its embedded config, ``preprocessing``/``postprocessing``) without those limits.

Device: ``DDAD_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``) if set, else the config's ``device``
(CUDA when available).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.deploy.core import Fragment, Operator, OperatorSpec

logger = logging.getLogger("ddad.deploy")

SCORED_MODALITIES = ("CR", "DX")
IMAGE_FORMATS = ("png", "jpeg")
HIDDEN_PREFIXES = (".",)


def list_input_files(input_path) -> list[Path]:
    """The files to consider: the file given, or every non-hidden file under the folder, sorted."""
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise FileNotFoundError(f"input {input_path} does not exist")
    files = sorted(
        p
        for p in input_path.rglob("*")
        if p.is_file() and not any(part.startswith(HIDDEN_PREFIXES) for part in p.relative_to(input_path).parts)
    )
    if not files:
        raise FileNotFoundError(f"input folder {input_path} holds no files")
    return files


def classify(path: Path) -> dict:
    """One input item: {"path", "kind", "status": "ok"|"skipped", "reason", "dataset"}."""
    import pydicom
    from scripts.data.readers import ImageLoadError, detect_format

    item = {"path": str(path), "kind": None, "status": "ok", "reason": "", "dataset": None}
    try:
        fmt = detect_format(path)
    except ImageLoadError as error:
        return dict(item, status="skipped", reason=str(error))
    item["kind"] = fmt
    if fmt == "dicom":
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as error:  # pydicom raises several types for damaged headers
            return dict(item, status="skipped", reason=f"unreadable DICOM header: {error}")
        modality = str(ds.get("Modality", "")).upper()
        if modality not in SCORED_MODALITIES:
            return dict(
                item,
                status="skipped",
                reason=f"DICOM modality {modality or '<none>'!r} is not scored (expected {'/'.join(SCORED_MODALITIES)})",
            )
        item["dataset"] = ds
    elif fmt not in IMAGE_FORMATS:
        return dict(
            item, status="skipped", reason=f"{fmt} files are not read by this application (DICOM CR/DX, PNG, JPEG)"
        )
    return item


class _FolderOperator(Operator):
    """An operator bound to one folder of the application: its input or its output."""

    def __init__(self, fragment: Fragment, *args, folder, **kwargs):
        self.folder = Path(folder)
        super().__init__(fragment, *args, **kwargs)


class ImageFolderLoaderOperator(_FolderOperator):
    """Source operator: classifies the input files (see the module docstring); emits ``items``."""

    def setup(self, spec: OperatorSpec):
        spec.output("items")

    def compute(self, op_input, op_output, context):
        items = [classify(p) for p in list_input_files(self.folder)]
        for item in items:
            if item["status"] != "ok":
                logger.warning("%s: not scored: %s", item["path"], item["reason"])
        logger.info("%d of %d input files to score", sum(i["status"] == "ok" for i in items), len(items))
        op_output.emit(items, "items")


def load_for_inference(model_path, device) -> torch.jit.ScriptModule:
    """``model.ts`` loaded, frozen and optimized for inference (BatchNorm folded into the
    convolutions, weights prepacked): the same maps to 1e-7, about 13% faster on CPU
    (docs/performance.md). The file on disk, with its embedded metadata, is unchanged."""
    network = torch.jit.load(str(model_path), map_location=device).eval()
    return torch.jit.optimize_for_inference(torch.jit.freeze(network))


def resolve_model_path(model_path) -> Path:
    """``model.ts`` given directly, or inside the folder given (``model.ts`` or ``models/model.ts``)."""
    path = Path(model_path)
    candidates = [path] if path.is_file() else [path / "model.ts", path / "models" / "model.ts"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no model.ts at {path} (looked for {', '.join(str(c) for c in candidates)}); "
        "write it with `python -m ddad_bundle export`"
    )


class BundleScorer:
    """``model.ts`` + its embedded inference config, scoring one file at a time.

    Kept apart from the operator so that it is plain Python: the operator is a thin wrapper.
    """

    def __init__(self, model_path, device=None):
        from monai.deploy.operators.monai_bundle_inference_operator import get_bundle_config
        from scripts.data.readers import LoadMedicalImaged

        self.model_path = resolve_model_path(model_path)
        try:
            self.parser = get_bundle_config(str(self.model_path), ["inference"])
        except (IOError, KeyError) as error:
            raise ValueError(
                f"{self.model_path}: no embedded inference config (extra/inference.json); "
                f"re-export it with `python -m ddad_bundle export` ({error})"
            ) from error
        for key in ("preprocessing", "array_preprocessing", "postprocessing", "decision_threshold", "deploy_score"):
            if self.parser.get(key) is None:
                raise KeyError(
                    f"{self.model_path}: the embedded inference config has no {key!r}; "
                    "re-export with this version of the bundle"
                )
        requested = device or os.environ.get("DDAD_DEVICE")
        self.device = torch.device(requested) if requested else self.parser.get_parsed_content("device")
        self.network = load_for_inference(self.model_path, self.device)
        preprocessing = self.parser.get_parsed_content("preprocessing")
        loaders = [t for t in preprocessing.transforms if isinstance(t, LoadMedicalImaged)]
        if not loaders:
            raise ValueError(f"{self.model_path}: the embedded 'preprocessing' has no LoadMedicalImaged loader")
        self.loader = loaders[0]  # the training loader with the run's settings
        self.array_chain = self.parser.get_parsed_content("array_preprocessing")
        self.postprocessing = self.parser.get_parsed_content("postprocessing")
        self.threshold = float(self.parser.get_parsed_content("decision_threshold"))
        self.score_name = str(self.parser.get_parsed_content("deploy_score"))
        logger.info(
            "loaded %s (%s, threshold %.6g) on %s", self.model_path, self.score_name, self.threshold, self.device
        )

    @torch.no_grad()
    def score(self, path) -> dict:
        """{"score", "label", "map" (H, W) at the input's resolution, "image" (H, W) for display}."""
        raw = self.loader({"image": str(path)})["image"]
        data = self.array_chain({"image": raw})
        pred = self.network(data["image"][None].float().to(self.device))[0].cpu()
        out = self.postprocessing({"pred": pred, "image": data["image"]})
        anomaly_map = np.asarray(torch.as_tensor(out["pred"]).float()[0])
        if anomaly_map.shape != tuple(raw.shape[1:]):
            raise RuntimeError(f"{path}: the map came back as {anomaly_map.shape}, the image is {tuple(raw.shape[1:])}")
        return {
            "score": float(out["score"]),
            "label": str(out["label"]),
            "map": anomaly_map,
            "image": np.asarray(raw).mean(axis=0),
        }


class BundleInferenceOperator(Operator):
    """Scores every ``ok`` item with ``model.ts`` (see the module docstring); emits ``results``."""

    def __init__(self, fragment: Fragment, *args, app_context, model_path=None, **kwargs):
        self.app_context = app_context
        self.model_path = model_path
        self._scorer: BundleScorer | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("items")
        spec.output("results")

    def _model_file(self):
        model = self.app_context.models.get() if self.app_context.models else None
        return self.model_path or (model.path if model is not None else self.app_context.model_path)

    def compute(self, op_input, op_output, context):
        items = op_input.receive("items")
        if self._scorer is None:
            self._scorer = BundleScorer(self._model_file())
        results = []
        for item in items:
            row = dict(item, score_name=self._scorer.score_name, threshold=self._scorer.threshold)
            if item["status"] == "ok":
                try:
                    row.update(self._scorer.score(item["path"]))
                except (ValueError, OSError, RuntimeError) as error:  # ImageLoadError is a ValueError
                    logger.error("%s: not scored: %s", item["path"], error)
                    row.update(status="error", reason=str(error))
            results.append(row)
        op_output.emit(results, "results")


def unique_stem(path: Path, taken: set) -> str:
    stem = path.name
    for suffix in (".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    candidate, k = stem, 2
    while candidate in taken:
        candidate, k = f"{stem}_{k}", k + 1
    taken.add(candidate)
    return candidate


def write_results(results: list[dict], output_dir) -> dict:
    """Write each result's JSON, PNG and (DICOM inputs) Secondary Capture, then ``results.json``."""
    from PIL import Image
    from pydicom.uid import generate_uid
    from scripts.engines.inference import heat_overlay

    from .dicom_sc import write_secondary_capture

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    series_uids: dict = {}  # one derived series per study and run: a series never spans two studies
    rows, taken = [], set()
    for result in results:
        stem = unique_stem(Path(result["path"]), taken)
        row = {"file": result["path"], "kind": result["kind"], "status": result["status"]}
        if result["status"] != "ok":
            row["reason"] = result["reason"]
            rows.append(row)
            continue
        row.update(
            score_name=result["score_name"], score=result["score"], threshold=result["threshold"], label=result["label"]
        )
        rgb = heat_overlay(result["image"], result["map"])
        Image.fromarray(rgb).save(output_dir / f"{stem}_heatmap.png")
        row["heatmap_png"] = f"{stem}_heatmap.png"
        if result["dataset"] is not None:
            study = str(result["dataset"].get("StudyInstanceUID", ""))
            series_uid, count = series_uids.get(study, (generate_uid(), 0))
            series_uids[study] = (series_uid, count + 1)
            write_secondary_capture(
                result["dataset"],
                rgb,
                output_dir / f"{stem}_heatmap.dcm",
                result["score_name"],
                result["score"],
                result["threshold"],
                result["label"],
                series_uid,
                count + 1,
            )
            row["heatmap_dicom"] = f"{stem}_heatmap.dcm"
            row["sop_instance_uid"] = str(result["dataset"].get("SOPInstanceUID", ""))
        (output_dir / f"{stem}.json").write_text(json.dumps(row, indent=2) + "\n")
        row["result_json"] = f"{stem}.json"
        rows.append(row)
    summary = {
        "n_files": len(rows),
        "n_scored": sum(r["status"] == "ok" for r in rows),
        "n_abnormal": sum(r.get("label") == "abnormal" for r in rows),
        "n_not_scored": sum(r["status"] != "ok" for r in rows),
        "files": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "scored %d of %d files (%d abnormal); results in %s",
        summary["n_scored"],
        summary["n_files"],
        summary["n_abnormal"],
        output_dir,
    )
    return summary


class ResultWriterOperator(_FolderOperator):
    """Sink operator: writes the results (see ``write_results``)."""

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    def compute(self, op_input, op_output, context):
        write_results(op_input.receive("results"), self.folder)
