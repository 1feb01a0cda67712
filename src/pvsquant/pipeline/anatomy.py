"""Anatomical labels from the T1 (FreeSurfer look-up-table codes), without FSL or FreeSurfer.

Methods
-------
atlas (default)
    A deepbet brain mask, N4 bias correction and ANTs SyN registration of the shipped
    template (MNI ICBM 2009c brain, labelled offline by SAMSEG, see
    ``scripts/make_atlas.py``) to the subject; the labels are carried over with ANTs'
    generic-label interpolation and refined by the T1's intensities (:func:`refine_labels`).
    White-matter lesions are not detected by this method.
samseg
    FreeSurfer's SAMSEG (PyPI ``samseg``) run as an external program, because it pins
    numpy < 2. Found as ``run_samseg`` on PATH or at ``$PVSQUANT_SAMSEG``.
labels
    A user's own aseg-coded map (FreeSurfer, FastSurfer, SynthSeg, SAMSEG), given with
    ``--labels``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DependencyError, InputImageError, SegmentationError
from ..grids import bounding_box, resample, resample_labels, reslice_affine, world_coordinates
from ..labels import (
    ATLAS_LABEL_FILES,
    BRAINSTEM,
    CAUDATE,
    CORTEX,
    HIPPOCAMPUS,
    LATERAL_VENTRICLE,
    MIDBRAIN,
    PALLIDUM,
    PUTAMEN,
    THALAMUS,
    WM,
    WM_LESION,
)
from ..types import Anatomy, Settings, Volume
from . import subcortical

log = logging.getLogger(__name__)

KEPT_CODES = (*WM, *CORTEX, *LATERAL_VENTRICLE, *THALAMUS, *CAUDATE, *PUTAMEN, *PALLIDUM, *HIPPOCAMPUS,
              BRAINSTEM, MIDBRAIN, WM_LESION)
# Other aseg codes folded into the kept ones so that later stages see a consistent map.
FOLDED_CODES = {5: 4, 44: 43, 78: 2, 79: 41, 174: 16, 175: 16, 178: 16, 25: 77, 57: 77, 99: 77}
STRUCTURES = {
    "white_matter": WM, "lateral_ventricle": LATERAL_VENTRICLE, "thalamus": THALAMUS, "caudate": CAUDATE,
    "putamen": PUTAMEN, "pallidum": PALLIDUM, "hippocampus": HIPPOCAMPUS, "midbrain": (MIDBRAIN,),
}


def atlas_files(labels: str = "fused") -> tuple[Path, Path]:
    """Paths of the shipped template T1 and one of its label maps (``Settings.atlas_labels``)."""
    base = resources.files("pvsquant") / "data" / "atlas"
    return Path(str(base / "template_T1w.nii.gz")), Path(str(base / ATLAS_LABEL_FILES[labels]))


def standardise_labels(labels: np.ndarray) -> np.ndarray:
    """Keep the codes pvsquant uses, fold their variants in, set everything else to 0."""
    out = labels.astype(np.int32).copy()
    for src, dst in FOLDED_CODES.items():
        out[out == src] = dst
    out[~np.isin(out, KEPT_CODES)] = 0
    return out


def split_midbrain(labels: Volume, superior_axis: np.ndarray, height_mm: float) -> Volume:
    """Relabel the top ``height_mm`` of the brainstem (along ``superior_axis``) as midbrain.

    Used when a label map has only FreeSurfer's whole brainstem (16). The midbrain is
    the brainstem's uppermost ~2 cm, above the pons.
    """
    array = labels.array.copy()
    if np.any(array == MIDBRAIN) or not np.any(array == BRAINSTEM):
        return labels
    idx = np.argwhere(array == BRAINSTEM)
    height = world_coordinates(labels.affine, idx) @ superior_axis
    top = height.max()
    sel = height >= top - height_mm
    array[tuple(idx[sel].T)] = MIDBRAIN
    return labels.with_array(array)


def labels_from_file(labels: Volume, t1: Volume, settings: Settings) -> Anatomy:
    """Use a user's aseg-coded label map, resampled to the T1 grid if it lies elsewhere."""
    present = set(np.unique(labels.array).tolist())
    needed = {"white matter (2/41)": WM, "caudate (11/50)": CAUDATE, "putamen (12/51)": PUTAMEN}
    missing = [name for name, codes in needed.items() if not present.intersection(codes)]
    if missing:
        raise InputImageError(
            f"label map {labels.source.name if labels.source else ''} lacks {', '.join(missing)}; "
            "expected FreeSurfer aseg codes (FreeSurfer, FastSurfer, SynthSeg or SAMSEG output).")
    if labels.shape != t1.shape or not np.allclose(labels.affine, t1.affine, atol=1e-3):
        log.info("label map is not on the T1 grid: resampling it (nearest neighbour)")
        labels = resample_labels(labels, t1.affine, t1.shape, smooth=False)
    std = labels.with_array(standardise_labels(labels.array))
    superior = np.array([0.0, 0.0, 1.0])
    std = split_midbrain(std, superior, settings.midbrain_height_mm)
    return Anatomy(labels=std, method="labels", superior_axis=superior)


