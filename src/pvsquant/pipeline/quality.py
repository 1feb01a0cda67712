"""Quality gates: every stage judges its own output with a measured value and a threshold.

Each check gives ``pass``, ``warn`` or ``fail``; the subject's status is the worst of them. A
failed subject still gets its outputs and report (with the reason), but cohort statistics leave
it out. The thresholds are ``Settings.qc_limits`` (name -> pass range, warn range); beyond the warn
range is ``fail``. They were calibrated on the shared clinical scans and deliberately broken
versions of them (``benchmarks/quality_gates.py``, ``benchmarks/results_quality_gates.md``).

Stages and what they measure:

input
    slice thickness of the T1 and T2; signal-to-noise of the T2 (brain median over the noise of
    Immerkaer's Laplacian estimate); a ghosting index (mean T2 more than 30 mm from the brain,
    beyond the scalp, over the brain median); the contrasts that say the T2 is a T2 (CSF brighter than white
    matter) and the T1 a T1 (white matter brighter than cortex and CSF).
registration
    mutual information at the solution; the fraction of the T1's brain that lands inside the T2's
    head; how far the registration had to move from the headers.
anatomy and regions
    region volumes against adult ranges; the fraction of each region inside the T2's field of
    view; left/right asymmetry of the hippocampi, caudate and putamen; brain above the caudate
    (room for the centrum semiovale slab).
counting
    PVS per ml against the densities the networks were trained on (0.05-3 per ml); the share of
    the GP-Unet's attention lying outside the region.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .. import labels as fs
from ..grids import distance_sq_to_zero, resample_labels, within
from ..types import Anatomy, QCFlag, RigidTransform, Settings, Volume

STATUS_ORDER = {"pass": 0, "warn": 1, "fail": 2}
GHOST_DISTANCE_MM = 30.0
"""The ghosting index looks this far from the brain: beyond the scalp, where only ghosts and noise are."""
OPEN = 1e9
"""A range bound that is no bound (JSON has no infinity)."""


@dataclass(frozen=True)
class QCCheck:
    """One measured value of one stage, judged against its ranges."""

    stage: str
    name: str
    value: float | None
    """The measurement; None when it could not be made (then it is not judged)."""
    pass_range: tuple[float, float]
    warn_range: tuple[float, float]
    what: str
    """What the value is, for people."""

    @property
    def status(self) -> str:
        if self.value is None or not math.isfinite(self.value):
            return "pass"
        if self.pass_range[0] <= self.value <= self.pass_range[1]:
            return "pass"
        if self.warn_range[0] <= self.value <= self.warn_range[1]:
            return "warn"
        return "fail"

    @property
    def message(self) -> str:
        lo, hi = self.pass_range
        expected = f">= {lo:g}" if hi >= OPEN else f"<= {hi:g}" if lo <= -OPEN else f"{lo:g}-{hi:g}"
        value = "n/a" if self.value is None else f"{self.value:.3g}"
        return f"{self.what}: {value} (expected {expected})"

    def to_json(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return None if abs(x) >= OPEN else x

        return {"stage": self.stage, "name": self.name, "value": None if self.value is None else round(self.value, 4),
                "status": self.status, "pass_range": [finite(v) for v in self.pass_range],
                "warn_range": [finite(v) for v in self.warn_range], "message": self.message}


def check(name: str, stage: str, value: float | None, what: str, settings: Settings) -> QCCheck:
    """A check whose ranges come from ``settings.qc_limits[name]`` (or its family, e.g. 'volume')."""
    key = name if name in settings.qc_limits else name.split(":")[0]
    pass_range, warn_range = settings.qc_limits[key]
    return QCCheck(stage, name, None if value is None else float(value), tuple(pass_range),  # type: ignore[arg-type]
                   tuple(warn_range), what)  # type: ignore[arg-type]


def subject_status(checks: list[QCCheck], flags: Sequence[QCFlag] = ()) -> str:
    """The worst status of the checks and of the other flags (a flag is a 'warn' unless it says 'fail')."""
    statuses = [c.status for c in checks] + [f.severity if f.severity in STATUS_ORDER else "warn" for f in flags]
    return max(statuses, key=STATUS_ORDER.__getitem__, default="pass")


# --- measurements ---

def head_mask(image: np.ndarray) -> np.ndarray:
    """The head (foreground) of an MR image: above 10% of its 99.5th percentile, holes filled,
    largest component."""
    level = 0.1 * float(np.percentile(image, 99.5))
    mask = ndimage.binary_closing(image > level, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, range(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    return np.asarray(mask, bool)


def noise_sigma(image: np.ndarray, slice_axis: int, where: np.ndarray) -> float:
    """Immerkaer's noise estimate in the slices' plane, averaged over ``where``."""
    kernel2d = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], float)
    kernel = np.expand_dims(kernel2d, slice_axis)
    response = np.abs(ndimage.convolve(image.astype(np.float64), kernel, mode="nearest"))
    inner = ndimage.binary_erosion(where, iterations=1)
    if not inner.any():
        return float("nan")
    return float(math.sqrt(math.pi / 2) * response[inner].mean() / 6.0)


def labels_on(volume: Volume, anatomy: Anatomy, transform: RigidTransform | None) -> np.ndarray:
    """The anatomy's labels (nearest neighbour) on the grid of ``volume`` (the T2 when ``transform``
    maps T2 to T1; the T1 itself when None)."""
    if transform is None:
        return anatomy.labels.array
    return resample_labels(anatomy.labels, volume.affine, volume.shape, target_to_source_world=transform.t2_to_t1,
                           smooth=False).array


def _median(image: np.ndarray, mask: np.ndarray) -> float | None:
    return float(np.median(image[mask])) if mask.sum() >= 50 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


@dataclass(frozen=True)
class T2Masks:
    """What several gates measure on the T2 grid, made once: the anatomy's labels and the head."""

    labels: np.ndarray
    head: np.ndarray


