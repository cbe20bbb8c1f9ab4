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
    config, see ``scripts.deployment.export``) with the SDK's ``get_bundle_config``, sets its
    ``network`` to ``model.ts`` and its inputs to the kept files, and runs the config's
    ``evaluator``: the bundle's inference workflow itself (``configs/inference.json``), with the
    training loader and transforms (VOI window, MONOCHROME1 inversion, resize, scaling), the
    image score and label of its ``postprocessing`` and its writer. Either method's
    ``model.ts`` runs: DDAD's (a map) and SALAD's (an image-level score, no map).
``ResultWriterOperator`` (input ``results``)
    The scoring writer has written, per input, ``<name>_map.nii.gz`` and ``<name>_overlay.png``
    (where the model gives a map) and, for the run, ``scores.csv`` and ``summary.json``, the same
    names as ``python -m ddad_bundle score``. This operator adds, for DICOM inputs with an overlay,
    ``<name>_overlay.dcm`` (a Secondary Capture, see ``dicom_sc``), and lists the skipped inputs in
    the summary.

Why not the SDK's ``MonaiBundleInferenceOperator``: it receives images from the SDK's DICOM
series-to-volume path, which does not apply the VOI window and MONOCHROME1 handling the model
was trained with, and it emits only the ``network_data_format`` outputs, so the score and label
that the postprocessing computes would be dropped. This operator uses the same bundle parts
(``model.ts``, its embedded config) without those limits.

Device: ``DDAD_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``) if set, else the config's ``device``
(CUDA when available). Identifiers in the Secondary Capture: ``DDAD_SECONDARY_CAPTURE_IDENTIFIERS``
(``true``/``false``) if set, else the embedded config's ``secondary_capture_identifiers`` (true
where a ``model.ts`` predates the key).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from monai.deploy.core import Fragment, Operator, OperatorSpec

logger = logging.getLogger("ddad.deploy")

SCORED_MODALITIES = ("CR", "DX")
IMAGE_FORMATS = ("png", "jpeg")
HIDDEN_PREFIXES = (".",)
SC_IDENTIFIERS_ENV = "DDAD_SECONDARY_CAPTURE_IDENTIFIERS"
BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def secondary_capture_identifiers(parser) -> bool:
    """Whether the Secondary Captures carry the source's patient and study identifiers: the
    environment's ``DDAD_SECONDARY_CAPTURE_IDENTIFIERS`` over the config's key (module docstring)."""
    text = os.environ.get(SC_IDENTIFIERS_ENV, "").strip().lower()
    if text:
        if text not in BOOLEAN_WORDS:
            raise ValueError(f"{SC_IDENTIFIERS_ENV}={text!r}: expected one of {', '.join(BOOLEAN_WORDS)}")
        return BOOLEAN_WORDS[text]
    value = (
        parser.get_parsed_content("secondary_capture_identifiers")
        if "secondary_capture_identifiers" in parser
        else True
    )
    if not isinstance(value, bool):
        raise ValueError(f"config key 'secondary_capture_identifiers' must be true or false, got {value!r}")
    return value


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
    try:
        network = torch.jit.load(str(model_path), map_location=device).eval()
    except RuntimeError as error:
        raise _unreadable_model(model_path, error) from error
    return torch.jit.optimize_for_inference(torch.jit.freeze(network))


def _unreadable_model(model_path, error=None) -> ValueError:
    from scripts.runtime.checkpoints import CheckpointError, first_line

    why = f" ({first_line(error)})" if error is not None else ""
    return CheckpointError(model_path, f"unreadable: the file is cut short or corrupt{why}; export it again")


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
    """``model.ts`` + its embedded inference config: scores a list of files with the config's evaluator.

    Kept apart from the operator so that it is plain Python: the operator is a thin wrapper.
    """

    def __init__(self, model_path, device=None):
        from monai.deploy.operators.monai_bundle_inference_operator import get_bundle_config

        self.model_path = resolve_model_path(model_path)
        if not zipfile.is_zipfile(self.model_path):  # TorchScript files are zip archives
            raise _unreadable_model(self.model_path)
        try:
            self.parser = get_bundle_config(str(self.model_path), ["inference"])
        except (IOError, KeyError) as error:
            raise ValueError(
                f"{self.model_path}: no embedded inference config (extra/inference.json); "
                f"re-export it with `python -m ddad_bundle export` ({error})"
            ) from error
        for key in ("evaluator", "postprocessing", "decision_threshold", "deployed_score"):
            if self.parser.get(key) is None:
                raise KeyError(
                    f"{self.model_path}: the embedded inference config has no {key!r}; "
                    "re-export with this version of the bundle"
                )
        requested = device or os.environ.get("DDAD_DEVICE")
        self.device = torch.device(requested) if requested else self.parser.get_parsed_content("device")
        self.network = load_for_inference(self.model_path, self.device)
        self.threshold = float(self.parser.get_parsed_content("decision_threshold"))
        self.score_name = str(self.parser.get_parsed_content("deployed_score"))
        self.sc_identifiers = secondary_capture_identifiers(self.parser)
        logger.info(
            "loaded %s (%s, threshold %.6g) on %s", self.model_path, self.score_name, self.threshold, self.device
        )

    def run(self, files: list, input_root, output_dir) -> dict:
        """Score ``files`` (output names relative to ``input_root``) into ``output_dir``; the summary."""
        self.parser["network"] = self.network  # model.ts in place of the trained run's modules
        self.parser["device"] = self.device
        self.parser["input_paths"] = [str(f) for f in files]
        self.parser["input_root"] = str(input_root)
        self.parser["inference_dir"] = str(output_dir)
        evaluator = self.parser.get_parsed_content("evaluator", lazy=False)
        evaluator.run()
        return evaluator.state.inference_summary


