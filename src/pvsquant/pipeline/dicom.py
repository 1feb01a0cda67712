"""DICOM input: one series folder -> one checked 3D NIfTI (with dcm2niix) and its scanner header.

The pipeline reads NIfTI; clinical scans often come as DICOM. This module finds the series in a
folder, checks the chosen one with pydicom before converting it (one stack of parallel slices,
no missing or duplicated slices, one echo), converts it with dcm2niix, checks what dcm2niix says
and writes (exactly one plain NIfTI, no warning that the slices were irregular), and finally
checks the NIfTI's grid against the DICOM slice positions. Anything doubtful raises
:class:`~pvsquant.errors.InputDicomError` naming the folder and the problem: a volume with a
missing slice converts "successfully" to an image with a wrong affine, which would quietly move
every region.

Why both checks: dcm2niix warns about missing slices or mixed orientations but still writes
images (several of them, or one with a suffix such as ``_Eq_1`` or ``_i00007``); its messages are
for people, so they are matched here only as a second line of defence. Our own checks on the
slice positions give the folder, the files and the positions in the message.

File access: pydicom reads DICOM headers only (no pixels); the NIfTI dcm2niix writes is opened
through :func:`pvsquant.io.load_volume`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import DependencyError, InputDicomError, InputFileNotFoundError, InputImageError
from ..io import load_volume

log = logging.getLogger(__name__)

MAX_SEARCH_DEPTH = 5
"""Sub-folder levels searched for DICOM files (as dcm2niix's default ``-d 5``)."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between two slices' direction cosines (ImageOrientationPatient) of one stack."""
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_FRACTION = 0.01
"""A step between neighbouring slices may differ from the smallest step by 0.01 mm + 1 % of it
(DICOM positions are decimal strings: rounding moves them by about 0.001 mm)."""
INPLANE_TOLERANCE_MM = 0.1
"""Largest in-plane shift of a slice relative to the first (a sheared stack: gantry tilt)."""
GEOMETRY_TOLERANCE_MM = 0.1
"""Largest distance between a corner of dcm2niix's NIfTI grid and the grid of the DICOM positions."""
DCM2NIIX_TIMEOUT_S = 600
HEADER_FIELDS = (
    "Manufacturer", "ManufacturersModelName", "MagneticFieldStrength", "SliceThickness",
    "SpacingBetweenSlices", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "SeriesDescription",
    "ProtocolName", "StationName", "SeriesNumber", "SeriesInstanceUID", "MRAcquisitionType", "EchoTime",
    "RepetitionTime", "ConversionSoftwareVersion",
)
"""What :attr:`ConvertedSeries.header` keeps of dcm2niix's BIDS sidecar (BIDS names and units)."""
FATAL_DCM2NIIX_MESSAGES = (
    "catastrophic", "interslice distance varies", "missing images", "may be missing", "missing dicoms", "not stacked",
    "equidistant", "equalize slice distances", "tilt", "positions repeated", "position repeat", "but found",
    "slices skipped", "spatial orientation", "slice direction", "spatial transform", "slice thickness: please",
    "unable to decode", "not large enough", "bogus spatial matrix", "single slice", "partial volume",
)
"""dcm2niix messages (lower case; from its source, nii_dicom_batch.cpp and nii_dicom.cpp) that mean the image it
wrote may have missing or misplaced slices; so does any line starting with "Error". Its other warnings (slice
timing, vendor details) are kept in :attr:`ConvertedSeries.warnings`."""
_STAGING_PREFIX = ".pvsquant-dicom-"


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    """SeriesInstanceUID."""
    number: int | None
    """SeriesNumber (None when absent)."""
    description: str
    files: tuple[Path, ...]
    modality: str = ""
    study_uid: str = ""

    @property
    def n_files(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """e.g. ``series 5 'T2_TSE_AX' (36 files)``."""
        number = "?" if self.number is None else str(self.number)
        description = f" '{self.description}'" if self.description else ""
        return f"series {number}{description} ({self.n_files} file{'' if self.n_files == 1 else 's'})"


@dataclass(frozen=True)
class ConvertedSeries:
    """A DICOM series converted to NIfTI."""

    nifti: Path
    sidecar: Path | None
    """dcm2niix's BIDS sidecar JSON (without patient name or ID)."""
    folder: Path
    series: SeriesInfo
    header: dict[str, Any]
    """The fields of :data:`HEADER_FIELDS` found (sidecar first, then the DICOM header)."""
    scanner: str
    """Manufacturer, model and field strength, e.g. ``Siemens Prisma 3T`` ("unknown" if none is known)."""
    warnings: tuple[str, ...] = field(default=())
    """Doubts that did not stop the conversion (dcm2niix's warnings, instance-number gaps)."""


@dataclass(frozen=True)
class _Frame:
    """One 2D image: a classic file or one frame of a multi-frame file."""

    file: Path
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (row direction, column direction)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    size: tuple[int, int]  # (Rows, Columns)
    echo: str
    instance: int | None


def find_dcm2niix() -> str:
    """The dcm2niix executable: ``$PVSQUANT_DCM2NIIX``, the ``dcm2niix`` package's own binary, the
    ``dcm2niix`` beside this Python, or the one on PATH.

    Raises
    ------
    DependencyError when none is found.
    """
    candidates: list[str] = []
    if os.environ.get("PVSQUANT_DCM2NIIX"):
        candidates.append(os.environ["PVSQUANT_DCM2NIIX"])
    try:
        import dcm2niix  # the PyPI package ships the binary inside the package

        candidates.append(str(dcm2niix.bin_path))
    except (ImportError, AttributeError):
        pass
    candidates.append(str(Path(sys.executable).parent / "dcm2niix"))
    candidates.append(shutil.which("dcm2niix") or "")
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DependencyError(
        "DICOM input needs dcm2niix: pip install dcm2niix (a dependency of pvsquant), or put dcm2niix on "
        f"PATH, or set PVSQUANT_DCM2NIIX to its path (looked for: {', '.join(c for c in candidates if c)}).")


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _walk_files(folder: Path) -> list[Path]:
    """Regular files under ``folder``, down to :data:`MAX_SEARCH_DEPTH` sub-folder levels, sorted."""
    files = []
    for root, dirs, names in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if depth < MAX_SEARCH_DEPTH and not d.startswith(_STAGING_PREFIX))
        files += [Path(root) / n for n in sorted(names) if (Path(root) / n).is_file()]
    return files


def is_dicom_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file (in it or in its sub-folders)."""
    path = Path(path)
    return path.is_dir() and any(_is_dicom_file(f) for f in _walk_files(path))


def _where(folder: Path, role: str) -> str:
    return f"{role} DICOM folder {folder}"


def _read_images(folder: Path, role: str) -> tuple[dict[Path, Dataset], dict[Path, int]]:
    """Headers of the DICOM image files under ``folder``, and the bytes each file holds from its pixel data on.

    Raises InputFileNotFoundError (no folder) and InputDicomError (no files, no DICOM images, a
    DICOM file that cannot be read).
    """
    if not folder.exists():
        raise InputFileNotFoundError(f"{_where(folder, role)} does not exist.")
    if not folder.is_dir():
        raise InputDicomError(f"{role} {folder} is not a folder; expected a folder of DICOM files.")
    files = _walk_files(folder)
    if not files:
        raise InputDicomError(f"{_where(folder, role)} is empty; expected the DICOM files of one series.")
    dicom = [f for f in files if _is_dicom_file(f)]
    if not dicom:
        examples = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise InputDicomError(
            f"{_where(folder, role)} holds {len(files)} file(s) ({examples}) but none is DICOM (no 'DICM' "
            "marker at byte 128); expected the DICOM files of one series, or pass a NIfTI file instead.")
    headers: dict[Path, Dataset] = {}
    pixel_bytes: dict[Path, int] = {}
    for path in dicom:
        try:
            with open(path, "rb") as f:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                pixel_bytes[path] = path.stat().st_size - f.tell()  # pydicom stops at the pixel data's tag
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise InputDicomError(f"{_where(folder, role)}: {path.relative_to(folder)} is a DICOM file that "
                                  f"cannot be read ({exc}); remove it or re-export the series.") from exc
        classes = (ds.get("SOPClassUID"), getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None))
        image_class = any(c and "Image Storage" in pydicom.uid.UID(str(c)).name for c in classes)
        complete = all(k in ds for k in ("Rows", "Columns", "SeriesInstanceUID"))
        if image_class and not complete:
            raise InputDicomError(f"{_where(folder, role)}: {path.relative_to(folder)} is a DICOM image whose header "
                                  "is incomplete (no Rows, Columns or SeriesInstanceUID: a truncated file?); remove it "
                                  "or re-export the series.")
        if complete:  # an image, not DICOMDIR, a report, a presentation state or a vendor's raw data
            headers[path] = ds
    if not headers:
        raise InputDicomError(
            f"{_where(folder, role)} holds {len(dicom)} DICOM file(s) but no image (only DICOMDIR, reports "
            "or other non-image objects); expected the image files of one series.")
    return headers, pixel_bytes


def _group_series(headers: dict[Path, Dataset]) -> list[SeriesInfo]:
    groups: dict[str, list[Path]] = {}
    for path, ds in headers.items():
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append(path)
    series = []
    for uid, paths in groups.items():
        ds = headers[paths[0]]
        number = ds.get("SeriesNumber")
        series.append(SeriesInfo(
            uid=uid,
            number=None if number in (None, "") else int(number),
            description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or "").strip(),
            files=tuple(sorted(paths)),
            modality=str(ds.get("Modality", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        ))
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))


def list_series(folder: str | Path, role: str = "T2") -> list[SeriesInfo]:
    """The DICOM image series under ``folder``, by series number.

    Raises
    ------
    InputFileNotFoundError, InputDicomError (empty folder, no DICOM image).
    """
    return _group_series(_read_images(Path(folder), role)[0])


def _series_option(role: str) -> str:
    return f"--{role.lower()}-series" if role in ("T1", "T2") else "series="


def _listing(series: list[SeriesInfo]) -> str:
    numbers = Counter(s.number for s in series)
    lines = []
    for s in series:
        extra = f" [{s.modality}]" if s.modality and s.modality != "MR" else ""
        uid = f" SeriesInstanceUID {s.uid}" if numbers[s.number] > 1 or s.number is None else ""
        lines.append(f"  {s.label()}{extra}{uid}")
    return "\n".join(lines)


def select_series(series: list[SeriesInfo], choice: str | int | None, folder: Path, role: str = "T2") -> SeriesInfo:
    """The series ``choice`` names (its number, SeriesInstanceUID or exact description), or the only one.

    Raises
    ------
    InputDicomError when several series and no choice, or when ``choice`` matches none or several.
    """
    option = _series_option(role)
    if choice is None or str(choice).strip() == "":
        if len(series) == 1:
            return series[0]
        raise InputDicomError(
            f"{_where(folder, role)} holds {len(series)} series:\n{_listing(series)}\n"
            f"Choose one with {option} NUMBER (or its SeriesInstanceUID), or pass a folder with one series.")
    wanted = str(choice).strip()
    found = [s for s in series if wanted in (str(s.number), s.uid)]
    if not found:
        found = [s for s in series if s.description and s.description.lower() == wanted.lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputDicomError(f"{_where(folder, role)} has no series {wanted!r} ({option}); it holds:\n"
                              f"{_listing(series)}")
    raise InputDicomError(f"{_where(folder, role)}: {option} {wanted!r} matches {len(found)} series "
                          f"(several studies?):\n{_listing(found)}\nPass the SeriesInstanceUID instead.")


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _sub(group: Any, sequence: str, attribute: str) -> Any:
    """``group.<sequence>[0].<attribute>`` of a functional group, or None."""
    if group is None or sequence not in group or not group[sequence].value:
        return None
    return group[sequence].value[0].get(attribute)


def _frames(path: Path, ds: Dataset) -> list[_Frame]:
    """The 2D images of one file: one for a classic file, one per frame for an enhanced (multi-frame) file."""
    size = (int(ds.Rows), int(ds.Columns))
    instance = ds.get("InstanceNumber")
    instance = None if instance in (None, "") else int(instance)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        spacing = _floats(ds.get("PixelSpacing"), 2)
        echo = f"{ds.get('EchoNumbers', '')}/{ds.get('EchoTime', '')}"
        return [_Frame(path, _floats(ds.get("ImagePositionPatient"), 3), _floats(ds.get("ImageOrientationPatient"), 6),
                       None if spacing is None else (spacing[0], spacing[1]), size, echo, instance)]
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    frames = []
    for group in per_frame:
        def pick(sequence: str, attribute: str, group: Any = group) -> Any:
            value = _sub(group, sequence, attribute)
            return _sub(shared, sequence, attribute) if value is None else value

        spacing = _floats(pick("PixelMeasuresSequence", "PixelSpacing"), 2)
        frames.append(_Frame(
            path, _floats(pick("PlanePositionSequence", "ImagePositionPatient"), 3),
            _floats(pick("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            None if spacing is None else (spacing[0], spacing[1]), size,
            str(pick("MREchoSequence", "EffectiveEchoTime") or ""), instance))
    return frames


def _check_sizes(files: tuple[Path, ...], headers: dict[Path, Dataset], pixel_bytes: dict[Path, int],
                 where: str) -> None:
    """Uncompressed files must be large enough to hold their pixels (a copy cut short is not)."""
    for path in files:
        ds = headers[path]
        syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
        if syntax is None or syntax.is_compressed:
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        needed = (int(ds.Rows) * int(ds.Columns) * -(-int(ds.get("BitsAllocated", 16) or 16) // 8)
                  * int(ds.get("SamplesPerPixel", 1) or 1) * frames)
        if pixel_bytes[path] < needed:
            raise InputDicomError(f"{where}: {path.name} is truncated ({max(pixel_bytes[path], 0)} bytes of pixel "
                                  f"data; its {frames} x {ds.Rows} x {ds.Columns} pixels need {needed}); copy the "
                                  "series again.")


def _count_text(counter: Counter) -> str:
    return "; ".join(f"{key}: {n} image{'' if n == 1 else 's'}" for key, n in counter.most_common())


def check_stack(frames: list[_Frame], where: str) -> tuple[np.ndarray, tuple[int, int, int], list[str]]:
    """Check that ``frames`` form one regular stack of parallel slices.

    Returns the grid they define (voxel -> RAS+ mm affine with voxel (column, row, slice) and the
    slices sorted along the slice normal, and its shape) and warnings (instance-number gaps).

    Raises
    ------
    InputDicomError naming ``where`` and the problem: no geometry, several image sizes, pixel
    spacings, orientations or echoes, a single slice, slices sharing a position (several volumes),
    missing slices or irregular spacing, a sheared stack.
    """
    no_geometry = [f for f in frames if f.position is None or f.orientation is None or f.pixel_spacing is None]
    if no_geometry:
        raise InputDicomError(
            f"{where}: {len(no_geometry)} of {len(frames)} images lack ImagePositionPatient, "
            f"ImageOrientationPatient or PixelSpacing (e.g. {no_geometry[0].file.name}): a screen capture or a "
            "non-image series? Expected MR slices with their position in the scanner.")
    for what, key in (("image sizes (rows x columns)", lambda f: "x".join(map(str, f.size))),
                      ("pixel spacings (mm)", lambda f: "x".join(f"{v:.4g}" for v in f.pixel_spacing)),
                      ("echoes (number/TE)", lambda f: f.echo)):
        values = Counter(key(f) for f in frames)
        if len(values) > 1:
            raise InputDicomError(f"{where}: the series mixes {len(values)} {what} ({_count_text(values)}); "
                                  "expected one 3D image. Export each volume as its own series.")
    orientations: list[np.ndarray] = []
    labels = []
    for iop in (cast(np.ndarray, f.orientation) for f in frames):
        match = [i for i, o in enumerate(orientations) if np.abs(o - iop).max() <= ORIENTATION_TOLERANCE]
        if not match:
            orientations.append(iop)
        labels.append(match[0] if match else len(orientations) - 1)
    if len(orientations) > 1:
        counts = Counter(labels)
        text = "; ".join(f"[{', '.join(f'{v:.3f}' for v in orientations[i])}]: {n} image{'' if n == 1 else 's'}"
                         for i, n in counts.most_common())
        raise InputDicomError(
            f"{where}: the slices have {len(orientations)} different orientations (ImageOrientationPatient {text}); "
            "a localizer or a series with several stacks? Expected one stack of parallel slices.")
    iop = orientations[0]
    row_dir, col_dir = iop[:3], iop[3:]
    if max(abs(np.linalg.norm(row_dir) - 1), abs(np.linalg.norm(col_dir) - 1), abs(row_dir @ col_dir)) > 0.01:
        raise InputDicomError(f"{where}: ImageOrientationPatient {iop.round(4).tolist()} is not two perpendicular "
                              "unit vectors.")
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    positions = np.asarray([f.position for f in frames])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth, positions, frames = depth[order], positions[order], [frames[i] for i in order]
    if len(frames) < 2:
        raise InputDicomError(f"{where} holds a single slice; expected a 3D image (a stack of slices).")
    steps = np.diff(depth)
    same = steps < SPACING_TOLERANCE_MM
    if np.any(same):
        per_position = Counter(np.round(depth, 2).tolist())
        repeats = Counter(per_position.values())
        raise InputDicomError(
            f"{where}: {int(same.sum()) + 1} or more images share a slice position "
            f"(e.g. {frames[int(np.argmax(same))].file.name} and {frames[int(np.argmax(same)) + 1].file.name}, at "
            f"{depth[int(np.argmax(same))]:.2f} mm; positions holding n images: "
            f"{', '.join(f'n={k}: {v}' for k, v in sorted(repeats.items()))}). Several volumes in one series "
            "(repeats, phases, a time series) or duplicated files? Expected one image per slice position.")
    step = float(steps.min())
    tolerance = SPACING_TOLERANCE_MM + SPACING_TOLERANCE_FRACTION * step
    irregular = np.flatnonzero(np.abs(steps - step) > tolerance)
    if irregular.size:
        i = int(irregular[0])
        ratio = steps[i] / step
        gap = (f"a gap of {steps[i]:.3f} mm between slices at {depth[i]:.3f} and {depth[i + 1]:.3f} mm "
               f"({frames[i].file.name} and {frames[i + 1].file.name}) where the other slices are {step:.3f} mm apart")
        if abs(ratio - round(ratio)) * step <= tolerance and round(ratio) >= 2:
            n_missing = int(sum(round(s / step) - 1 for s in steps))
            raise InputDicomError(
                f"{where}: slices are missing: {gap}; about {n_missing} of {len(frames) + n_missing} slices are "
                f"missing in {irregular.size} place(s). Copy the complete series (all its files).")
        raise InputDicomError(
            f"{where}: the slice spacing is irregular: {gap} ({irregular.size} irregular step(s): "
            f"{', '.join(f'{s:.3f}' for s in steps[irregular][:5])} mm); expected evenly spaced slices.")
    offsets = positions - positions[0] - np.outer(depth - depth[0], normal)
    shift = float(np.sqrt((offsets**2).sum(axis=1)).max())
    if shift > INPLANE_TOLERANCE_MM:
        raise InputDicomError(
            f"{where}: the slices are shifted in-plane by up to {shift:.2f} mm along the stack (gantry tilt or a "
            "sheared acquisition); expected slices stacked along their normal.")
    warnings = []
    instances = [f.instance for f in frames if f.instance is not None]
    if len(set(instances)) == len(frames) and len(frames) == len({f.file for f in frames}):
        lo, hi = min(instances), max(instances)
        if hi - lo + 1 != len(frames) or lo > 1:
            warnings.append(f"{where}: instance numbers run from {lo} to {hi} for {len(frames)} slices: "
                            "are slices missing at either end of the stack?")
    spacing_i, spacing_j = frames[0].pixel_spacing[1], frames[0].pixel_spacing[0]  # type: ignore[index]
    lps = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, 0] = lps @ row_dir * spacing_i
    affine[:3, 1] = lps @ col_dir * spacing_j
    affine[:3, 2] = lps @ (positions[-1] - positions[0]) / (len(frames) - 1)
    affine[:3, 3] = lps @ positions[0]
    rows, columns = frames[0].size
    return affine, (columns, rows, len(frames)), warnings


def _corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates of the centres of a grid's 8 corner voxels, (8, 3)."""
    idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)],
                   dtype=float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _run_dcm2niix(staging: Path, out: Path, where: str, originals: dict[str, str]) -> tuple[list[str], str]:
    """Run dcm2niix on ``staging``; its warnings and its whole output, naming the ``originals`` of staged files."""
    cmd = [find_dcm2niix(), "-g", "i", "-b", "y", "-ba", "o", "-z", "y", "-f", "converted", "-w", "1",
           "-x", "n", "-i", "n", "-d", "0", "-v", "0", "-o", str(out), str(staging)]
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=DCM2NIIX_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise InputDicomError(f"{where}: dcm2niix did not finish in {DCM2NIIX_TIMEOUT_S} s.") from exc
    except OSError as exc:
        raise DependencyError(f"dcm2niix ({cmd[0]}) could not be started: {exc}") from exc
    output = (proc.stdout or "") + (proc.stderr or "")
    for staged, original in originals.items():
        output = output.replace(staged, original)
    messages = [line.strip() for line in output.splitlines()
                if line.strip() and not line.startswith(("Chris Rorden", "Defaults ignored", "Found ", "Convert ",
                                                         "Conversion required", "::autoBids"))]
    fatal = [m for m in messages
             if m.lower().startswith("error") or any(p in m.lower() for p in FATAL_DCM2NIIX_MESSAGES)]
    if proc.returncode != 0 or fatal:
        said = "; ".join(fatal or messages[-5:]) or "no message"
        raise InputDicomError(f"{where}: dcm2niix could not convert the series into one regular 3D image "
                              f"(exit code {proc.returncode}): {said}")
    return [m for m in messages if m.lower().startswith("warning")], output


