"""Synthetic images painted from label maps (SynthSeg-style), with clinical acquisition.

Used by the segmentation benchmark (T1-like images from the SynthSeg training label maps)
and, later, to make the networks' training data. Every random function takes an ``rng``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..grids import resample
from ..labels import AMYGDALA, CORTEX_CODES, CSF_CODES, DEEP_GM_CODES, HIPPOCAMPUS, LESION_CODES, WM_CODES
from ..pipeline.registration import rigid_from_parameters
from ..types import Volume


def t1_intensities(codes: np.ndarray, rng: np.random.Generator) -> dict[int, float]:
    """Random T1-weighted intensity per label code, keeping tissue order CSF < GM < WM."""
    wm = rng.uniform(0.75, 0.95)
    gm = rng.uniform(0.45, 0.62)
    csf = rng.uniform(0.05, 0.22)
    table: dict[int, float] = {0: 0.0}
    for c in codes.tolist():
        if c == 0:
            continue
        if c in WM_CODES:
            v = wm
        elif c in CORTEX_CODES:
            v = gm * rng.uniform(0.95, 1.05)
        elif c in DEEP_GM_CODES:
            v = gm * rng.uniform(1.0, 1.12)
        elif c in (13, 52):  # pallidum: between GM and WM
            v = gm + rng.uniform(0.5, 0.8) * (wm - gm)
        elif c in (10, 49):  # thalamus
            v = gm + rng.uniform(0.3, 0.55) * (wm - gm)
        elif c == 16:  # brainstem
            v = gm + rng.uniform(0.5, 0.8) * (wm - gm)
        elif c in CSF_CODES:
            v = csf
        elif c in LESION_CODES:
            v = rng.uniform(csf + 0.1, gm)
        else:  # vessels, choroid plexus, extra-cerebral tissues: anything
            v = rng.uniform(0.0, 1.0)
        table[int(c)] = float(v)
    return table


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.25) -> np.ndarray:
    """Smooth multiplicative field around 1 (max deviation about ``strength``)."""
    coarse = rng.normal(0.0, 1.0, (4, 4, 4))
    field = ndimage.zoom(coarse, [s / 4 for s in shape], order=3)[: shape[0], : shape[1], : shape[2]]
    field = field / (np.abs(field).max() + 1e-6) * strength
    return np.exp(field).astype(np.float32)


def paint_t1(labels: Volume, rng: np.random.Generator) -> Volume:
    """A T1-like image of a label map: per-label intensity and texture, blur, bias field."""
    return _paint_contrast(labels, t1_intensities, rng)


def _paint_contrast(labels: Volume, intensities: Any, rng: np.random.Generator) -> Volume:
    """A label map painted by an intensity table maker, with texture, blur and bias field."""
    lab = labels.array.astype(np.int32)
    image = paint(lab, intensities(np.unique(lab), rng), rng, texture=(0.03, 0.08))
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 0.9) / labels.spacing_mm)
    image *= bias_field(lab.shape, rng)
    return labels.with_array(np.clip(image, 0, None).astype(np.float32))


def paint_t2(labels: Volume, rng: np.random.Generator) -> Volume:
    """A T2-like image of a label map (as :func:`paint_t1`, with T2 contrast: CSF bright)."""
    return _paint_contrast(labels, t2_intensities, rng)


def clinical_grid(volume: Volume, rng: np.random.Generator, in_plane_mm: tuple[float, float] = (0.4, 0.9),
                  slice_mm: tuple[float, float] = (3.0, 7.0), max_tilt_deg: float = 10.0
                  ) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """A random axial clinical grid (LPS-stored, tilted) covering ``volume``'s field of view.

    Returns (affine, shape, slice thickness in mm).
    """
    pixel = rng.uniform(*in_plane_mm)
    thick = rng.uniform(*slice_mm)
    tilt = rigid_from_parameters(tuple(rng.uniform(-max_tilt_deg, max_tilt_deg, 3)), (0.0, 0.0, 0.0))
    centre = volume.affine[:3, :3] @ ((np.asarray(volume.shape) - 1) / 2) + volume.affine[:3, 3]
    extent = np.asarray(volume.shape) * volume.spacing_mm
    size_mm = np.full(3, float(extent.max()) * 0.85)
    spacing = np.array([pixel, pixel, thick])
    shape = tuple(int(n) for n in np.ceil(size_mm / spacing))
    affine = np.eye(4)
    affine[:3, :3] = tilt[:3, :3] @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine, shape, thick  # type: ignore[return-value]


def acquire(image: Volume, affine: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator,
            noise: tuple[float, float] = (0.01, 0.04)) -> Volume:
    """Sample ``image`` on a clinical grid: slice profile and in-plane blur, then Rician-like noise."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    # Blur in the source grid along the directions that the target samples coarsely.
    directions = affine[:3, :3] / spacing
    src_dirs = image.affine[:3, :3] / image.spacing_mm
    sigma_world = spacing / 2.355
    # per source axis: project each target axis's blur onto the source axes
    sigma_src = np.sqrt(((np.abs(src_dirs.T @ directions) * sigma_world) ** 2).sum(axis=1)) / image.spacing_mm
    blurred = image.with_array(ndimage.gaussian_filter(image.array, sigma_src))
    out = resample(blurred, affine, shape, order=1).array
    sd = rng.uniform(*noise)
    out = np.sqrt((out + rng.normal(0, sd, out.shape)) ** 2 + rng.normal(0, sd, out.shape) ** 2)
    return Volume((out * 1000).astype(np.float32), affine)


