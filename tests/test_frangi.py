"""Frangi baseline counter on small synthetic volumes: bright tubes on a dark, noisy background."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from pvsquant.pipeline.frangi import FrangiResult, FrangiSettings, count_frangi, vesselness

SPACING = (0.5, 0.5, 0.8)
EXTENT_MM = (40.0, 40.0, 25.0)
BACKGROUND = 0.3
BRIGHT = 0.9
K = 6


def _grid_mm(spacing=SPACING, extent_mm=EXTENT_MM) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape of the volume and the (X, Y, Z, 3) mm coordinates of its voxel centres (index * spacing)."""
    shape = tuple(round(e / s) for e, s in zip(extent_mm, spacing, strict=False))
    axes = [np.arange(n) * s for n, s in zip(shape, spacing, strict=False)]
    return shape, np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # type: ignore[return-value]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point to the segment [a, b]."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def _coverage(distance: np.ndarray, radius: float, edge_mm: float = 0.5) -> np.ndarray:
    """Partial volume: the fraction of a voxel inside an object whose surface is ``radius`` away,
    a linear ramp across one voxel width."""
    return np.clip(0.5 + (radius - distance) / edge_mm, 0.0, 1.0)


def _segments_apart(a0, a1, b0, b1, gap: float) -> bool:
    t = np.linspace(0, 1, 25)[:, None]
    pa, pb = a0 + t * (a1 - a0), b0 + t * (b1 - b0)
    return bool(np.linalg.norm(pa[:, None] - pb[None], axis=-1).min() > gap)


def make_tube_volume(n_tubes: int, seed: int = 0, blob_diameter_mm: float | None = None, draw_blob: bool = True,
                     noise_sd: float = 0.02, spacing=SPACING,
                     ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, float]], np.ndarray | None]:
    """A 40 x 40 x 25 mm volume (0.5 x 0.5 x 0.8 mm voxels by default): background 0.3 with
    Gaussian noise, ``n_tubes`` straight tubes of intensity 0.9 (diameter 1-2 mm, axis 6-12 mm
    long, random orientation, >= 6 mm apart, >= 3 mm from the border) and optionally one bright
    ball >= 6 mm away from every tube. All of it drawn from ``default_rng(seed)``; with the same
    seed, ``draw_blob=False`` gives the same volume without the ball.

    Returns (image, tubes as (end, end, radius) in mm, ball centre in mm or None).
    """
    rng = np.random.default_rng(seed)
    shape, points = _grid_mm(spacing)
    extent = np.asarray(EXTENT_MM)
    margin = 3.0
    blob_centre = None
    if blob_diameter_mm is not None:
        blob_centre = extent / 2 + rng.uniform(-3, 3, 3)
    tubes: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(10000):
        if len(tubes) == n_tubes:
            break
        length, radius = rng.uniform(6.0, 12.0), rng.uniform(0.5, 1.0)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        centre = rng.uniform(margin + length / 2, extent - margin - length / 2)
        a, b = centre - direction * length / 2, centre + direction * length / 2
        if blob_centre is not None and _segment_distance(blob_centre[None], a, b)[0] < blob_diameter_mm / 2 + 6.0:
            continue
        if all(_segments_apart(a, b, t0, t1, 6.0) for t0, t1, _ in tubes):
            tubes.append((a, b, radius))
    assert len(tubes) == n_tubes, "could not place the tubes"
    fraction = np.zeros(shape)
    for a, b, radius in tubes:
        fraction = np.maximum(fraction, _coverage(_segment_distance(points, a, b), radius))
    if blob_centre is not None and draw_blob:
        fraction = np.maximum(fraction, _coverage(np.linalg.norm(points - blob_centre, axis=-1),
                                                  blob_diameter_mm / 2))
    image = BACKGROUND + (BRIGHT - BACKGROUND) * fraction + rng.normal(0.0, noise_sd, shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), tubes, blob_centre


def voxel_of(point_mm, spacing=SPACING) -> tuple[int, int, int]:
    return tuple(int(np.rint(c)) for c in np.asarray(point_mm) / np.asarray(spacing))  # type: ignore[return-value]


