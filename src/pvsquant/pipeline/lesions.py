"""White-matter lesions and lacunes, found so that they are kept out of the PVS count.

MS and small-vessel-disease lesions are T2-bright (FLAIR-bright, often T1-dark); lacunes are
CSF-like cavities of 3-15 mm. Both are T2-bright like PVS and would be counted as PVS. PVS are thin
tubes (<= 3 mm wide), T2-bright and FLAIR-dark. The rules below use only those differences:

Grid
    The regions' 1 mm working grid (``Regions.work``: the T2's axes, isotropic, over the labelled
    brain). Its voxels are isotropic, so "a ball fits" means the same in every direction whatever the
    T2's slice thickness, and the exclusion acts on the very voxels the regions are made of.
    ``lesions.nii.gz`` is this mask put on the T2 grid (nearest neighbour).
Reference intensities
    Each image is divided by its median over the white-matter labels (2, 41): lesions are a minority of
    them, so the median is normal-appearing white matter. No bias-field correction beyond the scanner's.
Where
    Lesion voxels lie in or within 1 mm of white matter, the deep grey nuclei, the brainstem or a
    lesion label (77), never on a CSF or ventricle label; a core's centre lies ``csf_clearance_mm``
    from those labels.
T2 shape rule (every path; lesions *and* lacunes)
    *core*: the voxels above ``t2_core_ratio`` in which a ball of ``ball_diameter_mm`` (4 mm) fits
    (a morphological opening); a thin tube holds no such ball. The lesion is the core plus the voxels
    above ``t2_extent_ratio`` within ``grow_mm`` of it. With a T1, every lesion voxel is also below
    ``t1_max_ratio`` of the T1's white matter (lesions are T1-dark or -grey; CSF-dark lacunes pass).
FLAIR rule (with ``--flair``)
    FLAIR above ``flair_ratio`` and T2 above ``t2_extent_ratio``, in clusters of at least
    ``flair_min_volume_mm3``: lesions too small for the ball. PVS and lacunes are FLAIR-dark; the T2
    shape rule still finds the lacunes.

Thresholds: see :class:`~pvsquant.types.LesionSettings`; the T2 and T1 ratios were read off the
open_ms_data MS patients 07, 19 and 26 (gold-standard lesions against eroded T1-bright white matter),
the ball from the PVS width (as the Frangi lesion rule), the FLAIR ratio from the usual contrast of
clinical FLAIR (grey matter 1.1-1.25 x white matter) for want of FLAIR scans with lesion masks here.
``benchmarks/lesions.py`` measures the result (``benchmarks/results_lesions.md``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .. import labels as fs
from ..grids import dilate_ball, erode_ball, resample, resample_labels
from ..types import REGION_CODES, Anatomy, LesionSettings, QCFlag, RigidTransform, Settings, Volume
from .regions import Regions, remove_from_regions
from .registration import register_t1_to_t2

LESION_TISSUE = (*fs.WM, fs.WM_LESION, *fs.CAUDATE, *fs.PUTAMEN, *fs.PALLIDUM, *fs.THALAMUS, fs.BRAINSTEM,
                 fs.MIDBRAIN)
"""Labels a lesion's core may lie in: white matter and the deep structures where lacunes occur."""
NEXT_TO_MM = 1.0
"""Lesion voxels may lie this far outside ``LESION_TISSUE`` (juxtacortical rims, label edges)."""


@dataclass(frozen=True)
class Lesions:
    """Lesion mask on the regions' working grid and how it was made."""

    mask: Volume
    """Boolean, on ``Regions.work``'s grid."""
    method: str
    """'flair+t2+t1', 'flair+t2', 't2+t1', 't2' (the images used) or 'off'."""
    references: dict[str, float]
    """Median of each image over the white-matter labels (the unit of the ratios)."""
    flair_transform: RigidTransform | None = None
    """FLAIR -> T2 registration (``t2_to_t1`` maps T2 world points to FLAIR world points)."""
    flags: tuple[QCFlag, ...] = ()

    @property
    def volume_ml(self) -> float:
        return float(self.mask.array.sum()) * abs(float(np.linalg.det(self.mask.affine[:3, :3]))) / 1000.0


