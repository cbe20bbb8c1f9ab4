"""Tests of scripts.data.readers on real files written to tmp_path (PNG, JPEG, DICOM, NIfTI)."""

import logging
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Resized
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scripts.data.readers import (
    ImageLoadError,
    LoadMask,
    LoadMaskd,
    LoadMedicalImage,
    LoadMedicalImaged,
    MedicalImageReader,
    ScaleToSymmetricRange,
    ScaleToSymmetricRanged,
    detect_format,
    read_dicom_intensities,
    to_nifti_orientation,
)

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ file writers


def write_png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def write_dicom(
    path, stored, photometric="MONOCHROME2", slope=None, intercept=None, center=None, width=None, frames=None
):
    """A proper DX file: file meta, explicit VR little endian, 12 bits stored in 16."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "phantom"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return path


def stored_12bit(shape=(6, 5)):
    return RNG.integers(0, 4096, size=shape).astype(np.uint16)


# ------------------------------------------------------------------ PNG / JPEG


def test_png_8bit_grayscale_exact(tmp_path):
    a = RNG.integers(0, 256, size=(7, 9)).astype(np.uint8)
    path = write_png(tmp_path / "g8.png", a)
    img = LoadMedicalImage()(str(path))
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    assert img.shape == (1, 7, 9)
    np.testing.assert_array_equal(img[0].numpy(), a.astype(np.float32))
    assert img.meta["filename_or_obj"] == str(path)
    assert img.meta["source_format"] == "png"


def test_png_16bit_precision_survives(tmp_path):
    a = np.array([[1000, 1001, 0], [65535, 30000, 30001]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.frombytes("I;16", (a.shape[1], a.shape[0]), a.astype("<u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16"  # really written as 16-bit
    out = LoadMedicalImage()(path)[0].numpy()
    np.testing.assert_array_equal(out, a.astype(np.float32))
    assert out[0, 0] != out[0, 1]


def test_rgb_png_luminance_and_colour(tmp_path):
    a = RNG.integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    path = write_png(tmp_path / "rgb.png", a)
    gray = LoadMedicalImage(channels=1)(path)
    rgb = LoadMedicalImage(channels=3)(path)
    expected = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    assert gray.shape == (1, 5, 6)
    np.testing.assert_allclose(gray[0].numpy(), expected, atol=1e-4)
    assert rgb.shape == (3, 5, 6)
    np.testing.assert_array_equal(rgb.numpy(), np.moveaxis(a, -1, 0).astype(np.float32))


def test_alpha_dropped_and_gray_replicated(tmp_path):
    rgba = RNG.integers(0, 256, size=(4, 4, 4)).astype(np.uint8)
    la = RNG.integers(0, 256, size=(4, 4, 2)).astype(np.uint8)
    out_rgba = LoadMedicalImage(channels=3)(write_png(tmp_path / "rgba.png", rgba))
    out_la = LoadMedicalImage(channels=3)(write_png(tmp_path / "la.png", la, mode="LA"))
    np.testing.assert_array_equal(out_rgba.numpy(), np.moveaxis(rgba[..., :3], -1, 0))
    assert out_la.shape == (3, 4, 4)
    for c in range(3):  # grayscale replicated, alpha gone
        np.testing.assert_array_equal(out_la[c].numpy(), la[..., 0])


def test_jpeg_gray_and_rgb(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 32), (24, 1)).astype(np.uint8)
    gray_path = tmp_path / "g.jpg"
    Image.fromarray(ramp).save(gray_path, quality=95)
    out = LoadMedicalImage()(gray_path)
    assert out.shape == (1, 24, 32) and out.meta["source_format"] == "jpeg"
    assert np.abs(out[0].numpy() - ramp).max() <= 4  # lossy, but close
    rgb_path = tmp_path / "c.jpeg"
    Image.fromarray(np.stack([ramp] * 3, -1)).save(rgb_path, quality=95)
    assert LoadMedicalImage(channels=3)(rgb_path).shape == (3, 24, 32)


# ------------------------------------------------------------------ DICOM


def test_dicom_monochrome2_raw_values(tmp_path):
    s = stored_12bit()
    path = write_dicom(tmp_path / "m2.dcm", s)
    img = LoadMedicalImage()(path)
    assert img.shape == (1, 6, 5) and img.meta["source_format"] == "dicom"
    np.testing.assert_array_equal(img[0].numpy(), s.astype(np.float32))


def test_dicom_monochrome1_inverted(tmp_path):
    s = np.arange(30, dtype=np.uint16).reshape(5, 6) * 100  # distinct values, max 2900
    out = read_dicom_intensities(write_dicom(tmp_path / "m1.dcm", s, photometric="MONOCHROME1"))
    bright = np.unravel_index(np.argmax(s), s.shape)
    assert np.unravel_index(np.argmin(out), out.shape) == bright  # brightest stored -> darkest
    np.testing.assert_array_equal(np.argsort(out, axis=None), np.argsort(s, axis=None)[::-1])
    np.testing.assert_array_equal(out, 4095.0 - s)  # mirrored within the 12-bit stored range


def test_dicom_rescale_applied_exactly(tmp_path):
    s = stored_12bit()
    out = read_dicom_intensities(write_dicom(tmp_path / "r.dcm", s, slope=2, intercept=-100))
    np.testing.assert_array_equal(out, s.astype(np.float64) * 2 - 100)


def test_dicom_voi_window(tmp_path):
    s = np.array([[0, 749, 760, 1000], [1240, 1250, 2000, 4095]], dtype=np.uint16)
    # two presets: the first (1000 / 501, i.e. linear on 749.5..1249.5) must win
    path = write_dicom(tmp_path / "w.dcm", s, center=[1000, 3000], width=[501, 100])
    out = read_dicom_intensities(path)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_array_equal(out[0, :2], 0.0)  # below the window
    np.testing.assert_array_equal(out[1, 1:], 1.0)  # above the window
    assert 0.0 < out[0, 2] < out[0, 3] < out[1, 0] < 1.0
    assert out[0, 3] == pytest.approx(0.5, abs=0.01)  # the centre maps to mid-grey
    np.testing.assert_array_equal(read_dicom_intensities(path, voi_window=False), s)  # raw on request
    np.testing.assert_array_equal(LoadMedicalImage(voi_window=False)(path)[0].numpy(), s)


def test_dicom_monochrome1_with_window_inverts_after_window(tmp_path):
    s = np.array([[0, 1000, 4095]], dtype=np.uint16)
    m2 = read_dicom_intensities(write_dicom(tmp_path / "a.dcm", s, center=1000, width=501))
    m1 = read_dicom_intensities(write_dicom(tmp_path / "b.dcm", s, "MONOCHROME1", center=1000, width=501))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-7)
    assert m1[0, 0] == 1.0 and m1[0, 2] == 0.0


def test_dicom_robust_clip_only_without_window(tmp_path):
    s = np.full((20, 20), 1000, dtype=np.uint16)
    s[:10] = 1200
    s[0, 0] = 4095  # a burnt-in label pixel
    path = write_dicom(tmp_path / "c.dcm", s)
    assert read_dicom_intensities(path).max() == 4095
    clipped = read_dicom_intensities(path, robust_clip=True)
    assert clipped.max() < 4095 and clipped.min() == 1000
    assert LoadMedicalImage(robust_clip=True)(path).max() < 4095


def test_dicom_dataset_input_and_extensionless_file(tmp_path):
    import pydicom

    s = stored_12bit()
    path = write_dicom(tmp_path / "IM0001", s, slope=2, intercept=-100)
    assert detect_format(path) == "dicom"  # found by the DICM marker, not the name
    np.testing.assert_array_equal(read_dicom_intensities(pydicom.dcmread(path)), read_dicom_intensities(path))
    np.testing.assert_array_equal(LoadMedicalImage()(path)[0].numpy(), s * 2.0 - 100)


def test_multiframe_dicom_refused(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", stored_12bit((2, 4, 4)), frames=2)
    with pytest.raises(ImageLoadError, match="multi-frame") as info:
        LoadMedicalImage()(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_nifti_2d_round_trip(tmp_path, name):
    a = RNG.normal(size=(7, 5)).astype(np.float32)  # H=7, W=5: a non-square catches transposes
    path = write_nifti(tmp_path / name, to_nifti_orientation(a))
    np.testing.assert_array_equal(LoadMedicalImage()(path)[0].numpy(), a)
    path3 = write_nifti(tmp_path / ("b_" + name), to_nifti_orientation(a)[..., None])  # (X, Y, 1)
    np.testing.assert_array_equal(LoadMedicalImage(nifti_slice=0)(path3)[0].numpy(), a)


def test_nifti_3d_slice_selection(tmp_path):
    slices = [np.full((4, 6), k, dtype=np.float32) + RNG.random((4, 6), dtype=np.float32) for k in range(5)]
    data = np.stack([to_nifti_orientation(s) for s in slices], axis=2)  # (X=6, Y=4, Z=5)
    path = write_nifti(tmp_path / "vol.nii.gz", data)
    np.testing.assert_array_equal(LoadMedicalImage()(path)[0].numpy(), slices[2])  # middle = 5 // 2
    np.testing.assert_array_equal(LoadMedicalImage(nifti_slice=1)(path)[0].numpy(), slices[1])
    np.testing.assert_array_equal(LoadMedicalImage(nifti_slice=-1)(path)[0].numpy(), slices[4])
    with pytest.raises(ImageLoadError, match="out of range"):
        LoadMedicalImage(nifti_slice=5)(path)


def test_nifti_4d_and_1d_refused(tmp_path):
    path4 = write_nifti(tmp_path / "t.nii", np.zeros((4, 4, 3, 2), np.float32))
    with pytest.raises(ImageLoadError, match=r"\(4, 4, 3, 2\).*4D") as info:
        LoadMedicalImage()(path4)
    assert str(path4) in str(info.value) and "supported" in str(info.value)
    path1 = write_nifti(tmp_path / "line.nii", np.zeros((8,), np.float32))
    with pytest.raises(ImageLoadError, match=r"\(8,\).*1D"):
        LoadMedicalImage()(path1)


# ------------------------------------------------------------------ errors


def _truncated_png(path):
    write_png(path, RNG.integers(0, 256, size=(64, 64)).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("missing.png", lambda p: p, "not found"),
        ("trunc.png", _truncated_png, "cannot decode"),
        ("noise.png", lambda p: p.write_bytes(RNG.bytes(500)) and p, "cannot decode"),
        ("noise.dcm", lambda p: p.write_bytes(RNG.bytes(500)) and p, "DICOM"),
        ("noise.nii", lambda p: p.write_bytes(RNG.bytes(500)) and p, "NIfTI"),
        ("notes.txt", lambda p: p.write_text("hello") and p, "unsupported file type"),
        ("empty.png", lambda p: p.write_bytes(b"") or p, "empty"),
    ],
)
def test_bad_files_raise_image_load_error(tmp_path, name, make, problem):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageLoadError) as info:
        LoadMedicalImage()(str(path))
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_argument_validation_names_the_argument():
    with pytest.raises(ValueError, match="channels"):
        LoadMedicalImage(channels=2)
    with pytest.raises(ValueError, match="nifti_slice"):
        LoadMedicalImaged(keys="image", nifti_slice="first")
    with pytest.raises(ValueError, match="voi_window"):
        LoadMedicalImage(voi_window="yes")
    with pytest.raises(ValueError, match="minv"):
        ScaleToSymmetricRange(minv=1.0, maxv=1.0)
    with pytest.raises(ValueError, match="threshold"):
        LoadMask(threshold=float("nan"))


# ------------------------------------------------------------------ scaling, masks, pipelines


def test_scaling_maps_min_and_max_exactly():
    x = MetaTensor(torch.tensor([[[3.0, 7.0], [5.0, 11.0]]]), meta={"filename_or_obj": "x.png"})
    y = ScaleToSymmetricRange()(x)
    assert isinstance(y, MetaTensor) and y.meta["filename_or_obj"] == "x.png"
    assert y.min().item() == -1.0 and y.max().item() == 1.0
    assert y[0, 1, 0].item() == pytest.approx(-0.5)
    z = ScaleToSymmetricRange(0.0, 1.0)(np.array([[2, 4, 6]], dtype=np.uint16))
    assert isinstance(z, np.ndarray) and z.dtype == np.float32
    np.testing.assert_array_equal(z, [[0.0, 0.5, 1.0]])


def test_zero_range_image_maps_to_middle_with_warning(tmp_path, caplog):
    path = write_png(tmp_path / "flat.png", np.full((8, 8), 77, np.uint8))
    with caplog.at_level(logging.WARNING, logger="ddad"):
        out = ScaleToSymmetricRanged(keys="image")(LoadMedicalImaged(keys="image")({"image": path}))["image"]
    assert not torch.isnan(out).any() and torch.all(out == 0.0)
    assert any(str(path) in r.getMessage() and r.name == "ddad" for r in caplog.records)


def test_masks_binary(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 2:5] = 255
    m[5, 5] = 1  # any non-zero value is lesion
    path = write_png(tmp_path / "mask.png", m)
    out = LoadMaskd(keys="mask")({"mask": path})["mask"]
    assert out.shape == (1, 6, 6) and out.dtype == torch.float32
    np.testing.assert_array_equal(out[0].numpy(), (m > 0).astype(np.float32))


def test_compose_with_resized(tmp_path):
    a = RNG.integers(0, 4096, size=(100, 80)).astype(np.uint16)
    path = write_dicom(tmp_path / "x.dcm", a, slope=2, intercept=-100)
    mask = np.zeros((100, 80), np.uint8)
    mask[40:60, 20:50] = 1
    mask_path = write_png(tmp_path / "m.png", mask)
    pipeline = Compose(
        [
            LoadMedicalImaged(keys="image"),
            LoadMaskd(keys="mask"),
            ScaleToSymmetricRanged(keys="image"),
            Resized(keys="image", spatial_size=(64, 64), mode="area"),
            Resized(keys="mask", spatial_size=(64, 64), mode="nearest"),
        ]
    )
    out = pipeline({"image": str(path), "mask": str(mask_path)})
    img = out["image"]
    assert img.shape == (1, 64, 64) and img.dtype == torch.float32
    assert img.min() >= -1.0 and img.max() <= 1.0
    assert img.meta["filename_or_obj"] == str(path)
    assert set(torch.unique(out["mask"]).tolist()) == {0.0, 1.0}
    again = pipeline({"image": str(path), "mask": str(mask_path)})["image"]
    assert torch.equal(img, again)  # deterministic


def test_transforms_pickle_and_missing_keys(tmp_path):
    path = write_png(tmp_path / "p.png", RNG.integers(0, 256, size=(5, 5)).astype(np.uint8))
    loader = LoadMedicalImaged(keys=["image", "other"], channels=3, nifti_slice=2, allow_missing_keys=True)
    clone = pickle.loads(pickle.dumps(loader))
    out = clone({"image": path})
    assert set(out) == {"image"} and out["image"].shape == (3, 5, 5)
    scaler = pickle.loads(pickle.dumps(ScaleToSymmetricRanged(keys="image", minv=-2.0, maxv=2.0)))
    assert scaler(out)["image"].max().item() == 2.0
    assert pickle.loads(pickle.dumps(LoadMask(threshold=10)))(path).shape == (1, 5, 5)
    with pytest.raises(KeyError):
        LoadMedicalImaged(keys="image")({"label": 1})


def test_the_reader_works_inside_monai_load_image(tmp_path):
    from monai.transforms import LoadImage, LoadImaged

    rgb = RNG.integers(0, 256, size=(6, 7, 3)).astype(np.uint8)
    path = write_png(tmp_path / "rgb.png", rgb)
    ours = LoadMedicalImaged(keys="image", channels=3)({"image": str(path)})["image"]
    # MONAI's own transforms, the reader named as a config would name it, or given as an object
    named = LoadImaged(keys="image", reader="scripts.data.readers.MedicalImageReader", channels=3)({"image": str(path)})
    given = LoadImage(reader=MedicalImageReader(channels=3), image_only=True)(str(path))
    for image in (named["image"], given):
        assert torch.equal(image.as_tensor(), ours.as_tensor())
        assert image.meta["source_format"] == "png" and image.meta["filename_or_obj"] == str(path)
    assert MedicalImageReader().verify_suffix("a.nii.gz") and not MedicalImageReader().verify_suffix("a.txt")
    with pytest.raises(ValueError, match="one 2D image per call"):
        MedicalImageReader().read([str(path), str(path)])
