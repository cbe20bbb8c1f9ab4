"""What leaves the hospital's data: patient identifiers reach no output but the Secondary Capture.

DICOM inputs carry canary values in their identifying attributes (never in their file names).
They are scored by ``python -m ddad_bundle score`` (in process, its logs and console captured)
and by the MONAI Deploy app (its documented command, stdout and stderr captured); then every
byte of every output file is searched for the canaries: CSV, JSON, PNG (and its text chunks),
the NIfTI maps decompressed. The one exception is the Secondary Capture ``*_overlay.dcm``, which
must still carry the identifiers that file it with its study (``PatientID``, ``StudyID``,
``AccessionNumber``), so that losing them is caught too, and with
``secondary_capture_identifiers`` false must carry none of them and no source UID.
"""

import gzip
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

pytest.importorskip("monai.deploy", reason="the deploy extra (monai-deploy-app-sdk) is not installed")
pytest.importorskip("holoscan", reason="the deploy extra (monai-deploy-app-sdk) is not installed")

from ddad_bundle.cli import main as cli_main  # noqa: E402
from ddad_bundle.deploy.dicom_sc import write_secondary_capture  # noqa: E402
from ddad_bundle.deploy.operators import SC_IDENTIFIERS_ENV, BundleScorer, secondary_capture_identifiers  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from helpers import CR_CLASS, DX_CLASS, write_dicom  # noqa: E402

# Identifying attributes of the inputs and their canary values; every one contains "canary" so
# that a partial or reformatted leak ("CANARY Privacy") is caught by the generic search too.
CANARIES = {
    "PatientName": "CANARY^Privacy",
    "PatientID": "PID-CANARY-0042",
    "OtherPatientIDs": "MRN-CANARY-77",
    "PatientBirthDate": "19420817",  # a date cannot hold the word: searched for as written
    "InstitutionName": "Canary Institute of Radiology",
    "ReferringPhysicianName": "CANARYDOC^Referring",
    "AccessionNumber": "ACC-CANARY-9",
    "StudyID": "SID-CANARY",
    "StudyDescription": "CANARY chest study",
}
# What the Secondary Capture carries by design (dicom_sc.CARRIED_IDENTIFIERS), when allowed to.
SC_CARRIED = ("PatientID", "AccessionNumber", "StudyID")


def leaks(data: bytes, allowed=()) -> list[str]:
    """The canaries (attribute names) found in ``data``, case-insensitively; ``allowed`` ones excepted."""
    lowered = data.lower()
    found = [k for k, v in CANARIES.items() if k not in allowed and v.lower().encode() in lowered]
    if not allowed and b"canary" in lowered:
        found.append("<the word canary>")
    return found


def readable_bytes(path: Path) -> bytes:
    """The file's bytes, plus what a reader sees that the raw bytes hide: a .gz decompressed, a
    PNG's metadata (text chunks, compressed ones included) decoded."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data += gzip.decompress(data)
    if path.suffix == ".png":
        with Image.open(path) as image:
            data += repr(image.info).encode() + repr(getattr(image, "text", {})).encode()
    return data


def assert_no_leak(folder: Path, expect_sc: bool) -> list[Path]:
    """No canary in any file under ``folder`` but the Secondary Captures; returns those."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    kinds = {p.name.split(".", 1)[-1] for p in files}
    assert {"csv", "json", "png", "nii.gz"} <= kinds, kinds  # the search covered every kind of output
    captures = [p for p in files if p.name.endswith("_overlay.dcm")]
    assert bool(captures) == expect_sc, captures
    for path in files:
        if path not in captures:
            assert not leaks(readable_bytes(path)), f"{path.name} holds {leaks(readable_bytes(path))}"
    return captures


def assert_quiet(text: str) -> None:
    assert text.strip(), "nothing was captured: the log check would pass vacuously"
    for line in text.splitlines():
        assert not leaks(line.encode()), f"log line leaks {leaks(line.encode())}: {line}"


