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

``identifiers=False`` (config ``secondary_capture_identifiers`` false): nothing at all is taken
from the source, for sites where results leave the clinical network. ``PatientID``, ``StudyID``
and ``AccessionNumber`` are Type 2 and so stay present and empty; ``StudyInstanceUID`` is Type 1
(it may not be empty), so the object gets a fresh one (``study_uid``, one per source study and
run, because a series may not span two studies); ``SourceImageSequence`` is Type 3 and is left out
(its UIDs would lead back to the source instance); ``PatientIdentityRemoved`` YES with its
Type 1C ``DeidentificationMethod`` says so to a receiving system. The object then files as a study
of its own, under an empty patient.
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
    identifiers: bool = True,
    study_uid: str | None = None,
) -> Path:
    """Write ``rgb`` (H, W, 3) uint8 as a Secondary Capture filed under ``source``'s patient and
    study; returns the path. ``series_uid``: the derived series of this study (new if None), and
    ``instance_number`` the instance's place in it. ``identifiers`` False: no patient or study
    identifier of ``source`` is written, the study is ``study_uid`` (new if None); see the module
    docstring."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a (H, W, 3) uint8 array, got shape {rgb.shape} and dtype {rgb.dtype}")
    if identifiers:
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

    if identifiers:
        _carry_identifiers(source, ds)
    else:
        _without_identifiers(ds, study_uid)
    for name in EMPTY_TYPE2 + ("StudyID", "AccessionNumber"):
        if name not in ds:
            setattr(ds, name, "")

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
    # the overlay shows the source's pixels: text burned into them is burned into the overlay too
    ds.BurnedInAnnotation = "YES" if str(source.get("BurnedInAnnotation", "")).upper() == "YES" else "NO"
    if identifiers and "SOPInstanceUID" in source and "SOPClassUID" in source:
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


def _carry_identifiers(source: Dataset, ds: Dataset) -> None:
    """The identifiers that file the object in the source's patient and study (``CARRIED_IDENTIFIERS``)."""
    for name in CARRIED_IDENTIFIERS:
        if name in source and str(source.get(name, "")).strip():
            setattr(ds, name, source.get(name))


def _without_identifiers(ds: Dataset, study_uid: str | None) -> None:
    """An empty patient and a study of the object's own (module docstring: why these attributes)."""
    ds.PatientID, ds.StudyID, ds.AccessionNumber = "", "", ""
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "secondary_capture_identifiers false: nothing copied from source"  # LO: 64 chars
