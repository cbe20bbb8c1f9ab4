"""Image loading and intensity transforms for DDAD: a MONAI ``ImageReader`` and MONAI transforms.

What this module does
---------------------
* ``MedicalImageReader`` is a MONAI ``ImageReader``; ``LoadMedicalImage(d)`` and ``LoadMask(d)``
  are MONAI's ``LoadImage(d)`` with it, so any MONAI ``LoadImage(d)`` can read these files too.
* Reads one 2D image from PNG, JPEG, DICOM or NIfTI (``.nii`` / ``.nii.gz``) into a float32
  ``MetaTensor`` of shape ``(C, H, W)``: ``C = 1`` (grayscale, the default) or ``C = 3`` (RGB).
  ``meta["filename_or_obj"]`` keeps the source path; ``meta["source_format"]`` says which reader ran.
* Reads DICOM intensities the same way everywhere (:func:`read_dicom_intensities`), so data
  preparation, training and inference on raw DICOM see identical numbers.
* Loads binary lesion masks as ``(1, H, W)`` float32 in {0, 1} (non-zero = lesion).
* Scales each image to a symmetric range (default ``[-1, 1]``), as DDAD trains on.

Resizing is deliberately not here: configs use MONAI's ``Resized`` (``mode="area"`` for images,
``"nearest"`` for masks), which works directly on this module's output.

Conventions
-----------
* Format: chosen from the file content (PNG / JPEG signature, ``DICM`` marker, NIfTI header,
  gzip-wrapped NIfTI); when the content is not recognised, from the extension. A file whose
  extension promises a supported format but whose bytes do not decode is reported as corrupt.
* Channels: ``channels=1`` converts RGB by luminance ``0.299 R + 0.587 G + 0.114 B`` (in float,
  no 8-bit rounding); ``channels=3`` replicates grayscale. Alpha channels are dropped.
* PNG / JPEG: 16-bit grayscale keeps its full precision. EXIF orientation is applied, so the
  array matches what an image viewer shows. (16-bit RGB PNGs are reduced to 8 bits by Pillow.)
* DICOM: Modality LUT or RescaleSlope/RescaleIntercept, then (``voi_window=True``) the header's
  first VOI window (or VOI LUT) mapped to ``[0, 1]``, then MONOCHROME1 inverted so that higher
  always means brighter. Multi-frame objects are refused. See :func:`read_dicom_intensities`.
* NIfTI orientation: voxel-index order, no reorientation from the affine. A 2D slice
  ``data[:, :, k]`` of shape ``(X, Y)`` is returned transposed, as ``(rows=Y, cols=X)``: the first
  voxel axis runs along the columns, like the x axis of a PNG. Hence an ``(H, W)`` array ``A``
  saved as ``nibabel.Nifti1Image(A.T, affine)`` (see :func:`to_nifti_orientation`) reads back as
  ``A``; writers of anomaly maps use the same helper so that maps overlay their images. A 3D
  volume ``(X, Y, Z)`` yields the axial slice ``k`` chosen by ``nifti_slice`` (an int, negative
  counts from the end, or ``"middle"`` = ``Z // 2``); ``(X, Y)`` and ``(X, Y, 1)`` are 2D images.
  Trailing singleton axes beyond the third (``(X, Y, Z, 1)``) are ignored; true 4D is refused.
* Zero intensity range: :class:`ScaleToSymmetricRange` maps a constant image to the middle of
  the range, ``(minv + maxv) / 2`` (0 for ``[-1, 1]``), and logs a warning on the ``"ddad"``
  logger naming the file. Rationale: a constant image carries no structure, the midpoint is the
  value a well-trained reconstruction network is least surprised by, and NaN would poison a
  whole batch's loss; the warning keeps such files visible instead of silently training on them.
* Size: ``min_image_size`` (config key, 16 in the bundle's chains) refuses an image whose short
  side has fewer pixels, naming the file and its shape: a 1x1 "image" resized to the model's grid
  is a constant, and scoring it would report a number that means nothing.
* Every failure to read a file raises :class:`ImageLoadError` (a ``ValueError``) whose message
  starts with the file path and names the problem.

Example
-------
>>> from monai.transforms import Compose, Resized
>>> pipeline = Compose([
...     LoadMedicalImaged(keys="image"),                      # (1, H, W) float32 MetaTensor
...     ScaleToSymmetricRanged(keys="image"),                 # values in [-1, 1]
...     Resized(keys="image", spatial_size=(64, 64), mode="area"),
... ])
>>> pipeline({"image": "cxr_0001.dcm"})["image"].shape      # doctest: +SKIP
torch.Size([1, 64, 64])
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform, Transform
from monai.utils import TransformBackends, ensure_tuple

__all__ = [
    "ImageLoadError",
    "SUPPORTED_EXTENSIONS",
    "detect_format",
    "read_dicom_intensities",
    "read_image_array",
    "load_image",
    "load_mask",
    "to_nifti_orientation",
    "MedicalImageReader",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "LoadMask",
    "LoadMaskd",
    "ScaleToSymmetricRange",
    "ScaleToSymmetricRanged",
]

logger = logging.getLogger("ddad")

PathLike = Union[str, os.PathLike]
NiftiSlice = Union[int, str]

# Extension -> reader name; used only when the content is not recognised.
SUPPORTED_EXTENSIONS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, what Pillow's "L" conversion uses
ROBUST_CLIP_PERCENTILES = (0.5, 99.5)


class ImageLoadError(ValueError):
    """A file could not be read as a supported 2D image; the message names the path and why."""

    def __init__(self, path: Any, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --------------------------------------------------------------------------------------------
# argument validation (shared by functions and transforms, so errors read the same everywhere)
# --------------------------------------------------------------------------------------------


def _check_channels(channels: Any) -> int:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return int(channels)


def _check_nifti_slice(nifti_slice: Any) -> NiftiSlice:
    if nifti_slice == "middle":
        return "middle"
    if isinstance(nifti_slice, (bool, np.bool_)) or not isinstance(nifti_slice, (int, np.integer)):
        raise ValueError(f"nifti_slice must be an int slice index or 'middle', got {nifti_slice!r}")
    return int(nifti_slice)


def _check_min_size(min_image_size: Any) -> int:
    if isinstance(min_image_size, bool) or not isinstance(min_image_size, (int, np.integer)) or min_image_size < 1:
        raise ValueError(f"min_image_size must be a whole number of pixels >= 1, got {min_image_size!r}")
    return int(min_image_size)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True  # NIfTI-1 (sizeof_hdr 348, magic at byte 344)
    return len(head) >= 8 and head[4:8] == b"n+2\x00"  # NIfTI-2 (magic at byte 4)


def _sniff(path: Path) -> str | None:
    """Reader name from the file's first bytes, or None when the signature is not one we know."""
    try:
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc})") from exc
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        try:  # gzip: peek inside for a NIfTI header (only a few hundred bytes are inflated)
            with gzip.open(path, "rb") as g:
                if _is_nifti_header(g.read(352)):
                    return "nifti"
        except (OSError, EOFError):
            return None  # corrupt gzip: let the extension decide, the reader will report it
    return None


