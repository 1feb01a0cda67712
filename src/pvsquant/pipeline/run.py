"""run_subject(): one subject from T1 + T2 to regions and network inputs.

Stages (each its own module, data flowing one way):
load/check (io) -> rigid T1->T2 (registration) -> labels on the T1 (anatomy)
-> counting regions on the T2 (regions) -> white-matter lesions and lacunes taken out of them
(lesions; with a FLAIR when given) -> CSF spaces next to them taken out too (csf) -> network inputs
(roi) -> outputs + qc.json.
Everything is written into a temporary folder that replaces ``out_dir`` only when the
whole run succeeded.
"""
from __future__ import annotations

import logging
import platform
import resource
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..io import DeferredWrites, atomic_output_dir, check_pair_overlap, load_volume, save_volume, write_json
from ..reporting.figures import plot_attention, plot_detections, plot_regions_mosaic, plot_registration, plot_roi_crops
from ..reporting.report import write_report
from ..types import REGION_CODES, Anatomy, QCFlag, RegionCrop, RigidTransform, Settings, SubjectInputs, Volume
from .anatomy import segment_anatomy, settings_for_t2, structure_volumes_ml
from .counting import count_region, load_models, primary_counts, save_count_outputs
from .csf import CsfSpaces, csf_record, exclude_csf, find_csf_spaces
from .lesions import (
    Lesions,
    exclude_lesions,
    lesion_record,
    lesions_into_anatomy,
    lesions_on_grid,
    register_flair,
    segment_lesions,
)
from .quality import (
    QCCheck,
    anatomy_checks,
    attention_cancelled_ratio,
    attention_outside_fraction,
    counting_checks,
    input_checks,
    registration_checks,
    subject_status,
    t2_masks,
)
from .regions import Regions, make_regions, regions_on_grid
from .registration import register_t1_to_t2
from .roi import count_mask, crop_regions, save_crop
from .slices import match_slice_thickness

log = logging.getLogger(__name__)


@dataclass
class StageTimer:
    """Logs each stage and keeps its duration (seconds)."""

    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        log.info("[%s] %s ...", name, what)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 2)
        log.info("[%s] done in %.1f s", name, self.timings[name])


@dataclass(frozen=True)
class SubjectResult:
    """What run_subject() produced (paths are in the final output folder)."""

    out_dir: Path
    qc: dict[str, Any]
    crops: dict[str, RegionCrop]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scipy", "nibabel", "SimpleITK", "antspyx", "deepbet", "torch", "scikit-image"):
        with suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def describe_input(volume: Volume) -> dict[str, Any]:
    return {
        "path": str(volume.source) if volume.source else None,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 4) for s in volume.spacing_mm],
        "orientation": "".join(nib.aff2axcodes(volume.affine)),
        "affine": np.round(volume.affine, 5).tolist(),
    }


def input_flags(t1: Volume, t2: Volume, overlap: float, settings: Settings) -> list[QCFlag]:
    """Usable but doubtful inputs: thick slices (beyond the pass range of the slice gates), partial overlap."""
    flags = []
    for role, vol in (("T1", t1), ("T2", t2)) if t1 is not t2 else (("T2", t2),):
        thickest = float(vol.spacing_mm.max())
        limit = settings.qc_limits[f"{role.lower()}_slice_mm"][0][1]
        if thickest > limit:
            flags.append(QCFlag(f"thick_slices_{role.lower()}",
                                f"{role} has {thickest:.1f} mm slices (> {limit:g} mm); small PVS may be missed"))
    if overlap < settings.overlap_warn_fraction:
        flags.append(
            QCFlag("partial_overlap", f"only {100 * overlap:.0f}% of the T2 lies inside the T1's field of view")
        )
    return flags


def registration_flags(transform: RigidTransform, settings: Settings) -> list[QCFlag]:
    """A flag when the T1-T2 mutual information at the solution is below the pass range of its gate."""
    limit = settings.qc_limits["registration_mi"][0][0]
    if -transform.score < limit:
        return [QCFlag("registration_poor", f"T1-T2 mutual information {-transform.score:.2f} is below "
                       f"{limit:g}; check the registration in regions.png")]
    return []


@dataclass
class PreparedSubject:
    """Everything before the network inputs: the inputs, the registration, the labels and the
    regions (nothing written yet). :func:`quantify_subject` turns it into outputs."""

    inputs: SubjectInputs
    t1: Volume
    t2: Volume
    overlap: float
    flags: list[QCFlag]
    checks: list[QCCheck]
    models: dict
    transform: RigidTransform
    anatomy: Anatomy
    regions: Regions
    """The counting regions, without the lesions (and their margin) when the lesion stage ran."""
    lesions: Lesions | None = None
    excluded_ml: dict[str, float] = field(default_factory=dict)
    """Volume (ml) each region lost to the lesions."""
    csf: CsfSpaces | None = None
    csf_excluded_ml: dict[str, float] = field(default_factory=dict)
    """Volume (ml) each region lost to the CSF spaces next to it."""


