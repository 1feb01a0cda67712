"""Exceptions raised by pvsquant.

Every exception derives from :class:`PvsError` and from the matching built-in, so
callers can catch either. Messages name the file, the problem, and what was expected.
"""
from __future__ import annotations


class PvsError(Exception):
    """Base class of every error pvsquant raises on purpose."""


class InputImageError(PvsError, ValueError):
    """An input image is unreadable or unusable (wrong shape, NaN, absurd voxel size...)."""


class InputDicomError(InputImageError):
    """A DICOM folder does not give one trustworthy 3D image (no DICOM, several series, missing slices...)."""


class InputFileNotFoundError(PvsError, FileNotFoundError):
    """An input file does not exist."""


class InputPairError(PvsError, ValueError):
    """The T1 and T2 images cannot be used together (e.g. no overlap in world space)."""


class OutputExistsError(PvsError, FileExistsError):
    """The output directory exists and overwriting was not requested."""


class SegmentationError(PvsError, RuntimeError):
    """Anatomical segmentation failed or produced an unusable result."""


class DependencyError(PvsError, RuntimeError):
    """An optional external tool (e.g. SAMSEG) is needed but not installed."""


class InputTableError(PvsError, ValueError):
    """A table (visual scores, counts) is unreadable or lacks what is needed."""


class InputSettingsError(PvsError, ValueError):
    """A settings file (``--settings``) is unreadable, or names an unknown setting or a wrong value."""


class InputDatasetError(PvsError, ValueError):
    """A dataset (BIDS) or an output folder for it is unusable: missing files, wrong layout, bad place."""