def _to_ants(volume: Volume):
    import ants

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    return ants.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32), origin=tuple(lps[:3, 3]),
                           spacing=tuple(spacing), direction=lps[:3, :3] / spacing)


def brain_mask(t1: Volume) -> Volume:
    """deepbet brain mask (MIT; weights inside its wheel), on the T1 grid."""
    import nibabel as nib
    import torch
    from deepbet.bet import BrainExtraction

    torch.set_num_threads(max(1, torch.get_num_threads()))
    bet = BrainExtraction(no_gpu=True)
    img = nib.Nifti1Image(t1.array.astype(np.float32), t1.affine)
    _, mask_img, _ = bet.run(img)
    mask = np.asarray(mask_img.dataobj) > 0
    if mask.shape != t1.shape:
        raise SegmentationError(f"brain mask has shape {mask.shape}, T1 has {t1.shape}")
    return t1.with_array(mask)


# Tissue classes of the intensity refinement: (output code, atlas codes). Each class gets
# a Gaussian intensity model and a spatial prior from the registered atlas.
DEEP_GREY_CODES = (*THALAMUS, *CAUDATE, *PUTAMEN, *PALLIDUM, *HIPPOCAMPUS)
REFINE_CLASSES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (2, (2,)), (41, (41,)), (7, (7,)), (46, (46,)), (28, (28,)), (60, (60,)),
    (3, (3,)), (42, (42,)), (8, (8,)), (47, (47,)), (18, (18,)), (54, (54,)), (26, (26,)), (58, (58,)),
    (4, (4, 5)), (43, (43, 44)), (24, (24, 14, 15, 72, 30, 31, 62, 63, 80, 85)),
    *((c, (c,)) for c in DEEP_GREY_CODES),
)
"""Classes the refinement may move voxels between. White matter, cortex and CSF classes share one
intensity model per tissue; each deep grey nucleus and hippocampus has its own (thalamus and
pallidum lie between grey and white matter on T1) and a sharper prior (:data:`DEEP_PRIOR_SIGMA_MM`),
so that only its borders with tissue of another intensity move."""
TISSUE_OF_CODE = {**{c: "wm" for c in (2, 41, 7, 46, 28, 60)}, **{c: "gm" for c in (3, 42, 8, 47, 18, 54, 26, 58)},
                  **{c: "csf" for c in (4, 43, 24)}, **{c: f"deep{c}" for c in DEEP_GREY_CODES}}