def prepare_subject(inputs: SubjectInputs, settings: Settings, timer: StageTimer) -> PreparedSubject:
    """Load and check the inputs and weights, register T1 -> T2, label the T1, make the regions, find the
    lesions and take them out of the regions."""
    t2_only = inputs.t1 is None
    with timer.stage("load", "reading and checking the inputs and the network weights"):
        t2 = load_volume(inputs.t2, "T2")
        t1 = t2 if inputs.t1 is None else load_volume(inputs.t1, "T1")
        user_labels = load_volume(inputs.labels, "label map", labels=True) if inputs.labels else None
        flair = load_volume(inputs.flair, "FLAIR") if inputs.flair is not None else None
        overlap = 1.0 if t2_only else check_pair_overlap(t1, t2)
        flags = input_flags(t1, t2, overlap, settings)
        models = load_models(settings.models_dir, settings.threads)  # fail fast on bad weights

    method = "labels" if user_labels is not None else settings.segmenter
    source = "T2" if t2_only else "T1"
    # The rigid registration (SimpleITK on one thread, which releases the GIL) runs alongside the
    # anatomy, which needs only the T1 and leaves a core free in parts (ANTs' affine stage).
    with ThreadPoolExecutor(1, thread_name_prefix="pvsquant-registration") as pool:
        registering = None if t2_only else pool.submit(register_t1_to_t2, t1, t2, settings)
        with timer.stage("anatomy", f"anatomical labels from the {source} ({method})"
                         + ("" if t2_only else ", the T1 -> T2 registration alongside")):
            anatomy_settings = settings_for_t2(settings) if t2_only else settings
            anatomy = segment_anatomy(t1, anatomy_settings, labels=user_labels)
        if registering is None:  # the anatomy is made on the T2 itself: nothing to register
            transform = RigidTransform(np.eye(4), float("nan"), float("nan"))
            flags.append(QCFlag("anatomy_from_t2", "no T1: the anatomical labels come from the T2 (atlas "
                                "registered with mutual information); small structures are less accurate than "
                                "from a T1", "warn"))
        else:
            with timer.stage("registration", "rigid registration T1 -> T2 (SimpleITK, mutual information; "
                             "the wait for it after the anatomy)"):
                transform = registering.result()
                log.info(
                    "  rotation %.2f deg, translation %.2f mm from the headers; Mattes MI %.3f (start %.3f)",
                    transform.rotation_deg,
                    transform.translation_mm,
                    transform.score,
                    transform.initial_score,
                )
                flags.extend(registration_flags(transform, settings))

    with timer.stage("regions", "counting regions on the T2 (CSO, basal ganglia, hippocampi, midbrain)"):
        regions = make_regions(anatomy, transform, t2, settings)
        flags.extend(regions.flags)
        for name, ml in regions.volumes_ml.items():
            log.info("  %-18s %7.1f ml", name, ml)

    with timer.stage("quality", "quality gates of the inputs, registration, anatomy and regions"):
        masks = t2_masks(t2, anatomy, transform)
        checks = (input_checks(t1, t2, anatomy, transform, settings, t2_only=t2_only, masks=masks)
                  + ([] if t2_only else registration_checks(t2, anatomy, transform, settings, masks=masks))
                  + anatomy_checks(anatomy, regions.volumes_ml, regions.in_fov, regions.brain_above_caudate_mm,
                                   settings))
        log_checks(checks)

    lesions: Lesions | None = None
    excluded_ml: dict[str, float] = {}
    if settings.lesions.enabled:
        flair_transform = None
        if flair is not None:
            with timer.stage("flair_registration", "rigid registration FLAIR -> T2 (SimpleITK, mutual information)"):
                flair_transform = register_flair(flair, t2, settings)
                log.info("  rotation %.2f deg, translation %.2f mm from the headers; Mattes MI %.3f",
                         flair_transform.rotation_deg, flair_transform.translation_mm, flair_transform.score)
        with timer.stage("lesions", "white-matter lesions and lacunes, taken out of the counting regions"):
            lesions = segment_lesions(t2, anatomy, transform, regions, settings, t1=None if t2_only else t1,
                                      flair=flair, flair_transform=flair_transform)
            regions, excluded_ml = exclude_lesions(regions, lesions, settings)
            anatomy = lesions_into_anatomy(anatomy, lesions, transform)
            flags.extend(lesions.flags)
            log.info("  %s: %.2f ml of lesions; excluded %s", lesions.method, lesions.volume_ml,
                     ", ".join(f"{k} {v:.2f} ml" for k, v in excluded_ml.items()))
    elif flair is not None:
        log.warning("a FLAIR was given but the lesion stage is off (settings lesions.enabled): it is not used")
    csf: CsfSpaces | None = None
    csf_excluded_ml: dict[str, float] = {}
    if settings.csf.enabled:
        with timer.stage("csf", "CSF spaces next to the regions (third ventricle, cisterns, temporal horns), "
                         "taken out of them"):
            csf = find_csf_spaces(t2, anatomy, transform, regions, settings)
            regions, csf_excluded_ml = exclude_csf(regions, csf)
            flags.extend(csf.flags)
            log.info("  CSF / white matter %.2f on the T2; excluded %s", csf.csf_level,
                     ", ".join(f"{k} {v:.2f} ml" for k, v in csf_excluded_ml.items()))
    return PreparedSubject(inputs, t1, t2, overlap, flags, checks, models, transform, anatomy, regions, lesions,
                           excluded_ml, csf, csf_excluded_ml)


