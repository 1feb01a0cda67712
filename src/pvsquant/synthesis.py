"""Synthetic images painted from label maps (SynthSeg-style), with clinical acquisition.

Used by the segmentation benchmark (T1-like images from the SynthSeg training label maps)
and, later, to make the networks' training data. Every random function takes an ``rng``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .grids import resample
from .registration import rigid_from_parameters
from .types import Volume

CSF_CODES = (4, 5, 14, 15, 24, 43, 44, 72)
WM_CODES = (2, 41, 7, 46, 28, 60, 85)
CORTEX_CODES = (3, 42, 8, 47)
DEEP_GM_CODES = (11, 50, 12, 51, 17, 53, 18, 54, 26, 58)
LESION_CODES = (25, 57, 77, 99)


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
    lab = labels.array.astype(np.int32)
    codes = np.unique(lab)
    table = t1_intensities(codes, rng)
    lut = np.zeros(int(codes.max()) + 1, np.float32)
    for c, v in table.items():
        lut[c] = v
    image = lut[lab]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, lab.shape).astype(np.float32), 1.0)
    image *= 1.0 + rng.uniform(0.03, 0.08) * texture / (texture.std() + 1e-6)
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 0.9) / labels.spacing_mm)
    image *= bias_field(lab.shape, rng)
    return labels.with_array(np.clip(image, 0, None).astype(np.float32))


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