@pytest.fixture(scope="module")
def canary_inputs(cxr_run, tmp_path_factory):
    """Two DICOM instances of one study (CR MONOCHROME1 with a window, DX) with the canaries."""
    runs_dir, _ = cxr_run
    data = runs_dir / "data" / "cxr_phantom"
    abnormal = [e["image"] for e in json.loads((data / "split.json").read_text())["test"] if e["label"] == 1]
    gray = [np.asarray(Image.open(data / name)).astype(np.float64) for name in abnormal[:2]]
    folder = tmp_path_factory.mktemp("privacy_in")
    study = generate_uid()
    written = [
        write_dicom(folder / "img_a.dcm", np.round(4095 - gray[0] / 255 * 4095), "CR", CR_CLASS,
                    monochrome1=True, study_uid=study, window=(2048, 4096)),
        write_dicom(folder / "img_b.dcm", np.round(gray[1] * 16), "DX", DX_CLASS, study_uid=study),
    ]  # fmt: skip
    for ds in written:
        for keyword, value in CANARIES.items():
            setattr(ds, keyword, value)
        ds.save_as(ds.filename, enforce_file_format=True)
    assert not any(leaks(str(p).encode()) for p in folder.rglob("*")), "a path names a canary"
    return folder, written


def export(cxr_run, path, *overrides) -> Path:
    runs_dir, _ = cxr_run
    args = ["export", "--runs_dir", str(runs_dir), "--image_size", "32", "--model_ts", str(path), *overrides]
    assert cli_main(args) == 0
    return path


@pytest.fixture(scope="module")
def models(cxr_run, tmp_path_factory):
    """model.ts as exported by default, and exported with ``--secondary_capture_identifiers false``."""
    folder = tmp_path_factory.mktemp("privacy_models")
    return {
        True: export(cxr_run, folder / "default.ts"),
        False: export(cxr_run, folder / "no_identifiers.ts", "--secondary_capture_identifiers", "false"),
    }


def run_app(inputs: Path, out: Path, model_ts: Path, **env) -> str:
    """The Deploy app's documented command; its stdout and stderr."""
    inherited = {k: v for k, v in os.environ.items() if k != SC_IDENTIFIERS_ENV}  # the model.ts decides
    env = dict(inherited, OMP_NUM_THREADS="1", DDAD_DEVICE="cpu", PYTHONPATH=str(REPO_ROOT), **env)
    proc = subprocess.run(
        [sys.executable, "-m", "ddad_bundle.deploy", "-i", str(inputs), "-o", str(out), "-m", str(model_ts)],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_score_writes_and_logs_no_identifier(cxr_run, canary_inputs, tmp_path, capfd, caplog):
    runs_dir, _ = cxr_run
    inputs, _ = canary_inputs
    out = tmp_path / "scores"
    caplog.set_level("DEBUG")
    args = ["score", str(inputs), "--out", str(out), "--runs_dir", str(runs_dir), "--image_size", "32"]
    assert cli_main(args) == 0
    captured = capfd.readouterr()
    assert_quiet(captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records))
    assert "scored 2 of 2 files" in captured.out
    assert_no_leak(out, expect_sc=False)


@pytest.mark.slow
def test_deploy_app_keeps_identifiers_to_the_secondary_capture(canary_inputs, models, tmp_path):
    inputs, sources = canary_inputs
    out = tmp_path / "deploy"
    out.mkdir()
    assert_quiet(run_app(inputs, out, models[True]))
    captures = assert_no_leak(out, expect_sc=True)
    assert len(captures) == 2
    for path in captures:
        # the identifiers that file it with its study are there, nothing else identifying is
        assert sorted(leaks(path.read_bytes(), allowed=SC_CARRIED)) == [], path.name
        sc = pydicom.dcmread(str(path))
        for keyword in SC_CARRIED:
            assert sc.get(keyword) == CANARIES[keyword], keyword
        assert str(sc.PatientName) == "" and "PatientName" in sc
        assert sc.StudyInstanceUID == sources[0].StudyInstanceUID
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in {s.SOPInstanceUID for s in sources}