def log_checks(checks: list[QCCheck]) -> None:
    for c in checks:
        if c.status != "pass":
            log.warning("  QC %s: %s", c.status.upper(), c.message)


def quantify_subject(
    prep: PreparedSubject,
    out: Path,
    settings: Settings,
    timer: StageTimer,
    t_start: float,
    extra_qc: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict]:
    """Network inputs, counts, figures, qc.json and report.html of a prepared subject, written to ``out``.

    ``extra_qc`` goes into qc.json as is (e.g. what a synthetic case is made of)."""
    t1, t2, inputs, regions, transform, anatomy = (
        prep.t1,
        prep.t2,
        prep.inputs,
        prep.regions,
        prep.transform,
        prep.anatomy,
    )
    flags = list(prep.flags)
    save_volume(anatomy.labels, out / "anatomy.nii.gz", dtype=np.int16)
    regions_t2 = regions_on_grid(regions, t2.affine, t2.shape)
    save_volume(regions_t2, out / "regions.nii.gz", dtype=np.uint8)
    if prep.lesions is not None:
        save_volume(lesions_on_grid(prep.lesions, t2.affine, t2.shape), out / "lesions.nii.gz", dtype=np.uint8)

    # the crops' and maps' images, written while the figures are drawn (a free core)
    with DeferredWrites() as writes:
        with timer.stage("roi", "network inputs: T2 at 0.5x0.5x0.8 mm, masked, cropped, normalised"):
            matched = match_slice_thickness(t2, settings.match_slice_thickness_mm)
            flags.extend(matched.flags)
            if matched.applied:
                log.info("  T2 slices %.2f mm, averaged to look %g mm thick for counting", matched.native_mm,
                         settings.match_slice_thickness_mm)
            crops = crop_regions(matched.t2, regions, settings)
            roi_info = {}
            for name, crop in crops.items():
                save_crop(crop, out / "roi", writes)
                roi_info[name] = {
                    "file": f"roi/{name}.nii.gz",
                    "shape": list(crop.box_shape),
                    "box_start": list(crop.box_start),
                    "clipped": crop.clipped,
                }
                if crop.clipped:
                    flags.append(
                        QCFlag(
                            f"roi_clipped_{name}",
                            f"region {name} is larger than its {settings.roi_box_mm[name]} mm box and was cut",
                        )
                    )

        with timer.stage("count", "PVS counts: GP-Unet and CNN, Frangi baseline"):
            counted = {
                name: count_region(crop, prep.models, settings.target_spacing_mm, settings.detection_level,
                                   settings.detection_min_mass, settings.frangi, workers=settings.threads,
                                   prominence=settings.detection_prominence.get(name))
                for name, crop in crops.items()
            }
            count_rows = save_count_outputs(counted, tuple(REGION_CODES), t2, out, writes)
            for name, res in counted.items():
                log.info(
                    "  %-18s gpunet %6.1f  cnn %6.1f  frangi %4.0f  (%d detected)",
                    name,
                    res.counts["gpunet"],
                    res.counts["cnn"],
                    res.counts["frangi"],
                    len(res.detections),
                )
            counted_where = {name: res.counting_mask if res.counting_mask is not None
                             else count_mask(crops[name].inside, settings.target_spacing_mm)
                             for name, res in counted.items()}
            outside = {name: attention_outside_fraction(res.attention.array, counted_where[name])
                       for name, res in counted.items()}
            cancelled = {name: attention_cancelled_ratio(res.attention.array, counted_where[name])
                         for name, res in counted.items()}
            count_checks = counting_checks({name: res.counts for name, res in counted.items()}, regions.volumes_ml,
                                           outside, settings, cancelled)
            log_checks(count_checks)
            checks = [*prep.checks, *count_checks]
            model_files = {f"{r}_{m}": prep.models[(r, m)].source for r, m in sorted(prep.models)}
            model_versions = {f"{r}_{m}": prep.models[(r, m)].sha256 for r, m in sorted(prep.models)}

        subject = inputs.subject_id or (t2.source.name if t2.source else "subject")
        writes.start()
        with timer.stage("figures", "regions.png, roi.png, attention.png, pvs.png, registration.png"):
            plot_roi_crops(crops, out / "roi.png")
            plot_attention(crops, counted, out / "attention.png")
            plot_detections(crops, counted, out / "pvs.png")
            plot_regions_mosaic(t2, regions_t2, out / "regions.png", title=f"{subject}: regions on T2")
            if inputs.t1 is not None:
                plot_registration(t1, t2, transform.t2_to_t1, out / "registration.png")
        with timer.stage("write", "the crops' and maps' NIfTI files (written since the figures began)"):
            writes.wait()

    timer.timings["total"] = round(time.perf_counter() - t_start, 2)
    qc = {
        "pvsquant_version": __version__,
        "subject": inputs.subject_id,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": subject_status(checks, flags),
        "flags": [{"code": f.code, "message": f.message, "severity": f.severity} for f in flags]
        + [{"code": c.name, "message": c.message, "severity": c.status} for c in checks if c.status != "pass"],
        "checks": [c.to_json() for c in checks],
        "anatomy_from": "T2" if inputs.t1 is None else "T1",
        "inputs": {
            "t1": None if inputs.t1 is None else describe_input(t1),
            "t2": describe_input(t2),
            "labels": str(inputs.labels) if inputs.labels else None,
            "flair": None if inputs.flair is None else str(inputs.flair),
            "t2_fov_inside_t1_fraction": round(prep.overlap, 3),
            "slices": matched.record(),
        },
        "registration": {"method": "none: no T1, the anatomy was made on the T2"} if inputs.t1 is None else {
            "method": "SimpleITK Euler3D, Mattes MI",
            "mattes_mi": round(transform.score, 4),
            "mattes_mi_headers": round(transform.initial_score, 4),
            "rotation_deg": round(transform.rotation_deg, 3),
            "translation_mm": round(transform.translation_mm, 3),
            "t2_to_t1_world": np.round(transform.t2_to_t1, 6).tolist(),
        },
        "anatomy": {
            "method": anatomy.method,
            "structure_volumes_ml": {k: round(v, 2) for k, v in structure_volumes_ml(anatomy).items()},
            "superior_axis_t1_world": np.round(anatomy.superior_axis, 4).tolist(),
        },
        "regions": {
            "volumes_ml": {k: round(v, 2) for k, v in regions.volumes_ml.items()},
            "caudate_top_mm": None if regions.caudate_top_mm is None else round(regions.caudate_top_mm, 2),
            "cso_slab_mm_above_caudate": [
                settings.cso_offset_mm,
                settings.cso_offset_mm + settings.cso_slab_thickness_mm,
            ],
            "superior_axis_t2_world": np.round(regions.superior_axis_t2, 4).tolist(),
        },
        "lesions": {"method": "off"} if prep.lesions is None else lesion_record(prep.lesions, prep.excluded_ml,
                                                                                  settings),
        "csf": {"enabled": False} if prep.csf is None else csf_record(prep.csf, prep.csf_excluded_ml, settings),
        "roi": roi_info,
        "counts": count_rows,
        "primary_counts": primary_counts(count_rows),
        "detected_pvs": {name: len(res.detections) for name, res in counted.items()},
        "inference_seconds": {name: res.seconds for name, res in counted.items()},
        "models": model_files,
        "model_versions": model_versions,
        "timings_s": timer.timings,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": package_versions(),
        "settings": settings.to_json(),
        **(extra_qc or {}),
    }
    for flag in flags:
        log.warning("QC: %s", flag.message)
    write_json(settings.to_json(), out / "settings.json")
    write_json(qc, out / "qc.json")
    write_report(out)
    return qc, crops


def run_subject(
    inputs: SubjectInputs, out_dir: str | Path, settings: Settings = Settings(), overwrite: bool = False,
    extra_qc: dict[str, Any] | None = None,
) -> SubjectResult:
    """Run the pipeline for one subject and write its outputs to ``out_dir``; ``extra_qc`` goes into
    qc.json as is (e.g. the scanner and DICOM series an input was converted from).

    Raises
    ------
    PvsError subclasses for bad input (nothing is written then).
    """
    out_dir = Path(out_dir)
    timer = StageTimer()
    t_start = time.perf_counter()
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        prep = prepare_subject(inputs, settings, timer)
        qc, crops = quantify_subject(prep, tmp, settings, timer, t_start, extra_qc)
    log.info("outputs in %s (%.1f s); open %s", out_dir, timer.timings["total"], out_dir / "report.html")
    return SubjectResult(out_dir=out_dir, qc=qc, crops=crops)
