"""Reading and writing images: the only module that opens image files.

Inputs are checked once, here, with messages that name the file and the problem.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from .errors import InputFileNotFoundError, InputImageError, InputPairError, InputTableError, OutputExistsError
from .types import Volume

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
MAX_VOXEL_SIZE_MM = 10.0
MIN_EXTENT_MM = 60.0
"""An image whose field of view is shorter than this along any axis cannot hold a brain."""
MIN_OVERLAP_FRACTION = 0.3


def _has_image_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def load_volume(path: str | Path, role: str = "image", labels: bool = False) -> Volume:
    """Load and check a 3D NIfTI/MGH image.

    Parameters
    ----------
    path : the file.
    role : how the file is named in messages ("T1", "T2", "label map").
    labels : if True the data are kept as integers and the intensity checks that make
        no sense for a label map (constant image) are relaxed to "not empty".

    Raises
    ------
    InputFileNotFoundError, InputImageError
    """
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(f"{role} file {path} does not exist.")
    if path.is_dir():
        raise InputImageError(f"{role} {path} is a directory; expected a NIfTI file (.nii or .nii.gz).")
    if not _has_image_suffix(path):
        raise InputImageError(
            f"{role} {path.name} is not a NIfTI file: expected a name ending in "
            f"{', '.join(IMAGE_SUFFIXES)}."
        )
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputImageError(f"{role} {path.name} is truncated or not valid gzip ({exc}).") from exc
    except nib.filebasedimages.ImageFileError as exc:
        raise InputImageError(f"{role} {path.name} is not a readable NIfTI/MGH image ({exc}).") from exc
    except (OSError, ValueError) as exc:
        raise InputImageError(f"{role} {path.name} could not be read: {exc}.") from exc

    if data.ndim == 4:
        if data.shape[3] != 1:
            raise InputImageError(
                f"{role} {path.name} has shape {data.shape}; expected 3D (one volume), "
                f"found {data.shape[3]} volumes."
            )
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(f"{role} {path.name} has shape {data.shape}; expected 3D.")

    zooms = _stored_voxel_size(img, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    column_norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 0) or np.any(column_norms <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputImageError(
            f"{role} {path.name} has voxel size {_fmt(zooms)} mm; "
            "expected positive voxel sizes and an invertible affine."
        )
    if np.any(column_norms > MAX_VOXEL_SIZE_MM) or np.any(zooms > MAX_VOXEL_SIZE_MM):
        raise InputImageError(
            f"{role} {path.name} has voxel size {_fmt(np.maximum(column_norms, zooms))} mm; "
            f"expected at most {MAX_VOXEL_SIZE_MM:g} mm along every axis."
        )
    extent = np.asarray(data.shape) * column_norms
    if np.any(extent < MIN_EXTENT_MM):
        raise InputImageError(
            f"{role} {path.name} covers only {_fmt(extent)} mm; an image must "
            f"span at least {MIN_EXTENT_MM:g} mm along every axis to hold a brain."
        )

    if labels:
        if not np.issubdtype(data.dtype, np.integer):
            data = np.asarray(data, dtype=float)
            if not np.all(np.isfinite(data)):
                raise InputImageError(f"{role} {path.name} contains NaN or Inf values.")
            if np.any(np.abs(data - np.round(data)) > 1e-3):
                raise InputImageError(f"{role} {path.name} holds non-integer values; expected a label map.")
        array = np.asarray(np.round(data), dtype=np.int32)
        if not np.any(array):
            raise InputImageError(f"{role} {path.name} is empty (all labels are 0).")
        return Volume(array, affine, path)

    array = np.asarray(data, dtype=np.float32)
    n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if n_bad:
        raise InputImageError(f"{role} {path.name} contains {n_bad} NaN or Inf voxels.")
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        what = "empty (all zeros)" if hi == 0 else f"constant (every voxel is {hi:g})"
        raise InputImageError(f"{role} {path.name} is {what}; expected an MR image.")
    return Volume(array, affine, path)


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def _stored_voxel_size(img: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """Voxel size as written in the file (nibabel silently replaces 0 or negative pixdim)."""
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if isinstance(img.header, nib.Nifti1Header):
        with nib.openers.ImageOpener(str(path)) as fobj:
            raw = type(img.header).from_fileobj(fobj, check=False)
        zooms = np.asarray(raw["pixdim"][1:4], dtype=float)
    return zooms


def fov_overlap_fraction(a: Volume, b: Volume, n: int = 12) -> float:
    """Fraction of points on a regular lattice of ``b``'s field of view that lie inside ``a``'s."""
    axes = [-0.5 + (np.arange(n) + 0.5) * s / n for s in b.shape]  # centres of n x n x n cells
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    world = grid @ b.affine[:3, :3].T + b.affine[:3, 3]
    vox = (world - a.affine[:3, 3]) @ np.linalg.inv(a.affine[:3, :3]).T
    inside = np.all((vox >= -0.5) & (vox <= np.asarray(a.shape) - 0.5), axis=1)
    return float(inside.mean())


def check_pair_overlap(t1: Volume, t2: Volume) -> float:
    """Fraction of the T2's field of view inside the T1's; raise if they barely meet."""
    fraction = fov_overlap_fraction(t1, t2)
    if fraction < MIN_OVERLAP_FRACTION:
        raise InputPairError(
            f"T1 {_name(t1)} and T2 {_name(t2)} do not overlap in world space: only "
            f"{100 * fraction:.0f}% of the T2's field of view lies inside the T1's (expected "
            f"at least {100 * MIN_OVERLAP_FRACTION:.0f}%). Are they from the same patient and visit, "
            "and are their headers intact?"
        )
    return fraction


def _name(volume: Volume) -> str:
    return volume.source.name if volume.source is not None else "<array>"


def save_volume(volume: Volume, path: str | Path, dtype: Any = None) -> Path:
    """Write a volume as NIfTI (qform and sform set to its affine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    img = nib.Nifti1Image(array, volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    nib.save(img, str(path))
    return path


class DeferredWrites:
    """Image writes held back and done on one background thread from :meth:`start` on, while the
    caller draws its figures (single-threaded, so a core is free; gzip releases the GIL).
    :meth:`wait` (or leaving the ``with`` block) waits for them and re-raises the first error, so
    no output is lost or half-written unnoticed. A caller passing none writes at once.

    >>> with DeferredWrites() as writes:
    ...     writes.add(print, "written")
    ...     writes.start()
    written
    """

    def __init__(self) -> None:
        self._jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(*args)`` (e.g. :func:`save_volume`); before :meth:`start` only."""
        if self._thread is not None:
            raise RuntimeError("writes were started: add them before start()")
        self._jobs.append((function, args))

    def start(self) -> None:
        def work() -> None:
            for function, args in self._jobs:
                try:
                    function(*args)
                except BaseException as error:  # handed to wait()
                    self._error = error
                    return

        if self._thread is None:
            self._thread = threading.Thread(target=work, name="pvsquant-writes", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        self.start()
        assert self._thread is not None
        self._thread.join()
        self._jobs = []
        if self._error is not None:
            raise self._error

    def __enter__(self) -> DeferredWrites:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.wait()
        elif self._thread is not None:
            self._thread.join()  # the caller's error wins; the writes must still end before the folder goes


def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


@contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir`` that becomes ``out_dir`` on success.

    On any exception the temporary folder is removed and ``out_dir`` is left as it was,
    so a failed run never leaves a half-written output.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"Output directory {out_dir} exists; use --overwrite to replace it.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) that replaces ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is the output folder of a finished ``pvsquant run`` (it holds qc.json)."""
    return (Path(path) / "qc.json").is_file()


def format_cell(value: Any) -> str:
    """One table cell as text: floats to 4 significant digits, NaN and None as n/a, booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_tsv(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str], path: str | Path,
              comments: tuple[str, ...] = ()) -> Path:
    """A tab-separated table with a header line (atomically); cells by :func:`format_cell`, strings as
    they are (so a caller fixes its own number format by passing text). ``comments`` go first, as
    ``# `` lines, which :func:`read_tsv` skips."""
    path = Path(path)
    lines = [f"# {c}" for c in comments] + ["\t".join(columns)]
    lines += ["\t".join(format_cell(row.get(c, "")) for c in columns) for row in rows]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def read_tsv(path: str | Path, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    """Rows of a tab-separated table with a header; ``#`` lines are comments.

    Raises InputFileNotFoundError when missing and InputTableError, naming ``what`` and the file,
    when empty or lacking a ``required`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"{what} {path} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()
             and not line.startswith("#")]
    if not lines:
        raise InputTableError(f"{what} {path} is empty")
    reader = csv.DictReader(lines, delimiter="\t")
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        raise InputTableError(f"{what} {path}: missing column(s) {', '.join(missing)}; found {', '.join(header)} "
                              "(tab-separated, with a header line)")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