def full_mask(image: np.ndarray) -> np.ndarray:
    return np.ones(image.shape, np.float32)


def tube_labels(result: FrangiResult, tubes) -> list[int]:
    """Label at the midpoint of each tube (0: not counted)."""
    return [int(result.labels[voxel_of((a + b) / 2)]) for a, b, _ in tubes]


# -- counting --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_k_tubes(seed):
    image, tubes, _ = make_tube_volume(K, seed=seed)
    result = count_frangi(image, full_mask(image), SPACING)
    assert abs(result.count - K) <= 1, result.count
    # the counted components are the tubes, one each
    found = [label for label in tube_labels(result, tubes) if label]
    assert len(found) >= K - 1 and len(set(found)) == len(found), tube_labels(result, tubes)


def test_no_tubes_counts_nothing():
    image, _, _ = make_tube_volume(0, seed=3)
    result = count_frangi(image, full_mask(image), SPACING)
    assert result.count <= 1
    assert float(result.vesselness.max()) < FrangiSettings().threshold  # noise alone stays far below


def test_round_blob_is_not_counted():
    with_blob, tubes, centre = make_tube_volume(K, seed=4, blob_diameter_mm=8.0)
    without, tubes2, _ = make_tube_volume(K, seed=4, blob_diameter_mm=8.0, draw_blob=False)
    assert all(np.allclose(t[0], u[0]) for t, u in zip(tubes, tubes2, strict=True))
    mask = full_mask(with_blob)
    near_blob = _ball(centre, 4.0 + 1.0)

    reference = count_frangi(without, mask, SPACING)
    result = count_frangi(with_blob, mask, SPACING)
    assert abs(result.count - reference.count) <= 1
    assert result.labels[voxel_of(centre)] == 0
    assert not result.labels[near_blob].any()

    # each of the two rules alone rejects it; without them the blob's rim is counted
    for settings in (FrangiSettings(lesion_intensity=None), FrangiSettings(round_min_size_mm3=np.inf)):
        assert not count_frangi(with_blob, mask, SPACING, settings).labels[near_blob].any()
    unguarded = count_frangi(with_blob, mask, SPACING, FrangiSettings(lesion_intensity=None,
                                                                       round_min_size_mm3=np.inf))
    assert unguarded.labels[near_blob].any()


def _ball(centre_mm, radius_mm) -> np.ndarray:
    _, points = _grid_mm()
    return np.linalg.norm(points - np.asarray(centre_mm), axis=-1) <= radius_mm


@pytest.mark.parametrize("multiply", [False, True])
def test_tube_outside_mask_is_not_counted(multiply):
    image, tubes, _ = make_tube_volume(K, seed=5)
    full = count_frangi(image, full_mask(image), SPACING)
    assert all(tube_labels(full, tubes))
    a, b, _ = tubes[0]
    hole = _ball((a + b) / 2, 8.0)  # holds the whole tube (axis <= 12 mm), no other one (>= 6 mm away)
    assert not any(_ball((t0 + t1) / 2, 0.1)[hole].any() for t0, t1, _ in tubes[1:])
    mask = ndimage.gaussian_filter((~hole).astype(np.float32), 1.0 / np.asarray(SPACING))
    if multiply:  # as in a real crop: the image multiplied by its soft mask, default settings
        result = count_frangi(image * mask, mask, SPACING)
    else:  # the tube stays visible: only the centroid rule can reject it
        result = count_frangi(image, mask, SPACING, FrangiSettings(fill_outside=False))
    assert result.count == full.count - 1
    assert result.labels[voxel_of((a + b) / 2)] == 0
    assert all(tube_labels(result, tubes[1:]))