DEEP_PRIOR_SIGMA_MM = 1.0
"""Registration uncertainty assumed at the deep grey nuclei and hippocampus: 1 mm beat 0.7, 1.5, 2
and 3 mm on the painted benchmark's registrations (10 maps, refinement rerun on cached labels).
`benchmarks/segmentation.py`: Dice caudate 0.788 / putamen 0.853 / pallidum 0.717 / hippocampus 0.693;
0.733 / 0.802 / 0.679 / 0.676 when these structures kept their atlas labels (the earlier rule).
Checked again with the template's subcortical labels fused from SynthSeg maps (2026-12-06 evening,
same registrations): caudate / pallidum / hippocampus 0.801 / 0.731 / 0.720 at 1 mm, 0.801 / 0.730 /
0.717 at 0.7 mm, 0.787 / 0.729 / 0.711 at 1.5 mm."""
REFINE_FIXED_CODES = (16, MIDBRAIN)
"""Brainstem and midbrain keep their atlas labels (they only shrink into fluid)."""


def _smoothed(onehot: np.ndarray, sigma_vox: np.ndarray, truncate: float = 4.0) -> np.ndarray:
    """``gaussian_filter(onehot, sigma_vox)`` computed on the mask's bounding box grown by the
    kernel's reach: the same values (nothing farther is reached), at a fraction of the cost for
    the small structures."""
    out = np.zeros(onehot.shape, np.float32)
    if not onehot.any():
        return out
    reach = np.floor(truncate * np.asarray(sigma_vox, float) + 0.5).astype(int) + 1  # scipy's kernel radius + 1
    box = bounding_box(onehot, reach)
    out[box] = ndimage.gaussian_filter(onehot[box].astype(np.float32), sigma_vox, truncate=truncate)
    return out


