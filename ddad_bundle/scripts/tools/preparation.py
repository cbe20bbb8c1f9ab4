"""Turn the public data sets of the DDAD paper into 8-bit PNGs and a ``ddad-split/1`` split file.

Four commands, one per data set (run from ``ddad_bundle/``)::

    python -m scripts.tools.preparation rsna        --source <RSNA folder>   --out <folder>
    python -m scripts.tools.preparation vindr       --source <VinDr folder>  --out <folder>
    python -m scripts.tools.preparation brain_tumor --source <BTM folder>    --out <folder> [--include-pituitary]
    python -m scripts.tools.preparation lag         --source <LAG folder>    --out <folder> [--rgb]

Common options: ``--seed 0 --anomaly-rate 0.6 --size 256``, the set sizes ``--n-normal
--n-unlabeled --n-test-normal --n-test-abnormal`` (defaults: the paper's repartition, see
:data:`PAPER_SIZES`), ``--reference-split data.json [--resample-seed N]`` (take the reference
implementation's lists instead of drawing), ``--skip-unreadable`` and ``--workers 2``.

What a run produces under ``--out``:

- ``images/<name>.png``: 8-bit grayscale (or RGB with ``lag --rgb``) PNGs of ``size x size``
  pixels, ``<name>`` being the source file's stem (``<patientId>``, ``<image_id>``, ``Tr-gl_0016``,
  ``0001``; qualified with its folders only when two source files share a stem).
- ``split.json``: a ``ddad-split/1`` file (``docs/split_format.md``) with ``normal`` (D_n),
  ``unlabeled`` (D_u, labels kept for bookkeeping) and ``test``; no ``validation`` key, so
  ``load_split`` holds out its seeded 10% of D_n. Entries carry the extra keys ``source`` (the
  file under ``--source``) and ``class`` (the label file's class), RSNA entries ``patient_id``.
- ``prepare_report.json``: classes found, pool sizes, set counts, anomaly rate, seed, command,
  source, conversion counts, and every file left out and why.

Intensities. DICOM: :func:`scripts.data.readers.read_dicom_intensities` with ``voi_window=True,
robust_clip=True`` (rescale, first VOI window, MONOCHROME1 inverted; 0.5/99.5 percentile clip
when the header has no window), the function inference uses on raw DICOM, then min-max to
``[0, 1]``. JPEG/PNG: :func:`scripts.data.readers.load_image` (EXIF orientation, luminance to gray
unless RGB is kept); 8-bit values are kept as they are (16-bit files are min-maxed). The image is
then resized to ``size x size`` (area averaging, PIL ``BOX``, when both sides shrink; ``LANCZOS``
otherwise; the aspect ratio is not kept) in floating point and rounded to 8 bits.

Drawing. The pools come from the label files (RSNA, VinDr) or the class folders (brain tumor,
LAG); :func:`scripts.data.splits.build_split` draws exact set sizes at an exact anomaly rate with
``--seed`` and refuses what the pools cannot give. Only drawn images are converted. An image
that cannot be read stops the run with the list of such files; with ``--skip-unreadable`` those
files leave the pools and the draw is repeated (same seed) until every drawn image converts.

Incremental and atomic. A PNG already present with the requested size and colour mode is not
converted again; each PNG, the split and the report are written to a temporary file and moved
into place (``os.replace``), so an interrupted run keeps every finished image and a rerun only
converts the rest.

Python API: :func:`prepare` (``prepare("rsna", source, out, n_normal=..., ...)`` returns the
report dict) and :func:`main` (the command line, returns the exit status).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.files import atomic_target, write_json_atomic
from ..data.splits import FORMAT, SplitError, build_split, some_of, load_split, read_reference_split, save_split

__all__ = ["PreparationError", "PAPER_SIZES", "DATASETS", "MODALITY", "prepare", "main"]

PAPER_SIZES = {
    "rsna": dict(n_normal=3851, n_unlabeled=4000, n_test_normal=1000, n_test_abnormal=1000),
    "vindr": dict(n_normal=4000, n_unlabeled=4000, n_test_normal=1000, n_test_abnormal=1000),
    "brain_tumor": dict(n_normal=1000, n_unlabeled=1000, n_test_normal=600, n_test_abnormal=600),
    "lag": dict(n_normal=1500, n_unlabeled=1500, n_test_normal=811, n_test_abnormal=811),
}
DATASETS = tuple(PAPER_SIZES)
MODALITY = {"rsna": "cxr", "vindr": "cxr", "brain_tumor": "brain", "lag": "fundus"}
TITLES = {
    "rsna": "RSNA Pneumonia Detection Challenge (stage 2 train)",
    "vindr": "VinDr-CXR (train)",
    "brain_tumor": "Brain Tumor MRI Dataset (Nickparvar)",
    "lag": "LAG glaucoma fundus database",
}
SIZE_KEYS = ("n_normal", "n_unlabeled", "n_test_normal", "n_test_abnormal")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_LISTED = 10  # how many files an error message names before "and N more"

RSNA_CSV = "stage_2_detailed_class_info.csv"
RSNA_IMAGES = "stage_2_train_images"
RSNA_NORMAL, RSNA_ABNORMAL = "Normal", "Lung Opacity"
VINDR_CSV = "train.csv"
VINDR_IMAGES = "train"
VINDR_NO_FINDING = "no finding"
BRAIN_SPLITS = ("Training", "Testing")
BRAIN_NORMAL, BRAIN_ABNORMAL, BRAIN_OPTIONAL = ("notumor",), ("glioma", "meningioma"), ("pituitary",)
LAG_NORMAL, LAG_ABNORMAL = "non_glaucoma", "glaucoma"


class PreparationError(ValueError):
    """Input that cannot be prepared; the message names the file or folder and the problem."""


@dataclass
class Item:
    """One source image: where it is, its class and label (None: a class the method does not use)."""

    source: Path
    stem: str  # the name the reference split uses (file name without extension)
    cls: str  # class as the label file or folder names it
    label: int | None  # 0 normal, 1 abnormal, None unused
    kind: str  # "dicom" or "image"
    rel: str  # path relative to --source, for messages and the split's "source" key
    patient_id: str | None = None
    exists: bool = True
    name: str = ""  # output stem, unique within the data set (set by _assign_names)


@dataclass
class Scan:
    """What a data set's folder holds: every image with a class, and counts for the report."""

    items: list[Item]
    classes: dict
    notes: dict = field(default_factory=dict)
    description: str = ""


