"""Typed objects passed between pipeline stages.

Arrays never travel without their affine: a :class:`Volume` is an array in voxel order
(x, y, z) plus the 4x4 voxel-to-world (RAS+, mm) affine that nibabel gives.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import ATLAS_LABEL_FILES, REGION_CODES  # REGION_CODES re-exported: types used to define it


@dataclass(frozen=True)
class Volume:
    """A 3D image with its voxel-to-world affine.

    Parameters
    ----------
    array : (X, Y, Z) array in the voxel order of ``affine``.
    affine : (4, 4) voxel -> RAS+ mm.
    source : file the volume was read from, if any.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {np.asarray(self.affine).shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along each array axis, from the affine's column norms."""
        return np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(np.asarray(self.affine)[:3, :3])) / 1000.0)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume on the same grid holding ``array``."""
        return Volume(array, self.affine, self.source)


@dataclass(frozen=True)
class RigidTransform:
    """Rigid map between the world spaces of the T2 and the T1.

    ``t2_to_t1`` maps a RAS+ point (mm) of the T2 world to the same anatomical point
    in the T1 world; it is what resampling T1-space data onto a T2 grid needs.
    """

    t2_to_t1: np.ndarray
    score: float
    """Mattes mutual information at the solution (more negative is better)."""
    initial_score: float

    @property
    def rotation_deg(self) -> float:
        r = self.t2_to_t1[:3, :3]
        return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))

    @property
    def translation_mm(self) -> float:
        return float(np.linalg.norm(self.t2_to_t1[:3, 3]))


@dataclass(frozen=True)
class Anatomy:
    """Anatomical labels (FreeSurfer codes) on the T1 grid.

    ``superior_axis`` is the head's superior direction as a unit vector in T1 world
    coordinates (from the atlas registration, or world +S when unknown). The atlas method can
    keep what its refinements started from (``segment_with_atlas(keep_inputs=True)``):
    ``atlas_labels`` (the template's labels as registered, standardised) and ``corrected``
    (the bias-corrected T1).
    """

    labels: Volume
    method: str
    superior_axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    brain_mask: Volume | None = None
    atlas_labels: Volume | None = None
    corrected: Volume | None = None


@dataclass(frozen=True)
class RegionCrop:
    """A network input: a box of the resampled T2 around one region.

    ``image`` is min-max normalised to [0, 1] inside the region; ``mask`` the smoothed,
    dilated region mask that multiplied it; both share the box's affine, which places
    the box in T2 world space. ``box_start`` and ``box_shape`` index the full
    0.5 x 0.5 x 0.8 mm grid whose affine is ``grid_affine``.
    """

    region: str
    image: Volume
    mask: Volume
    grid_affine: np.ndarray
    box_start: tuple[int, int, int]
    box_shape: tuple[int, int, int]
    clipped: bool
    """True when the region did not fit in the box and was cut."""
    region_mask: Volume | None = None
    """The region itself (boolean, before dilation) on the box grid: where counts are summed."""
    t2: Volume | None = None
    """The same box of the T2 *without* the mask, scaled by the region's median
    (:func:`pvsquant.pipeline.roi.scale_to_region`): the networks' input (with the region as a channel)."""
    vesselness: Volume | None = None
    """The Frangi vesselness of ``t2`` (the networks' second channel) as a run computed it, read back
    from ``roi/<region>_vesselness.nii.gz`` so that fine-tuning need not recompute it."""

    @property
    def inside(self) -> np.ndarray:
        """The region as a boolean array: ``region_mask``, or the smoothed mask above 0.5 without it."""
        return self.region_mask.array.astype(bool) if self.region_mask is not None else self.mask.array >= 0.5


@dataclass(frozen=True)
class QCFlag:
    """Usable but doubtful data, reported in ``qc.json``."""

    code: str
    message: str
    severity: str = "warn"


@dataclass(frozen=True)
class FrangiSettings:
    """Parameters of the Frangi vesselness and baseline count (see :mod:`pvsquant.pipeline.frangi` for how
    they were chosen)."""

    sigmas_mm: tuple[float, ...] = (0.5, 0.75, 1.0)
    """Gaussian scales of the Hessian, in mm."""
    alpha: float = 0.5
    """Frangi's plate-vs-tube constant."""
    beta: float = 0.5
    """Frangi's blob-vs-tube constant."""
    gamma: float = 0.05
    """Frangi's structureness constant, on the scale-normalised Hessian (image units)."""
    threshold: float = 0.2
    """On the vesselness map (0 to ~0.86 for an ideal tube)."""
    min_size_mm3: float = 1.0
    """Smaller components are noise."""
    max_size_mm3: float = 150.0
    """Larger components are lesions or merged structures, not one PVS."""
    min_elongation: float = 1.5
    """Ratio of the two largest principal axes a component above ``round_min_size_mm3`` needs."""
    round_min_size_mm3: float = 14.0
    """Components above this volume (a 3 mm ball) must be elongated; 0 checks all, inf none."""
    lesion_intensity: float | None = 0.6
    """Intensity above which wide regions are lesions/CSF; None switches the lesion rule off."""
    lesion_min_diameter_mm: float = 4.0
    """Bright regions containing a ball of this diameter are lesions (PVS are <= 3 mm wide)."""
    lesion_margin_mm: float = 1.0
    """Vesselness within this distance of a lesion is ignored."""
    fill_outside: bool = True
    """Blend the image towards the region's median where the soft mask is below one."""

    def __post_init__(self) -> None:
        if len(self.sigmas_mm) == 0 or any(not np.isfinite(s) or s <= 0 for s in self.sigmas_mm):
            raise ValueError(f"sigmas_mm must be one or more positive scales in mm, got {self.sigmas_mm!r}")
        if min(self.alpha, self.beta, self.gamma) <= 0:
            raise ValueError(f"alpha, beta and gamma must be positive, got {self.alpha}, {self.beta}, {self.gamma}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 <= self.min_size_mm3 <= self.max_size_mm3:
            raise ValueError(f"need 0 <= min_size_mm3 <= max_size_mm3, got {self.min_size_mm3}, {self.max_size_mm3}")
        if self.lesion_min_diameter_mm <= 0 or self.lesion_margin_mm < 0:
            raise ValueError("lesion_min_diameter_mm must be positive and lesion_margin_mm non-negative")


@dataclass(frozen=True)
class LesionSettings:
    """White-matter lesions and lacunes kept out of the count (:mod:`pvsquant.pipeline.lesions`, where each
    value's origin is given). Intensities are ratios to the median of the white-matter labels."""

    enabled: bool = True
    """False: no lesion segmentation, nothing excluded (qc.json says method 'off')."""
    t2_core_ratio: float = 1.5
    """T2 above this x the white-matter median is bright enough for a lesion core (MS scans: lesion median
    1.6-2.1, normal white matter's 99th percentile 1.24-1.42)."""
    t2_extent_ratio: float = 1.3
    """A lesion extends over T2 voxels above this ratio around its core (lesions' 10th percentile 1.2-1.4)."""
    t1_max_ratio: float | None = 0.95
    """With a T1: lesion voxels are below this x the T1 white-matter median (lesions' 90th percentile
    0.86-0.92; CSF ~0.1, so lacunes pass too). None: the T1 is not used."""
    ball_diameter_mm: float = 4.0
    """A lesion core holds a ball of this diameter of bright voxels; PVS are <= 3 mm wide (as
    ``FrangiSettings.lesion_min_diameter_mm``)."""
    grow_mm: float = 2.0
    """How far a lesion extends from its core over the ``t2_extent_ratio`` voxels (its fuzzy rim)."""
    csf_clearance_mm: float = 1.0
    """A core's centre lies at least this far from the CSF and ventricle labels (misregistered ventricle edges
    are not lesions)."""
    flair_ratio: float = 1.4
    """With a FLAIR: FLAIR above this x its white-matter median (and T2 above ``t2_extent_ratio``) is a lesion;
    normal grey matter is ~1.1-1.25 on clinical FLAIR, CSF (and PVS) below 1."""
    flair_min_volume_mm3: float = 5.0
    """Smaller FLAIR-bright clusters are noise."""
    margin_mm: float = 1.0
    """The lesions, dilated by this margin, are removed from the counting regions (their rim is partial volume)."""

    def __post_init__(self) -> None:
        if min(self.t2_core_ratio, self.t2_extent_ratio, self.flair_ratio) <= 0:
            raise ValueError("t2_core_ratio, t2_extent_ratio and flair_ratio must be positive")
        if self.t2_extent_ratio > self.t2_core_ratio:
            raise ValueError(f"t2_extent_ratio ({self.t2_extent_ratio}) must not exceed t2_core_ratio "
                             f"({self.t2_core_ratio})")
        if self.ball_diameter_mm <= 0 or min(self.grow_mm, self.csf_clearance_mm, self.margin_mm,
                                             self.flair_min_volume_mm3) < 0:
            raise ValueError("ball_diameter_mm must be positive; grow_mm, csf_clearance_mm, margin_mm and "
                             "flair_min_volume_mm3 non-negative")


@dataclass(frozen=True)
class CsfSettings:
    """CSF spaces next to the regions kept out of the count (:mod:`pvsquant.pipeline.csf`). Intensities are
    ratios of the T2 to its white-matter median, as for the lesions."""

    enabled: bool = True
    """False: nothing is taken out (qc.json's csf says enabled false)."""
    fraction: float = 0.5
    """A voxel is CSF-bright above ``1 + fraction * (CSF level - 1)``: half-way from white matter to the
    lateral ventricles' median."""
    ball_diameter_mm: float = 4.0
    """Bright voxels holding a ball of this diameter are a CSF body (third ventricle, cistern, temporal horn);
    PVS are <= 3 mm wide (as ``LesionSettings.ball_diameter_mm``)."""
    margin_mm: float = 1.5
    """The bodies, grown by this margin (their partial-volume rim at thick slices), are removed from the regions.
    Chosen on the shipped example (``docs/csf_exclusion_example.png``): 1.0 mm left the detections beside the
    third ventricle in."""

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"csf fraction must lie between 0 and 1, got {self.fraction}")
        if self.ball_diameter_mm <= 0 or self.margin_mm < 0:
            raise ValueError("csf ball_diameter_mm must be positive and margin_mm non-negative")


def default_qc_limits() -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """The quality gates' ranges (pass, warn); see ``Settings.qc_limits``."""
    no = 1e9
    limits = {
        "t1_slice_mm": ((0.0, 6.0), (0.0, 8.0)),
        "t2_slice_mm": ((0.0, 6.0), (0.0, 8.0)),
        "t2_snr": ((8.0, no), (4.0, no)),
        "t2_ghosting": ((-no, 0.05), (-no, 0.15)),
        "t2_csf_to_wm": ((1.5, no), (1.1, no)),
        "t1_wm_to_cortex": ((1.05, no), (0.95, no)),
        "t1_wm_to_csf": ((1.5, no), (1.1, no)),
        "registration_mi": ((0.45, no), (0.3, no)),  # example pair: 0.80 aligned, 0.31 off by 10 deg / 15 mm
        "brain_in_head": ((0.97, 1.0), (0.9, 1.0)),
        "header_rotation_deg": ((0.0, 5.0), (0.0, 20.0)),
        "header_translation_mm": ((0.0, 10.0), (0.0, 30.0)),
        "in_fov": ((0.95, 1.0), (0.6, 1.0)),
        "lr_asymmetry": ((0.0, 0.15), (0.0, 0.3)),
        "brain_above_caudate_mm": ((30.0, no), (15.0, no)),
        # deepbet on the shared clinical scans: 1346-1504 ml (T1), 1379-1521 ml (T2); a mask that
        # takes in the scalp and neck (seen on painted T2s) is 3000 ml and more
        "brain_ml": ((900.0, 2000.0), (600.0, 2600.0)),
        "pvs_per_ml": ((0.0, 3.0), (0.0, 6.0)),
        "attention_outside": ((0.0, 0.5), (0.0, 0.8)),
        # on the saved maps (T2 grid, whole map) of clean T1+T2 runs of the shared scans 0.06-0.76;
        # a count cancelled to 0 by its own negative floor (a T2-only run) 1.65. Above 1 the count
        # is below 0 before it is clipped
        "attention_cancelled": ((0.0, 1.0), (0.0, no)),
    }
    volumes = {"centrum_semiovale": (40.0, 300.0), "basal_ganglia": (20.0, 90.0), "hippocampi": (3.0, 16.0),
               "midbrain": (2.0, 20.0)}  # plausible adult volumes (ml)
    for region, (lo, hi) in volumes.items():
        limits[f"volume:{region}"] = ((lo, hi), (0.0, 2 * hi))
    return limits


@dataclass(frozen=True)
class Settings:
    """Every tunable of a run. Built once (by the CLI), passed explicitly, saved as JSON."""

    segmenter: str = "atlas"
    """'atlas' (template registration, default), 'samseg' (external run_samseg) or 'labels'."""
    threads: int = 2
    atlas_syn_iterations: tuple[int, ...] = (25, 10, 0)
    """ANTs SyN iterations per level (registration grid shrunk 4x, 2x, 1x). On the painted benchmark
    CC with (25, 10, 0) matched CC with (40, 20, 0) at 60% of the time."""
    atlas_grid_mm: float = 1.5
    """Voxel size of the isotropic grid on which the atlas is registered."""
    atlas_syn_metric: str = "CC"
    """ANTs SyN similarity: 'mattes' (mutual information) or 'CC' (cross-correlation, radius 2)."""
    atlas_labels: str = "fused"
    """Labels of the template: 'fused' (subcortical structures by majority vote of ten SynthSeg maps)
    or 'samseg' (SAMSEG's own; better on painted T2s, see
    :func:`pvsquant.pipeline.anatomy.settings_for_t2`)."""
    refine_labels: bool = True
    """Refine the atlas labels by the T1's intensities (EM with the atlas as spatial prior)."""
    subcortical_refiner: str = "t1"
    """After that, relabel the voxels near the deep grey nuclei and hippocampi with a learned voxel
    classifier (:mod:`pvsquant.pipeline.subcortical`): 't1' (trained on painted T1s, default), 't2'
    (on painted T2s; see :func:`pvsquant.pipeline.anatomy.settings_for_t2`) or 'none'."""
    seed: int = 0
    deterministic: bool = True
    """Bit-identical results from run to run (one machine, one set of wheels): the mutual-information
    registrations with a global transform (the rigid T1 -> T2 in SimpleITK, the atlas's affine
    stage in ANTs, in a child process) run on one thread, because ITK's Mattes metric adds its
    threads' parts in a varying order (on two threads the example's labels differed by ~1000-2500
    voxels between runs). ANTs' N4 and deformable stage are deterministic on ``threads``. False:
    every stage uses ``threads``, and results vary from run to run."""
    # registration T1 -> T2
    registration_levels: tuple[int, ...] = (4, 2, 1)
    registration_iterations: int = 200
    registration_sampling: float = 0.2
    registration_grid_mm: float = 1.5
    """Voxel size of the isotropic copies of the T1 and T2 that are registered."""
    # network-input grid and regions
    target_spacing_mm: tuple[float, float, float] = (0.5, 0.5, 0.8)
    match_slice_thickness_mm: float | None = None
    """Cohorts of mixed protocols: the T2 the networks count on is averaged along its slices to look
    this thick (:mod:`pvsquant.pipeline.slices`; the thickest T2 of the cohort). The counts depend on
    the slice thickness (patient01, basal ganglia: 16.8 PVS on 3.3 mm slices, 7.5 on 4 mm, 8.7 on the
    3.3 mm scan matched to 4 mm). None: the native slices."""
    work_spacing_mm: float = 1.0
    cso_offset_mm: float = 10.0
    cso_slab_thickness_mm: float = 20.0
    basal_ganglia_closing_mm: float = 5.0
    midbrain_height_mm: float = 20.0
    roi_dilation_mm: float = 2.0
    roi_smoothing_sigma_mm: float = 1.0
    roi_box_mm: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: {
            "centrum_semiovale": (160.0, 190.0, 64.0),
            "basal_ganglia": (96.0, 96.0, 72.0),
            "hippocampi": (112.0, 80.0, 64.0),
            "midbrain": (48.0, 48.0, 40.0),
        }
    )
    # counting
    models_dir: str | None = None
    """Folder of the user's own (fine-tuned) ``<region>_<model>.pt`` weights; the shipped ones fill gaps."""
    region_reference_level: float = 0.35
    """The networks' T2 channel: the T2 divided by the region's median, times this level, clipped
    to [0, ``region_clip_level``] (tissue at ~0.35, CSF-bright PVS at ~1, as Frangi expects)."""
    region_clip_level: float = 1.5
    frangi: FrangiSettings = field(default_factory=lambda: FrangiSettings(fill_outside=False))
    """Frangi vesselness (the networks' second channel) and the Frangi baseline count, on the
    unmasked crop. Weights of pvsquant 0.1 (two channels) use the same with ``fill_outside=True``."""
    lesions: LesionSettings = field(default_factory=LesionSettings)
    """White-matter lesions and lacunes (T2-bright, not thin tubes) removed from the counting regions."""
    csf: CsfSettings = field(default_factory=CsfSettings)
    """CSF spaces the labels miss (third ventricle, cisterns, temporal horns) removed from the counting regions."""
    detection_level: float = 3e-3
    """Detected PVS: components of the GP-Unet attention map above this level (PVS per voxel) ..."""
    detection_min_mass: float = 0.15
    """... holding at least this many PVS (the map's sum over the component). The level was chosen on
    PVS injected into three scans outside the counting benchmark (``benchmarks/detection.py``,
    ``benchmarks/results_detection.md``): 3e-3 gave the best mean F1 of the centrum semiovale and
    basal ganglia (0.87; the former 1.5e-3, chosen on synthetic patches by the number of
    detections: 0.82) and a higher recall in every region, since a low level merges neighbouring
    PVS into one component; the minimum mass changed the figures by less than their noise. On the
    rerun of 2026-12-07 (today's regions and network box) 2e-3 with a minimum mass of 0.25 scores
    best unsplit (0.857 against 0.834); the level stays, since the prominences are chosen at it."""
    detection_prominence: dict[str, float] = field(
        default_factory=lambda: {
            "centrum_semiovale": 3e-3,
            "basal_ganglia": 3e-3,
            "hippocampi": 5e-4,
            "midbrain": 5e-4,
        }
    )
    """Per region: a component above ``detection_level`` with several peaks is split into one
    detection per peak rising this much (PVS per voxel) above its saddle
    (:func:`pvsquant.pipeline.counting.peak_cores`); a region left out is not split. Chosen per
    region by F1 on the same three scans (``benchmarks/results_detection.md``, rerun 2026-12-07 on
    the regions with the CSF stage and the counting-mask network box): 3e-3 in the centrum semiovale
    and basal ganglia, the best over 1e-4 ... 7e-3 (F1 0.822 and 0.898; 2.5e-3, chosen on the
    earlier regions, now 0.811 and 0.877; not split 0.801 and 0.866). The hippocampal and midbrain
    networks draw broader blobs, whose neighbours merge above any level (not split F1 0.65 and 0.42,
    0.71 and 0.78 at 5e-4); their best, 0.724 and 0.791 at 1e-4, is within 0.02 of it: 5e-4 keeps a
    margin above the map's own ripples on scans the grid did not see."""
    # QC thresholds
    overlap_warn_fraction: float = 0.8
    qc_limits: dict[str, tuple[tuple[float, float], tuple[float, float]]] = field(
        default_factory=lambda: default_qc_limits())
    """Quality gates (:mod:`pvsquant.pipeline.quality`): per check, the range that passes and the
    range that warns; outside both it fails. ``volume:<region>`` etc. are per region. 1e9 is
    'no bound'. Calibrated in ``benchmarks/results_quality_gates.md``."""

    def __post_init__(self) -> None:
        if self.subcortical_refiner not in ("t1", "t2", "none"):
            raise ValueError(f"subcortical_refiner must be 't1', 't2' or 'none', got {self.subcortical_refiner!r}")
        thickness = self.match_slice_thickness_mm
        if thickness is not None and (isinstance(thickness, bool) or not isinstance(thickness, (int, float))
                                      or not 0 < thickness <= 20):
            raise ValueError(f"match_slice_thickness_mm must be a slice thickness in mm (0-20] or null, "
                             f"got {self.match_slice_thickness_mm}")
        if self.atlas_labels not in ATLAS_LABEL_FILES:
            raise ValueError(f"atlas_labels must be one of {', '.join(ATLAS_LABEL_FILES)}, got {self.atlas_labels!r}")
        unknown = sorted(set(self.detection_prominence) - set(REGION_CODES))
        if unknown:
            raise ValueError(f"detection_prominence: unknown region(s) {', '.join(unknown)}; "
                             f"known: {', '.join(REGION_CODES)}")
        negative = {k: v for k, v in self.detection_prominence.items() if v < 0}
        if negative:
            raise ValueError(f"detection_prominence must be 0 or more, got {negative}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> Settings:
        """Settings from a run's ``settings.json`` (or a dict, or a JSON object given as a string
        starting with ``{``): the inverse of :meth:`to_json`.

        Missing keys keep their defaults, so a file may hold only what it changes; an unknown key
        or a value of the wrong kind raises :class:`~pvsquant.errors.InputSettingsError` naming it.
        """
        from .errors import InputSettingsError

        where = "settings"
        if isinstance(source, str) and source.strip().startswith("{"):
            text = source.strip()
            try:
                source = json.loads(text)
            except ValueError as exc:
                raise InputSettingsError(f"settings {text!r} is not a readable JSON object ({exc}).") from exc
        if not isinstance(source, dict):
            where = str(source)
            try:
                source = json.loads(Path(source).read_text())
            except FileNotFoundError as exc:
                raise InputSettingsError(f"settings file {where} does not exist.") from exc
            except (OSError, ValueError) as exc:
                raise InputSettingsError(f"settings file {where} is not readable JSON ({exc}).") from exc
        if not isinstance(source, dict):
            raise InputSettingsError(f"{where}: expected a JSON object of settings, found {type(source).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(source) - set(fields))
        if unknown:
            raise InputSettingsError(f"{where}: unknown setting(s) {', '.join(unknown)}; "
                                     f"known: {', '.join(fields)}.")
        defaults = cls()
        values: dict[str, Any] = {}
        for name, value in source.items():
            default = getattr(defaults, name)
            values[name] = _like(default, value, f"{where}: {name}")
        try:
            return cls(**values)
        except ValueError as exc:
            raise InputSettingsError(f"{where}: {exc}.") from exc


def _like(default: Any, value: Any, what: str) -> Any:
    """``value`` (from JSON) converted to the kind of ``default``: lists to tuples, ints to floats."""
    from .errors import InputSettingsError

    if default is None or value is None:
        return value
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        if not isinstance(value, dict):
            raise InputSettingsError(f"{what} must be an object, found {value!r}.")
        names = [f.name for f in dataclasses.fields(default)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise InputSettingsError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(names)}.")
        try:
            return dataclasses.replace(default, **{k: _like(getattr(default, k), v, f"{what}.{k}")
                                                   for k, v in value.items()})
        except ValueError as exc:
            raise InputSettingsError(f"{what}: {exc}") from exc
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputSettingsError(f"{what} must be true or false, found {value!r}.")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputSettingsError(f"{what} must be a number, found {value!r}.")
        if isinstance(default, int) and not float(value).is_integer():
            raise InputSettingsError(f"{what} must be a whole number, found {value!r}.")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise InputSettingsError(f"{what} must be text, found {value!r}.")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise InputSettingsError(f"{what} must be a list, found {value!r}.")
        kind = default[0] if default else value[0] if value else 0
        return tuple(_like(kind, v, what) for v in value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise InputSettingsError(f"{what} must be an object, found {value!r}.")
        sample = next(iter(default.values()))
        return {k: _like(default.get(k, sample), v, f"{what}.{k}") for k, v in value.items()}
    return value


@dataclass(frozen=True)
class SubjectInputs:
    """What one subject's run needs."""

    t1: Path | None
    """None: no T1, the anatomy comes from the T2 itself (``pvsquant run --t2`` alone)."""
    t2: Path
    labels: Path | None = None
    subject_id: str | None = None
    flair: Path | None = None
    """Optional FLAIR (registered rigidly to the T2): white-matter lesions are then found on it."""