def _read_sidecar(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _header_from_dicom(ds: Dataset) -> dict[str, Any]:
    """:data:`HEADER_FIELDS` from the DICOM header itself (for what the sidecar lacks)."""
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return None if value in (None, "") else str(value).strip()

    def number(keyword: str) -> float | None:
        try:
            return float(ds.get(keyword))
        except (TypeError, ValueError):
            return None

    date, time = text("AcquisitionDate") or text("SeriesDate"), text("AcquisitionTime") or text("SeriesTime")
    iso_date = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if date and len(date) >= 8 else None
    iso_time = f"{time[:2]}:{time[2:4]}:{time[4:]}" if time and len(time) >= 6 else None
    return {
        "Manufacturer": text("Manufacturer"), "ManufacturersModelName": text("ManufacturerModelName"),
        "MagneticFieldStrength": number("MagneticFieldStrength"), "SliceThickness": number("SliceThickness"),
        "SpacingBetweenSlices": number("SpacingBetweenSlices"),
        "AcquisitionDateTime": f"{iso_date}T{iso_time}" if iso_date and iso_time else None,
        "AcquisitionDate": iso_date, "AcquisitionTime": iso_time,
        "SeriesDescription": text("SeriesDescription"), "ProtocolName": text("ProtocolName"),
        "StationName": text("StationName"), "SeriesNumber": text("SeriesNumber"),
        "SeriesInstanceUID": text("SeriesInstanceUID"), "MRAcquisitionType": text("MRAcquisitionType"),
    }


def scanner_name(header: dict[str, Any]) -> str:
    """Manufacturer, model and field strength, e.g. ``Siemens Prisma 3T``; "unknown" when none is known."""
    parts = [str(header[k]).strip() for k in ("Manufacturer", "ManufacturersModelName") if header.get(k)]
    try:
        tesla = float(header.get("MagneticFieldStrength") or 0)
    except (TypeError, ValueError):
        tesla = 0.0
    if tesla > 100:  # some old headers give gauss
        tesla /= 10000
    if tesla > 0:
        parts.append(f"{tesla:g}T")
    return " ".join(parts) or "unknown"


def _stage(files: tuple[Path, ...], staging: Path) -> dict[str, str]:
    """Links (or copies) to exactly the chosen series' files, so dcm2niix sees nothing else; staged -> original."""
    originals = {}
    for n, path in enumerate(files):
        target = staging / f"{n:06d}.dcm"
        try:
            target.symlink_to(path.resolve())
        except OSError:
            shutil.copy2(path, target)
        originals[str(target)] = str(path)
    return originals


def dicom_to_nifti(folder: str | Path, work_dir: str | Path, series: str | int | None = None,
                   role: str = "T2") -> ConvertedSeries:
    """Convert one DICOM series under ``folder`` to ``work_dir/<role>_from_dicom.nii.gz`` (+ ``.json``).

    Parameters
    ----------
    folder : a folder of DICOM files (searched down to :data:`MAX_SEARCH_DEPTH` sub-folder levels).
    work_dir : where the NIfTI and its sidecar go (created; an earlier conversion of ``role`` is replaced).
    series : the series to convert (SeriesNumber, SeriesInstanceUID or exact SeriesDescription); needed
        when the folder holds several.
    role : "T1" or "T2": names the files and the messages (``--t2-series``).

    Raises
    ------
    InputFileNotFoundError : no such folder.
    InputDicomError : no DICOM image, several series and no choice, an unknown choice, or a series
        that does not make one regular 3D image (missing or duplicated slices, mixed orientations,
        several echoes, dcm2niix warnings about the slices, dcm2niix's grid off the DICOM positions).
    DependencyError : no dcm2niix.
    """
    folder, work_dir = Path(folder), Path(work_dir)
    headers, pixel_bytes = _read_images(folder, role)
    chosen = select_series(_group_series(headers), series, folder, role)
    where = f"{_where(folder, role)}, {chosen.label()}"
    _check_sizes(chosen.files, headers, pixel_bytes, where)
    frames = [frame for path in chosen.files for frame in _frames(path, headers[path])]
    expected_affine, expected_shape, warnings = check_stack(frames, where)
    exe = find_dcm2niix()  # before any file is written

    safe_role = re.sub(r"[^A-Za-z0-9_-]+", "_", role) or "image"
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=work_dir))
    try:
        staging, out = scratch / "dicom", scratch / "nifti"
        staging.mkdir()
        out.mkdir()
        originals = _stage(chosen.files, staging)
        log.info("converting %s with %s", where, exe)
        dcm_warnings, output = _run_dcm2niix(staging, out, where, originals)
        images = sorted(p.name for p in out.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if images != ["converted.nii.gz"]:
            raise InputDicomError(
                f"{where}: dcm2niix made {len(images)} image(s) ({', '.join(images) or 'none'}) instead of one: "
                "the series does not form one regular 3D image (suffixes: _Eq resampled to equal spacing, "
                f"_Tilt gantry tilt, _i instance, _e echo). dcm2niix said: {output.strip()[-600:]}")
        try:
            volume = load_volume(out / "converted.nii.gz", role)
        except InputImageError as exc:
            raise InputDicomError(f"{where}: the converted image is unusable: {exc}") from exc
        found = _corners(volume.affine, volume.shape)
        wanted = _corners(expected_affine, expected_shape)
        error_mm = float(np.sqrt(((found[:, None] - wanted[None]) ** 2).sum(-1)).min(axis=1).max())
        if sorted(volume.shape) != sorted(expected_shape) or error_mm > GEOMETRY_TOLERANCE_MM:
            raise InputDicomError(
                f"{where}: dcm2niix's image (shape {volume.shape}) does not match the DICOM slice positions "
                f"(shape {expected_shape}, corners up to {error_mm:.2f} mm apart); expected the same grid.")
        nifti, sidecar_path = work_dir / f"{safe_role}_from_dicom.nii.gz", work_dir / f"{safe_role}_from_dicom.json"
        os.replace(out / "converted.nii.gz", nifti)
        sidecar_path.unlink(missing_ok=True)  # an earlier conversion's
        if (out / "converted.json").is_file():
            os.replace(out / "converted.json", sidecar_path)
        sidecar = sidecar_path if sidecar_path.is_file() else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    from_json = _read_sidecar(sidecar)
    from_dicom = _header_from_dicom(headers[chosen.files[0]])
    header = {k: from_json.get(k, from_dicom.get(k)) for k in HEADER_FIELDS}
    header = {k: v for k, v in header.items() if v not in (None, "")}
    all_warnings = tuple(warnings + [f"{where}: dcm2niix: {w}" for w in dcm_warnings])
    for w in warnings:
        log.warning("%s", w)
    for w in dcm_warnings:
        log.debug("%s: dcm2niix: %s", where, w)
    return ConvertedSeries(nifti=nifti, sidecar=sidecar, folder=folder, series=chosen, header=header,
                           scanner=scanner_name(header), warnings=all_warnings)


def resolve_input(path: str | Path, work_dir: str | Path, series: str | int | None = None,
                  role: str = "T2") -> tuple[Path, ConvertedSeries | None]:
    """An input as given on the command line: a NIfTI file is returned as it is; a folder is taken as DICOM
    and converted by :func:`dicom_to_nifti` into ``work_dir``.

    Raises
    ------
    InputDicomError : ``series`` given for a file; the errors of :func:`dicom_to_nifti` for a folder.
    """
    path = Path(path)
    if path.is_dir():
        converted = dicom_to_nifti(path, work_dir, series, role)
        return converted.nifti, converted
    if series is not None:
        raise InputDicomError(f"{_series_option(role)} {series} chooses a series in a DICOM folder, but the {role} "
                              f"input {path} is not a folder.")
    return path, None