def t2_masks(t2: Volume, anatomy: Anatomy, transform: RigidTransform) -> T2Masks:
    return T2Masks(labels_on(t2, anatomy, transform), head_mask(t2.array.astype(np.float32)))


def input_checks(t1: Volume, t2: Volume, anatomy: Anatomy, transform: RigidTransform,
                 settings: Settings, t2_only: bool = False, masks: T2Masks | None = None) -> list[QCCheck]:
    """Slice thickness, SNR, ghosting and contrast of the inputs (``t2_only``: no T1 checks); ``masks``
    from :func:`t2_masks` (made here when not given)."""
    checks = [] if t2_only else [check("t1_slice_mm", "input", float(t1.spacing_mm.max()),
                                       "T1 slice thickness (mm)", settings)]
    checks.append(check("t2_slice_mm", "input", float(t2.spacing_mm.max()), "T2 slice thickness (mm)", settings))
    image = t2.array.astype(np.float32)
    masks = masks or t2_masks(t2, anatomy, transform)
    on_t2, head = masks.labels, masks.head
    brain = on_t2 > 0
    brain_median = _median(image, brain & head)
    sigma = noise_sigma(image, int(np.argmax(t2.spacing_mm)), brain & head)
    snr = _ratio(brain_median, sigma) if math.isfinite(sigma) else None
    checks.append(check("t2_snr", "input", snr, "T2 signal-to-noise (brain median / Immerkaer noise)", settings))
    away = ~within(distance_sq_to_zero(~brain, t2.spacing_mm), GHOST_DISTANCE_MM)
    ghost = _ratio(float(image[away].mean()), brain_median) if away.sum() >= 1000 else None
    checks.append(check("t2_ghosting", "input", ghost, f"T2 ghosting index (mean beyond {GHOST_DISTANCE_MM:g} mm "
                        "of the brain / brain median)", settings))
    csf_t2 = _median(image, np.isin(on_t2, fs.LATERAL_VENTRICLE))
    wm_t2 = _median(image, np.isin(on_t2, fs.WM))
    checks.append(check("t2_csf_to_wm", "input", _ratio(csf_t2, wm_t2),
                        "T2 contrast: ventricles / white matter (a T2 shows CSF bright)", settings))
    if t2_only:
        return checks
    labels = anatomy.labels.array
    t1_image = t1.array.astype(np.float32)
    wm_t1 = _median(t1_image, np.isin(labels, fs.WM))
    checks.append(check("t1_wm_to_cortex", "input", _ratio(wm_t1, _median(t1_image, np.isin(labels, fs.CORTEX))),
                        "T1 contrast: white matter / cortex (a T1 shows white matter brighter)", settings))
    checks.append(check("t1_wm_to_csf", "input",
                        _ratio(wm_t1, _median(t1_image, np.isin(labels, fs.LATERAL_VENTRICLE))),
                        "T1 contrast: white matter / ventricles (a T1 shows CSF dark)", settings))
    return checks


def registration_checks(t2: Volume, anatomy: Anatomy, transform: RigidTransform,
                        settings: Settings, masks: T2Masks | None = None) -> list[QCCheck]:
    """Similarity at the solution, the T1's brain inside the T2's head, the correction of the headers."""
    masks = masks or t2_masks(t2, anatomy, transform)
    on_t2, head = masks.labels > 0, masks.head
    inside = float((on_t2 & head).sum() / on_t2.sum()) if on_t2.sum() else None
    return [
        check("registration_mi", "registration", -transform.score, "T1-T2 mutual information at the solution",
              settings),
        check("brain_in_head", "registration", inside,
              "fraction of the T1's brain (registered) inside the T2's head", settings),
        check("header_rotation_deg", "registration", transform.rotation_deg,
              "rotation the registration added to the headers (degrees)", settings),
        check("header_translation_mm", "registration", transform.translation_mm,
              "translation the registration added to the headers (mm)", settings),
    ]


