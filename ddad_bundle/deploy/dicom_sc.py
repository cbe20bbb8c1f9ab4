"""The anomaly heat map as a DICOM Secondary Capture instance that a PACS can file with its study.

``write_secondary_capture(source, rgb, path, ...)`` writes an RGB 8-bit Secondary Capture Image
(SOP class 1.2.840.10008.5.1.4.1.1.7) of the heat overlay (H, W, 3) at the input's resolution.

What is carried over from the source instance, and why nothing else: the result has to land in
the patient's study (``PatientID``, ``StudyInstanceUID``, and the study's ``StudyID`` and
``AccessionNumber`` when present) and point back at the image it was computed from
(``SourceImageSequence``: SOP class and instance UIDs). Every other patient attribute (name,
birth date, sex, age, ...) is left out: the Type 2 ones the patient and study modules require
(``PatientName``, ``PatientBirthDate``, ``PatientSex``, ``StudyDate``, ``StudyTime``,
``ReferringPhysicianName``) are present and empty, as the standard allows, so the object stays
valid while a copied file reveals no more than the identifiers needed to file it. A new series
(``Modality`` OT, fresh Series and SOP Instance UIDs) holds the result.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, SecondaryCaptureImageStorage, generate_uid

# Copied when the source has them; everything else identifying stays behind (module docstring).
CARRIED_IDENTIFIERS = ("PatientID", "StudyInstanceUID", "StudyID", "AccessionNumber")
# Type 2 attributes of the Patient and General Study modules: present, empty.
EMPTY_TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName")
SERIES_NUMBER = 9901  # high, so viewers list the derived series after the acquired ones


def write_secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    path,
    score_name: str,
    score: float,
    threshold: float,
    label: str,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Path:
    """Write ``rgb`` (H, W, 3) uint8 as a Secondary Capture filed under ``source``'s patient and
    study; returns the path. ``series_uid``: the derived series of this study (new if None), and
    ``instance_number`` the instance's place in it."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a (H, W, 3) uint8 array, got shape {rgb.shape} and dtype {rgb.dtype}")
    for name in ("PatientID", "StudyInstanceUID"):
        if not str(source.get(name, "")).strip():
            raise ValueError(f"source DICOM has no {name}: the Secondary Capture could not be filed with its study")
    path = Path(path)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)

    for name in CARRIED_IDENTIFIERS:
        if name in source and str(source.get(name, "")).strip():
            setattr(ds, name, source.get(name))
    for name in EMPTY_TYPE2:
        setattr(ds, name, "")
    if "StudyID" not in ds:
        ds.StudyID = ""
    if "AccessionNumber" not in ds:
        ds.AccessionNumber = ""

    now = datetime.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", SERIES_NUMBER, int(instance_number)
    ds.SeriesDescription = f"DDAD anomaly map ({score_name})"
    ds.ConversionType = "WSD"  # workstation: a derived image, not a digitized film
    ds.Manufacturer = "DDAD MONAI bundle"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.DerivationDescription = (
        f"{score_name} anomaly probability over the input; image score {score:.6g} (threshold {threshold:.6g}): {label}"
    )[:1024]
    ds.ImageComments = "Research use only; not for diagnosis."
    ds.BurnedInAnnotation = "NO"
    if "SOPInstanceUID" in source and "SOPClassUID" in source:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [ref]

    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