# ----------------------------------------------------------------------------------------------
# small helpers


def _child(parent: Path, name: str, what: str, hint: str = "") -> Path:
    """``parent/name``, matched case-insensitively when the exact name is absent; refused when missing."""
    exact = parent / name
    if exact.exists():
        return exact
    if parent.is_dir():
        for p in sorted(parent.iterdir()):
            if p.name.lower() == name.lower():
                return p
    raise PreparationError(f"{exact}: {what} not found{hint}")


def _source_root(source) -> Path:
    root = Path(os.path.abspath(source))
    if not root.is_dir():
        raise PreparationError(
            f"--source {root}: no such folder" if not root.exists() else f"--source {root}: not a folder"
        )
    return root


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV as dicts (stripped), refused with the missing column names."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                found = ", ".join(repr(h) for h in header) or "none (empty file)"
                raise PreparationError(
                    f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; found columns: {found}"
                )
            return [
                {(k or "").strip(): (v or "").strip() if isinstance(v, str) else v for k, v in row.items()}
                for row in reader
            ]
    except UnicodeDecodeError as e:
        raise PreparationError(f"{path}: not a UTF-8 text CSV ({e})") from e


def _files_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in extensions and entry.is_file():
                out.setdefault(stem, Path(entry.path))
    return out


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


# ----------------------------------------------------------------------------------------------
# scanning the four data sets


def _label_file(root: Path, labels, default: str, what: str, hint: str) -> Path:
    if labels is None:
        return _child(root, default, what, hint)
    path = Path(os.path.abspath(labels))
    if not path.is_file():
        raise PreparationError(f"--labels {path}: no such file")
    return path


def _values_by_id(rows: list[dict], id_column: str, value_column: str, strip: bool = True) -> dict[str, set]:
    """{id: set of the values it has over all its rows} (several rows per image or patient)."""
    values: dict[str, set] = {}
    for row in rows:
        key = row.get(id_column) or ""
        if key:
            value = row.get(value_column) or ""
            values.setdefault(key, set()).add(value.strip() if strip else value)
    return values


def _csv_notes(table: Path, rows: list[dict], listed_as: str, listed: dict, files: dict) -> dict:
    """What a label CSV and its DICOM folder hold, for the report: ``listed`` are the CSV's ids (``patients``
    or ``images``), ``files`` the folder's files by id."""
    return {
        "labels_file": str(table),
        "csv_rows": len(rows),
        f"{listed_as}_in_csv": len(listed),
        "dicom_files_in_folder": len(files),
        "dicom_files_not_in_csv": len(set(files) - set(listed)),
    }


