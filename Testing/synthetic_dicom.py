"""CT series written with pydicom for tests: known geometry, known values at physical points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def pixel_points(origin, row, column, spacing, shape, step=1) -> np.ndarray:
    """Physical points of a slice's pixels (every step-th), in the slice's (row, column) order."""
    rows, columns = np.mgrid[0:shape[0]:step, 0:shape[1]:step]
    return (np.asarray(origin, float) + columns[..., None] * spacing[1] * np.asarray(row, float)
            + rows[..., None] * spacing[0] * np.asarray(column, float))


def write_ct_series(folder: Path, positions, row, column, hu_at, *, shape=(40, 48), spacing=(1.2, 0.9),
                  slope=0.5, intercept=-1024.0, stem: str = "slice") -> Path:
    """A CT series written with pydicom: each slice holds hu_at(physical points) as stored integers."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    for number, position in enumerate(positions, 1):
        hu = hu_at(pixel_points(position, row, column, spacing, shape))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.PatientID, ds.InstanceNumber, ds.SliceThickness = "synthetic", number, 1.0
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *column)]
        ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope}", f"{intercept}"
        ds.PixelData = np.round((hu - intercept) / slope).clip(0, 65535).astype("<u2").tobytes()
        ds.save_as(folder / f"{stem}{number:03d}.dcm", enforce_file_format=True)
    return folder
