"""Regions in which PVS are counted, defined on a 1 mm working grid aligned with the T2.

Definitions (codes of ``regions.nii.gz``)
-----------------------------------------
1 centrum_semiovale
    Cerebral white matter (incl. WM lesions) in a slab perpendicular to the head's
    superior axis, from ``cso_offset_mm`` (10 mm) to ``cso_offset_mm + cso_slab_thickness_mm``
    (10-30 mm) above the top of the caudate nuclei. Heights are measured along the head's
    superior axis in world coordinates (from the atlas registration; world +S when the
    labels come from the user), never along voxel rows of an oblique scan.
2 basal_ganglia
    Caudate, putamen, pallidum and thalamus, plus the internal capsule between them:
    the white-matter voxels that a morphological closing (ball of
    ``basal_ganglia_closing_mm``) of those four structures adds.
3 hippocampi
    Left and right hippocampus.
4 midbrain
    FreeSurfer code 173, or the top ``midbrain_height_mm`` of the brainstem (16).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .. import labels as fs
from ..grids import ball, close_ball, resample, resample_labels, reslice_affine, voxel_indices, world_coordinates
from ..types import REGION_CODES, Anatomy, QCFlag, RigidTransform, Settings, Volume, default_qc_limits

EXPECTED_VOLUME_ML = {name: default_qc_limits()[f"volume:{name}"][0] for name in REGION_CODES}
"""Plausible adult volumes (ml); outside them a QC flag is raised, not an error."""


@dataclass(frozen=True)
class Regions:
    """Region codes on the working grid, with what was measured while making them."""

    work: Volume
    superior_axis_t2: np.ndarray
    caudate_top_mm: float | None
    volumes_ml: dict[str, float]
    flags: tuple[QCFlag, ...]
    in_fov: dict[str, float] = field(default_factory=dict)
    """Fraction of each (non-empty) region inside the T2's field of view, before the cut."""
    brain_above_caudate_mm: float | None = None
    """Height of the highest white matter above the caudate's top: room for the CSO slab."""