def scan_rsna(root: Path, labels=None, **_) -> Scan:
    """RSNA: ``stage_2_detailed_class_info.csv`` (patientId, class) + ``stage_2_train_images/*.dcm``."""
    hint = " (expected the unzipped Kaggle download: stage_2_detailed_class_info.csv and stage_2_train_images/)"
    table = _label_file(root, labels, RSNA_CSV, "class file", hint)
    folder = _child(root, RSNA_IMAGES, "image folder", hint)
    rows = _read_csv(table, ("patientId", "class"))
    classes_of = _values_by_id(rows, "patientId", "class", strip=False)
    files = _files_by_stem(folder, (".dcm", ".dicom"))
    items, counts, conflicting = [], {}, []
    for pid in sorted(classes_of):
        found = classes_of[pid]
        if len(found) > 1:
            conflicting.append(f"{pid}: {sorted(found)}")
            continue
        cls = next(iter(found))
        counts[cls] = counts.get(cls, 0) + 1
        label = {RSNA_NORMAL: 0, RSNA_ABNORMAL: 1}.get(cls)
        path = files.get(pid, folder / f"{pid}.dcm")
        items.append(
            Item(path, pid, cls, label, "dicom", path.relative_to(root).as_posix(), patient_id=pid, exists=pid in files)
        )
    notes = _csv_notes(table, rows, "patients", classes_of, files)
    if conflicting:
        notes["patients_with_conflicting_classes_left_out"] = conflicting
    desc = f"normal = '{RSNA_NORMAL}', abnormal = '{RSNA_ABNORMAL}' (classes of {RSNA_CSV}, one image per patientId)"
    return Scan(items, counts, notes, desc)


def scan_vindr(root: Path, labels=None, **_) -> Scan:
    """VinDr-CXR: ``train.csv`` (one row per reader finding) + ``train/<image_id>.dicom``."""
    hint = " (expected the VinDr-CXR download: train.csv and train/<image_id>.dicom; --labels names another CSV)"
    table = _label_file(root, labels, VINDR_CSV, "annotation file", hint)
    folder = _child(root, VINDR_IMAGES, "image folder", hint)
    rows = _read_csv(table, ("image_id", "class_name"))
    findings = _values_by_id(rows, "image_id", "class_name")
    files = _files_by_stem(folder, (".dicom", ".dcm"))
    items, per_finding = [], {}
    n_normal = n_abnormal = 0
    for iid in sorted(findings):
        names = findings[iid]
        normal = all(n.lower() == VINDR_NO_FINDING for n in names)
        for n in names:
            if n.lower() != VINDR_NO_FINDING:
                per_finding[n] = per_finding.get(n, 0) + 1
        n_normal += normal
        n_abnormal += not normal
        cls = "No finding" if normal else "finding"
        path = files.get(iid, folder / f"{iid}.dicom")
        items.append(
            Item(path, iid, cls, 0 if normal else 1, "dicom", path.relative_to(root).as_posix(), exists=iid in files)
        )
    classes = {
        "normal (No finding by every reader)": n_normal,
        "abnormal (any finding)": n_abnormal,
        "images per finding": dict(sorted(per_finding.items())),
    }
    notes = _csv_notes(table, rows, "images", findings, files)
    desc = "normal = every reader's row is 'No finding'; abnormal = any other finding (train.csv)"
    return Scan(items, classes, notes, desc)


def scan_brain_tumor(root: Path, include_pituitary: bool = False, **_) -> Scan:
    """Brain Tumor MRI: ``Training/`` and ``Testing/``, each with one folder per class."""
    hint = " (expected the Kaggle download: Training/ and Testing/, each with notumor/ glioma/ meningioma/ pituitary/)"
    items, classes = [], {}
    abnormal = BRAIN_ABNORMAL + (BRAIN_OPTIONAL if include_pituitary else ())
    for split in BRAIN_SPLITS:
        top = _child(root, split, "folder", hint)
        for cls in BRAIN_NORMAL + BRAIN_ABNORMAL + BRAIN_OPTIONAL:
            try:
                folder = _child(top, cls, "class folder", hint)
            except PreparationError:
                if cls in BRAIN_OPTIONAL and not include_pituitary:
                    continue  # unused class: its absence does not matter
                raise
            label = 0 if cls in BRAIN_NORMAL else 1 if cls in abnormal else None
            files = _images_in(folder)
            classes[f"{split}/{cls}"] = len(files)
            items += [Item(p, p.stem, cls, label, "image", p.relative_to(root).as_posix()) for p in files]
    for cls in BRAIN_NORMAL + BRAIN_ABNORMAL + BRAIN_OPTIONAL:
        classes[cls] = sum(v for k, v in classes.items() if k.endswith("/" + cls))
    desc = f"normal = notumor, abnormal = {' + '.join(abnormal)} (Training/ and Testing/ pooled)"
    return Scan(items, classes, {}, desc)