def refine_labels(image: Volume, labels: Volume, mask: np.ndarray, prior_sigma_mm: float = 3.0,
                  iterations: int = 3) -> Volume:
    """Relabel voxels by intensity, with the registered atlas as a local spatial prior.

    Each class's prior is its warped atlas mask smoothed by ``prior_sigma_mm`` (the
    registration's uncertainty); each class's T1 intensity is a Gaussian fitted by EM.
    A voxel can only take a class present within a few mm in the atlas, so a dark lesion
    deep in the white matter stays white matter while the gyral white matter/cortex
    border and the borders of the deep grey nuclei and hippocampi with white matter and
    CSF follow the subject's own contrast.
    """
    box = tuple(slice(max(0, int(i.min()) - 2), int(i.max()) + 3) for i in np.nonzero(mask))
    img = image.array[box].astype(np.float32)
    lab = labels.array[box]
    inside = mask[box] & ~np.isin(lab, REFINE_FIXED_CODES)
    values = img[inside]
    log_prior = np.empty((len(REFINE_CLASSES), values.size), np.float32)
    present = np.zeros(len(REFINE_CLASSES), bool)
    deep = np.array([c in DEEP_GREY_CODES for c, _ in REFINE_CLASSES])
    for k, (_, codes) in enumerate(REFINE_CLASSES):
        onehot = np.isin(lab, codes)
        present[k] = onehot[inside].sum() > 20
        sigma = (DEEP_PRIOR_SIGMA_MM if deep[k] else prior_sigma_mm) / image.spacing_mm
        prior = _smoothed(onehot, sigma)[inside] if present[k] else 0.0
        # A class the atlas puts nowhere near (prior < 1e-3) is impossible, however well the
        # intensity fits: this keeps a dark lesion deep in the white matter white matter.
        with np.errstate(divide="ignore"):
            log_prior[k] = np.where(prior >= 1e-3, np.log(np.maximum(prior, 1e-3)), -np.inf)
    # Initial intensity model from confidently labelled voxels; a small structure, where few voxels
    # have a confident smoothed prior, starts from all its atlas voxels.
    resp = (log_prior > np.log(0.9)).astype(np.float32)
    for k in np.flatnonzero(deep):
        resp[k] = np.isin(lab[inside], REFINE_CLASSES[k][1])
    # Classes of one tissue share an intensity model; the spatial prior tells them apart.
    tissue = np.array([TISSUE_OF_CODE[c] for c, _ in REFINE_CLASSES])
    for _ in range(iterations):
        mean = np.zeros(len(REFINE_CLASSES))
        var = np.zeros(len(REFINE_CLASSES))
        for t in np.unique(tissue):
            r = resp[tissue == t].sum(axis=0)
            w = r.sum() + 1e-6
            mean[tissue == t] = (r * values).sum() / w
            var[tissue == t] = (r * (values - (r * values).sum() / w) ** 2).sum() / w
        sd = np.sqrt(np.maximum(var, (0.02 * np.median(values)) ** 2))
        log_post = log_prior - 0.5 * ((values - mean[:, None]) / sd[:, None]) ** 2 - np.log(sd)[:, None]
        log_post[~present] = -np.inf
        best = log_post.max(axis=0)
        possible = np.isfinite(best)
        log_post[:, possible] -= best[possible]
        resp = np.exp(log_post)
        resp[:, ~possible] = 0.0
        resp /= np.maximum(resp.sum(axis=0), 1e-12)
    out_codes = np.array([c for c, _ in REFINE_CLASSES], np.int32)
    refined = labels.array.copy()
    sub = refined[box]
    chosen = out_codes[np.argmax(resp, axis=0)]
    keep = resp.max(axis=0) == 0  # no class possible: keep the atlas label
    chosen[keep] = lab[inside][keep]
    sub[inside] = chosen

    # Brainstem and midbrain may only shrink, and only where a voxel looks like fluid (atrophy,
    # enlarged cisterns): a voxel closer to the CSF model than to its own structure's.
    fluid = [k for k, (c, _) in enumerate(REFINE_CLASSES) if c in (4, 43, 24) and present[k]]
    if fluid:
        for code in REFINE_FIXED_CODES:
            where = mask[box] & (lab == code)
            if where.sum() < 20:
                continue
            v = img[where]
            med = float(np.median(v))
            spread = max(1.4826 * float(np.median(np.abs(v - med))), 0.02 * float(np.median(values)))
            own = -0.5 * ((v - med) / spread) ** 2 - np.log(spread)
            fluid_ll = np.stack([-0.5 * ((v - mean[k]) / sd[k]) ** 2 - np.log(sd[k]) for k in fluid])
            best = fluid_ll.argmax(axis=0)
            to_fluid = fluid_ll.max(axis=0) > own + np.log(10.0)  # ten times more likely fluid
            codes = sub[where]
            codes[to_fluid] = out_codes[np.asarray(fluid)[best[to_fluid]]]
            sub[where] = codes
    refined[box] = sub
    return labels.with_array(refined)


@contextmanager
def ants_random_seed(seed: int) -> Iterator[None]:
    """ANTsPy's random seed set to ``seed`` inside the block, the previous one restored after it.

    antspy ignores a ``random_seed`` argument: its seed is the module-level ``ants.config._random_seed``
    (None: ANTs seeds from the clock, and the metric's sample points moved between runs).
    """
    import ants

    previous = ants.config._random_seed
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = previous


ITK_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
_ants_itk_threads: list[int] = []
"""The thread count ANTsPy's ITK took at its first use by pvsquant in this process (it keeps it)."""


def ants_threads(settings: Settings) -> int:
    """Threads of ITK inside ANTsPy (N4, the atlas's deformable registration, label transfer):
    ``settings.threads``.

    These give the same result on any number of threads (the example's N4 bias field and SyN warps,
    cross-correlation and mutual information, hashed identical over separate processes on two
    threads). ITK's Mattes metric with a global transform does not: it flushes each thread's
    joint-histogram derivatives into one shared array under a lock, in whatever order the threads
    get there (on two threads the example's labels differed by ~1000-2500 voxels from run to run),
    so ANTs' affine stage runs in a child process on one thread (:func:`atlas_affine`). A SimpleITK
    affine in its place failed on one painted map (caudate 0.60, hippocampus 0.28). ANTsPy's
    reproducible preset, global correlation in the affine stage (``antsRegistrationSyNRepro``), lost
    Dice on the painted benchmark (hippocampus 0.68 -> 0.58 on 3 maps).
    """
    return max(1, settings.threads)


