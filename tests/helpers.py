"""Shared test helpers (imported by the test modules; pytest puts this folder on the path)."""

import numpy as np
import pytest
from ignite.engine import Events
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


class Interrupt(Exception):
    """A simulated crash of a training process."""


def crash_then_resume(build, epoch: int, iteration_in_epoch: int, after_crash=None):
    """Run ``build()`` until it crashes at ``iteration_in_epoch`` of ``epoch``, then run a fresh
    ``build()`` (a new process, as far as the trainer knows) to the end and return it.

    ``after_crash()`` runs between the two, to look at what the crash left on disk.
    """
    interrupted = build()

    @interrupted.on(Events.ITERATION_COMPLETED)
    def crash(engine):
        if engine.state.epoch == epoch and engine.state.iteration % engine.state.epoch_length == iteration_in_epoch:
            raise Interrupt()

    with pytest.raises(Interrupt):
        interrupted.run()
    if after_crash is not None:
        after_crash()
    resumed = build()
    resumed.run()
    return resumed


CR_CLASS, DX_CLASS, MR_CLASS = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.4"


def write_dicom(
    path,
    stored,
    modality="CR",
    sop_class=CR_CLASS,
    monochrome1=False,
    patient_id="P001",
    study_uid=None,
    window=None,
    rescale=(1.0, 0.0),
):
    """A single-frame 12-bit grayscale instance with the patient/study fields a PACS sends."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "Doe^Jane", "19610412", "F"
    ds.PatientAge, ds.OtherPatientIDs = "063Y", "MRN-77"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC123", "S1"
    ds.ReferringPhysicianName, ds.InstitutionName = "Smith^John", "General Hospital"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.asarray(stored, np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return ds