def test_labels_and_maps():
    image, tubes, _ = make_tube_volume(K, seed=6)
    # region: x >= 20 mm, so the components met first in raster order (low x) are rejected
    mask = np.zeros(image.shape, np.float32)
    mask[int(20 / SPACING[0]):] = 1
    result = count_frangi(image, mask, SPACING)
    n_inside = sum(float((a + b)[0] / 2) >= 20 for a, b, _ in tubes)
    assert 0 < n_inside < K and result.count == n_inside
    assert result.labels.dtype == np.int32 and result.labels.shape == image.shape
    assert set(np.unique(result.labels)) == set(range(result.count + 1))
    assert result.vesselness.dtype == np.float32 and result.vesselness.shape == image.shape
    assert float(result.vesselness.min()) >= 0.0 and float(result.vesselness.max()) < 1.0
    # every counted component lies where the vesselness passes the threshold
    assert float(result.vesselness[result.labels > 0].min()) >= FrangiSettings().threshold


def test_threads_give_the_same_result():
    """Frangi on two threads (the Hessian's filters and the eigenvalue blocks in parallel) is the
    one-thread result, bit for bit (the isotropic copy of this volume spans two eigenvalue blocks)."""
    image, _, _ = make_tube_volume(K, seed=3)
    mask = np.ones(image.shape, np.float32)
    one = count_frangi(image, mask, SPACING, workers=1)
    two = count_frangi(image, mask, SPACING, workers=2)
    assert one.count == two.count == K
    assert np.array_equal(one.vesselness, two.vesselness) and np.array_equal(one.labels, two.labels)


def test_size_range():
    image, _, _ = make_tube_volume(K, seed=11)
    mask = full_mask(image)
    result = count_frangi(image, mask, SPACING)
    voxel_mm3 = float(np.prod(SPACING))
    sizes = np.bincount(result.labels.ravel())[1:] * voxel_mm3
    assert result.count == K and sizes.min() >= FrangiSettings().min_size_mm3
    middle = float(np.median(sizes))
    small = count_frangi(image, mask, SPACING, FrangiSettings(max_size_mm3=middle))
    large = count_frangi(image, mask, SPACING, FrangiSettings(min_size_mm3=middle + 1e-6))
    assert small.count == int(np.sum(sizes <= middle)) and large.count == int(np.sum(sizes > middle))
    assert small.count + large.count == K


def test_thin_region_edge_is_not_a_tube():
    """The crop is the T2 times a soft mask: a thin region is a bright rod on zero. No PVS there."""
    shape, points = _grid_mm()
    centre = np.asarray(EXTENT_MM) / 2
    rod = (np.hypot(points[..., 0] - centre[0], points[..., 2] - centre[2]) < 2.0) & (
        np.abs(points[..., 1] - centre[1]) < 6.0)
    region = rod | (np.linalg.norm(points - centre - [9.0, 0, 0], axis=-1) < 6.0)
    mask = ndimage.gaussian_filter(region.astype(np.float32), 1.0 / np.asarray(SPACING))
    rng = np.random.default_rng(7)
    image = (0.35 + rng.normal(0, 0.02, shape)) * mask
    image = (image / image.max()).astype(np.float32)
    assert count_frangi(image, mask, SPACING).count == 0
    assert count_frangi(image, mask, SPACING, FrangiSettings(fill_outside=False)).count > 0


# -- the filter ------------------------------------------------------------------------------


def test_vesselness_handles_anisotropy():
    """The same tubes drawn on the 0.5 x 0.5 x 0.8 grid and on a 0.5 mm grid give the same map
    in the planes both grids share (z = 0, 4, 8 ... mm)."""
    iso = (0.5, 0.5, 0.5)
    aniso_image, _, _ = make_tube_volume(K, seed=8, noise_sd=0.0)
    iso_image, tubes2, _ = make_tube_volume(K, seed=8, noise_sd=0.0, spacing=iso)
    reference = vesselness(iso_image, iso)[:, :, ::8]
    near = np.min([_segment_distance(_grid_mm(iso)[1], a, b) for a, b, _ in tubes2], axis=0)[:, :, ::8] < 1.0

    def error(spacing):
        v = vesselness(aniso_image, spacing)[:, :, ::5]
        return float(np.abs(v - reference)[near].mean())

    assert error(SPACING) < 0.04
    assert error((0.5, 0.5, 0.5)) > 2 * error(SPACING)  # ignoring the anisotropy would be seen


