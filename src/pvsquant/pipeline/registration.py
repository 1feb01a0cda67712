"""Rigid registration of the T1 to the T2 (SimpleITK, Euler3D, Mattes mutual information).

The headers give the starting point, but are never trusted alone: patients move between
series. Both images are brought to an isotropic working grid first so that the
multi-resolution pyramid treats thin in-plane and thick through-plane voxels alike.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

from ..grids import resample, reslice_affine
from ..types import RigidTransform, Settings, Volume

log = logging.getLogger(__name__)

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image (LPS physical space) holding ``volume``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)).astype(np.float32))
    lps = _LPS @ np.asarray(volume.affine, dtype=float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    return image


def _isotropic(volume: Volume, spacing_mm: float) -> Volume:
    affine, shape = reslice_affine(volume.affine, volume.shape, (spacing_mm,) * 3)
    return resample(volume, affine, shape, order=1)


def _normalise(volume: Volume) -> Volume:
    lo, hi = np.percentile(volume.array, [1, 99.5])
    return volume.with_array(np.clip((volume.array - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32))


@contextmanager
def sitk_threads(threads: int) -> Iterator[None]:
    """SimpleITK's global default number of threads set to ``threads`` inside the block, restored after."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def registration_threads(settings: Settings) -> int:
    """Threads of the rigid registration: one when ``settings.deterministic``, else ``settings.threads``.

    With a global (rigid, affine) transform, ITK's Mattes metric flushes each thread's buffered
    joint-histogram derivatives into one shared array under a lock, in whatever order the threads get
    there: on two threads the example's transform differed by ~1e-12 from run to run, enough to move a
    voxel at a region's border. On one thread it is bit-identical.
    """
    return 1 if settings.deterministic else max(1, settings.threads)


def register_t1_to_t2(t1: Volume, t2: Volume, settings: Settings = Settings(),
                      initial_t2_to_t1: np.ndarray | None = None) -> RigidTransform:
    """Rigidly align the T1 to the T2.

    Parameters
    ----------
    t1, t2 : the two scans, each with its own affine.
    initial_t2_to_t1 : start (4x4, RAS+ world); identity (the headers) when None.

    Returns
    -------
    RigidTransform whose ``t2_to_t1`` maps T2 world points onto T1 world points.
    """
    spacing = settings.registration_grid_mm
    fixed = to_sitk(_normalise(_isotropic(t2, spacing)))
    moving = to_sitk(_normalise(_isotropic(t1, spacing)))

    transform = sitk.Euler3DTransform()
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2.0 for s in fixed.GetSize()]))
    transform.SetCenter([float(c) for c in centre])
    if initial_t2_to_t1 is not None:
        m = _LPS @ np.asarray(initial_t2_to_t1) @ _LPS
        transform.SetMatrix([float(v) for v in m[:3, :3].ravel()])
        transform.SetTranslation([float(v) for v in (m[:3, 3] + m[:3, :3] @ centre - centre)])

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)  # deterministic, unlike RANDOM across threads
    # SimpleITK reads seed 0 as "seed from the wall clock" (sitkWallClock): never pass 0, or the same
    # inputs register differently on every run (~0.02 mm, 0.03 degrees on the example).
    reg.SetMetricSamplingPercentage(settings.registration_sampling, settings.seed + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=settings.registration_iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    levels = [max(1, round(f * 1.0 / spacing)) if f > 1 else 1 for f in settings.registration_levels]
    reg.SetShrinkFactorsPerLevel(levels)
    reg.SetSmoothingSigmasPerLevel([max(0.0, (f - 1) * 1.0) for f in settings.registration_levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(transform, inPlace=False)

    # The metric takes SimpleITK's global default (the method's own SetNumberOfThreads does not reach it).
    with sitk_threads(registration_threads(settings)):
        initial_score = float(reg.MetricEvaluate(fixed, moving))
        result = reg.Execute(fixed, moving)
        # Score at the solution on the finest level, full sampling, for a stable QC figure.
        final = sitk.ImageRegistrationMethod()
        final.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        final.SetInterpolator(sitk.sitkLinear)
        final.SetInitialTransform(result)
        score = float(final.MetricEvaluate(fixed, moving))
    log.debug("registration stop: %s", reg.GetOptimizerStopConditionDescription())

    euler = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0)) \
        if result.GetName() == "CompositeTransform" else sitk.Euler3DTransform(result)
    rot = np.asarray(euler.GetMatrix()).reshape(3, 3)
    c = np.asarray(euler.GetCenter())
    t = np.asarray(euler.GetTranslation())
    m_lps = np.eye(4)
    m_lps[:3, :3] = rot
    m_lps[:3, 3] = c + t - rot @ c
    t2_to_t1 = _LPS @ m_lps @ _LPS
    return RigidTransform(t2_to_t1=t2_to_t1, score=score, initial_score=initial_score)


def rigid_from_parameters(angles_deg: tuple[float, float, float], translation_mm: tuple[float, float, float],
                          centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform (rotations about x, y, z in that order, about ``centre_mm``)."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    m = np.eye(4)
    m[:3, :3] = r
    c = np.asarray(centre_mm, dtype=float)
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=float)
    return m


def transform_error(a: np.ndarray, b: np.ndarray, points_mm: np.ndarray) -> tuple[float, float]:
    """(max displacement in mm over ``points_mm``, rotation angle in degrees) between two rigid maps."""
    pa = points_mm @ a[:3, :3].T + a[:3, 3]
    pb = points_mm @ b[:3, :3].T + b[:3, 3]
    d = float(np.linalg.norm(pa - pb, axis=1).max())
    r = a[:3, :3] @ b[:3, :3].T
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    return d, angle
