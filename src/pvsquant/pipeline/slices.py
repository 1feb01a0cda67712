"""Slice-thickness matching: a T2 made to look as if acquired with thicker slices, before counting.

How many PVS a network (or a rater) sees depends on the slice thickness: a PVS a few mm long
fills a 3 mm slice more than a 4 mm one, and stands out more from the tissue averaged with it.
One patient scanned with two protocols (patient01 of the shared data, 3.3 mm and 4.0 mm
slices): the GP-Unet counted 16.8 PVS in the basal ganglia on 3.3 mm and 7.5 on 4.0 mm; 7.4
once the 3.3 mm scan was resliced to 4.0 mm (``benchmarks/results_counting.md``). A cohort
that mixes protocols therefore compares like with like only on slices of one thickness.

:func:`match_slice_thickness` averages the T2 along its slice axis over a window of the target
thickness, on the T2's own grid (every output keeps its grid): each slice becomes the mean of
the linearly interpolated image over ``thickness_mm`` centred on it, the profile of a thicker
slice. A T2 whose slices are already as thick or thicker is left as it is (and flagged: slices
cannot be made thinner). Off by default (``Settings.match_slice_thickness_mm``); ``pvsquant
bids ... participant --match-slice-thickness auto`` sets it to the thickest T2 of the subjects it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..types import QCFlag, Volume

# Below this ratio of the largest to the smallest spacing a volume counts as isotropic: its slice
# axis is then the array axis closest to the head's superior direction (axial slices).
ISOTROPIC_RATIO = 1.5


@dataclass
class MatchedSlices:
    """The T2 used for counting and what was done to it."""

    t2: Volume
    axis: int
    native_mm: float
    target_mm: float | None
    applied: bool
    flags: list[QCFlag]

    def record(self) -> dict[str, Any]:
        """qc.json's ``slices``."""
        return {"target_mm": self.target_mm, "native_mm": round(self.native_mm, 3), "slice_axis": self.axis,
                "applied": self.applied}


def slice_axis(volume: Volume) -> int:
    """The array axis of the slices: the one of the largest spacing, or on a near-isotropic volume
    the one closest to the world's superior direction."""
    return slice_axis_of(volume.affine)


def slice_axis_of(affine: np.ndarray) -> int:
    """:func:`slice_axis` from an image's affine alone (e.g. a header)."""
    matrix = np.asarray(affine, float)[:3, :3]
    spacing = np.sqrt((matrix**2).sum(axis=0))
    if spacing.max() >= ISOTROPIC_RATIO * spacing.min():
        return int(np.argmax(spacing))
    return int(np.argmax(np.abs(matrix[2] / spacing)))


def slice_thickness_of(affine: np.ndarray) -> float:
    """The slice thickness (mm) of an image with this affine, along :func:`slice_axis_of`."""
    matrix = np.asarray(affine, float)[:3, :3]
    return float(np.sqrt((matrix[:, slice_axis_of(affine)] ** 2).sum()))


def _tent_integral(x: np.ndarray) -> np.ndarray:
    """Integral of the linear-interpolation tent max(0, 1 - |t|) from -inf to ``x``."""
    x = np.clip(x, -1.0, 1.0)
    return np.where(x < 0, (x + 1) ** 2 / 2, 1 - (1 - x) ** 2 / 2)


def thickening_kernel(ratio: float) -> np.ndarray:
    """Weights over neighbouring slices that average a linearly interpolated profile over a window of
    ``ratio`` slices centred on each slice (sum 1, symmetric)."""
    if ratio <= 1.0:
        return np.ones(1)
    half = ratio / 2
    reach = int(np.ceil(half))
    offsets = np.arange(-reach, reach + 1, dtype=float)
    weights = _tent_integral(half - offsets) - _tent_integral(-half - offsets)
    weights = weights[weights > 1e-12]
    return weights / weights.sum()


def match_slice_thickness(t2: Volume, thickness_mm: float | None) -> MatchedSlices:
    """The T2 with slices ``thickness_mm`` thick (see the module docstring); ``None``: unchanged."""
    axis = slice_axis(t2)
    native = float(t2.spacing_mm[axis])
    if thickness_mm is None:
        return MatchedSlices(t2, axis, native, None, False, [])
    if not np.isfinite(thickness_mm) or thickness_mm <= 0:
        raise ValueError(f"match_slice_thickness_mm must be a positive number of mm, got {thickness_mm}")
    if native >= thickness_mm:
        flags = [] if np.isclose(native, thickness_mm, rtol=0.02) else [QCFlag(
            "slices_thicker_than_matched",
            f"the T2's slices are {native:.2f} mm, thicker than the {thickness_mm:g} mm it was to be matched to: "
            "counts are not comparable with scans matched to that thickness")]
        return MatchedSlices(t2, axis, native, thickness_mm, False, flags)
    weights = thickening_kernel(thickness_mm / native)
    array = ndimage.convolve1d(t2.array.astype(np.float32), weights.astype(np.float32), axis=axis, mode="nearest")
    return MatchedSlices(t2.with_array(array), axis, native, thickness_mm, True, [])