def detect_format(path: PathLike) -> str:
    """Return ``"png"``, ``"jpeg"``, ``"dicom"`` or ``"nifti"`` for an existing file.

    Content first (so extension-less DICOM files work), extension second; raises
    :class:`ImageLoadError` for a missing file, a directory or an unsupported format.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if not path.is_file():
        raise ImageLoadError(path, "not a regular file (a directory?); expected one 2D image file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    fmt = _sniff(path) or SUPPORTED_EXTENSIONS.get(_extension(path))
    if fmt is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise ImageLoadError(
            path,
            f"unsupported file type (extension {_extension(path) or '<none>'!r}, content not "
            f"recognised); supported: {supported}",
        )
    return fmt


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------

_GRAY_MODES = ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def _read_pil(path: Path) -> np.ndarray:
    """(H, W) grayscale or (H, W, 3) RGB, native value range (8 or 16 bit), float32."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise ImageLoadError(path, f"contains {img.n_frames} frames; only single-frame images are supported")
            img.load()  # decode now: truncated or corrupt data fails here, inside the try
            img = ImageOps.exif_transpose(img)  # match what viewers display
            arr = _pil_to_array(img, path)
    except ImageLoadError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageLoadError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return arr


def _pil_to_array(img: Any, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        img, mode = img.convert("L"), "L"  # bilevel -> 0/255, the same scale as 8-bit gray
    if mode in _GRAY_MODES:
        return np.asarray(img).astype(np.float32)
    if mode == "LA":
        return np.asarray(img)[..., 0].astype(np.float32)  # drop alpha
    if mode in ("P", "PA"):
        img, mode = img.convert("RGBA"), "RGBA"  # palette -> colours; alpha dropped below
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img, mode = img.convert("RGB"), "RGB"
    if mode in ("RGB", "RGBA"):
        return np.asarray(img)[..., :3].astype(np.float32)
    raise ImageLoadError(path, f"unsupported Pillow image mode {mode!r}")


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _first_value(value: Any) -> float:
    """WindowCenter / WindowWidth may be multi-valued (several presets): the first one wins."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def _dicom_dataset(path_or_dataset: Any) -> tuple[Any, str]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(path_or_dataset, pydicom.Dataset):
        name = getattr(path_or_dataset, "filename", None)
        return path_or_dataset, str(name) if isinstance(name, (str, os.PathLike)) else "<DICOM dataset>"
    path = Path(path_or_dataset)
    if not path.is_file():
        raise ImageLoadError(path, "file not found" if not path.exists() else "not a regular file")
    # A .dcm file without the 128-byte preamble + "DICM" is still accepted (old writers omit it).
    force = _extension(path) in (".dcm", ".dicom")
    try:
        return pydicom.dcmread(path, force=force), str(path)
    except InvalidDicomError as exc:
        raise ImageLoadError(path, f"not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise ImageLoadError(path, f"corrupt DICOM file ({type(exc).__name__}: {exc})") from exc


def _stored_range(ds: Any, pixels: np.ndarray) -> tuple[float, float]:
    """Range the stored values can take, from BitsStored / PixelRepresentation (data-independent,
    so every file of a series is inverted the same way); float pixel data uses its own range."""
    if not np.issubdtype(pixels.dtype, np.integer):
        return float(np.min(pixels)), float(np.max(pixels))
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or pixels.dtype.itemsize * 8)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _apply_modality(pixels: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """Stored values -> modality units (e.g. HU), and the transformed stored range.

    The rescale is done here, in float64, so slope/intercept are applied exactly; only a
    Modality LUT Sequence (rare in CR/DX) is delegated to pydicom.
    """
    from pydicom.pixels import apply_modality_lut

    lo, hi = _stored_range(ds, pixels)
    if ds.get("ModalityLUTSequence"):
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        ends = apply_modality_lut(np.array([lo, hi]).astype(pixels.dtype), ds).astype(np.float64)
        return values, (float(ends.min()), float(ends.max()))
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    slope = 1.0 if slope in (None, "") else float(slope)
    intercept = 0.0 if intercept in (None, "") else float(intercept)
    values = pixels.astype(np.float64) * slope + intercept
    ends = np.array([lo, hi]) * slope + intercept
    return values, (float(ends.min()), float(ends.max()))


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI window, output normalised to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1.0:  # LINEAR with width 1 is a threshold at center - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _apply_voi(values: np.ndarray, ds: Any, name: str) -> tuple[np.ndarray, bool]:
    """Apply the first VOI window (or VOI LUT) -> ([0, 1] values, True); (values, False) if none."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, ""):
        center, width = _first_value(center), _first_value(width)
        function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
        minimum = 1.0 if function == "LINEAR" else 0.0
        if width > minimum or (function == "LINEAR" and width == 1.0):
            return _window(values, center, width, function), True
        logger.warning("%s: invalid VOI window width %s for %s; window not applied", name, width, function)
    if ds.get("VOILUTSequence"):
        from pydicom.pixels import apply_voi

        # Normalise by the LUT's own output range (its end entries); LUT descriptors often
        # misstate the bit depth, so the nominal depth is not trusted.
        lut_in = values.round().astype(np.int64)
        out = apply_voi(lut_in, ds, index=0).astype(np.float64)
        ends = apply_voi(np.array([-(2**31), 2**31 - 1], dtype=np.int64), ds, index=0).astype(np.float64)
        low, high = float(ends.min()), float(ends.max())
        if high > low:
            return (out - low) / (high - low), True
    return values, False


def read_dicom_intensities(path_or_dataset: Any, voi_window: bool = True, robust_clip: bool = False) -> np.ndarray:
    """Presentation intensities of a single-frame DICOM image, float32 ``(H, W)`` (``(H, W, 3)`` for colour).

    Order (DICOM grayscale pipeline): Modality LUT Sequence or ``RescaleSlope * stored +
    RescaleIntercept`` -> if ``voi_window`` and the header has one, the first VOI window
    (``WindowCenter``/``WindowWidth``, honouring ``VOILUTFunction``) or VOI LUT, mapped to
    ``[0, 1]`` -> MONOCHROME1 inverted so higher = brighter (``1 - v`` after a window, otherwise
    ``lo + hi - v`` with ``[lo, hi]`` the rescaled range of the stored bit depth, so the values
    stay in the same units' span). Without an applied window the values stay in modality units;
    ``robust_clip=True`` then clips them to the 0.5 / 99.5 percentiles (outlier burnt-in labels,
    collimator edges). Colour images (SamplesPerPixel 3) are returned as RGB without LUTs.
    Presentation LUT Shape is not applied separately: for CR/DX it only restates MONOCHROME1.

    ``path_or_dataset``: a path or an already-read ``pydicom.Dataset``. Raises
    :class:`ImageLoadError` for unreadable, pixel-less, multi-frame or undecodable objects.
    """
    ds, name = _dicom_dataset(path_or_dataset)
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise ImageLoadError(
            name, f"multi-frame DICOM ({int(frames)} frames) is not supported; expected a single 2D frame"
        )
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageLoadError(name, "DICOM object has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = f" (transfer syntax {syntax.name}; a decoder plug-in may be missing)" if syntax else ""
        raise ImageLoadError(name, f"cannot decode DICOM pixel data{hint}: {exc}") from exc

    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        return pixels.astype(np.float32)  # pydicom already converted YBR to RGB
    if pixels.ndim != 2:
        raise ImageLoadError(name, f"unsupported DICOM pixel array shape {pixels.shape}; expected (rows, columns)")

    values, (lo, hi) = _apply_modality(pixels, ds)
    windowed = False
    if voi_window:
        values, windowed = _apply_voi(values, ds, name)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = 1.0 - values if windowed else (lo + hi) - values
    if robust_clip and not windowed:
        low, high = np.percentile(values, ROBUST_CLIP_PERCENTILES)
        values = np.clip(values, low, high)
    return values.astype(np.float32)


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def to_nifti_orientation(image_hw: np.ndarray) -> np.ndarray:
    """``(H, W)`` image -> ``(X=W, Y=H)`` NIfTI data; the inverse of how NIfTI slices are loaded."""
    return np.asarray(image_hw).T


def _resolve_slice(nifti_slice: NiftiSlice, depth: int, path: Path) -> int:
    if nifti_slice == "middle":
        return depth // 2
    if not -depth <= int(nifti_slice) < depth:
        raise ImageLoadError(path, f"nifti_slice={nifti_slice} is out of range for a volume of {depth} slices")
    return int(nifti_slice) % depth


def _read_nifti(path: Path, nifti_slice: NiftiSlice) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        full_shape = tuple(int(s) for s in img.shape)
    except Exception as exc:
        raise ImageLoadError(path, f"cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    shape = full_shape
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1): a singleton time axis is still 3D
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise ImageLoadError(
            path,
            f"unsupported NIfTI shape {full_shape} ({len(shape)}D); supported: 2D (X, Y), (X, Y, 1) "
            "or a 3D volume (X, Y, Z) from which one axial slice is taken",
        )
    extra = (0,) * (len(full_shape) - 3)
    if len(shape) == 2 or shape[2] == 1:
        index: tuple = (slice(None), slice(None)) + ((0,) + extra if len(full_shape) >= 3 else ())
    else:
        index = (slice(None), slice(None), _resolve_slice(nifti_slice, shape[2], path)) + extra
    try:
        data = np.asarray(img.dataobj[index])  # reads only the chosen slice, scl_slope applied
    except Exception as exc:
        raise ImageLoadError(path, f"cannot read NIfTI voxel data ({type(exc).__name__}: {exc})") from exc
    return _nifti_slice_to_image(data, path)


def _nifti_slice_to_image(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.names:  # RGB24 / RGBA32 structured voxels
        data = np.stack([data[c] for c in ("R", "G", "B")], axis=-1)
        return np.transpose(data, (1, 0, 2)).astype(np.float32)
    if np.iscomplexobj(data):
        raise ImageLoadError(path, "complex-valued NIfTI data is not supported")
    return data.T.astype(np.float32)  # (X, Y) -> (rows=Y, cols=X)


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------


def _validate_image(arr: np.ndarray, path: Path, min_image_size: int = 1) -> None:
    is_gray = arr.ndim == 2
    is_rgb = arr.ndim == 3 and arr.shape[-1] == 3
    if not (is_gray or is_rgb):
        raise ImageLoadError(
            path, f"unsupported array shape {arr.shape} ({arr.ndim}D); supported: 2D (H, W) or RGB (H, W, 3)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(path, f"empty image of shape {arr.shape}")
    if min(arr.shape[:2]) < min_image_size:  # too few pixels to resize into the model's grid meaningfully
        raise ImageLoadError(
            path,
            f"image is {arr.shape[0]}x{arr.shape[1]} pixels; the smallest image the bundle scores is "
            f"{min_image_size} px on the short side (min_image_size)",
        )
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:  # NaN would silently poison the per-image scaling and every loss it touches
        raise ImageLoadError(path, f"contains {bad} non-finite values (NaN/Inf)")


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (channels, H, W)."""
    if arr.ndim == 2:
        chw = arr[None]
        return np.repeat(chw, 3, axis=0) if channels == 3 else chw
    chw = np.moveaxis(arr, -1, 0)
    if channels == 3:
        return chw
    weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float64).reshape(3, 1, 1)
    return (chw.astype(np.float64) * weights).sum(axis=0, keepdims=True)


def read_image_array(
    path: PathLike,
    nifti_slice: NiftiSlice = "middle",
    voi_window: bool = True,
    robust_clip: bool = False,
    min_image_size: int = 1,
) -> tuple[np.ndarray, str]:
    """Native-layout read: ``((H, W) or (H, W, 3) float32, format name)``. Checks the shape
    (2D or RGB, at least ``min_image_size`` pixels on the short side) and that values are finite."""
    nifti_slice = _check_nifti_slice(nifti_slice)
    path = Path(path)
    fmt = detect_format(path)
    if fmt in ("png", "jpeg"):
        arr = _read_pil(path)
    elif fmt == "dicom":
        arr = read_dicom_intensities(path, voi_window=voi_window, robust_clip=robust_clip)
    else:
        arr = _read_nifti(path, nifti_slice)
    _validate_image(arr, path, _check_min_size(min_image_size))
    return arr, fmt


# --------------------------------------------------------------------------------------------
# MONAI reader and loading transforms
# --------------------------------------------------------------------------------------------


class MedicalImageReader(ImageReader):
    """MONAI ``ImageReader`` for one 2D PNG, JPEG, DICOM or NIfTI image (see the module doc).

    ``read`` decodes the file in its native layout (format from the content, checks, DICOM
    intensities, the NIfTI slice); ``get_data`` gives ``(channels, H, W)`` float32 and the meta
    data. ``LoadImage(reader=MedicalImageReader(...))`` and ``LoadImaged(keys, reader=
    "scripts.data.readers.MedicalImageReader", channels=3)`` use it as any MONAI reader;
    ``LoadMedicalImage(d)`` passes it as LoadImage's runtime reader, so a bad file raises its
    ``ImageLoadError`` (naming the file) rather than LoadImage's summary of every reader it tried.

    Args:
        channels: 1 (grayscale, RGB by luminance) or 3 (RGB, grayscale replicated).
        nifti_slice: axial slice of a 3D NIfTI volume: an int index or ``"middle"``.
        voi_window: apply the DICOM header's VOI window / LUT when present.
        robust_clip: DICOM without an applied window: clip to the 0.5 / 99.5 percentiles.
        min_image_size: refuse images whose short side has fewer pixels (config key
            ``min_image_size``, 16 in the bundle's chains; 1 here, i.e. only empty images refused).
    """

    def __init__(
        self,
        channels: int = 1,
        nifti_slice: NiftiSlice = "middle",
        voi_window: bool = True,
        robust_clip: bool = False,
        min_image_size: int = 1,
    ) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.nifti_slice = _check_nifti_slice(nifti_slice)
        self.voi_window = _check_bool("voi_window", voi_window)
        self.robust_clip = _check_bool("robust_clip", robust_clip)
        self.min_image_size = _check_min_size(min_image_size)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(_extension(Path(f)) in SUPPORTED_EXTENSIONS for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> tuple[np.ndarray, str]:
        """``((H, W) or (H, W, 3) float32, format name)`` of one file."""
        paths = ensure_tuple(data)
        if len(paths) != 1:
            raise ValueError(f"{type(self).__name__} reads one 2D image per call, got {len(paths)} files")
        return read_image_array(paths[0], self.nifti_slice, self.voi_window, self.robust_clip, self.min_image_size)

    def get_data(self, img: tuple[np.ndarray, str]) -> tuple[np.ndarray, dict]:
        arr, fmt = img
        chw = np.ascontiguousarray(_to_channels(arr, self.channels), dtype=np.float32)
        meta = {
            "source_format": fmt,
            "source_channels": 1 if arr.ndim == 2 else 3,
            "spatial_shape": np.asarray(chw.shape[1:]),
            "original_channel_dim": 0,
        }
        return chw, meta


@contextlib.contextmanager
def _quiet_default_readers():
    """LoadImage also builds MONAI's default readers, which these loaders never call; their DICOM
    reader reports on every construction that a GPU decoder plug-in is absent (a warning and a log line)."""
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec", category=UserWarning)
            yield
    finally:
        plugin_log.setLevel(level)


def _check_path_input(value: Any, owner: str) -> PathLike:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{owner} expects a file path (str or os.PathLike), got {type(value).__name__}")
    return value


class LoadMedicalImage(LoadImage):
    """Path -> ``(C, H, W)`` float32 ``MetaTensor``: MONAI's ``LoadImage`` with a
    ``MedicalImageReader`` (its arguments, positional or keyword, are this transform's: ``channels``,
    ``nifti_slice``, ``voi_window``, ``robust_clip``, ``min_image_size``; see there)."""

    def __init__(self, *reader_args: Any, **reader_kwargs: Any) -> None:
        self.medical_reader = MedicalImageReader(*reader_args, **reader_kwargs)
        with _quiet_default_readers():
            super().__init__(reader=self.medical_reader, image_only=True, dtype=np.float32, expanduser=False)

    @property
    def channels(self) -> int:
        return self.medical_reader.channels

    def __call__(self, filename: PathLike, reader: ImageReader | None = None) -> MetaTensor:
        _check_path_input(filename, type(self).__name__)
        return super().__call__(filename, reader or self.medical_reader)


class LoadMask(LoadMedicalImage):
    """Path -> binary lesion mask ``(1, H, W)`` float32 in {0, 1} (values > ``threshold`` = 1).

    Read as grayscale and, for DICOM, without a VOI window (a display window means nothing for labels).
    """

    def __init__(self, threshold: float = 0.0, nifti_slice: NiftiSlice = "middle") -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        super().__init__(channels=1, nifti_slice=nifti_slice, voi_window=False)
        self.threshold = float(threshold)

    def __call__(self, filename: PathLike, reader: ImageReader | None = None) -> MetaTensor:
        return (super().__call__(filename, reader) > self.threshold).to(torch.float32)


def load_image(
    path: PathLike,
    channels: int = 1,
    nifti_slice: NiftiSlice = "middle",
    voi_window: bool = True,
    robust_clip: bool = False,
) -> MetaTensor:
    """Read one 2D image as a float32 ``MetaTensor`` ``(channels, H, W)``; see the module doc."""
    return _loader(channels, nifti_slice, voi_window, robust_clip)(path)


@functools.lru_cache(maxsize=8)
def _loader(channels, nifti_slice, voi_window, robust_clip) -> LoadMedicalImage:
    # one loader per setting: building a LoadImage builds MONAI's default readers too (about 6 ms)
    return LoadMedicalImage(channels, nifti_slice, voi_window, robust_clip)


def load_mask(path: PathLike, threshold: float = 0.0, nifti_slice: NiftiSlice = "middle") -> MetaTensor:
    """Read a lesion mask as ``(1, H, W)`` float32 in {0, 1}: 1 where the gray value > threshold."""
    return LoadMask(threshold, nifti_slice)(path)


class _LoadWithd(LoadImaged):
    """MONAI's ``LoadImaged`` whose loader is ``loader_class`` (``LoadMedicalImage`` or ``LoadMask``),
    built from the keyword arguments other than ``keys`` and ``allow_missing_keys``."""

    loader_class: type

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **loader_args: Any) -> None:
        with _quiet_default_readers():  # LoadImaged builds a default LoadImage, replaced here
            super().__init__(keys, image_only=True, allow_missing_keys=allow_missing_keys)
        self._loader = self.loader_class(**loader_args)


class LoadMedicalImaged(_LoadWithd):
    """Dictionary version of :class:`LoadMedicalImage` (MONAI's ``LoadImaged`` with its loader):
    ``keys``, ``allow_missing_keys`` and LoadMedicalImage's keyword arguments (``channels``,
    ``nifti_slice``, ``voi_window``, ``robust_clip``, ``min_image_size``)."""

    loader_class = LoadMedicalImage


class LoadMaskd(_LoadWithd):
    """Dictionary version of :class:`LoadMask`: ``keys``, ``allow_missing_keys``, ``threshold``, ``nifti_slice``."""

    loader_class = LoadMask


class _PerKey(MapTransform):
    """Dictionary version of an array transform: applies ``self.transform`` to each key's value."""

    transform: Transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class ScaleToSymmetricRange(Transform):
    """Per-image min-max scaling to ``[minv, maxv]`` (one min/max over all channels, so colour
    ratios survive). A constant image becomes ``(minv + maxv) / 2`` with a warning on the
    ``"ddad"`` logger naming the file; NaN/Inf input raises ``ValueError``. Keeps the input type
    (numpy / torch / MetaTensor with its meta); output is float32.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, minv: float = -1.0, maxv: float = 1.0) -> None:
        for name, value in (("minv", minv), ("maxv", maxv)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not minv < maxv:
            raise ValueError(f"minv must be smaller than maxv, got minv={minv}, maxv={maxv}")
        self.minv = float(minv)
        self.maxv = float(maxv)

    def __call__(self, img: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        is_numpy = isinstance(img, np.ndarray)
        x = np.asarray(img, dtype=np.float32) if is_numpy else torch.as_tensor(img).to(torch.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{_source_name(img)}: image contains NaN or infinite values; cannot scale")
        if hi <= lo:
            middle = (self.minv + self.maxv) / 2.0
            logger.warning(
                "%s: image has zero intensity range (all values %g); mapped to %g",
                _source_name(img),
                lo,
                middle,
            )
            return np.full_like(x, middle) if is_numpy else torch.full_like(x, middle)
        # (x - lo) / (hi - lo) is exactly 0 at the minimum and exactly 1 at the maximum in IEEE
        # arithmetic, so the end points land exactly on minv / maxv; the clip guards the rest.
        y = (x - lo) / (hi - lo) * (self.maxv - self.minv) + self.minv
        return np.clip(y, self.minv, self.maxv) if is_numpy else torch.clamp(y, self.minv, self.maxv)


def _source_name(img: Any) -> str:
    meta = getattr(img, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(name) if name else "<image without filename>"


class ScaleToSymmetricRanged(_PerKey):
    """Dictionary version of :class:`ScaleToSymmetricRange`."""

    backend = ScaleToSymmetricRange.backend

    def __init__(
        self,
        keys: KeysCollection,
        minv: float = -1.0,
        maxv: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ScaleToSymmetricRange(minv, maxv)