def work_grid(t2: Volume, spacing_mm: float, anatomy: Anatomy | None = None,
              transform: RigidTransform | None = None, margin_mm: float = 6.0
              ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Isotropic grid with the T2's axes: the T2's field of view, or the bounding box of the
    labelled brain when ``anatomy`` (and the T2->T1 ``transform``) are given."""
    affine, shape = reslice_affine(t2.affine, t2.shape, (spacing_mm,) * 3)
    if anatomy is None or not np.any(anatomy.labels.array):
        return affine, shape
    idx = np.argwhere(anatomy.labels.array > 0)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world_t1 = world_coordinates(anatomy.labels.affine, corners)
    t1_to_t2 = np.linalg.inv(transform.t2_to_t1) if transform is not None else np.eye(4)
    world_t2 = world_t1 @ t1_to_t2[:3, :3].T + t1_to_t2[:3, 3]
    vox = voxel_indices(affine, world_t2)
    margin = margin_mm / spacing_mm + 0.5 * anatomy.labels.spacing_mm.max() / spacing_mm
    # Not clipped to the T2: the part of the brain beyond its field of view is measured (and
    # then dropped by make_regions) so that a cut region can be flagged.
    start = np.floor(vox.min(axis=0) - margin).astype(int)
    stop = np.maximum(np.ceil(vox.max(axis=0) + margin).astype(int) + 1, start + 1)
    cut = np.array(affine)
    cut[:3, 3] = world_coordinates(affine, start[None])[0]
    return cut, tuple(int(n) for n in stop - start)  # type: ignore[return-value]


def index_function(row: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``row[0] * i + row[1] * j + row[2] * k + row[3]`` for every voxel (i, j, k) of ``shape``."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape[:3])
    return (i[:, None, None] * row[0] + j[None, :, None] * row[1] + k[None, None, :] * row[2]
            + row[3]).astype(np.float32)


def heights_mm(affine: np.ndarray, shape: tuple[int, ...], axis: np.ndarray) -> np.ndarray:
    """Height of every voxel centre along the unit vector ``axis`` (world mm)."""
    return index_function(np.asarray(axis) @ np.asarray(affine)[:3, :], shape)


def inside_field_of_view(affine: np.ndarray, shape: tuple[int, ...], image: Volume) -> np.ndarray:
    """Boolean map on the grid (affine, shape): voxel centres inside ``image``'s field of view."""
    m = np.linalg.inv(image.affine) @ affine
    inside = np.ones(tuple(shape[:3]), bool)
    for axis in range(3):
        coord = index_function(m[axis], shape)  # voxel coordinate along the image's axis
        inside &= (coord >= -0.5) & (coord <= image.shape[axis] - 0.5)
    return inside


def basal_ganglia_mask(labels: np.ndarray, spacing_mm: np.ndarray, closing_mm: float) -> np.ndarray:
    """Deep grey nuclei plus the white matter (internal capsule) that closing them adds."""
    nuclei = np.isin(labels, fs.CAUDATE + fs.PUTAMEN + fs.PALLIDUM + fs.THALAMUS)
    if not nuclei.any():
        return nuclei
    pad = max(ball(closing_mm, spacing_mm).shape)
    closed = close_ball(np.pad(nuclei, pad), closing_mm, spacing_mm)[pad:-pad, pad:-pad, pad:-pad]
    capsule = closed & np.isin(labels, fs.WM)
    return nuclei | capsule


def make_regions(anatomy: Anatomy, transform: RigidTransform, t2: Volume, settings: Settings = Settings()
                 ) -> Regions:
    """Counting regions on a T2-aligned working grid (see module docstring)."""
    affine, shape = work_grid(t2, settings.work_spacing_mm, anatomy, transform)
    labels = resample_labels(anatomy.labels, affine, shape, target_to_source_world=transform.t2_to_t1).array
    spacing = np.full(3, settings.work_spacing_mm)

    rot = transform.t2_to_t1[:3, :3]
    superior = rot.T @ np.asarray(anatomy.superior_axis, dtype=float)
    superior /= np.linalg.norm(superior)

    regions = np.zeros(shape, dtype=np.uint8)
    flags: list[QCFlag] = []

    caudate = np.isin(labels, fs.CAUDATE)
    caudate_top, brain_above = None, None
    if caudate.any():
        height = heights_mm(affine, shape, superior)
        caudate_top = float(height[caudate].max())
        wm = np.isin(labels, fs.WM)
        brain_above = float(height[wm].max()) - caudate_top if wm.any() else None
        low = caudate_top + settings.cso_offset_mm
        high = low + settings.cso_slab_thickness_mm
        cso = np.isin(labels, (*fs.WM, fs.WM_LESION)) & (height >= low) & (height < high)
        regions[cso] = REGION_CODES["centrum_semiovale"]
        del height
    regions[basal_ganglia_mask(labels, spacing, settings.basal_ganglia_closing_mm)] = REGION_CODES["basal_ganglia"]
    regions[np.isin(labels, fs.HIPPOCAMPUS)] = REGION_CODES["hippocampi"]
    regions[labels == fs.MIDBRAIN] = REGION_CODES["midbrain"]

    # The T1 may cover more than the T2: what lies outside the T2's field of view is dropped.
    vox_ml = settings.work_spacing_mm ** 3 / 1000.0
    outside = ~inside_field_of_view(affine, shape, t2)
    in_fov: dict[str, float] = {}
    for name, code in REGION_CODES.items():
        region = regions == code
        cut = int((region & outside).sum())
        if region.any():
            in_fov[name] = 1.0 - cut / int(region.sum())
        if cut > 0.05 * max(int(region.sum()), 1):
            flags.append(QCFlag(f"region_cut_by_fov_{name}", f"{100 * cut / region.sum():.0f}% of region {name} "
                                "lies outside the T2's field of view and is dropped"))
    regions[outside] = 0
    volumes = {name: float((regions == code).sum() * vox_ml) for name, code in REGION_CODES.items()}
    for name, (lo, hi) in EXPECTED_VOLUME_ML.items():
        v = volumes[name]
        if v == 0:
            flags.append(QCFlag(f"region_missing_{name}", f"region {name} is empty; it will not be counted", "warn"))
        elif not lo <= v <= hi:
            flags.append(QCFlag(f"region_volume_{name}",
                                f"region {name} measures {v:.1f} ml; expected {lo:g}-{hi:g} ml", "warn"))
    return Regions(Volume(regions, affine), superior, caudate_top, volumes, tuple(flags), in_fov, brain_above)


def regions_on_grid(regions: Regions, affine: np.ndarray, shape: tuple[int, ...]) -> Volume:
    """Region codes (nearest neighbour) on another grid of the T2 world, e.g. the T2 itself."""
    out = resample(regions.work, affine, shape, order=0)
    return out.with_array(out.array.astype(np.uint8))


def remove_from_regions(regions: Regions, mask: Volume, what: str) -> tuple[Regions, dict[str, float]]:
    """The regions without ``mask``'s voxels (on their working grid), and the volume (ml) each region
    lost; ``volumes_ml`` of the result are the volumes counted in. ``what`` names the mask in the error."""
    work = regions.work
    if mask.shape != work.shape or not np.allclose(mask.affine, work.affine):
        raise ValueError(f"the {what} is not on the regions' working grid")
    removed = mask.array.astype(bool, copy=False)
    if not removed.any():
        return regions, {name: 0.0 for name in REGION_CODES}
    vox_ml = work.voxel_volume_ml
    array = work.array.copy()
    lost = {name: float(((array == code) & removed).sum() * vox_ml) for name, code in REGION_CODES.items()}
    array[removed] = 0
    volumes = {name: float((array == code).sum() * vox_ml) for name, code in REGION_CODES.items()}
    return dataclasses.replace(regions, work=work.with_array(array), volumes_ml=volumes), lost
