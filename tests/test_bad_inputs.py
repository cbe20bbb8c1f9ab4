"""The catalogue of bad and unusual inputs for scoring: ``score``, the inferring workflow, the Deploy app.

Every case is a real file (PIL, pydicom, nibabel) and each test asserts the exact outcome: a row
with ``status`` ok or error in ``scores.csv`` whose error names the file and the problem, or, for
a refusal of the whole run, exit code 2 and one ``error:`` line. ``docs/bad_inputs.md`` lists the
same cases. One tiny model is trained per module; the folder of file-level cases is scored once.
"""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from ddad_bundle.cli import main as cli_main
from scripts.data.readers import load_image, to_nifti_orientation
from scripts.engines.inference import inference_datalist
from scripts.runtime.workflows import run_workflow

sys.path.insert(0, str(Path(__file__).parent))
from conftest import EVAL_ONLY, REPO_ROOT, STAGE2_ONLY, TINY_RUN  # noqa: E402
from helpers import write_dicom  # noqa: E402

BIG = 8000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(runs_dir, a 64 px phantom test image as uint8): both training stages, 2 epochs, no evaluation."""
    runs_dir = tmp_path_factory.mktemp("bad_inputs_runs")
    settings = dict(TINY_RUN, modality="cxr", runs_dir=str(runs_dir), epochs=2)
    run_workflow("training", {k: v for k, v in settings.items() if k not in STAGE2_ONLY + EVAL_ONLY})
    run_workflow("training_asr", {k: v for k, v in settings.items() if k not in EVAL_ONLY})
    data = runs_dir / "data" / "cxr_phantom"
    entry = next(e for e in json.loads((data / "split.json").read_text())["test"] if e["label"] == 1)
    return runs_dir, np.asarray(Image.open(data / entry["image"]).convert("L"))


def score(runs_dir, *args) -> int:
    return cli_main(["score", *map(str, args), "--runs_dir", str(runs_dir), "--image_size", "32"])


def write_png_bytes(path, gray):
    Image.fromarray(gray).save(path)
    return path.read_bytes()


def write_nifti(path, image_hw_or_volume):
    nib.save(nib.Nifti1Image(np.asarray(image_hw_or_volume, np.float32), np.eye(4)), str(path))


def write_j2k_dicom(path, gray):
    """A CR instance whose transfer syntax is JPEG 2000 (no decoder is installed): encapsulated junk."""
    ds = write_dicom(path, gray.astype(np.uint16) * 16)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])  # a J2K start marker, then nothing valid
    ds["PixelData"].VR = "OB"
    ds.save_as(str(path), enforce_file_format=True)


def build_inputs(folder: Path, gray: np.ndarray) -> None:
    png = write_png_bytes(folder / "good.png", gray)
    Image.fromarray(gray).save(folder / "good_q.jpg", quality=95)
    jpg = (folder / "good_q.jpg").read_bytes()
    (folder / "good_q.jpg").unlink()
    (folder / "corrupt.png").write_bytes(png[:8] + b"this is not PNG data" * 10)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "corrupt.jpg").write_bytes(jpg[:3] + b"this is not JPEG data" * 10)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "text.png").write_text("name,score\nnot an image,1\n")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "deep16.png")  # 0..65535, same picture
    tint = np.stack([gray, (gray * 0.8).astype(np.uint8), (gray * 0.6).astype(np.uint8)], axis=-1)
    Image.fromarray(tint).save(folder / "rgb.jpg", quality=95)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "constant.png")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(folder / "one_pixel.png")
    yy, xx = np.mgrid[0:BIG, 0:BIG].astype(np.float32)
    Image.fromarray((60 * (np.sin(xx / 300) + np.cos(yy / 200) + 2)).astype(np.uint8)).save(folder / "big.png")
    image = to_nifti_orientation(gray.astype(np.float32))
    write_nifti(folder / "nan.nii.gz", np.where(np.eye(64, dtype=bool), np.nan, image))
    write_nifti(folder / "inf.nii.gz", np.where(np.eye(64, dtype=bool), np.inf, image))
    write_nifti(folder / "vol3d.nii.gz", np.stack([image, image[::-1], image.T], axis=-1))
    write_nifti(folder / "vol4d.nii.gz", np.stack([np.stack([image] * 3, axis=-1)] * 2, axis=-1))
    ds = write_dicom(folder / "nopixels.dcm", gray.astype(np.uint16) * 16)
    del ds.PixelData
    ds.save_as(str(folder / "nopixels.dcm"), enforce_file_format=True)
    write_dicom(folder / "mono2.dcm", gray.astype(np.uint16) * 16)
    write_dicom(folder / "mono1.dcm", 4095 - gray.astype(np.uint16) * 16, monochrome1=True)
    write_j2k_dicom(folder / "j2k.dcm", gray)
    Image.fromarray(gray).save(folder / "with space é.png")
    for sub in ("a", "b"):
        (folder / sub).mkdir()
        Image.fromarray(gray).save(folder / sub / "x.png")
    write_dicom(folder / "x.dcm", gray.astype(np.uint16) * 16)


@pytest.fixture(scope="module")
def catalogue(trained, tmp_path_factory):
    """Every file-level case in one folder, scored once: (inputs, out, rows by relative path, summary, warnings)."""
    runs_dir, gray = trained
    inputs, out = tmp_path_factory.mktemp("bad_in"), tmp_path_factory.mktemp("bad_out")
    build_inputs(inputs, gray)
    console = io.StringIO()  # the run's logging.conf binds its console handler to sys.stdout at start
    with contextlib.redirect_stdout(console):
        assert score(runs_dir, inputs, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {os.path.relpath(r["file"], inputs): r for r in summary["files"]}
    return inputs, out, rows, summary, console.getvalue().splitlines()


def error_of(rows, name) -> str:
    row = rows[name]
    assert row["status"] == "error", row
    assert name.split("/")[-1] in row["error"]  # the error names the file
    return row["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, problem",
    [
        ("corrupt.png", "cannot decode image"),
        ("empty.png", "file is empty (0 bytes)"),
        ("truncated.png", "cannot decode image"),
        ("corrupt.jpg", "cannot decode image"),
        ("empty.jpg", "file is empty (0 bytes)"),
        ("truncated.jpg", "cannot decode image"),
        ("text.png", "cannot decode image"),
        ("nan.nii.gz", "contains 64 non-finite values (NaN/Inf)"),
        ("inf.nii.gz", "contains 64 non-finite values (NaN/Inf)"),
        ("vol4d.nii.gz", "unsupported NIfTI shape (64, 64, 3, 2) (4D)"),
        ("nopixels.dcm", "DICOM object has no pixel data"),
        ("j2k.dcm", "cannot decode DICOM pixel data (transfer syntax JPEG 2000 Image Compression (Lossless Only)"),
        (
            "one_pixel.png",
            "image is 1x1 pixels; the smallest image the bundle scores is 16 px on the short side (min_image_size)",
        ),
    ],
)
def test_unreadable_file_is_an_error_row_naming_it_and_the_problem(catalogue, name, problem):
    _, _, rows, _, _ = catalogue
    assert problem in error_of(rows, name)


@pytest.mark.slow
def test_the_missing_codec_is_named(catalogue):
    assert "a decoder plug-in may be missing" in error_of(catalogue[2], "j2k.dcm")


@pytest.mark.slow
def test_every_other_file_is_still_scored_and_every_row_is_in_scores_csv(catalogue):
    inputs, out, rows, summary, _ = catalogue
    ok = {name for name, row in rows.items() if row["status"] == "ok"}
    expected = {"good.png", "deep16.png", "rgb.jpg", "constant.png", "big.png", "vol3d.nii.gz", "mono1.dcm",
                "mono2.dcm", "with space é.png", "a/x.png", "b/x.png", "x.dcm"}  # fmt: skip
    assert ok == expected
    assert summary["n_scored"] == len(expected) and summary["n_errors"] == 13
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        table = {os.path.relpath(r["file"], inputs): r["status"] for r in csv.DictReader(f)}
    assert table == {name: row["status"] for name, row in rows.items()}
    for name in ok:
        assert (out / rows[name]["map_file"]).is_file() and (out / rows[name]["overlay_file"]).is_file()


@pytest.mark.slow
def test_16_bit_png_uses_its_full_range_and_scores_like_the_8_bit_picture(catalogue):
    inputs, _, rows, _, _ = catalogue
    loaded = load_image(inputs / "deep16.png")
    assert float(loaded.max()) > 255  # 16-bit values, not reduced to 8 bits
    assert np.array_equal(np.asarray(loaded), np.asarray(load_image(inputs / "good.png")) * 257)
    assert rows["deep16.png"]["score"] == pytest.approx(rows["good.png"]["score"], rel=1e-4)


@pytest.mark.slow
def test_rgb_jpeg_is_converted_to_gray_for_a_grayscale_model(catalogue):
    inputs, _, rows, _, _ = catalogue
    assert load_image(inputs / "rgb.jpg").shape[0] == 1
    assert rows["rgb.jpg"]["status"] == "ok" and np.isfinite(rows["rgb.jpg"]["score"])


@pytest.mark.slow
def test_constant_image_is_scored_with_the_zero_range_warning(catalogue):
    _, _, rows, _, warnings = catalogue
    assert rows["constant.png"]["status"] == "ok" and np.isfinite(rows["constant.png"]["score"])
    assert any("constant.png" in m and "zero intensity range" in m for m in warnings)


@pytest.mark.slow
def test_8000_pixel_image_is_scored_with_a_full_size_map_and_a_capped_overlay(catalogue):
    _, out, rows, _, _ = catalogue
    row = rows["big.png"]
    assert nib.load(str(out / row["map_file"])).shape == (BIG, BIG)
    assert Image.open(out / row["overlay_file"]).size == (2000, 2000)


@pytest.mark.slow
def test_3d_nifti_is_one_entry_per_slice_and_one_row(catalogue):
    inputs, out, rows, _, _ = catalogue
    entries = [e for e in inference_datalist([inputs / "vol3d.nii.gz"]) if e["name"] == "vol3d"]
    assert [e["slice"] for e in entries] == [0, 1, 2]
    row = rows["vol3d.nii.gz"]
    assert row["kind"] == "volume" and row["slices"] == 3 and len(row["slice_scores"]) == 3
    assert nib.load(str(out / row["map_file"])).shape == (64, 64, 3)


@pytest.mark.slow
def test_monochrome1_and_monochrome2_of_the_same_picture_score_the_same(catalogue):
    rows = catalogue[2]
    assert rows["mono1.dcm"]["score"] == pytest.approx(rows["mono2.dcm"]["score"], rel=1e-5)


@pytest.mark.slow
def test_names_with_spaces_and_non_ascii_give_usable_output_names(catalogue):
    _, out, rows, _, _ = catalogue
    row = rows["with space é.png"]
    assert row["name"] == "with space é" and (out / "with space é_overlay.png").is_file()
    assert Image.open(out / row["overlay_file"]).size == (64, 64)


@pytest.mark.slow
def test_same_stem_inputs_get_three_distinct_output_names(catalogue):
    _, out, rows, _, _ = catalogue
    names = {rows[n]["name"] for n in ("a/x.png", "b/x.png", "x.dcm")}
    assert names == {"a__x", "b__x", "x"}
    assert all((out / f"{n}_map.nii.gz").is_file() for n in names)


# ----------------------------------------------------------------------------- whole-run refusals


def refused(capsys, status) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.slow
def test_empty_folder_is_refused(trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    line = refused(capsys, score(trained[0], tmp_path / "empty", "--out", tmp_path / "o"))
    assert str(tmp_path / "empty") in line and "no image files found" in line


@pytest.mark.slow
def test_missing_path_is_refused_by_name(trained, tmp_path, capsys):
    capsys.readouterr()
    line = refused(capsys, score(trained[0], tmp_path / "nowhere.png", "--out", tmp_path / "o"))
    assert f"{tmp_path / 'nowhere.png'}: no such file or folder" in line


@pytest.mark.slow
def test_a_second_score_into_the_same_folder_needs_overwrite(trained, tmp_path, capsys):
    runs_dir, gray = trained
    Image.fromarray(gray).save(tmp_path / "one.png")
    out = tmp_path / "out"
    assert score(runs_dir, tmp_path / "one.png", "--out", out) == 0
    capsys.readouterr()
    line = refused(capsys, score(runs_dir, tmp_path / "one.png", "--out", out))
    assert f"{out} already holds scoring results" in line and "--overwrite true" in line
    assert score(runs_dir, tmp_path / "one.png", "--out", out, "--overwrite", "true") == 0


# ----------------------------------------------------------------------------- the Deploy app


@pytest.mark.slow
def test_deploy_app_reports_bad_files_by_name_and_scores_the_rest(trained, tmp_path):
    pytest.importorskip("monai.deploy", reason="the deploy extra (monai-deploy-app-sdk) is not installed")
    pytest.importorskip("holoscan", reason="the deploy extra (monai-deploy-app-sdk) is not installed")
    runs_dir, gray = trained
    model = tmp_path / "model.ts"
    assert cli_main(["export", "--runs_dir", str(runs_dir), "--image_size", "32", "--model_ts", str(model)]) == 0
    inputs, out = tmp_path / "in", tmp_path / "out"
    for sub in ("a", "b"):
        (inputs / sub).mkdir(parents=True)
        Image.fromarray(gray).save(inputs / sub / "x.png")
    png = write_png_bytes(inputs / "a" / "x.png", gray)
    (inputs / "corrupt.png").write_bytes(png[:8] + b"this is not PNG data" * 10)
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(inputs / "one_pixel.png")
    write_dicom(inputs / "x.dcm", gray.astype(np.uint16) * 16)
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", DDAD_DEVICE="cpu", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "ddad_bundle.deploy", "-i", str(inputs), "-o", str(out), "-m", str(model)],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {os.path.relpath(r["file"], inputs): r for r in json.loads((out / "summary.json").read_text())["files"]}
    assert {n: r["status"] for n, r in rows.items()} == {
        "a/x.png": "ok", "b/x.png": "ok", "x.dcm": "ok", "corrupt.png": "error", "one_pixel.png": "error"
    }  # fmt: skip
    assert "corrupt.png" in rows["corrupt.png"]["error"] and "cannot decode image" in rows["corrupt.png"]["error"]
    assert "image is 1x1 pixels" in rows["one_pixel.png"]["error"] and "one_pixel.png" in rows["one_pixel.png"]["error"]
    assert {rows[n]["name"] for n in ("a/x.png", "b/x.png", "x.dcm")} == {"a__x", "b__x", "x"}
    assert (out / "x_overlay.dcm").is_file()
