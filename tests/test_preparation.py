"""Data set preparation (scripts.tools.preparation) on small real-format inputs built here: RSNA-like
DICOMs (explicit VR little endian 12-bit, MONOCHROME1/2, VOI windows, one JPEG-baseline file as the
real RSNA files are) with the real class CSV, VinDr-like DICOMs with several readers per image,
the Brain Tumor MRI folder tree and the LAG tree. Checks exact set sizes and anomaly rate,
patient disjointness, PNG size and mode, MONOCHROME1 inversion, incremental reruns, refusals,
unreadable files, and reference-split lists taken as given."""

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.tools.preparation import PreparationError, main, prepare
from scripts.data.splits import SplitError, load_split

BUNDLE = Path(__file__).resolve().parents[1] / "ddad_bundle"
SIZE = 32
SETS = ("normal", "unlabeled", "test")


# ----------------------------------------------------------------------------------------------
# building real-format inputs


def write_dicom(path, pixels, patient_id, photometric="MONOCHROME2", window=None, jpeg=False):
    """A CR image as a scanner or archive writes it: file meta, SOP class, 16/12 bits or JPEG baseline."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = patient_id
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if jpeg:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _pixels(rng, shape=(40, 40), high=4096):
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = (x + y) / (shape[0] + shape[1]) * (high * 0.7)
    return np.clip(base + rng.normal(0, high * 0.05, shape), 0, high - 1).astype(np.uint16)


def _pid(i):
    return str(uuid.UUID(int=0xABCDEF << 64 | i))


RSNA_PIDS = {
    "Normal": [_pid(i) for i in range(14)],
    "Lung Opacity": [_pid(100 + i) for i in range(10)],
    "No Lung Opacity / Not Normal": [_pid(200 + i) for i in range(6)],
}
MONO2_PID, MONO1_PID = RSNA_PIDS["Normal"][0], RSNA_PIDS["Normal"][1]


def make_rsna(root: Path, extra_rows=()):
    rng = np.random.default_rng(0)
    rows, mono = [], _pixels(rng)
    for cls, pids in RSNA_PIDS.items():
        for i, pid in enumerate(pids):
            pix = _pixels(rng)
            kw = {}
            if pid in (MONO1_PID, MONO2_PID):  # the same stored pixels, no window
                pix, kw = mono, {"photometric": "MONOCHROME1" if pid == MONO1_PID else "MONOCHROME2"}
            elif i % 3 == 0:
                kw = {"window": (1400, 2400), "photometric": "MONOCHROME1" if i % 2 else "MONOCHROME2"}
            elif i == 4:
                pix, kw = (pix // 16).astype(np.uint8), {"jpeg": True}  # 8-bit JPEG baseline, as RSNA ships
            write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", pix, pid, **kw)
            rows.append((pid, cls))
            if cls == "Lung Opacity" or i % 4 == 0:
                rows.append((pid, cls))  # several boxes per patient: several rows
    with open(root / "stage_2_detailed_class_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientId", "class"])
        w.writerows(rows + list(extra_rows))
    return root


VINDR_MIXED = "b" * 32  # "No finding" from two readers, a nodule from the third: abnormal


def make_vindr(
    root: Path, columns=("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
):
    rng = np.random.default_rng(1)
    rows = []
    normals = [f"{i:032x}" for i in range(1, 8)]
    abnormals = [VINDR_MIXED] + [f"c{i:031x}" for i in range(4)]
    for i, iid in enumerate(normals + abnormals):
        kw = {"photometric": "MONOCHROME1"} if i % 3 == 1 else {"window": (1500, 3000)} if i % 3 == 2 else {}
        write_dicom(root / "train" / f"{iid}.dicom", _pixels(rng, (48, 40)), "", **kw)
    for iid in normals:
        rows += [(iid, "No finding", 14, f"R{r}", "", "", "", "") for r in (1, 2, 3)]
    rows += [
        (VINDR_MIXED, "No finding", 14, "R1", "", "", "", ""),
        (VINDR_MIXED, "No finding", 14, "R2", "", "", "", ""),
        (VINDR_MIXED, "Nodule/Mass", 8, "R3", 10, 12, 20, 22),
    ]
    for iid in abnormals[1:]:
        rows += [
            (iid, "Aortic enlargement", 0, "R4", 1, 2, 3, 4),
            (iid, "Cardiomegaly", 3, "R5", 5, 6, 7, 8),
            (iid, "Aortic enlargement", 0, "R6", 1, 2, 3, 5),
        ]
    keep = [
        i
        for i, c in enumerate(("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"))
        if c in columns
    ]
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([[r[i] for i in keep] for r in rows])
    return root


def _jpeg(path, rng, shape=(36, 40), rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = np.clip(rng.normal(110, 40, shape), 0, 255).astype(np.uint8)
    arr = np.stack([gray, gray // 2, gray // 3], axis=-1) if rgb else np.stack([gray] * 3, axis=-1)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


BRAIN = {
    ("Training", "notumor"): ["Tr-no_%04d" % i for i in range(6)] + ["Tr-noTr_0000"],
    ("Testing", "notumor"): ["Te-no_%04d" % i for i in range(3)],
    ("Training", "glioma"): ["Tr-gl_%04d" % i for i in range(3)],
    ("Testing", "glioma"): ["Te-gl_%04d" % i for i in range(2)],
    ("Training", "meningioma"): ["Tr-me_%04d" % i for i in range(3)],
    ("Testing", "meningioma"): ["Te-me_%04d" % i for i in range(2)],
    ("Training", "pituitary"): ["Tr-pi_%04d" % i for i in range(2)],
    ("Testing", "pituitary"): ["Te-pi_0000"],
}


def make_brain(root: Path):
    rng = np.random.default_rng(2)
    for (split, cls), names in BRAIN.items():
        for n in names:
            _jpeg(root / split / cls / f"{n}.jpg", rng)
    return root


def make_lag(root: Path):
    rng = np.random.default_rng(3)
    for i in range(1, 15):
        folder = root / "non_glaucoma" / "image" if i <= 8 else root / "glaucoma"  # both layouts
        _jpeg(folder / f"{i:04d}.jpg", rng, (50, 50), rgb=True)
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    return {
        "rsna": make_rsna(base / "rsna"),
        "vindr": make_vindr(base / "vindr"),
        "brain_tumor": make_brain(base / "brain"),
        "lag": make_lag(base / "lag"),
    }


def run(dataset, source, out, *extra):
    return main([dataset, "--source", str(source), "--out", str(out), "--size", str(SIZE), "--quiet", *extra])


def sizes(n_normal, n_unlabeled, test_normal, test_abnormal, ar):
    return [
        "--n-normal",
        str(n_normal),
        "--n-unlabeled",
        str(n_unlabeled),
        "--n-test-normal",
        str(test_normal),
        "--n-test-abnormal",
        str(test_abnormal),
        "--anomaly-rate",
        str(ar),
    ]


def read_split(out):
    return json.loads((Path(out) / "split.json").read_text())


def report(out):
    return json.loads((Path(out) / "prepare_report.json").read_text())


def pngs(out):
    return sorted((Path(out) / "images").glob("*.png"))


def check_split(out, n_normal, n_u_normal, n_u_abnormal, test_normal, test_abnormal, mode="L"):
    d = read_split(out)
    assert "validation" not in d
    assert len(d["normal"]) == n_normal
    assert sum(e["label"] == 0 for e in d["unlabeled"]) == n_u_normal
    assert sum(e["label"] == 1 for e in d["unlabeled"]) == n_u_abnormal
    assert sum(e["label"] == 0 for e in d["test"]) == test_normal
    assert sum(e["label"] == 1 for e in d["test"]) == test_abnormal
    assert d["anomaly_rate"] == pytest.approx(n_u_abnormal / (n_u_normal + n_u_abnormal), abs=1e-12)
    split = load_split(Path(out) / "split.json")  # files exist, no duplicates, patients disjoint
    assert split.anomaly_rate() == pytest.approx(d["anomaly_rate"], abs=1e-12)
    assert len(split.normal) + len(split.validation) + len(split.dropped) == n_normal
    listed = [e["image"] for s in SETS for e in d[s]]
    assert sorted(Path(out, p).name for p in listed) == [p.name for p in pngs(out)]
    for p in pngs(out)[:6]:
        with Image.open(p) as im:
            assert im.size == (SIZE, SIZE) and im.mode == mode
    return d


# ----------------------------------------------------------------------------------------------
# RSNA


def test_rsna_counts_intensities_and_rerun(sources, tmp_path):
    out = tmp_path / "rsna"
    assert run("rsna", sources["rsna"], out, *sizes(8, 5, 4, 7, 0.6)) == 0
    d = check_split(out, 8, 2, 3, 4, 7)
    rep = report(out)
    assert rep["classes_found"] == {"Normal": 14, "Lung Opacity": 10, "No Lung Opacity / Not Normal": 6}
    assert rep["pools"]["normal"] == 14 and rep["pools"]["abnormal"] == 10
    assert rep["counts"]["unlabeled_abnormal"] == 3 and rep["anomaly_rate"] == 0.6
    assert rep["conversion"] == {"converted": 24, "already_done": 0, "unreadable": 0}
    assert rep["seed"] == 0 and rep["command"].startswith("python -m scripts.tools.preparation rsna")
    assert "--modality cxr --dataset rsna" in rep["train_command"]
    # the third class is unused; every entry names its patient, and no patient is in two sets
    used = {e["patient_id"]: s for s in SETS for e in d[s]}
    assert len(used) == 24 and not set(used) & set(RSNA_PIDS["No Lung Opacity / Not Normal"])
    assert all(Path(e["image"]).stem == e["patient_id"] for s in SETS for e in d[s])
    # MONOCHROME1 of the same stored pixels is the photographic negative of MONOCHROME2
    m2 = np.asarray(Image.open(out / "images" / f"{MONO2_PID}.png"), dtype=int)
    m1 = np.asarray(Image.open(out / "images" / f"{MONO1_PID}.png"), dtype=int)
    assert m2.std() > 20 and np.abs(m1 + m2 - 255).max() <= 1
    # rerun: nothing converted again
    before = {p.name: p.stat().st_mtime_ns for p in pngs(out)}
    assert run("rsna", sources["rsna"], out, *sizes(8, 5, 4, 7, 0.6)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in pngs(out)} == before
    assert report(out)["conversion"]["converted"] == 0 and report(out)["conversion"]["already_done"] == 24
    assert read_split(out)["unlabeled"] == d["unlabeled"]  # same seed, same draw
    # an interrupted run: one image lost, a temporary left behind; only that image is redone
    victim = pngs(out)[3]
    victim.unlink()
    (out / "images" / f".{victim.name}.dead.tmp").write_bytes(b"half")
    assert run("rsna", sources["rsna"], out, *sizes(8, 5, 4, 7, 0.6)) == 0
    assert report(out)["conversion"]["converted"] == 1 and victim.exists()
    assert not list((out / "images").glob("*.tmp"))
    # a different size converts again
    assert (
        main(
            [
                "rsna",
                "--source",
                str(sources["rsna"]),
                "--out",
                str(out),
                "--size",
                "24",
                "--quiet",
                *sizes(8, 5, 4, 7, 0.6),
            ]
        )
        == 0
    )
    assert report(out)["conversion"]["converted"] == 24
    with Image.open(victim) as im:
        assert im.size == (24, 24)


def test_rsna_refusals(sources, tmp_path, capsys):
    # too small a pool: the build_split error, nothing shrunk
    assert run("rsna", sources["rsna"], tmp_path / "a", *sizes(9, 5, 4, 7, 0.6)) == 2
    err = capsys.readouterr().err
    assert "normal_pool is too small" in err and "15 images" in err and "has 14" in err
    assert report(tmp_path / "a")["status"] == "refused" and "too small" in report(tmp_path / "a")["error"]
    assert not pngs(tmp_path / "a")  # refused before anything was converted
    with pytest.raises(SplitError, match="abnormal_pool is too small"):
        prepare(
            "rsna",
            sources["rsna"],
            tmp_path / "b",
            size=SIZE,
            n_normal=2,
            n_unlabeled=5,
            anomaly_rate=0.6,
            n_test_normal=2,
            n_test_abnormal=8,
            log=lambda m: None,
        )
    with pytest.raises(SplitError, match="not a whole number"):
        prepare(
            "rsna",
            sources["rsna"],
            tmp_path / "b",
            size=SIZE,
            n_normal=2,
            n_unlabeled=5,
            anomaly_rate=0.5,
            n_test_normal=2,
            n_test_abnormal=2,
            log=lambda m: None,
        )
    # a CSV without the expected column: the file and the column are named
    bad = tmp_path / "badcsv"
    (bad / "stage_2_train_images").mkdir(parents=True)
    (bad / "stage_2_detailed_class_info.csv").write_text("patientId,label\nabc,Normal\n")
    assert run("rsna", bad, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "stage_2_detailed_class_info.csv" in err and "'class'" in err and "'label'" in err
    # missing folder / CSV / source
    (bad / "stage_2_detailed_class_info.csv").unlink()
    with pytest.raises(PreparationError, match="stage_2_detailed_class_info.csv: class file not found"):
        prepare("rsna", bad, tmp_path / "c", log=lambda m: None)
    with pytest.raises(PreparationError, match="no such folder"):
        prepare("rsna", tmp_path / "nowhere", tmp_path / "c", log=lambda m: None)
    with pytest.raises(PreparationError, match="needs a reference split"):
        prepare("rsna", sources["rsna"], tmp_path / "c", resample_seed=1, log=lambda m: None)


def test_rsna_unreadable_and_missing(tmp_path, capsys):
    src = make_rsna(tmp_path / "src", extra_rows=[(_pid(999), "Normal")])  # listed, no file
    broken = RSNA_PIDS["Normal"][10:]
    for pid in broken:  # an interrupted download: the first bytes only
        p = src / "stage_2_train_images" / f"{pid}.dcm"
        p.write_bytes(p.read_bytes()[:300])
    args = sizes(6, 5, 2, 7, 0.6)  # needs 10 normals: 15 listed, 1 missing, 4 broken
    assert run("rsna", src, tmp_path / "o1", *args) == 2
    err = capsys.readouterr().err
    assert "missing" in err and _pid(999) in err and "--skip-unreadable" in err
    (src / "stage_2_detailed_class_info.csv").write_text(
        (src / "stage_2_detailed_class_info.csv").read_text().replace(f"{_pid(999)},Normal\n", "")
    )
    assert run("rsna", src, tmp_path / "o2", *args) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and any(pid in err for pid in broken)
    assert report(tmp_path / "o2")["status"] == "refused"
    # with --skip-unreadable the broken files leave the pool and the draw is repeated
    assert run("rsna", src, tmp_path / "o3", *args, "--skip-unreadable") == 0
    d = check_split(tmp_path / "o3", 6, 2, 3, 2, 7)
    rep = report(tmp_path / "o3")
    skipped = {Path(u["source"]).stem for u in rep["unreadable"]}
    assert skipped and skipped <= set(broken)
    assert not {e["patient_id"] for s in SETS for e in d[s]} & set(broken)


# ----------------------------------------------------------------------------------------------
# VinDr-CXR


def test_vindr_readers_and_columns(sources, tmp_path, capsys):
    out = tmp_path / "vindr"
    assert run("vindr", sources["vindr"], out, *sizes(3, 4, 2, 3, 0.5)) == 0
    d = check_split(out, 3, 2, 2, 2, 3)
    labels = {Path(e["image"]).stem: e.get("label", 0) for s in SETS for e in d[s]}
    assert len(labels) == 12 and labels[VINDR_MIXED] == 1
    classes = report(out)["classes_found"]
    assert classes["normal (No finding by every reader)"] == 7 and classes["abnormal (any finding)"] == 5
    assert classes["images per finding"] == {"Aortic enlargement": 4, "Cardiomegaly": 4, "Nodule/Mass": 1}
    # --labels: another CSV (here without the nodule row: the mixed image becomes normal)
    other = tmp_path / "annotations_train.csv"
    other.write_text(
        "".join(
            line for line in (sources["vindr"] / "train.csv").read_text().splitlines(True) if "Nodule/Mass" not in line
        )
    )
    assert run("vindr", sources["vindr"], tmp_path / "v2", *sizes(3, 4, 2, 2, 0.5), "--labels", str(other)) == 0
    assert report(tmp_path / "v2")["pools"] == {"normal": 8, "abnormal": 4, "draws": 1}
    assert report(tmp_path / "v2")["labels_file"] == str(other)
    assert run("vindr", sources["vindr"], tmp_path / "v3", "--labels", str(tmp_path / "none.csv")) == 2
    assert "--labels" in capsys.readouterr().err and not (tmp_path / "v3").exists()
    bad = make_vindr(tmp_path / "nocol", columns=("image_id", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"))
    assert run("vindr", bad, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "train.csv" in err and "missing column(s) 'class_name'" in err


# ----------------------------------------------------------------------------------------------
# Brain tumor MRI, with the reference format


def test_brain_tumor_draw_and_pituitary(sources, tmp_path):
    out = tmp_path / "brain"
    assert run("brain_tumor", sources["brain_tumor"], out, *sizes(4, 5, 4, 7, 0.6)) == 0
    d = check_split(out, 4, 2, 3, 4, 7)
    assert not [e for s in SETS for e in d[s] if e["class"] == "pituitary"]
    assert report(out)["classes_found"]["pituitary"] == 3 and report(out)["pools"]["abnormal"] == 10
    assert "--modality brain" in report(out)["train_command"]
    out2 = tmp_path / "brain_pit"
    assert run("brain_tumor", sources["brain_tumor"], out2, *sizes(4, 5, 4, 10, 0.6), "--include-pituitary") == 0
    d2 = check_split(out2, 4, 2, 3, 4, 10)
    assert report(out2)["pools"]["abnormal"] == 13
    assert {e["class"] for s in SETS for e in d2[s] if e.get("label") == 1} == {"glioma", "meningioma", "pituitary"}


def _reference(path, lists):
    path.write_text(
        json.dumps(
            {
                "train": {"0": lists["train/0"], "unlabeled": {"0": lists["unlabeled/0"], "1": lists["unlabeled/1"]}},
                "test": {"0": lists["test/0"], "1": lists["test/1"]},
            }
        )
    )
    return path


REF = {
    "train/0": ["Tr-no_0000.jpg", "Tr-no_0001.jpg", "Tr-no_0002.jpg", "Tr-noTr_0000.jpg"],
    "unlabeled/0": ["Tr-no_0004.jpg", "Te-no_0000.jpg", "Tr-no_0005.jpg"],
    "unlabeled/1": ["Tr-gl_0000.jpg", "Te-me_0001.jpg", "Tr-me_0002.jpg", "Tr-gl_0001.jpg"],
    "test/0": ["Te-no_0001.jpg", "Te-no_0002.jpg"],
    "test/1": ["Te-gl_0000.jpg", "Tr-me_0000.jpg"],
}


def test_brain_tumor_reference_split(sources, tmp_path, capsys):
    ref = _reference(tmp_path / "data.json", REF)
    out = tmp_path / "ref"
    assert (
        run(
            "brain_tumor",
            sources["brain_tumor"],
            out,
            "--reference-split",
            str(ref),
            "--n-unlabeled",
            "5",
            "--anomaly-rate",
            "0.6",
        )
        == 0
    )
    d = check_split(out, 4, 2, 3, 2, 2)

    def names(entries, label=None):
        return sorted(Path(e["source"]).name for e in entries if label is None or e["label"] == label)

    assert names(d["normal"]) == sorted(REF["train/0"])
    assert names(d["unlabeled"], 0) == sorted(REF["unlabeled/0"][:2])  # the reference code's heads
    assert names(d["unlabeled"], 1) == sorted(REF["unlabeled/1"][:3])
    assert names(d["test"], 0) == sorted(REF["test/0"]) and names(d["test"], 1) == sorted(REF["test/1"])
    assert len(pngs(out)) == 13  # only the named images are converted
    assert {Path(e["source"]).parts[0] for e in d["test"]} == {"Testing", "Training"}
    # resampled: same sizes and rate, drawn from the named images only
    out2 = tmp_path / "resampled"
    assert (
        run(
            "brain_tumor",
            sources["brain_tumor"],
            out2,
            "--reference-split",
            str(ref),
            "--resample-seed",
            "3",
            "--n-unlabeled",
            "5",
            "--anomaly-rate",
            "0.6",
        )
        == 0
    )
    d2 = check_split(out2, 4, 2, 3, 2, 2)
    named = {n for v in REF.values() for n in v}
    assert {Path(e["source"]).name for s in SETS for e in d2[s]} <= named and read_split(out2)["seed"] == 3
    # sizes fixed by the reference cannot be overridden; a name that is not there is refused
    assert (
        run("brain_tumor", sources["brain_tumor"], tmp_path / "x", "--reference-split", str(ref), "--n-normal", "3")
        == 2
    )
    assert "cannot be combined with a reference split" in capsys.readouterr().err
    bad = _reference(tmp_path / "bad.json", {**REF, "test/1": ["Te-gl_0000.jpg", "Te-gl_9999.jpg", "Tr-pi_0000.jpg"]})
    assert (
        run(
            "brain_tumor",
            sources["brain_tumor"],
            tmp_path / "y",
            "--reference-split",
            str(bad),
            "--n-unlabeled",
            "5",
            "--anomaly-rate",
            "0.6",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "'Te-gl_9999.jpg' (test) not found" in err and "Tr-pi_0000.jpg" in err and "--include-pituitary" in err


# ----------------------------------------------------------------------------------------------
# LAG, and the command line as documented


def test_lag_gray_then_rgb(sources, tmp_path):
    out = tmp_path / "lag"
    assert run("lag", sources["lag"], out, *sizes(3, 4, 3, 4, 0.5)) == 0
    check_split(out, 3, 2, 2, 3, 4, mode="L")
    assert report(out)["classes_found"] == {"non_glaucoma": 8, "glaucoma": 6}
    assert run("lag", sources["lag"], out, *sizes(3, 4, 3, 4, 0.5), "--rgb") == 0
    check_split(out, 3, 2, 2, 3, 4, mode="RGB")
    rep = report(out)
    assert rep["conversion"]["converted"] == 14 and rep["train_command"].endswith("--channels 3")
    rgb = np.asarray(Image.open(pngs(out)[0]), dtype=int)
    assert (rgb[..., 0] - rgb[..., 2]).mean() > 20  # colour kept


def test_command_line_entry_point(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.tools.preparation",
            "lag",
            "--source",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(BUNDLE)},
    )
    assert proc.returncode == 2 and "no such folder" in proc.stderr


OFFICIAL_BRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "splits" / "braintumor_official.json"


@pytest.mark.skipif(not OFFICIAL_BRAIN.is_file(), reason="the reference implementation's split files are not here")
def test_official_brain_tumor_names_resolve(tmp_path):
    """Every name of the official file resolves to exactly one file of a Nickparvar-layout tree
    (empty files: only the lookup is checked here, nothing is converted)."""
    from scripts.tools.preparation import _assign_names, _from_reference, scan_brain_tumor

    data = json.loads(OFFICIAL_BRAIN.read_text())
    names = data["train"]["0"] + data["train"]["unlabeled"]["0"] + data["train"]["unlabeled"]["1"]
    names += data["test"]["0"] + data["test"]["1"]
    folders = {"Tr": "Training", "Te": "Testing"}
    classes = {"no": "notumor", "gl": "glioma", "me": "meningioma", "pi": "pituitary"}
    for n in names:  # Tr-gl_0016.jpg, Te-noTr_0000.jpg
        path = tmp_path / folders[n[:2]] / classes[n[3:5]] / n
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    for split in ("Training", "Testing"):  # the unused class, present as in the download
        (tmp_path / split / "pituitary").mkdir(parents=True, exist_ok=True)
        (tmp_path / split / "pituitary" / f"{split[:2]}-pi_0000.jpg").touch()
    scan = scan_brain_tumor(tmp_path)
    _assign_names(scan.items)
    sets, meta, used = _from_reference(
        OFFICIAL_BRAIN, scan.items, lambda it: tmp_path / "out" / f"{it.name}.png", 1000, 0.6, None, ""
    )
    assert len(sets["normal"]) == 1000 and len(sets["unlabeled"]) == 1000 and len(sets["test"]) == 1200
    assert meta["anomaly_rate"] == pytest.approx(0.6) and len(used) == 3200
    assert {e["class"] for e in sets["test"] if e["label"] == 1} == {"glioma", "meningioma"}