@contextmanager
def ants_itk_threads(threads: int) -> Iterator[None]:
    """``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` set to ``threads`` inside the block, restored after it.

    ANTsPy's ITK reads the variable once, at its first filter in the process, and keeps that count
    (setting it later changes nothing): a block asking for another count than the first one gets a
    warning, since its results may then vary from run to run. Enter the block before ANTsPy's first use.
    """
    if not _ants_itk_threads:
        _ants_itk_threads.append(threads)
    elif _ants_itk_threads[0] != threads:
        log.warning("ANTs keeps the %d thread(s) it started with in this process; %d asked for. "
                    "Run with other thread or determinism settings in a new process.", _ants_itk_threads[0], threads)
    previous = os.environ.get(ITK_THREADS_VARIABLE)
    os.environ[ITK_THREADS_VARIABLE] = str(threads)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ITK_THREADS_VARIABLE, None)
        else:
            os.environ[ITK_THREADS_VARIABLE] = previous


ATLAS_AFFINE = {"aff_metric": "mattes", "aff_iterations": (2100, 1200), "aff_shrink_factors": (4, 2),
                "aff_smoothing_sigmas": (3, 2)}
"""The affine stage of ANTsPy's ``SyN`` preset (Mattes mutual information, 32 bins, 20% regular
sampling) without its last two levels (1200 steps at the same shrink factor 2 with less smoothing,
and 0 steps at full resolution): they took 3.5 of its 8.4 s on the example, and the deformable
stage after it corrects what they refined (painted benchmark: ``benchmarks/results_segmentation_atlas.md``)."""


def atlas_affine(subject: Volume, template_path: Path, folder: Path, settings: Settings) -> str:
    """ANTs' affine registration of the template (moving) to ``subject`` (fixed), run in a child
    process whose ITK has one thread when ``settings.deterministic``; returns the path of its
    transform (``folder/affine_0GenericAffine.mat``).

    ITK's Mattes metric with a global transform sums its threads' parts in a varying order (on
    two threads the example's labels differed by ~1000-2500 voxels from run to run), and ANTsPy's
    ITK keeps the thread count it started with for the whole process: in a child, this stage gets
    one thread while the deformable stage here, deterministic on any number, gets them all."""
    from ..io import save_volume

    fixed_path = save_volume(subject, folder / "subject.nii.gz", dtype=np.float32)
    prefix = str(folder / "affine_")
    threads = 1 if settings.deterministic else max(1, settings.threads)
    code = ("import sys; from pvsquant.pipeline.anatomy import _atlas_affine_child; "
            "_atlas_affine_child(*sys.argv[1:])")
    env = {**os.environ, ITK_THREADS_VARIABLE: str(threads)}
    done = subprocess.run([sys.executable, "-c", code, str(fixed_path), str(template_path), prefix,
                           str(settings.seed + 1)], env=env, capture_output=True, text=True)
    transform = prefix + "0GenericAffine.mat"
    if done.returncode != 0 or not Path(transform).is_file():
        raise SegmentationError(f"the atlas's affine registration failed (exit {done.returncode}): "
                                f"{done.stderr.strip()[-500:]}")
    return transform


def _atlas_affine_child(fixed_path: str, template_path: str, prefix: str, seed: str) -> None:
    """The child process of :func:`atlas_affine`."""
    import ants

    ants.config._random_seed = int(seed)
    ants.registration(fixed=ants.image_read(fixed_path), moving=ants.image_read(template_path),
                      type_of_transform="Affine", outprefix=prefix, **ATLAS_AFFINE)


BRAIN_GRID_MARGIN_MM = 10.0
"""Margin around the brain mask's bounding box of the grid the atlas is registered on."""