def scan_lag(root: Path, **_) -> Scan:
    """LAG: ``non_glaucoma/image/*.jpg`` and ``glaucoma/image/*.jpg`` (or the JPEGs directly in the class folder)."""
    hint = " (expected non_glaucoma/ and glaucoma/, each with image/*.jpg or *.jpg)"
    items, classes = [], {}
    for cls, label in ((LAG_NORMAL, 0), (LAG_ABNORMAL, 1)):
        top = _child(root, cls, "class folder", hint)
        try:
            folder = _child(top, "image", "")
        except PreparationError:
            folder = top
        files = _images_in(folder)
        if not files:
            raise PreparationError(f"{folder}: no .jpg/.jpeg/.png images found{hint}")
        classes[cls] = len(files)
        items += [Item(p, p.stem, cls, label, "image", p.relative_to(root).as_posix()) for p in files]
    return Scan(items, classes, {}, "normal = non_glaucoma, abnormal = glaucoma")


SCANNERS: dict[str, Callable[..., Scan]] = {
    "rsna": scan_rsna,
    "vindr": scan_vindr,
    "brain_tumor": scan_brain_tumor,
    "lag": scan_lag,
}


def _assign_names(items: list[Item]) -> None:
    """Output stems: the source stem, qualified by its folders when two files share a stem."""
    by_stem: dict[str, list[Item]] = {}
    for it in items:
        by_stem.setdefault(it.stem, []).append(it)
    for stem, group in by_stem.items():
        for it in group:
            it.name = stem if len(group) == 1 else "_".join(Path(it.rel).with_suffix("").parts)


# ----------------------------------------------------------------------------------------------
# conversion


def _png_is_current(dst: Path, size: int, mode: str) -> bool:
    from PIL import Image

    try:
        with Image.open(dst) as im:
            return im.format == "PNG" and im.size == (size, size) and im.mode == mode
    except Exception:  # absent, truncated or not a PNG: convert again
        return False


def _read_unit_range(item: Item, channels: int) -> np.ndarray:
    """Source intensities in [0, 1], ``(H, W)`` or ``(H, W, 3)``; raises ImageLoadError when unreadable."""
    from scripts.data.readers import LUMINANCE_WEIGHTS, load_image, read_dicom_intensities

    if item.kind == "dicom":
        arr = read_dicom_intensities(item.source, voi_window=True, robust_clip=True)  # float32
        if arr.ndim == 3 and channels == 1:
            arr = (arr @ np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)).astype(np.float32)
        elif arr.ndim == 2 and channels == 3:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        return _min_max(arr)
    chw = load_image(item.source, channels=channels).as_tensor().numpy()
    arr = chw[0] if channels == 1 else np.moveaxis(chw, 0, -1)
    return _min_max(arr) if arr.max() > 255 else arr / 255.0