def anatomy_checks(anatomy: Anatomy, volumes_ml: dict[str, float], in_fov: dict[str, float],
                   brain_above_caudate_mm: float | None, settings: Settings) -> list[QCCheck]:
    """Region volumes, field of view, brain mask volume, left/right symmetry, room for the CSO slab."""
    checks = [check(f"volume:{name}", "regions", ml, f"{name} volume (ml)", settings)
              for name, ml in volumes_ml.items()]
    checks += [check(f"in_fov:{name}", "regions", fraction, f"fraction of {name} inside the T2's field of view",
                     settings) for name, fraction in in_fov.items()]
    labels = anatomy.labels.array
    worst, which = 0.0, ""
    for structure, (left, right) in (("hippocampus", fs.HIPPOCAMPUS), ("caudate", fs.CAUDATE),
                                     ("putamen", fs.PUTAMEN)):
        n_left, n_right = int((labels == left).sum()), int((labels == right).sum())
        if n_left + n_right:
            asym = abs(n_left - n_right) / (n_left + n_right)
            if asym >= worst:
                worst, which = asym, structure
    checks.append(check("lr_asymmetry", "anatomy", worst if which else None,
                        f"largest left/right volume asymmetry |L-R|/(L+R) ({which or 'none'})", settings))
    mask = anatomy.brain_mask
    brain_ml = float(mask.array.sum() * mask.voxel_volume_ml) if mask is not None else None
    checks.append(check("brain_ml", "anatomy", brain_ml, "brain mask volume (ml; a mask that takes in the scalp or "
                        "misses brain misplaces every label)", settings))
    checks.append(check("brain_above_caudate_mm", "regions", brain_above_caudate_mm,
                        "white matter above the top of the caudate (mm; the CSO slab needs "
                        f"{settings.cso_offset_mm + settings.cso_slab_thickness_mm:g})", settings))
    return checks


def counting_checks(counts: dict[str, dict[str, float]], volumes_ml: dict[str, float],
                    attention_outside: dict[str, float | None], settings: Settings,
                    attention_cancelled: dict[str, float | None] | None = None) -> list[QCCheck]:
    """Densities within the trained range; the GP-Unet's attention inside its region, and not
    cancelled by its own negative mass."""
    checks = []
    for region, by_model in counts.items():
        ml = volumes_ml.get(region, 0.0)
        networks = [v for m, v in by_model.items() if m in fs.NETWORKS and v is not None and math.isfinite(v)]
        density = max(networks) / ml if networks and ml > 0 else None
        checks.append(check(f"pvs_per_ml:{region}", "counting", density,
                            f"{region}: PVS per ml by the networks (trained on 0.05-3)", settings))
        checks.append(check(f"attention_outside:{region}", "counting", attention_outside.get(region),
                            f"{region}: share of the GP-Unet attention outside the region", settings))
        if attention_cancelled is not None:
            checks.append(check(f"attention_cancelled:{region}", "counting", attention_cancelled.get(region),
                                f"{region}: the GP-Unet map's negative mass over its positive mass where it is "
                                "counted (above 1 the count is 0 whatever the map detected)", settings))
    return checks


def attention_cancelled_ratio(attention: np.ndarray, counting_mask: np.ndarray, min_mass: float = 1.0
                              ) -> float | None:
    """Negative mass of the attention map over its positive mass, within the counting mask.

    The GP-Unet's count is the map's signed sum there; a faint negative floor over a large
    region can cancel the positive mass of the PVS it detected (seen on a T2-only run: 12
    detections, count 0). None when the negative mass is under ``min_mass`` (less than one PVS
    cancelled: nothing to report)."""
    inside = attention[counting_mask]
    negative = -float(inside[inside < 0].sum())
    if negative < min_mass:
        return None
    return negative / max(float(inside[inside > 0].sum()), 1e-6)


def attention_outside_fraction(attention: np.ndarray, counting_mask: np.ndarray) -> float | None:
    """Share of the attention map's positive mass lying outside the counting mask (on the crop grid).

    The GP-Unet's map is gated but not clipped: where the gate is open, the weighted features can
    be slightly negative; negative mass outside the region is not attention there (and would make
    the share negative), so only the positive part is measured."""
    positive = np.clip(attention, 0.0, None)
    total = float(positive.sum())
    if total <= 1e-6:
        return None
    return float(positive[~counting_mask].sum()) / total