def test_vesselness_agrees_with_skimage_frangi():
    frangi = pytest.importorskip("skimage.filters").frangi
    hessian = pytest.importorskip("skimage.feature")
    iso = (0.5, 0.5, 0.5)
    image, _, _ = make_tube_volume(3, seed=9, spacing=iso)
    image = image[20:60, 20:60, 5:45]
    settings = FrangiSettings(sigmas_mm=(0.75,))
    sigma = 0.75 / 0.5
    ours = vesselness(image, iso, settings)
    ref = frangi(image, sigmas=[sigma], alpha=settings.alpha, beta=settings.beta, gamma=settings.gamma / sigma**2,
                 black_ridges=False)
    # skimage's validity test: two largest-magnitude eigenvalues of the negated image positive
    eig = hessian.hessian_matrix_eigvals(hessian.hessian_matrix(-image, sigma, use_gaussian_derivatives=True))
    eig = np.take_along_axis(eig, np.abs(eig).argsort(0), 0)
    valid = (eig[1] > 0) & (eig[2] > 0)
    interior = np.zeros(image.shape, bool)
    interior[8:-8, 8:-8, 8:-8] = True
    assert float(ref[interior].max()) > 0.5  # the tubes are there
    assert float(np.abs(ours - ref)[interior & valid].max()) < 0.02
    assert float(ours[interior & ~valid].max()) < 0.15


# -- bad input -------------------------------------------------------------------------------


def test_shape_mismatch_raises():
    image = np.zeros((20, 20, 10), np.float32)
    with pytest.raises(ValueError, match=r"same shape"):
        count_frangi(image, np.ones((20, 20, 11), np.float32), SPACING)


@pytest.mark.parametrize("image, spacing", [
    (np.zeros((20, 20), np.float32), SPACING),
    (np.full((20, 20, 10), np.nan, np.float32), SPACING),
    (np.zeros((20, 20, 10), np.float32), (0.5, 0.5)),
    (np.zeros((20, 20, 10), np.float32), (0.5, 0.0, 0.8)),
])
def test_bad_input_raises(image, spacing):
    with pytest.raises(ValueError):
        count_frangi(image, np.ones(image.shape, np.float32), spacing)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match=r"sigmas_mm"):
        FrangiSettings(sigmas_mm=())
    with pytest.raises(ValueError, match=r"min_size_mm3"):
        replace(FrangiSettings(), min_size_mm3=10.0, max_size_mm3=5.0)


def test_empty_region_counts_nothing():
    image, _, _ = make_tube_volume(2, seed=10)
    result = count_frangi(image, np.zeros(image.shape, np.float32), SPACING)
    assert result.count == 0 and not result.labels.any()


def test_shared_hessian_passes_equal_scipys_gaussian_derivatives():
    """The Hessian's separable passes are shared between its six components: bit for bit
    ``sigma**2 * gaussian_filter(image, sigma, order)``."""
    from concurrent.futures import ThreadPoolExecutor

    from pvsquant.pipeline.frangi import _HESSIAN_ORDERS, _hessian

    image = np.random.default_rng(0).random((70, 40, 18)).astype(np.float32)  # several slabs of lines
    buffers = [np.empty_like(image) for _ in range(9)]
    with ThreadPoolExecutor(2) as pool:
        for sigma in (1.0, 1.5):
            h = _hessian(image, sigma, pool, buffers)
            for component, order in zip(h, _HESSIAN_ORDERS, strict=True):
                expected = np.float32(sigma**2) * ndimage.gaussian_filter(image, sigma, order=order, mode="reflect")
                np.testing.assert_array_equal(component.reshape(image.shape), expected)


def test_resampling_along_the_slices_matches_scipy():
    """The isotropic copy (slices only) and back: SciPy's linear interpolation to float32 rounding."""
    import warnings

    from pvsquant.pipeline.frangi import _resample

    image = np.random.default_rng(1).random((12, 10, 9)).astype(np.float32)
    for step, shape in (((1.0, 1.0, 0.625), (12, 10, 14)), ((1.0, 1.0, 1.6), (12, 10, 9))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ndimage.affine_transform(image, np.asarray(step), output_shape=shape, order=1,
                                                mode="nearest", prefilter=False)
        got = _resample(image, np.asarray(step), shape)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
