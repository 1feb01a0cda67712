"""CSF spaces next to the counting regions, kept out of the count.

The anatomy labels the lateral ventricles, but not the third ventricle, the cisterns or the
temporal horns (they are folded into the ventricles or dropped, :mod:`pvsquant.pipeline.anatomy`).
On a clinical T2 these are as bright as PVS, and at 3-7 mm slices their partial-volume rim lines
every region that touches them: the GP-Unet's detections along the third ventricle, the posterior
midline and the ambient cistern (basal ganglia), the temporal horn (hippocampi) and the
cisterns around the midbrain (``docs/csf_exclusion_example.png``). PVS are thin (<= 3 mm wide)
and not connected to these wide fluid spaces, so what is removed is:

Grid and intensities
    The regions' 1 mm working grid, the T2 divided by its median over the white-matter labels (as
    :mod:`pvsquant.pipeline.lesions`). The CSF level is the median of that ratio over the lateral
    ventricles eroded by 1 mm (their partial-volume rim left out).
Bright
    Ratio at least ``1 + fraction * (CSF level - 1)``: half-way from white matter to CSF.
CSF bodies
    Bright voxels that hold a ball of ``ball_diameter_mm`` (4 mm; a PVS, <= 3 mm wide, holds none:
    the lesion stage's rule), plus the bright voxels on a ventricle or CSF label.
Removed
    The bodies grown by ``margin_mm`` (1.5 mm: the rim that a 3-7 mm slice blurs around them),
    from every region. qc.json's ``csf`` says how much each region lost.

Settings in :class:`~pvsquant.types.CsfSettings`; their effect on the counts is in
``benchmarks/results_counting.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import labels as fs
from ..grids import dilate_ball, erode_ball, resample_labels
from ..types import Anatomy, QCFlag, RigidTransform, Settings, Volume
from .lesions import ratio_image
from .regions import Regions, remove_from_regions


@dataclass(frozen=True)
class CsfSpaces:
    """The removed zone (CSF bodies and their rim) on the regions' working grid."""

    zone: Volume
    csf_level: float
    """CSF / white-matter ratio of the T2 (lateral ventricles); nan when not measured."""
    threshold: float
    """The ratio above which a voxel is bright; nan when not measured."""
    flags: tuple[QCFlag, ...] = ()


def find_csf_spaces(t2: Volume, anatomy: Anatomy, transform: RigidTransform, regions: Regions,
                    settings: Settings = Settings()) -> CsfSpaces:
    """CSF bodies next to the regions and their rim, on ``regions.work``'s grid (module docstring)."""
    s = settings.csf
    work = regions.work
    affine, shape, spacing = work.affine, work.shape, work.spacing_mm
    nothing = work.with_array(np.zeros(shape, bool))
    if not s.enabled:
        return CsfSpaces(nothing, float("nan"), float("nan"))
    labels = resample_labels(anatomy.labels, affine, shape, target_to_source_world=transform.t2_to_t1,
                             smooth=False).array
    wm = np.isin(labels, fs.WM)
    ventricles = erode_ball(np.isin(labels, fs.LATERAL_VENTRICLE), 1.0, spacing)
    if not wm.any() or not ventricles.any():
        flag = QCFlag("csf_not_measured", "no white-matter or lateral-ventricle label on the T2: the CSF spaces "
                      "next to the regions (third ventricle, cisterns) are not taken out of them", "warn")
        return CsfSpaces(nothing, float("nan"), float("nan"), (flag,))
    ratio, _ = ratio_image(t2, affine, shape, wm)
    csf_level = float(np.median(ratio[ventricles]))
    threshold = 1.0 + s.fraction * (csf_level - 1.0)
    flags: tuple[QCFlag, ...] = ()
    if csf_level <= 1.0:
        flags = (QCFlag("csf_not_bright", f"the lateral ventricles are not brighter than white matter on the T2 "
                        f"(ratio {csf_level:.2f}); is it a T2? No CSF space is taken out of the regions", "warn"),)
        return CsfSpaces(nothing, csf_level, threshold, flags)
    bright = ratio >= threshold
    radius = s.ball_diameter_mm / 2.0
    wide = dilate_ball(erode_ball(bright, radius, spacing), radius, spacing) & bright
    bodies = wide | (bright & np.isin(labels, fs.CSF_CODES))
    zone = dilate_ball(bodies, s.margin_mm, spacing) if bodies.any() else bodies
    return CsfSpaces(work.with_array(zone), csf_level, threshold, flags)


def exclude_csf(regions: Regions, csf: CsfSpaces) -> tuple[Regions, dict[str, float]]:
    """The regions without the CSF zone, and the volume (ml) each region lost; ``volumes_ml`` of
    the result are the volumes counted in."""
    return remove_from_regions(regions, csf.zone, "CSF zone")


def csf_record(csf: CsfSpaces, excluded_ml: dict[str, float], settings: Settings = Settings()) -> dict[str, Any]:
    """qc.json's "csf": settings, the measured CSF level and the volume removed from each region."""
    def rounded(value: float) -> float | None:
        return None if not np.isfinite(value) else round(value, 3)

    return {
        "enabled": settings.csf.enabled,
        "csf_to_wm_ratio": rounded(csf.csf_level),
        "threshold_ratio": rounded(csf.threshold),
        "excluded_ml": {k: round(v, 3) for k, v in excluded_ml.items()},
        "ball_diameter_mm": settings.csf.ball_diameter_mm,
        "margin_mm": settings.csf.margin_mm,
    }