def _min_max(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _resize_to_8bit(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0, 1] image to ``size x size`` in float (area when shrinking), then round to uint8."""
    from PIL import Image

    h, w = arr.shape[:2]
    if (h, w) != (size, size):
        method = Image.Resampling.BOX if h >= size and w >= size else Image.Resampling.LANCZOS
        planes = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[-1])]
        planes = [
            np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)).resize((size, size), method))
            for p in planes
        ]
        arr = planes[0] if arr.ndim == 2 else np.stack(planes, axis=-1)
    return np.clip(np.rint(np.asarray(arr, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _write_png_atomic(array: np.ndarray, dst: Path) -> None:
    from PIL import Image

    with atomic_target(dst) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _convert_one(item: Item, dst: Path, size: int, channels: int) -> tuple[str, str | None]:
    """("done", None) when the PNG is already there, ("converted", None), or ("unreadable", why)."""
    mode = "L" if channels == 1 else "RGB"
    if _png_is_current(dst, size, mode):
        return "done", None
    try:
        arr = _read_unit_range(item, channels)
    except Exception as e:  # ImageLoadError and whatever a decoder raises on a damaged file
        return "unreadable", getattr(e, "problem", None) or f"{type(e).__name__}: {e}"
    _write_png_atomic(_resize_to_8bit(arr, size), dst)  # write errors (disk full...) propagate
    return "converted", None


def _convert_all(jobs: list[tuple[Item, Path]], size: int, channels: int, workers: int, log) -> dict:
    """Convert in a thread pool; returns {"converted": n, "done": n, "unreadable": {source path: why}}.

    On an interruption (Ctrl-C) or a write error the queued images are cancelled and the running
    ones finish; every PNG on disk is complete (written atomically).
    """
    out = {"converted": 0, "done": 0, "unreadable": {}}
    if not jobs:
        return out
    step = max(100, len(jobs) // 20)
    pool = ThreadPoolExecutor(max_workers=max(1, int(workers)))
    try:
        results = pool.map(lambda job: _convert_one(job[0], job[1], size, channels), jobs)
        for i, ((item, _), (status, why)) in enumerate(zip(jobs, results), 1):
            if status == "unreadable":
                out["unreadable"][item.source] = why
            else:
                out[status] += 1
            if i % step == 0 or i == len(jobs):
                log(
                    f"  {i}/{len(jobs)} images ({out['converted']} converted, {out['done']} already done, "
                    f"{len(out['unreadable'])} unreadable)"
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _clean_stale_temporaries(folder: Path) -> None:
    """Temporary PNGs an interrupted run left behind (never a finished image)."""
    for p in folder.glob(".*.png.*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------
# the two ways to get the sets: a seeded draw, or a reference split's lists


def _entry(item: Item, dst: Path) -> dict:
    e = {"image": str(dst), "source": item.rel, "class": item.cls}
    if item.patient_id is not None:
        e["patient_id"] = item.patient_id
    return e


def _draw(items, dst_of, sizes, anomaly_rate, seed, description, left_out, convert, skip_unreadable, refuse):
    """Draw with build_split, convert what was drawn; with skip_unreadable, drop failures and redraw."""
    by_dst = {str(dst_of(it)): it for it in items}
    bad: set = set(left_out)
    attempt = 0
    while True:
        attempt += 1
        normals = [_entry(it, dst_of(it)) for it in items if it.label == 0 and it.source not in bad]
        abnormals = [_entry(it, dst_of(it)) for it in items if it.label == 1 and it.source not in bad]
        d = build_split(
            normals, abnormals, **sizes, anomaly_rate=anomaly_rate, n_validation=0, seed=seed, description=description
        )
        drawn = [by_dst[e["image"]] for name in ("normal", "unlabeled", "test") for e in d.get(name, [])]
        result = convert(drawn)
        if not result["unreadable"]:
            return d, len(normals), len(abnormals), attempt
        if not skip_unreadable:
            refuse(result["unreadable"])
        bad.update(result["unreadable"])


def _from_reference(path, items, dst_of, n_unlabeled, anomaly_rate, resample_seed, include_hint):
    """The reference split's lists, mapped to the source images (looked up by stem and label)."""
    fake_dir = Path(os.path.abspath(path)).parent / ".reference-names"
    try:
        split = read_reference_split(
            path,
            fake_dir,
            resample_seed=resample_seed,
            check_files=False,
            n_unlabeled=n_unlabeled,
            anomaly_rate=anomaly_rate,
        )
    except SplitError as e:
        raise PreparationError(str(e)) from e
    index: dict[tuple, list[Item]] = {}
    by_stem: dict[str, list[Item]] = {}
    for it in items:
        index.setdefault((it.stem, it.label), []).append(it)
        by_stem.setdefault(it.stem, []).append(it)
    sets = {"normal": split.normal + split.validation + split.dropped, "unlabeled": split.unlabeled, "test": split.test}
    out, problems, used = {}, [], []
    for name, entries in sets.items():
        out[name] = []
        for e in entries:
            ref_name = os.path.relpath(e["image"], fake_dir)
            stem = Path(ref_name).stem
            label = 0 if name == "normal" else e["label"]
            found = index.get((stem, label), [])
            if len(found) == 1 and found[0].exists:
                entry = _entry(found[0], dst_of(found[0]))
                if name != "normal":
                    entry["label"] = label
                out[name].append(entry)
                used.append(found[0])
            elif len(found) > 1:
                problems.append(
                    f"{ref_name!r} ({name}) matches {len(found)} files: " + ", ".join(it.rel for it in found)
                )
            elif found:
                problems.append(f"{ref_name!r} ({name}) is listed in the label file but {found[0].rel} is missing")
            else:
                other = by_stem.get(stem, [])
                if other:
                    what = ", ".join(
                        f"{it.rel} (class {it.cls!r}, {'unused' if it.label is None else 'label ' + str(it.label)})"
                        for it in other
                    )
                    problems.append(
                        f"{ref_name!r} is label {label} in the reference ({name}) but here {what}" + include_hint
                    )
                else:
                    problems.append(f"{ref_name!r} ({name}) not found in the source")
    if problems:
        raise PreparationError(
            f"reference split {path}: {len(problems)} listed image(s) cannot be used: " + some_of(problems, MAX_LISTED)
        )
    for name in out:
        out[name].sort(key=lambda e: e["image"])
    meta = dict(split.meta)
    return out, meta, used


# ----------------------------------------------------------------------------------------------
# the whole preparation


def prepare(
    dataset: str,
    source,
    out,
    *,
    seed: int = 0,
    anomaly_rate: float = 0.6,
    size: int = 256,
    n_normal: int | None = None,
    n_unlabeled: int | None = None,
    n_test_normal: int | None = None,
    n_test_abnormal: int | None = None,
    reference_split=None,
    resample_seed: int | None = None,
    skip_unreadable: bool = False,
    include_pituitary: bool = False,
    rgb: bool = False,
    labels=None,
    workers: int = 2,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict:
    """Prepare one data set (see the module doc); returns the report also written to
    ``<out>/prepare_report.json``. Raises :class:`PreparationError` or
    :class:`scripts.data.splits.SplitError` (too small pools, infeasible anomaly rate) when refusing."""
    arguments = dict(locals())  # as called, for the report's command (before any local is assigned)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if dataset not in PAPER_SIZES:
        raise PreparationError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if include_pituitary and dataset != "brain_tumor":
        raise PreparationError("include_pituitary applies to brain_tumor only")
    if rgb and dataset != "lag":
        raise PreparationError("rgb applies to lag only")
    if labels is not None and dataset not in ("rsna", "vindr"):
        raise PreparationError("labels (--labels) applies to rsna and vindr only")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise PreparationError(f"size must be an integer >= 8, got {size!r}")
    given = {
        k: v
        for k, v in dict(
            n_normal=n_normal, n_unlabeled=n_unlabeled, n_test_normal=n_test_normal, n_test_abnormal=n_test_abnormal
        ).items()
        if v is not None
    }
    if resample_seed is not None and reference_split is None:
        raise PreparationError("resample_seed (--resample-seed) needs a reference split (--reference-split)")
    if reference_split is not None:
        fixed = sorted(k for k in given if k != "n_unlabeled")
        if fixed:
            raise PreparationError(
                f"{', '.join(fixed)} cannot be combined with a reference split: its lists fix "
                "D_n and the test set (only n_unlabeled and anomaly_rate select its D_u)"
            )
        if skip_unreadable:
            raise PreparationError(
                "skip_unreadable cannot be combined with a reference split: its lists are "
                "taken as given, so every image it names must be readable"
            )
    sizes = {**PAPER_SIZES[dataset], **given}
    channels = 3 if rgb else 1
    root = _source_root(source)
    out = Path(os.path.abspath(out))
    images = out / "images"

    log(f"scanning {root} ({TITLES[dataset]})")
    scan = SCANNERS[dataset](root, include_pituitary=include_pituitary, labels=labels)
    _assign_names(scan.items)
    dst_of = lambda it: images / f"{it.name}.png"  # noqa: E731
    images.mkdir(parents=True, exist_ok=True)
    _clean_stale_temporaries(images)

    report = {
        "dataset": dataset,
        "title": TITLES[dataset],
        "status": "running",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or _api_command(dataset, source, out, arguments),
        "source": str(root),
        "out": str(out),
        "seed": seed,
        "size": size,
        "channels": channels,
        "requested": {**sizes, "anomaly_rate": anomaly_rate},
        "labels_file": scan.notes.pop("labels_file", None),
        "reference_split": None if reference_split is None else os.path.abspath(reference_split),
        "resample_seed": resample_seed,
        "labels": scan.description,
        "classes_found": scan.classes,
        "source_notes": scan.notes,
    }
    stats = {"converted": 0, "done": 0}
    unreadable: dict = {}
    handled: set = set()  # images converted (or found done) in this run: a redraw does not check them again

    def convert(batch: list[Item]) -> dict:
        batch = [it for it in batch if it.source not in handled]
        log(f"converting {len(batch)} images to {images} ({size}x{size}, {'RGB' if channels == 3 else 'grayscale'})")
        result = _convert_all([(it, dst_of(it)) for it in batch], size, channels, workers, log)
        stats["converted"] += result["converted"]
        stats["done"] += result["done"]
        unreadable.update(result["unreadable"])
        handled.update(it.source for it in batch if it.source not in result["unreadable"])
        return result

    def refuse(bad: dict) -> None:
        listed = [f"{src}: {why}" for src, why in bad.items()]
        report.update(status="refused", unreadable=[{"source": str(k), "error": v} for k, v in bad.items()])
        _write_report(out, report, stats)
        extra = "" if reference_split is not None else "; rerun with --skip-unreadable to leave them out and draw again"
        raise PreparationError(
            f"{len(bad)} image(s) could not be read (listed in {out / 'prepare_report.json'})"
            f"{extra}: " + some_of(listed, MAX_LISTED)
        )

    generator = {
        "program": "scripts.tools.preparation",
        "dataset": dataset,
        "size": size,
        "channels": channels,
        "source": str(root),
    }
    try:
        if reference_split is not None:
            hint = (
                "; --include-pituitary makes pituitary abnormal"
                if dataset == "brain_tumor" and not include_pituitary
                else ""
            )
            sets, meta, used = _from_reference(
                reference_split, scan.items, dst_of, sizes["n_unlabeled"], anomaly_rate, resample_seed, hint
            )
            result = convert(used)
            if result["unreadable"]:
                refuse(result["unreadable"])
            desc = (
                f"{TITLES[dataset]}: {scan.description}; lists of the reference split "
                f"{os.path.abspath(reference_split)}"
                + (
                    f", resampled with seed {resample_seed}"
                    if resample_seed is not None
                    else f", D_u = first {sizes['n_unlabeled']} at anomaly rate {anomaly_rate}"
                )
            )
            d = {"format": FORMAT, "description": desc, "anomaly_rate": meta.get("anomaly_rate"), **sets}
            if resample_seed is not None:
                d["seed"] = resample_seed
            pools = None
            generator.update(reference_split=report["reference_split"], resample_seed=resample_seed)
        else:
            missing = [it for it in scan.items if it.label is not None and not it.exists]
            if missing and not skip_unreadable:
                report.update(status="refused", missing=[it.rel for it in missing])
                _write_report(out, report, stats)
                raise PreparationError(
                    f"{len(missing)} image(s) named in the label file are missing under {root}; "
                    "rerun with --skip-unreadable to leave them out: " + some_of([it.rel for it in missing], MAX_LISTED)
                )
            desc = f"{TITLES[dataset]}: {scan.description}; drawn by scripts.tools.preparation with seed {seed}"
            d, n_pool_n, n_pool_a, attempts = _draw(
                scan.items,
                dst_of,
                sizes,
                anomaly_rate,
                seed,
                desc,
                {it.source for it in missing},
                convert,
                skip_unreadable,
                refuse,
            )
            pools = {"normal": n_pool_n, "abnormal": n_pool_a, "draws": attempts}
            report["missing"] = [it.rel for it in missing]
    except (PreparationError, SplitError) as e:
        if report["status"] == "running":  # refusals not yet reported (pool too small, bad reference)
            report.update(status="refused", error=str(e))
            _write_report(out, report, stats)
        raise
    d["generator"] = generator

    split_path = save_split(d, out / "split.json")
    split = load_split(split_path, seed=seed)  # the file as training will read it (all files exist)
    counts = {k: v for k, v in split.counts().items() if k != "validation"}
    counts["normal"] = len(d["normal"])
    report.update(
        status="ok",
        split=str(split_path),
        pools=pools,
        counts=counts,
        anomaly_rate=split.anomaly_rate(),
        validation=f"not in the file: load_split holds out {len(split.validation)} of the {len(d['normal'])} "
        f"D_n images (val_fraction 0.1, seed from the config)",
        unreadable=[{"source": str(k), "error": v} for k, v in unreadable.items()],
        train_command=(
            f"python -m ddad_bundle run training --split_file {split_path} --modality "
            f"{MODALITY[dataset]} --dataset {dataset}" + (" --channels 3" if channels == 3 else "")
        ),
    )
    _write_report(out, report, stats)
    log(f"wrote {split_path}: {counts}, anomaly rate {report['anomaly_rate']}")
    if unreadable:
        log(f"left out {len(unreadable)} unreadable image(s), listed in {out / 'prepare_report.json'}")
    log(f"next: {report['train_command']}")
    return report


# prepare's arguments that decide what it writes, in the order the report's command repeats them
_COMMAND_OPTIONS = (
    "seed anomaly_rate size n_normal n_unlabeled n_test_normal n_test_abnormal reference_split resample_seed"
    " skip_unreadable include_pituitary rgb labels"
).split()


def _api_command(dataset, source, out, arguments: dict) -> str:
    """The ``prepare(...)`` call that repeats this one, with the options that differ from None and False."""
    chosen = {k: arguments[k] for k in _COMMAND_OPTIONS}
    args = ", ".join(f"{k}={v!r}" for k, v in chosen.items() if v not in (None, False))
    return f"prepare({dataset!r}, {str(source)!r}, {str(out)!r}, {args})"


def _write_report(out: Path, report: dict, stats: dict) -> None:
    report["conversion"] = {
        "converted": stats["converted"],
        "already_done": stats["done"],
        "unreadable": len(report.get("unreadable") or []),
    }
    write_json_atomic(report, out / "prepare_report.json", indent=1, default=str)


# ----------------------------------------------------------------------------------------------
# command line


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.tools.preparation",
        description="Convert a public data set to 8-bit PNGs and a ddad-split/1 split file (run from ddad_bundle/).",
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="dataset")
    helps = {
        "rsna": "RSNA Pneumonia Detection Challenge (stage_2_train_images/, stage_2_detailed_class_info.csv)",
        "vindr": "VinDr-CXR (train/*.dicom, train.csv)",
        "brain_tumor": "Brain Tumor MRI Dataset (Training/, Testing/ with class folders)",
        "lag": "LAG glaucoma fundus (non_glaucoma/, glaucoma/)",
    }
    for name in DATASETS:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        paper = PAPER_SIZES[name]
        p.add_argument("--source", required=True, help="the downloaded, unzipped data set folder")
        p.add_argument("--out", required=True, help="output folder (images/, split.json, prepare_report.json)")
        p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
        p.add_argument(
            "--anomaly-rate", type=float, default=0.6, help="fraction of abnormal images in D_u (default 0.6)"
        )
        p.add_argument("--size", type=int, default=256, help="PNG side in pixels (default 256)")
        for key in SIZE_KEYS:
            p.add_argument(
                "--" + key.replace("_", "-"),
                type=_non_negative,
                default=None,
                help=f"default {paper[key]} (the paper's)",
            )
        p.add_argument(
            "--reference-split",
            default=None,
            help="the reference implementation's data.json: take its lists instead of drawing",
        )
        p.add_argument(
            "--resample-seed",
            type=int,
            default=None,
            help="with --reference-split: pool its images and redraw sets of the same sizes",
        )
        p.add_argument(
            "--skip-unreadable",
            action="store_true",
            help="leave unreadable or missing images out (listed in prepare_report.json) instead of stopping",
        )
        p.add_argument("--workers", type=int, default=2, help="conversion threads (default 2)")
        p.add_argument("--quiet", action="store_true", help="print errors only")
        if name == "brain_tumor":
            p.add_argument("--include-pituitary", action="store_true", help="count pituitary tumours as abnormal")
        if name in ("rsna", "vindr"):
            p.add_argument(
                "--labels",
                default=None,
                help=f"the label CSV, when not {RSNA_CSV if name == 'rsna' else VINDR_CSV} in --source",
            )
        if name == "lag":
            p.add_argument("--rgb", action="store_true", help="keep RGB PNGs (default: grayscale luminance)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    log = (lambda msg: None) if args.quiet else None
    try:
        prepare(
            args.dataset,
            args.source,
            args.out,
            seed=args.seed,
            anomaly_rate=args.anomaly_rate,
            size=args.size,
            **{k: getattr(args, k) for k in SIZE_KEYS},
            reference_split=args.reference_split,
            resample_seed=args.resample_seed,
            skip_unreadable=args.skip_unreadable,
            include_pituitary=getattr(args, "include_pituitary", False),
            rgb=getattr(args, "rgb", False),
            labels=getattr(args, "labels", None),
            workers=args.workers,
            log=log,
            command="python -m scripts.tools.preparation " + " ".join(shlex.quote(a) for a in argv),
        )
    except (PreparationError, SplitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
