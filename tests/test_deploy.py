"""The MONAI Deploy application end to end: DICOM CR/DX and PNG in; JSON, Secondary Capture, PNG out.

The app runs as its documented command (``python -m ddad_bundle.deploy -i -o -m``) in a
subprocess on DICOM files written here with real header fields; its scores are compared with the
Python pipeline's (``python -m ddad_bundle score`` on the same files). Skipped when the optional
``deploy`` dependencies (monai-deploy-app-sdk) are not installed; ``make test`` installs them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

pytest.importorskip("monai.deploy", reason="the deploy extra (monai-deploy-app-sdk) is not installed")
pytest.importorskip("holoscan", reason="the deploy extra (monai-deploy-app-sdk) is not installed")

from ddad_bundle.cli import main as cli_main  # noqa: E402
from ddad_bundle.deploy.dicom_sc import write_secondary_capture  # noqa: E402
from ddad_bundle.deploy.operators import classify  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from helpers import CR_CLASS, DX_CLASS, MR_CLASS, write_dicom  # noqa: E402


@pytest.fixture(scope="module")
def model_ts(cxr_run, tmp_path_factory):
    runs_dir, _ = cxr_run
    path = tmp_path_factory.mktemp("deploy_model") / "model.ts"
    assert cli_main(["export", "--runs_dir", str(runs_dir), "--image_size", "32", "--model_ts", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def deployed(cxr_run, model_ts, tmp_path_factory):
    """Inputs written from test phantoms, the app's outputs and the Python pipeline's summary."""
    runs_dir, _ = cxr_run
    data = runs_dir / "data" / "cxr_phantom"
    split = json.loads((data / "split.json").read_text())
    abnormal = [e for e in split["test"] if e["label"] == 1][:2]
    normal = [e for e in split["test"] if e["label"] == 0][:1]
    gray = lambda e: np.asarray(Image.open(data / e["image"])).astype(np.float64)  # noqa: E731
    inputs = tmp_path_factory.mktemp("deploy_in")
    (inputs / "study").mkdir()
    study = generate_uid()
    sources = {
        # CR, inverted grey scale with a VOI window: the loader must window and invert it back
        "cr_mono1.dcm": write_dicom(
            inputs / "cr_mono1.dcm",
            np.round(4095 - gray(abnormal[0]) / 255 * 4095),
            "CR",
            CR_CLASS,
            monochrome1=True,
            study_uid=study,
            window=(2048, 4096),
        ),
        # DX with a rescale, no window, in a subfolder
        "study/dx.dcm": write_dicom(
            inputs / "study" / "dx.dcm",
            np.round(gray(abnormal[1]) * 16),
            "DX",
            DX_CLASS,
            patient_id="P002",
            rescale=(0.5, -100.0),
        ),
        "mr.dcm": write_dicom(inputs / "mr.dcm", np.round(gray(normal[0]) * 16), "MR", MR_CLASS),
    }
    # an extension-less DX instance, as PACS exports name them; same pixels as study/dx.dcm
    sources["IM0001"] = write_dicom(
        inputs / "IM0001", np.round(gray(abnormal[1]) * 16), "DX", DX_CLASS, patient_id="P003", rescale=(0.5, -100.0)
    )
    Image.open(data / normal[0]["image"]).save(inputs / "normal.png")

    out = tmp_path_factory.mktemp("deploy_out")
    env = dict(os.environ, OMP_NUM_THREADS="1", DDAD_DEVICE="cpu", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "ddad_bundle.deploy", "-i", str(inputs), "-o", str(out), "-m", str(model_ts)],
        cwd=str(out),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    python_out = tmp_path_factory.mktemp("python_scores")
    assert (
        cli_main(["score", str(inputs), "--out", str(python_out), "--runs_dir", str(runs_dir), "--image_size", "32"])
        == 0
    )
    python = {
        os.path.relpath(r["file"], inputs): r for r in json.loads((python_out / "summary.json").read_text())["files"]
    }
    results = {os.path.relpath(r["file"], inputs): r for r in json.loads((out / "summary.json").read_text())["files"]}
    return inputs, out, sources, results, python


@pytest.mark.slow
def test_every_cr_dx_and_png_is_scored_like_the_python_pipeline(deployed):
    _, out, _, results, python = deployed
    assert set(results) == {"cr_mono1.dcm", "study/dx.dcm", "mr.dcm", "IM0001", "normal.png"}
    for name in ("cr_mono1.dcm", "study/dx.dcm", "normal.png"):
        row = results[name]
        assert row["status"] == "ok" and row["score_name"] == python[name]["score_name"]
        assert row["score"] == pytest.approx(python[name]["score"], abs=1e-5), name
        assert row["threshold"] == pytest.approx(python[name]["threshold"], rel=1e-6)
        assert row["label"] == python[name]["label"] == ("abnormal" if row["score"] > row["threshold"] else "normal")
        # one naming of outputs: the Deploy app writes what `score` writes, under the same names
        assert row["name"] == python[name]["name"] and row["map_file"] == python[name]["map_file"]
        assert (out / row["map_file"]).is_file() and (out / row["overlay_file"]).is_file()
    # the extension-less instance is found by its content and scored like its twin
    assert results["IM0001"]["status"] == "ok"
    assert results["IM0001"]["score"] == pytest.approx(results["study/dx.dcm"]["score"], abs=1e-6)
    scores = [results[n]["score"] for n in ("cr_mono1.dcm", "study/dx.dcm", "normal.png")]
    assert len(set(np.round(scores, 7))) > 1, "all images got the same score: the maps do not depend on the input"


@pytest.mark.slow
def test_other_modalities_are_reported_not_scored(deployed):
    _, out, _, results, _ = deployed
    row = results["mr.dcm"]
    assert row["status"] == "skipped" and "'MR'" in row["reason"]
    assert not (out / "mr_overlay.png").exists() and not (out / "mr_overlay.dcm").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_files"] == 5 and summary["n_scored"] == 4 and summary["n_skipped"] == 1


@pytest.mark.slow
def test_secondary_capture_carries_the_identifiers_and_nothing_else(deployed):
    inputs, out, sources, results, _ = deployed
    for name in ("cr_mono1.dcm", "study/dx.dcm", "IM0001"):
        source, row = sources[name], results[name]
        sc = pydicom.dcmread(str(out / row["overlay_dicom"]))
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert sc.PatientID == source.PatientID and sc.StudyInstanceUID == source.StudyInstanceUID
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SOPInstanceUID != source.SOPInstanceUID
        patient_values = {e.keyword for e in sc.iterall() if e.tag.group == 0x0010 and str(e.value).strip()}
        assert patient_values == {"PatientID"}, patient_values
        for keyword in ("InstitutionName", "StudyDate", "ReferringPhysicianName", "OtherPatientIDs", "PatientAge"):
            assert not str(sc.get(keyword, "")).strip(), keyword
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        pixels = sc.pixel_array
        assert pixels.shape == (source.Rows, source.Columns, 3) and pixels.dtype == np.uint8
        png = Image.open(out / row["overlay_file"])
        assert png.size == (source.Columns, source.Rows) and png.mode == "RGB"
        assert np.array_equal(np.asarray(png), pixels)  # the SC shows the PNG's heat map
    # a PNG input has no study to file a DICOM object in
    assert "overlay_dicom" not in results["normal.png"] and (out / results["normal.png"]["overlay_file"]).is_file()


def test_secondary_capture_refuses_a_source_without_patient_id(tmp_path):
    source = pydicom.Dataset()
    source.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="PatientID"):
        write_secondary_capture(
            source, np.zeros((4, 4, 3), np.uint8), tmp_path / "x.dcm", "R_dual", 0.5, 0.4, "abnormal"
        )


def test_loader_classifies_by_content(tmp_path):
    write_dicom(tmp_path / "noext", np.zeros((8, 8)), "DX", DX_CLASS)
    write_dicom(tmp_path / "ct.dcm", np.zeros((8, 8)), "CT", "1.2.840.10008.5.1.4.1.1.2")
    (tmp_path / "notes.txt").write_text("not an image")
    assert classify(tmp_path / "noext")["status"] == "ok"
    assert "'CT'" in classify(tmp_path / "ct.dcm")["reason"]
    assert classify(tmp_path / "notes.txt")["status"] == "skipped"


def test_staged_package_folder_holds_the_app_and_the_bundle_code(tmp_path):
    from ddad_bundle.deploy.package import stage_app

    out = stage_app(tmp_path / "app")
    for name in (
        "__main__.py",
        "app.yaml",
        "requirements.txt",
        "ddad_bundle/deploy/app.py",
        "ddad_bundle/scripts/data/readers.py",
        "ddad_bundle/configs/inference.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.rglob("__pycache__")) and not (out / "ddad_bundle" / "models").exists()
    compile((out / "__main__.py").read_text(), "__main__.py", "exec")
    assert "monai-deploy-app-sdk" in (out / "requirements.txt").read_text()
    with pytest.raises(FileExistsError, match="not empty"):
        stage_app(out)