def brain_grid(t1: Volume, mask: Volume, spacing_mm: float, margin_mm: float = BRAIN_GRID_MARGIN_MM
               ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of an isotropic ``spacing_mm`` grid aligned with ``t1``'s over the brain
    mask's bounding box grown by ``margin_mm`` (skull, neck and air only add voxels to register:
    on the example 0.56 of the whole field of view's)."""
    affine, shape = reslice_affine(t1.affine, t1.shape, (spacing_mm,) * 3)
    inside = np.argwhere(mask.array)
    if len(inside) == 0:
        return affine, shape
    # The brain's voxels in the isotropic grid, by their corners' positions (no resampling needed).
    to_grid = np.linalg.inv(affine) @ t1.affine
    lo_hi = np.stack([inside.min(axis=0) - 0.5, inside.max(axis=0) + 0.5])
    corners = np.array([[lo_hi[i, 0], lo_hi[j, 1], lo_hi[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    grid = corners @ to_grid[:3, :3].T + to_grid[:3, 3]
    margin = margin_mm / spacing_mm
    start = np.clip(np.floor(grid.min(axis=0) - margin), 0, np.asarray(shape) - 1).astype(int)
    stop = np.clip(np.ceil(grid.max(axis=0) + margin) + 1, start + 1, np.asarray(shape)).astype(int)
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return cropped, tuple(int(n) for n in stop - start)


def segment_with_atlas(t1: Volume, settings: Settings = Settings(), template_labels: Path | None = None,
                       keep_inputs: bool = False) -> Anatomy:
    """Register the shipped labelled template to the T1, carry its labels over, refine them.

    ``template_labels``: another label map of the template than the shipped one
    (``Settings.atlas_labels``), e.g. a leave-one-out vote to train the subcortical refiner;
    ``keep_inputs``: keep the refinements' inputs in the result (``Anatomy.atlas_labels``,
    ``Anatomy.corrected``; two more T1-sized volumes, so off in runs)."""
    with ants_itk_threads(ants_threads(settings)):
        return _segment_with_atlas(t1, settings, template_labels, keep_inputs)


def _segment_with_atlas(t1: Volume, settings: Settings, template_labels: Path | None, keep_inputs: bool
                        ) -> Anatomy:
    import ants

    template_path, labels_path = atlas_files(settings.atlas_labels)
    labels_path = template_labels or labels_path
    template = ants.image_read(str(template_path))
    template_labels = ants.image_read(str(labels_path))

    tic = time.perf_counter()
    mask = brain_mask(t1)
    brain_ml = mask.array.sum() * mask.voxel_volume_ml
    if brain_ml < 300:
        raise SegmentationError(
            f"brain mask of {t1.source.name if t1.source else 'the T1'} is only {brain_ml:.0f} ml; "
            "is this a T1-weighted brain scan?")
    log.debug("brain mask (deepbet): %.0f ml, %.1f s", brain_ml, time.perf_counter() - tic)

    # Register on an isotropic copy (atlas_grid_mm) of the bias-corrected, skull-stripped T1,
    # cropped to the brain: the metrics cost per voxel of the fixed image.
    tic = time.perf_counter()
    work_affine, work_shape = brain_grid(t1, mask, settings.atlas_grid_mm)
    t1_work = resample(t1, work_affine, work_shape, order=1)
    mask_work = resample(mask.with_array(mask.array.astype(np.float32)), work_affine, work_shape, order=1)
    fixed_mask = _to_ants(mask_work.with_array((mask_work.array > 0.5).astype(np.float32)))
    bias = ants.n4_bias_field_correction(_to_ants(t1_work), mask=fixed_mask, shrink_factor=3,
                                         convergence={"iters": [50, 40, 30], "tol": 1e-6},
                                         return_bias_field=True)
    bias_work = Volume(np.asarray(bias.numpy(), np.float32), work_affine)
    fixed_volume = t1_work.with_array(t1_work.array / np.maximum(bias_work.array, 1e-3)
                                      * (mask_work.array > 0.5))
    fixed = _to_ants(fixed_volume)
    log.debug("N4 bias field: %.1f s", time.perf_counter() - tic)
    tic = time.perf_counter()
    # ANTs writes its transforms (two ~20 MB warp fields) to files; keep them in a folder of
    # our own that is removed afterwards, or every subject of a cohort leaves them in /tmp.
    with tempfile.TemporaryDirectory(prefix="pvsquant_ants_") as transforms_dir, \
            ants_random_seed(settings.seed + 1):
        folder = Path(transforms_dir)
        affine = atlas_affine(fixed_volume, template_path, folder, settings)
        superior = _superior_axis(np.asarray(ants.read_transform(affine).parameters[:9], float).reshape(3, 3))
        reg = ants.registration(fixed=fixed, moving=template, type_of_transform="SyNOnly", initial_transform=affine,
                                syn_metric=settings.atlas_syn_metric,
                                syn_sampling=2 if settings.atlas_syn_metric == "CC" else 32,
                                reg_iterations=settings.atlas_syn_iterations,
                                outprefix=str(folder / "atlas_"))
        warped = ants.apply_transforms(fixed=_to_ants(t1), moving=template_labels,
                                       transformlist=reg["fwdtransforms"], interpolator="genericLabel")
    labels = t1.with_array(np.asarray(warped.numpy(), dtype=np.int32))
    log.debug("atlas registration (ANTs SyN): %.1f s", time.perf_counter() - tic)

    tic = time.perf_counter()
    learned = settings.refine_labels and settings.subcortical_refiner != "none"
    # What the refinements start from, made only where something reads it.
    atlas_labels = standardise_labels(labels.array) * mask.array if learned or keep_inputs else None
    corrected = None
    if settings.refine_labels or keep_inputs:
        bias_native = resample(bias_work, t1.affine, t1.shape, order=1, cval=1.0).array
        corrected = t1.with_array(t1.array / np.maximum(bias_native, 1e-3))
    if settings.refine_labels:
        assert corrected is not None
        labels = refine_labels(corrected, labels, mask.array)
        log.debug("intensity refinement: %.1f s", time.perf_counter() - tic)
    array = labels.array
    array[~mask.array] = 0
    array = standardise_labels(array)
    if learned:
        assert corrected is not None and atlas_labels is not None
        tic = time.perf_counter()
        refiner = subcortical.load_refiner(settings.subcortical_refiner)
        array = subcortical.refine(corrected, atlas_labels, array, mask.array, refiner)
        log.debug("learned subcortical refinement: %.1f s", time.perf_counter() - tic)
    anatomy_volume = t1.with_array(array)
    anatomy = Anatomy(labels=anatomy_volume, method="atlas", superior_axis=superior, brain_mask=mask)
    if keep_inputs:
        assert atlas_labels is not None
        anatomy = dataclasses.replace(anatomy, atlas_labels=t1.with_array(atlas_labels), corrected=corrected)
    return anatomy


def _superior_axis(subject_to_template: np.ndarray) -> np.ndarray:
    """The template's superior axis in subject world (RAS+), from the linear part of the affine
    map of subject points onto template points (LPS, ITK's convention)."""
    inv = np.linalg.inv(subject_to_template)  # template -> subject
    s_lps = inv @ np.array([0.0, 0.0, 1.0])  # superior is +z in both LPS and RAS
    s_ras = np.array([-s_lps[0], -s_lps[1], s_lps[2]])
    s_ras /= np.linalg.norm(s_ras)
    if s_ras[2] < 0.5:
        log.warning("atlas registration puts the head's superior axis at %s; check the result", s_ras.round(2))
    return s_ras


def segment_with_samseg(t1: Volume, settings: Settings = Settings()) -> Anatomy:
    """Run FreeSurfer's SAMSEG on the T1 in a subprocess and read its segmentation."""
    from ..io import load_volume, save_volume

    exe = os.environ.get("PVSQUANT_SAMSEG") or shutil.which("run_samseg")
    if not exe:
        raise DependencyError(
            "--segmenter samseg needs FreeSurfer's SAMSEG: install it in its own environment "
            "(python -m venv samseg-env && samseg-env/bin/pip install samseg) and set "
            "PVSQUANT_SAMSEG=samseg-env/bin/run_samseg, or put run_samseg on PATH.")
    with tempfile.TemporaryDirectory(prefix="pvsquant-samseg-") as tmp:
        src = save_volume(t1, Path(tmp) / "t1.nii.gz")
        out = Path(tmp) / "samseg"
        cmd = [exe, "-i", str(src), "-o", str(out), "--threads", str(settings.threads)]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SegmentationError(f"SAMSEG failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        seg = load_volume(out / "seg.mgz", "SAMSEG segmentation", labels=True)
    if seg.shape != t1.shape or not np.allclose(seg.affine, t1.affine, atol=1e-3):
        seg = resample_labels(seg, t1.affine, t1.shape, smooth=False)
    std = t1.with_array(standardise_labels(seg.array))
    std = split_midbrain(std, np.array([0.0, 0.0, 1.0]), settings.midbrain_height_mm)
    return Anatomy(labels=std, method="samseg")


def settings_for_t2(settings: Settings) -> Settings:
    """Settings to label a T2 with the atlas (a T1 template): mutual information instead of
    cross-correlation. The intensity refinement stays as set: its tissue models are fitted to the
    image (EM from the registered atlas), not assumed to be a T1's. On the three shared clinical
    T2s, refining raised the Dice of the T2-only regions with the T1+T2 ones from 0.63/0.58/0.65 to
    0.78/0.71/0.82 (centrum semiovale) and from 0.77/0.74/0.63 to 0.80/0.74/0.68 (hippocampi);
    basal ganglia and midbrain within 0.02 (``benchmarks/results_t2_only.md``).

    The template's labels stay as set (``Settings.atlas_labels``, fused by default). SAMSEG's were
    better on painted T2s (``benchmarks/segmentation.py --contrast t2``, same images and
    registrations, fused -> SAMSEG: caudate 0.456 -> 0.499, pallidum 0.280 -> 0.445, hippocampus
    0.306 -> 0.333) but made the T2-only regions of the shared clinical scans agree less with their
    T1+T2 regions, which use the fused labels (Dice centrum semiovale 0.789 -> 0.686, basal ganglia
    0.882 -> 0.870, hippocampi 0.701 -> 0.684, midbrain 0.852 -> 0.820; the caudate's top, which
    places the centrum semiovale's slab, follows the atlas's convention), so both paths share one.

    The learned subcortical refinement takes the weights trained on painted T2s
    (``subcortical_refiner = "t2"``): on the painted T2s (same images) Dice caudate 0.456 -> 0.601,
    pallidum 0.280 -> 0.477, hippocampus 0.306 -> 0.477 against no learned refinement."""
    return dataclasses.replace(settings, atlas_syn_metric="mattes",
                               subcortical_refiner="none" if settings.subcortical_refiner == "none" else "t2")


def segment_anatomy(t1: Volume, settings: Settings = Settings(), labels: Volume | None = None) -> Anatomy:
    """Labels on the T1 grid by the method ``settings.segmenter`` (or the user's ``labels``)."""
    if labels is not None:
        return labels_from_file(labels, t1, settings)
    if settings.segmenter == "atlas":
        return segment_with_atlas(t1, settings)
    if settings.segmenter == "samseg":
        return segment_with_samseg(t1, settings)
    raise ValueError(f"unknown segmenter {settings.segmenter!r}; expected 'atlas' or 'samseg'")


def structure_volumes_ml(anatomy: Anatomy) -> dict[str, float]:
    """Volume (ml) of each structure of :data:`STRUCTURES`, left and right together."""
    vox_ml = anatomy.labels.voxel_volume_ml
    return {name: float(np.isin(anatomy.labels.array, codes).sum() * vox_ml) for name, codes in STRUCTURES.items()}