# --- T2 contrast, PVS and their look-alikes (training data of the counting networks) ---

HIPPOCAMPUS_CODES = HIPPOCAMPUS
AMYGDALA_CODES = AMYGDALA


def t2_intensities(codes: np.ndarray, rng: np.random.Generator) -> dict[int, float]:
    """Random T2-weighted intensity per label code: WM < deep GM <= GM < CSF, CSF about 1."""
    csf = rng.uniform(0.85, 1.0)
    wm = rng.uniform(0.18, 0.38)
    gm = wm + rng.uniform(0.08, 0.25)
    table: dict[int, float] = {0: 0.0}
    for c in codes.tolist():
        if c == 0:
            continue
        if c in WM_CODES:
            v = wm
        elif c in CORTEX_CODES or c in HIPPOCAMPUS_CODES or c in AMYGDALA_CODES:
            v = gm * rng.uniform(0.95, 1.1)
        elif c in (13, 52):  # pallidum: iron makes it dark on T2
            v = wm * rng.uniform(0.8, 1.05)
        elif c in (12, 51, 10, 49, 11, 50, 26, 58):  # putamen, thalamus, caudate, accumbens
            v = wm + rng.uniform(0.3, 0.9) * (gm - wm)
        elif c in (16, 173, 28, 60):  # brainstem, ventral DC
            v = wm * rng.uniform(1.0, 1.3)
        elif c in CSF_CODES:
            v = csf * rng.uniform(0.95, 1.0)
        elif c in LESION_CODES:
            v = wm + rng.uniform(0.4, 0.8) * (csf - wm)
        else:  # extra-cerebral tissue: mostly outside the region masks
            v = rng.uniform(0.0, 0.8)
        table[int(c)] = float(v)
    return table


def paint(labels: np.ndarray, table: dict[int, float], rng: np.random.Generator,
          texture: tuple[float, float] = (0.02, 0.08)) -> np.ndarray:
    """Image of a label array from an intensity table, with smooth multiplicative texture."""
    lab = labels.astype(np.int32)
    lut = np.zeros(int(lab.max()) + 1, np.float32)
    for c, v in table.items():
        if c < lut.size:
            lut[c] = v
    image = lut[lab]
    tex = ndimage.gaussian_filter(rng.normal(0, 1, lab.shape).astype(np.float32), 1.0)
    image *= 1.0 + rng.uniform(*texture) * tex / (float(tex.std()) + 1e-6)
    return image