@pytest.mark.slow
def test_deploy_app_without_identifiers_writes_a_secondary_capture_of_its_own_study(canary_inputs, models, tmp_path):
    inputs, sources = canary_inputs
    out = tmp_path / "deploy"
    out.mkdir()
    assert_quiet(run_app(inputs, out, models[False]))
    captures = assert_no_leak(out, expect_sc=True)
    source_uids = {
        getattr(s, k).encode() for s in sources for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    }
    for path in sorted(out.rglob("*")):  # no output links back to the source instances either
        if path.is_file():
            assert not [u for u in source_uids if u in readable_bytes(path)], path.name
    studies = set()
    for path in captures:
        assert not leaks(path.read_bytes()), f"{path.name} holds {leaks(path.read_bytes())}"
        sc = pydicom.dcmread(str(path))
        for keyword in ("PatientName", "PatientID", "StudyID", "AccessionNumber"):  # Type 2: present, empty
            assert keyword in sc and not str(sc.get(keyword)), keyword
        assert "SourceImageSequence" not in sc and sc.PatientIdentityRemoved == "YES" and sc.DeidentificationMethod
        studies.add((sc.StudyInstanceUID, sc.SeriesInstanceUID))
        assert sc.pixel_array.shape == (sources[0].Rows, sources[0].Columns, 3)
    assert len(studies) == 1  # one source study: one fresh study and series, not one per instance


@pytest.mark.slow
def test_the_switch_is_embedded_in_model_ts_and_overridden_by_the_environment(models, monkeypatch):
    monkeypatch.delenv(SC_IDENTIFIERS_ENV, raising=False)
    default, off = BundleScorer(models[True], "cpu"), BundleScorer(models[False], "cpu")
    assert default.sc_identifiers is True and off.sc_identifiers is False
    monkeypatch.setenv(SC_IDENTIFIERS_ENV, "false")
    assert secondary_capture_identifiers(default.parser) is False
    monkeypatch.setenv(SC_IDENTIFIERS_ENV, "True")
    assert secondary_capture_identifiers(off.parser) is True
    monkeypatch.setenv(SC_IDENTIFIERS_ENV, "maybe")
    with pytest.raises(ValueError, match=SC_IDENTIFIERS_ENV):
        secondary_capture_identifiers(default.parser)


def canary_source(tmp_path) -> pydicom.Dataset:
    ds = write_dicom(tmp_path / "src.dcm", np.zeros((8, 8)), "DX", DX_CLASS)
    for keyword, value in CANARIES.items():
        setattr(ds, keyword, value)
    return ds


def test_secondary_capture_without_identifiers_is_valid_and_anonymous(tmp_path):
    source = canary_source(tmp_path)
    rgb = np.full((8, 8, 3), 7, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns of a value too long or malformed for its VR
        path = write_secondary_capture(source, rgb, tmp_path / "sc.dcm", "A_inter", 0.5, 0.4, "abnormal",
                                       identifiers=False)  # fmt: skip
    data = path.read_bytes()
    assert (
        not leaks(data) and source.StudyInstanceUID.encode() not in data and source.SOPInstanceUID.encode() not in data
    )
    sc = pydicom.dcmread(str(path))  # refuses a file without the DICOM preamble and prefix
    # Type 1 attributes of the SC image IOD's modules are filled, Type 2 ones present
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "ConversionType",
    ):
        assert str(sc.get(keyword, "")).strip(), keyword
    assert np.array_equal(sc.pixel_array, rgb)
    # a source without PatientID is refused only when its identifiers are to be carried
    del source.PatientID
    assert write_secondary_capture(
        source, rgb, tmp_path / "sc2.dcm", "A_inter", 0.5, 0.4, "abnormal", identifiers=False
    )
    with pytest.raises(ValueError, match="PatientID"):
        write_secondary_capture(source, rgb, tmp_path / "sc3.dcm", "A_inter", 0.5, 0.4, "abnormal")


def test_secondary_capture_flags_burned_in_text_of_the_source(tmp_path):
    source = canary_source(tmp_path)
    source.BurnedInAnnotation = "YES"
    path = write_secondary_capture(
        source, np.zeros((8, 8, 3), np.uint8), tmp_path / "sc.dcm", "A_inter", 0.5, 0.4, "normal"
    )
    assert pydicom.dcmread(str(path)).BurnedInAnnotation == "YES"
