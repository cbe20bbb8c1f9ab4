"""The score command on new files: mixed formats, a 3D volume, a corrupt file, maps and labels."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ddad_bundle.cli import main as cli_main
from scripts.data.readers import load_image, to_nifti_orientation


def write_dicom(path, pixels_u16, monochrome1=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P1", generate_uid(), generate_uid()
    ds.Rows, ds.Columns = pixels_u16.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PixelData = pixels_u16.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def scored(cxr_run, tmp_path_factory):
    runs_dir, output_dir = cxr_run
    data = runs_dir / "data" / "cxr_phantom"
    split = json.loads((data / "split.json").read_text())
    abnormal = [e for e in split["test"] if e["label"] == 1][:3]
    normal = [e for e in split["test"] if e["label"] == 0][:1]
    inputs = tmp_path_factory.mktemp("inputs")
    sources = {}
    # PNG as generated, JPEG, 16-bit DICOM (MONOCHROME1), 2D NIfTI, a 3D NIfTI volume, a corrupt file
    png = np.asarray(Image.open(data / abnormal[0]["image"]))
    Image.fromarray(png).save(inputs / "a.png")
    Image.fromarray(np.asarray(Image.open(data / abnormal[1]["image"]))).save(inputs / "b.jpg", quality=95)
    dcm = np.asarray(Image.open(data / abnormal[2]["image"])).astype(np.float64)
    write_dicom(inputs / "c.dcm", np.round(4095 - dcm / 255 * 4095), monochrome1=True)
    nib.save(
        nib.Nifti1Image(to_nifti_orientation(np.asarray(Image.open(data / normal[0]["image"]), np.float32)), np.eye(4)),
        str(inputs / "d.nii.gz"),
    )
    volume = np.stack(
        [
            to_nifti_orientation(np.asarray(Image.open(data / e["image"]), np.float32))
            for e in (normal[0], abnormal[0], abnormal[1])
        ],
        axis=-1,
    )
    nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.5, 2.0, 1.0])), str(inputs / "vol.nii.gz"))
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    sources.update(a=abnormal[0], b=abnormal[1], c=abnormal[2])
    out = tmp_path_factory.mktemp("scored")
    assert cli_main(["score", str(inputs), "--out", str(out), "--runs_dir", str(runs_dir), "--image_size", "32"]) == 0
    return out, inputs, data, sources, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_every_readable_file_is_scored_and_the_corrupt_one_reported(scored):
    out, _, _, _, summary = scored
    by_name = {r["file"].split("/")[-1]: r for r in summary["files"]}
    assert set(by_name) == {"a.png", "b.jpg", "c.dcm", "d.nii.gz", "vol.nii.gz", "broken.png"}
    assert by_name["broken.png"]["status"] == "error" and "broken.png" in by_name["broken.png"]["error"]
    assert summary["n_scored"] == 5 and summary["n_errors"] == 1
    for row in by_name.values():
        if row["status"] == "ok":
            assert row["score_name"] == summary["score_name"] and summary["score_reason"]
            assert row["label"] == ("abnormal" if row["score"] > row["threshold"] else "normal")
            assert (out / row["map_file"]).is_file() and (out / row["overlay_file"]).is_file()
    csv_rows = (out / "scores.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 6


@pytest.mark.slow
def test_maps_have_the_input_resolution(scored):
    out, inputs, _, _, _ = scored
    for stem, source in [("a", "a.png"), ("c", "c.dcm"), ("d", "d.nii.gz")]:
        image = load_image(str(inputs / source))
        anomaly_map = nib.load(str(out / f"{stem}_map.nii.gz")).get_fdata()
        assert to_nifti_orientation(anomaly_map).shape == tuple(image.shape[1:])
        assert np.all(anomaly_map >= 0) and np.isfinite(anomaly_map).all()
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size == (image.shape[2], image.shape[1]) and overlay.mode == "RGB"


@pytest.mark.slow
def test_volume_is_scored_slice_by_slice(scored):
    out, _, _, _, summary = scored
    row = next(r for r in summary["files"] if r["file"].endswith("vol.nii.gz"))
    assert row["kind"] == "volume" and row["slices"] == 3
    assert row["score"] == pytest.approx(max(row["slice_scores"]))
    volume_map = nib.load(str(out / "vol_map.nii.gz"))
    assert volume_map.shape == (64, 64, 3)
    assert np.allclose(volume_map.affine, np.diag([0.5, 0.5, 2.0, 1.0]))


@pytest.mark.slow
def test_same_image_in_two_formats_gets_the_same_score(scored):
    # the 2D NIfTI holds the same normal image as slice 0 of the volume
    _, _, _, _, summary = scored
    rows = {r["file"].split("/")[-1]: r for r in summary["files"]}
    assert rows["d.nii.gz"]["score"] == pytest.approx(rows["vol.nii.gz"]["slice_scores"][0], rel=1e-5)


@pytest.mark.slow
def test_empty_folder_is_refused_with_one_clear_line(cxr_run, tmp_path, capsys):
    runs_dir, _ = cxr_run
    empty = tmp_path / "empty"
    empty.mkdir()
    status = cli_main(
        ["score", str(empty), "--out", str(tmp_path / "o"), "--runs_dir", str(runs_dir), "--image_size", "32"]
    )
    assert status == 2
    assert f"error: {empty}: no image files found" in capsys.readouterr().err


@pytest.mark.slow
def test_scoring_without_a_trained_model_names_the_missing_file(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    status = cli_main(["score", str(image), "--out", str(tmp_path / "o"), "--runs_dir", str(tmp_path / "none")])
    assert status == 2
    assert "ndm_member0.pt does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_another_score_can_be_deployed_with_its_own_validation_threshold(cxr_run, tmp_path, capsys):
    import csv

    runs_dir, output_dir = cxr_run
    record = json.loads((output_dir / "models" / "threshold.json").read_text())
    assert {"A_rec", "A_intra", "A_inter", record["score"]} <= set(record["thresholds"])
    assert record["threshold"] == record["thresholds"][record["score"]]
    data = runs_dir / "data" / "cxr_phantom"
    entry = next(e for e in json.loads((data / "split.json").read_text())["test"] if e["label"] == 1)
    out = tmp_path / "a_inter"
    args = ["score", str(data / entry["image"]), "--out", str(out), "--runs_dir", str(runs_dir), "--image_size", "32"]
    assert cli_main(args + ["--deploy_score", "A_inter"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_name"] == "A_inter" and summary["files"][0]["score_name"] == "A_inter"
    assert summary["threshold"] == pytest.approx(record["thresholds"]["A_inter"])
    # the same number the evaluation reported for this test image
    with open(output_dir / "eval" / "scores.csv") as f:
        evaluated = next(r for r in csv.DictReader(f) if r["image"].endswith(entry["image"].split("/")[-1]))
    assert summary["files"][0]["score"] == pytest.approx(float(evaluated["A_inter"]), rel=1e-4, abs=1e-6)
    assert cli_main(args + ["--deploy_score", "A_total", "--overwrite", "true"]) == 2
    assert "deploy_score 'A_total'" in capsys.readouterr().err


@pytest.mark.slow
def test_auto_deploys_r_dual_only_where_its_refiner_is_reliable(cxr_run, tmp_path, capfd):
    """deploy_score auto (the default of score and export): a refiner marked unreliable in
    asr_selection.json is replaced by A_inter with A_inter's own validation threshold."""
    import shutil

    import torch

    runs_dir, output_dir = cxr_run
    copy = tmp_path / "runs"
    shutil.copytree(
        output_dir,
        copy / output_dir.name,
        ignore=shutil.ignore_patterns("*checkpoint*", "eval", "tensorboard", "inference"),
    )
    models = copy / output_dir.name / "models"
    thresholds = json.loads((models / "threshold.json").read_text())["thresholds"]
    data = runs_dir / "data" / "cxr_phantom"
    entry = next(e for e in json.loads((data / "split.json").read_text())["test"] if e["label"] == 1)
    for reliable, expected in ((False, "A_inter"), (True, "R_dual")):
        record = json.loads((models / "asr_selection.json").read_text())
        record["refiners"]["dual"]["reliable"] = reliable
        (models / "asr_selection.json").write_text(json.dumps(record))
        out = tmp_path / f"scored_{reliable}"
        assert (
            cli_main(
                ["score", str(data / entry["image"]), "--out", str(out), "--runs_dir", str(copy), "--image_size", "32"]
            )
            == 0
        )
        summary = json.loads((out / "summary.json").read_text())
        assert summary["score_name"] == expected, summary["score_reason"]
        assert summary["threshold"] == pytest.approx(thresholds[expected])
        model_ts = tmp_path / f"model_{reliable}.ts"
        assert cli_main(["export", "--runs_dir", str(copy), "--image_size", "32", "--model_ts", str(model_ts)]) == 0
        extra = {"metadata.json": "", "inference.json": ""}
        torch.jit.load(str(model_ts), _extra_files=extra)
        inference, metadata = json.loads(extra["inference.json"]), json.loads(extra["metadata.json"])
        assert inference["deploy_score"] == metadata["ddad"]["score"] == expected
        assert inference["decision_threshold"] == pytest.approx(thresholds[expected])
        assert ("not reliable" in metadata["ddad"]["reason"]) == (not reliable)
    # asked for explicitly, an unreliable refiner is deployed as asked, with a warning
    record["refiners"]["dual"]["reliable"] = False
    (models / "asr_selection.json").write_text(json.dumps(record))
    capfd.readouterr()
    assert (
        cli_main(
            [
                "score",
                str(data / entry["image"]),
                "--out",
                str(tmp_path / "explicit"),
                "--runs_dir",
                str(copy),
                "--image_size",
                "32",
                "--deploy_score",
                "R_dual",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "explicit" / "summary.json").read_text())["score_name"] == "R_dual"
    # the bundle's logging.conf sends the ddad log to the console
    logged = "".join(capfd.readouterr())
    assert "deploy_score R_dual: its ASR-Net is not marked reliable" in logged