def register_flair(flair: Volume, t2: Volume, settings: Settings = Settings()) -> RigidTransform:
    """Rigid FLAIR -> T2 registration: the T1 -> T2 code (mutual information, so any contrast)."""
    return register_t1_to_t2(flair, t2, settings)


def ratio_image(volume: Volume, affine: np.ndarray, shape: tuple[int, ...], wm: np.ndarray,
                 to_source: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``volume`` on the grid, divided by its median over ``wm`` (inside its field of view)."""
    image = np.clip(resample(volume, affine, shape, order=1, target_to_source_world=to_source).array, 0, None)
    values = image[wm & (image > 0)]
    reference = float(np.median(values)) if values.size else 0.0
    return (image / reference if reference > 0 else np.zeros_like(image)).astype(np.float32), reference


def shape_rule(t2_ratio: np.ndarray, where: np.ndarray, centres_allowed: np.ndarray,
               spacing_mm: np.ndarray, s: LesionSettings, t1_ratio: np.ndarray | None = None) -> np.ndarray:
    """T2-bright voxels that hold a ball of ``s.ball_diameter_mm`` (lesions, lacunes), with their rim.

    ``where``: voxels a lesion may occupy; ``centres_allowed``: where a ball's centre may lie."""
    dark = np.ones(t2_ratio.shape, bool) if t1_ratio is None or s.t1_max_ratio is None \
        else t1_ratio < s.t1_max_ratio
    bright = (t2_ratio > s.t2_core_ratio) & dark & where
    radius = s.ball_diameter_mm / 2.0
    centres = erode_ball(bright, radius, spacing_mm) & centres_allowed
    if not centres.any():
        return centres
    core = dilate_ball(centres, radius, spacing_mm) & bright
    rim = dilate_ball(core, s.grow_mm, spacing_mm) & (t2_ratio > s.t2_extent_ratio) & dark & where
    return core | rim


def flair_rule(flair_ratio: np.ndarray, t2_ratio: np.ndarray, where: np.ndarray, spacing_mm: np.ndarray,
               s: LesionSettings) -> np.ndarray:
    """FLAIR- and T2-bright clusters of at least ``s.flair_min_volume_mm3``."""
    bright = (flair_ratio > s.flair_ratio) & (t2_ratio > s.t2_extent_ratio) & where
    components, n = ndimage.label(bright)
    if n == 0:
        return bright
    sizes = np.bincount(components.ravel())[1:] * float(np.prod(spacing_mm))
    keep = np.concatenate([[False], sizes >= s.flair_min_volume_mm3])
    return keep[components]


def segment_lesions(t2: Volume, anatomy: Anatomy, transform: RigidTransform, regions: Regions,
                    settings: Settings = Settings(), t1: Volume | None = None, flair: Volume | None = None,
                    flair_transform: RigidTransform | None = None) -> Lesions:
    """White-matter lesions and lacunes on the regions' working grid (see the module docstring).

    Parameters
    ----------
    t2 : the T2 (its world is the working grid's).
    anatomy, transform : labels on the T1 grid and the T2 -> T1 map.
    regions : gives the working grid.
    t1 : the T1 (None: the T2 alone, or a T2-only run).
    flair, flair_transform : the FLAIR and its T2 -> FLAIR map (:func:`register_flair`; computed here
        when None).
    """
    s = settings.lesions
    affine, shape = regions.work.affine, regions.work.shape
    spacing = regions.work.spacing_mm
    if not s.enabled:
        return Lesions(regions.work.with_array(np.zeros(shape, bool)), "off", {})
    labels = resample_labels(anatomy.labels, affine, shape, target_to_source_world=transform.t2_to_t1,
                             smooth=False).array
    wm = np.isin(labels, fs.WM)
    flags: list[QCFlag] = []
    if not wm.any():
        flags.append(QCFlag("lesions_no_white_matter", "no white-matter label on the T2: lesions not searched"))
        return Lesions(regions.work.with_array(np.zeros(shape, bool)), "none", {}, flags=tuple(flags))
    t2_ratio, t2_ref = ratio_image(t2, affine, shape, wm)
    references = {"t2": t2_ref}
    t1_ratio = None
    if t1 is not None:
        t1_ratio, references["t1"] = ratio_image(t1, affine, shape, wm, transform.t2_to_t1)
    csf = np.isin(labels, fs.CSF_CODES)
    tissue = np.isin(labels, LESION_TISSUE)
    where = dilate_ball(tissue, NEXT_TO_MM, spacing) & ~csf
    centres_allowed = tissue & ~dilate_ball(csf, s.csf_clearance_mm, spacing)
    mask = shape_rule(t2_ratio, where, centres_allowed, spacing, s, t1_ratio)
    method = "t2" if t1 is None else "t2+t1"
    if flair is not None:
        if flair_transform is None:
            flair_transform = register_flair(flair, t2, settings)
        limit = settings.qc_limits["registration_mi"][0][0]
        if -flair_transform.score < limit:
            flags.append(QCFlag("flair_registration_poor", f"FLAIR-T2 mutual information {-flair_transform.score:.2f}"
                                f" is below {limit:g}; check lesions.nii.gz on the T2"))
        flair_ratio, references["flair"] = ratio_image(flair, affine, shape, wm, flair_transform.t2_to_t1)
        mask |= flair_rule(flair_ratio, t2_ratio, where, spacing, s)
        method = "flair+" + method
    return Lesions(regions.work.with_array(mask), method, references, flair_transform, tuple(flags))


def exclude_lesions(regions: Regions, lesions: Lesions, settings: Settings = Settings()
                    ) -> tuple[Regions, dict[str, float]]:
    """The regions without the lesions dilated by ``settings.lesions.margin_mm``, and the volume (ml)
    each region lost. ``volumes_ml`` of the result are the volumes counted in."""
    if not lesions.mask.array.any():
        return regions, {name: 0.0 for name in REGION_CODES}
    work = regions.work
    if lesions.mask.shape != work.shape or not np.allclose(lesions.mask.affine, work.affine):
        raise ValueError("the lesion mask is not on the regions' working grid")
    excluded = dilate_ball(lesions.mask.array, settings.lesions.margin_mm, work.spacing_mm)
    return remove_from_regions(regions, work.with_array(excluded), "lesion mask")


def lesions_into_anatomy(anatomy: Anatomy, lesions: Lesions, transform: RigidTransform) -> Anatomy:
    """The anatomy with code 77 (WM-hypointensities) where a lesion lies on a white-matter label (T1 grid)."""
    if not lesions.mask.array.any():
        return anatomy
    labels = anatomy.labels
    on_t1 = resample(lesions.mask.with_array(lesions.mask.array.astype(np.float32)), labels.affine, labels.shape,
                     order=1, target_to_source_world=np.linalg.inv(transform.t2_to_t1)).array >= 0.5
    array = labels.array.copy()
    array[on_t1 & np.isin(array, fs.WM)] = fs.WM_LESION
    return dataclasses.replace(anatomy, labels=labels.with_array(array))


def lesions_on_grid(lesions: Lesions, affine: np.ndarray, shape: tuple[int, ...]) -> Volume:
    """The lesion mask (0/1, nearest neighbour) on another grid of the T2 world, e.g. the T2 itself."""
    out = resample(lesions.mask.with_array(lesions.mask.array.astype(np.uint8)), affine, shape, order=0)
    return out.with_array(out.array.astype(np.uint8))


def lesion_record(lesions: Lesions, excluded_ml: dict[str, float], settings: Settings = Settings()
                  ) -> dict[str, Any]:
    """qc.json's "lesions": method, total volume, volume removed from each region, margin."""
    record: dict[str, Any] = {
        "method": lesions.method,
        "volume_ml": round(lesions.volume_ml, 3),
        "excluded_ml": {k: round(v, 3) for k, v in excluded_ml.items()},
        "margin_mm": settings.lesions.margin_mm,
        "white_matter_medians": {k: round(v, 3) for k, v in lesions.references.items()},
    }
    if lesions.flair_transform is not None:
        t = lesions.flair_transform
        record["flair_registration"] = {"mattes_mi": round(t.score, 4), "rotation_deg": round(t.rotation_deg, 3),
                                        "translation_mm": round(t.translation_mm, 3),
                                        "t2_to_flair_world": np.round(t.t2_to_t1, 6).tolist()}
    return record
