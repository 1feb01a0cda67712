"""Writes a NIfTI-like volume as a classic DICOM series (one MR Image Storage file per slice).

Only for the tests: the geometry follows the DICOM standard (PS3.3 C.7.6.2.1.1) so that a
converter that gets it right returns the volume's own affine. The NIfTI affine maps voxels to
RAS+ mm; DICOM positions and directions are LPS, hence the sign flip of x and y.

Voxel (i, j, k) of the volume becomes column i, row j of slice k:

- ImageOrientationPatient = (direction of i, direction of j), both in LPS, unit length;
- PixelSpacing = (spacing between rows = |j column|, spacing between columns = |i column|);
- ImagePositionPatient of slice k = centre of voxel (0, 0, k) in LPS.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class SeriesSpec:
    """What the written series says about itself (the header fields the tests check)."""

    number: int = 5
    description: str = "T2_TSE_AX"
    protocol: str = "t2_tse_tra"
    manufacturer: str = "SIEMENS"
    model: str = "Prisma"
    field_strength_t: float = 3.0
    station: str = "MRC12345"
    date: str = "20240115"
    time: str = "101530.250000"
    echo_number: int = 1
    echo_time_ms: float = 98.0
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)


def quantise(array: np.ndarray, signed: bool = False) -> tuple[np.ndarray, float, float]:
    """Stored integers, RescaleSlope and RescaleIntercept for ``array`` (value = stored * slope + intercept).

    Integer arrays that fit are kept as they are (slope 1, intercept 0)."""
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= info.min and array.max() <= info.max:
        return array.astype(dtype), 1.0, 0.0
    lo, hi = float(array.min()), float(array.max())
    slope = (hi - lo) / (info.max - info.min) if hi > lo else 1.0
    slope = float(f"{slope:.8g}")  # what a DS (decimal string) can hold
    intercept = float(f"{lo - info.min * slope:.8g}")
    stored = np.clip(np.round((array - intercept) / slope), info.min, info.max).astype(dtype)
    return stored, slope, intercept


def _ds(values: Sequence[float]) -> list[str]:
    """Decimal strings of at most 16 characters (DICOM DS)."""
    out = []
    for v in values:
        for digits in range(12, 4, -1):
            s = f"{float(v):.{digits}g}"
            if len(s) <= 16:
                break
        out.append(s)
    return out


def slice_geometry(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, float]:
    """ImageOrientationPatient, PixelSpacing, the LPS step from one slice to the next, its length."""
    cols = np.asarray(affine, float)[:3, :3]
    spacing = np.sqrt((cols**2).sum(axis=0))
    row_dir = LPS @ cols[:, 0] / spacing[0]  # along a row = increasing column index = i
    col_dir = LPS @ cols[:, 1] / spacing[1]  # along a column = increasing row index = j
    step = LPS @ cols[:, 2]
    return [*row_dir, *col_dir], [spacing[1], spacing[0]], step, float(spacing[2])


def write_series(
    array: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    spec: SeriesSpec | None = None,
    slices: Sequence[int] | None = None,
    signed: bool = False,
    prefix: str = "IM",
    orientation_override: dict[int, Sequence[float]] | None = None,
) -> list[Path]:
    """Write ``array`` (i, j, k) on ``affine`` (voxel -> RAS+ mm) as one DICOM file per slice k.

    Parameters
    ----------
    slices : the slices k to write (default all): leave some out to make a broken series.
    signed : int16 pixels instead of uint16.
    orientation_override : slice k -> ImageOrientationPatient written instead of the true one.

    Returns the files written, in slice order.
    """
    spec = spec or SeriesSpec()
    folder.mkdir(parents=True, exist_ok=True)
    stored, slope, intercept = quantise(np.asarray(array), signed)
    iop, pixel_spacing, step, thickness = slice_geometry(affine)
    origin = LPS @ np.asarray(affine, float)[:3, 3]
    ks = range(array.shape[2]) if slices is None else slices
    paths = []
    for n, k in enumerate(ks):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = spec.study_uid
        ds.SeriesInstanceUID = spec.series_uid
        ds.FrameOfReferenceUID = spec.frame_of_reference_uid
        ds.Modality = "MR"
        ds.PatientName = "Phantom^DICOM"
        ds.PatientID = "phantom01"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = spec.date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = spec.time
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.Manufacturer = spec.manufacturer
        ds.ManufacturerModelName = spec.model
        ds.StationName = spec.station
        ds.MagneticFieldStrength = _ds([spec.field_strength_t])[0]
        ds.SeriesDescription = spec.description
        ds.ProtocolName = spec.protocol
        ds.SeriesNumber = spec.number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = n + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.PatientPosition = "HFS"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = ["SK", "SP"]
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "5000"
        ds.EchoTime = _ds([spec.echo_time_ms])[0]
        ds.EchoNumbers = spec.echo_number
        ds.SliceThickness = _ds([thickness])[0]
        ds.SpacingBetweenSlices = _ds([float(np.linalg.norm(step))])[0]
        override = (orientation_override or {}).get(k)
        ds.ImageOrientationPatient = _ds(iop if override is None else override)
        ds.ImagePositionPatient = _ds(origin + k * step)
        ds.SliceLocation = _ds([float(np.dot(origin + k * step, np.cross(iop[:3], iop[3:])))])[0]
        ds.PixelSpacing = _ds(pixel_spacing)
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = _ds([slope])[0]
        ds.RescaleIntercept = _ds([intercept])[0]
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows = j, columns = i)
        path = folder / f"{prefix}{n + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