def _local_points(affine: np.ndarray, shape: tuple[int, ...], lo_mm: np.ndarray, hi_mm: np.ndarray,
                  supersample: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxels of a grid whose sub-sample points may fall in a world box; their sub-sample world points.

    Returns (voxel slices, points of shape (nx, ny, nz, sx, sy, sz, 3)) or None when outside."""
    corners = np.array([[a, b, c] for a in (lo_mm[0], hi_mm[0]) for b in (lo_mm[1], hi_mm[1])
                        for c in (lo_mm[2], hi_mm[2])])
    inv = np.linalg.inv(affine)
    vox = corners @ inv[:3, :3].T + inv[:3, 3]
    start = np.maximum(np.floor(vox.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(vox.max(axis=0)).astype(int) + 2, np.asarray(shape[:3]))
    if np.any(stop <= start):
        return None
    sub = [(np.arange(s) + 0.5) / s - 0.5 for s in supersample]
    axes = [np.add.outer(np.arange(a, b), offsets) for a, b, offsets in zip(start, stop, sub, strict=False)]
    ii, jj, kk = np.meshgrid(*[ax.ravel() for ax in axes], indexing="ij")
    idx = np.stack([ii, jj, kk], axis=-1)
    pts = idx @ affine[:3, :3].T + affine[:3, 3]
    n = stop - start
    pts = pts.reshape(n[0], supersample[0], n[1], supersample[1], n[2], supersample[2], 3)
    pts = pts.transpose(0, 2, 4, 1, 3, 5, 6)
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=False)), pts


def _sub_spacing(affine: np.ndarray, supersample: tuple[int, int, int]) -> float:
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return float(np.min(spacing / np.asarray(supersample)))


@dataclass(frozen=True)
class Tube:
    """A straight PVS segment (a capsule): centre and unit direction in world mm."""

    centre: np.ndarray
    direction: np.ndarray
    length_mm: float
    diameter_mm: float

    @property
    def ends(self) -> tuple[np.ndarray, np.ndarray]:
        half = 0.5 * max(self.length_mm - self.diameter_mm, 0.0) * self.direction
        return self.centre - half, self.centre + half


def tube_occupancy(tubes: list[Tube], affine: np.ndarray, shape: tuple[int, ...],
                   supersample: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """Fraction of each voxel covered by the tubes (partial volume), from sub-sampled distances.

    A thick-slice grid needs ``supersample`` along its slices (e.g. (2, 2, 8)) so that a thin
    tube inside a 4 mm voxel covers the right fraction of it.
    """
    occupancy = np.zeros(tuple(shape[:3]), np.float32)
    h = _sub_spacing(affine, supersample)
    for tube in tubes:
        a, b = tube.ends
        r = tube.diameter_mm / 2.0
        found = _local_points(affine, shape, np.minimum(a, b) - r - h, np.maximum(a, b) + r + h, supersample)
        if found is None:
            continue
        sl, pts = found
        ab = b - a
        denom = float(ab @ ab)
        t = np.clip(((pts - a) @ ab) / denom, 0.0, 1.0) if denom > 0 else np.zeros(pts.shape[:-1])
        dist = np.linalg.norm(pts - (a + t[..., None] * ab), axis=-1)
        inside = np.clip((r - dist) / h + 0.5, 0.0, 1.0).mean(axis=(3, 4, 5))
        occupancy[sl] = np.maximum(occupancy[sl], inside)
    return occupancy


def blob_occupancy(centre: np.ndarray, semi_axes_mm: np.ndarray, rotation: np.ndarray, affine: np.ndarray,
                   shape: tuple[int, ...], supersample: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """Fraction of each voxel inside an ellipsoid (lesion, lacune)."""
    occupancy = np.zeros(tuple(shape[:3]), np.float32)
    h = _sub_spacing(affine, supersample)
    reach = float(np.max(semi_axes_mm)) + h
    found = _local_points(affine, shape, centre - reach, centre + reach, supersample)
    if found is None:
        return occupancy
    sl, pts = found
    local = (pts - centre) @ rotation  # coordinates on the ellipsoid's axes
    rho = np.linalg.norm(local / semi_axes_mm, axis=-1)
    occupancy[sl] = np.clip((1.0 - rho) * float(np.min(semi_axes_mm)) / h + 0.5, 0.0, 1.0).mean(axis=(3, 4, 5))
    return occupancy


def random_rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """A random 3x3 rotation of at most ``max_deg`` about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def perturb_direction(direction: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``direction`` plus isotropic noise of size ``spread`` (0: unchanged, >2: about uniform)."""
    d = np.asarray(direction, dtype=float) / (np.linalg.norm(direction) + 1e-9) + rng.normal(0, spread, 3)
    return d / (np.linalg.norm(d) + 1e-9)