class BundleInferenceOperator(Operator):
    """Scores every ``ok`` item with ``model.ts`` (see the module docstring); emits ``results``."""

    def __init__(self, fragment: Fragment, *args, app_context, input_root, output_dir, model_path=None, **kwargs):
        self.app_context = app_context
        self.model_path = model_path
        self.input_root, self.output_dir = Path(input_root), Path(output_dir)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("items")
        spec.output("results")

    def _model_file(self):
        model = self.app_context.models.get() if self.app_context.models else None
        return self.model_path or (model.path if model is not None else self.app_context.model_path)

    def compute(self, op_input, op_output, context):
        items = op_input.receive("items")
        root = self.input_root if self.input_root.is_dir() else self.input_root.parent
        scorer = BundleScorer(self._model_file())
        kept = [Path(item["path"]) for item in items if item["status"] == "ok"]
        summary = scorer.run(kept, root, self.output_dir) if kept else None
        results = {"items": items, "summary": summary, "score_name": scorer.score_name,
                   "secondary_capture_identifiers": scorer.sc_identifiers}  # fmt: skip
        op_output.emit(results, "results")


def write_results(results: dict, output_dir) -> dict:
    """The Secondary Captures of the DICOM inputs with an overlay, then ``summary.json`` and
    ``scores.csv`` with the skipped inputs listed beside the scored ones. Without identifiers
    (``secondary_capture_identifiers`` false) no source UID is written anywhere: each source
    study maps to a fresh one, and the rows do not list the source's SOP Instance UID."""
    from PIL import Image
    from pydicom.uid import generate_uid
    from scripts.handlers.inference_writer import write_tables

    from .dicom_sc import write_secondary_capture

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = results["summary"] or {"score_name": results["score_name"], "files": []}
    datasets = {item["path"]: item["dataset"] for item in results["items"] if item["dataset"] is not None}
    identifiers = bool(results.get("secondary_capture_identifiers", True))
    # one derived series (and, without identifiers, one fresh study) per source study and run:
    # a series never spans two studies
    derived: dict = {}
    rows = []
    for row in summary["files"]:
        source = datasets.get(row["file"])
        if row["status"] == "ok" and source is not None and row.get("overlay_file"):
            study = str(source.get("StudyInstanceUID", ""))
            study_uid, series_uid, count = derived.get(study, (generate_uid(), generate_uid(), 0))
            derived[study] = (study_uid, series_uid, count + 1)
            rgb = np.asarray(Image.open(output_dir / row["overlay_file"]).convert("RGB"))
            name = f"{row['name']}_overlay.dcm"
            write_secondary_capture(source, rgb, output_dir / name, row["score_name"], row["score"], row["threshold"],
                                    row["label"], series_uid, count + 1, identifiers, study_uid)  # fmt: skip
            row = dict(row, overlay_dicom=name)
            if identifiers:
                row["sop_instance_uid"] = str(source.get("SOPInstanceUID", ""))
        rows.append(row)
    for item in results["items"]:
        if item["status"] != "ok":
            rows.append({"file": item["path"], "status": "skipped", "kind": item["kind"], "reason": item["reason"]})
    header = {k: v for k, v in summary.items() if k != "files" and not k.startswith("n_")}
    return write_tables(rows, header, output_dir)


class ResultWriterOperator(_FolderOperator):
    """Sink operator: writes the results (see ``write_results``)."""

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    def compute(self, op_input, op_output, context):
        write_results(op_input.receive("results"), self.folder)
