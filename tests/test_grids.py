from __future__ import annotations

import numpy as np
import pytest

from pvsquant.grids import ball, resample, resample_labels, reslice_affine, voxel_indices, world_coordinates
from pvsquant.types import Volume

from .conftest import oblique_affine


def test_reslice_keeps_field_of_view_and_axes():
    aff = oblique_affine((0.5, 0.5, 4.0), (400, 440, 36))
    new, shape = reslice_affine(aff, (400, 440, 36), (0.5, 0.5, 0.8))
    assert shape == (400, 440, 180)
    np.testing.assert_allclose(np.sqrt((new[:3, :3] ** 2).sum(0)), [0.5, 0.5, 0.8])
    # same directions
    np.testing.assert_allclose(new[:3, :3] / [0.5, 0.5, 0.8], aff[:3, :3] / [0.5, 0.5, 4.0], atol=1e-12)
    # the field of view's corner is shared
    corner_old = world_coordinates(aff, np.array([[-0.5, -0.5, -0.5]]))
    corner_new = world_coordinates(new, np.array([[-0.5, -0.5, -0.5]]))
    np.testing.assert_allclose(corner_old, corner_new, atol=1e-9)


def test_resample_linear_field_is_exact_on_oblique_grids():
    aff = oblique_affine((2.0, 2.0, 4.0), (30, 30, 12))
    idx = np.indices((30, 30, 12)).reshape(3, -1).T
    world = world_coordinates(aff, idx)
    field = (2 * world[:, 0] - world[:, 1] + 0.5 * world[:, 2]).reshape(30, 30, 12).astype(np.float32)
    src = Volume(field, aff)
    target, shape = reslice_affine(aff, src.shape, (1.0, 1.0, 1.0))
    out = resample(src, target, shape, order=1)
    tw = world_coordinates(target, np.indices(shape).reshape(3, -1).T)
    expected = (2 * tw[:, 0] - tw[:, 1] + 0.5 * tw[:, 2]).reshape(shape)
    inner = (slice(4, -4),) * 3
    np.testing.assert_allclose(out.array[inner], expected[inner], atol=1e-3)


def test_resample_through_world_transform():
    src = Volume(np.zeros((20, 20, 20), np.float32), np.eye(4))
    src.array[10, 10, 10] = 1
    shift = np.eye(4)
    shift[:3, 3] = [3, 0, 0]  # target world point p corresponds to source point p + 3
    out = resample(src, np.eye(4), (20, 20, 20), order=0, target_to_source_world=shift)
    assert np.argwhere(out.array == 1).tolist() == [[7, 10, 10]]


def test_resample_labels_keeps_codes_and_smooths_thick_slices():
    lab = np.zeros((40, 40, 10), np.int32)
    lab[10:30, 10:30, 3:7] = 41
    lab[15:25, 15:25, 4:6] = 11
    src = Volume(lab, np.diag([1.0, 1.0, 4.0, 1.0]))
    aff, shape = reslice_affine(src.affine, src.shape, (1.0, 1.0, 1.0))
    out = resample_labels(src, aff, shape)
    assert set(np.unique(out.array)) == {0, 11, 41}
    vol_in = (lab == 41).sum() * 4
    vol_out = (out.array == 41).sum()
    assert abs(vol_out - vol_in) / vol_in < 0.15



def _resample_labels_whole(volume, target_affine, target_shape, target_to_source_world):
    """The reference: every label's one-hot interpolated over the whole volume."""
    from scipy import ndimage

    from pvsquant.grids import voxel_map

    m = voxel_map(volume.affine, target_affine, target_to_source_world)
    best = np.zeros(target_shape, np.float32)
    code_of = np.zeros(target_shape, np.int32)
    for code in [c for c in np.unique(volume.array) if c != 0]:
        p = ndimage.affine_transform((volume.array == code).astype(np.float32), m[:3, :3], offset=m[:3, 3],
                                     output_shape=target_shape, order=1, prefilter=False)
        code_of[p > best] = code
        best = np.maximum(best, p)
    code_of[best < 0.25] = 0
    return code_of


def test_resample_labels_from_each_labels_box_equals_the_whole_volume():
    rng = np.random.default_rng(3)
    lab = np.zeros((48, 44, 12), np.int32)
    lab[5:40, 6:40, 1:11] = 2
    for code in (10, 11, 17, 53, 77):  # small structures, one touching the array's edge
        c = rng.integers([3, 3, 0], [45, 41, 12])
        lab[max(c[0] - 3, 0):c[0] + 3, max(c[1] - 4, 0):c[1] + 4, max(c[2] - 1, 0):c[2] + 2] = code
    lab[0:4, 0:5, 0:3] = 24
    src = Volume(lab, oblique_affine())
    rigid = np.eye(4)
    a = np.deg2rad(7.0)
    rigid[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    rigid[:3, 3] = [1.3, -0.7, 2.1]
    aff, shape = reslice_affine(src.affine, src.shape, (0.7, 0.7, 1.1))
    out = resample_labels(src, aff, shape, target_to_source_world=rigid)
    expected = _resample_labels_whole(src, aff, shape, rigid)
    assert {0, 2, 10, 11, 17, 53, 77} <= set(np.unique(expected))
    assert (out.array != expected).sum() <= 2  # coordinates rounded differently may flip an exact tie


def test_voxel_world_round_trip():
    aff = oblique_affine()
    idx = np.array([[1.0, 2.0, 3.0], [10.5, 0.0, 7.25]])
    np.testing.assert_allclose(voxel_indices(aff, world_coordinates(aff, idx)), idx, atol=1e-9)


def test_ball_is_physical_on_anisotropic_grid():
    b = ball(2.0, (0.5, 0.5, 0.8))
    assert b.shape == (9, 9, 5)
    assert b[4, 4, 2] and not b[0, 0, 0]


@pytest.mark.parametrize("radius", [0.4, 1.0, 2.3])
def test_ball_morphology_by_distance_equals_scipy(radius):
    from scipy import ndimage

    from pvsquant.grids import ball, close_ball, dilate_ball, erode_ball

    spacing = (0.5, 0.6, 0.8)
    rng = np.random.default_rng(int(radius * 10))
    mask = ndimage.gaussian_filter(rng.normal(size=(30, 26, 18)), 2.0) > 0.05
    element = ball(radius, spacing)
    np.testing.assert_array_equal(dilate_ball(mask, radius, spacing),
                                  ndimage.binary_dilation(mask, structure=element))
    np.testing.assert_array_equal(erode_ball(mask, radius, spacing), ndimage.binary_erosion(mask, structure=element))
    np.testing.assert_array_equal(close_ball(mask, radius, spacing), ndimage.binary_closing(mask, structure=element))
    assert not dilate_ball(np.zeros((4, 4, 4), bool), radius, spacing).any()


def test_distance_to_zero_without_a_zero_is_infinite():
    from pvsquant.grids import distance_sq_to_zero, within

    far = distance_sq_to_zero(np.ones((3, 4, 5), bool), (0.5, 0.5, 0.8))
    assert np.isinf(far).all() and not within(far, 1e6).any()


def test_ball_morphology_of_a_small_mask_in_a_large_array_equals_scipy():
    """Dilation and erosion work on the mask's bounding box: a blob near a corner, in the middle
    and touching the array's edge gives SciPy's result on the whole array."""
    from scipy import ndimage

    from pvsquant.grids import ball, dilate_ball, erode_ball

    spacing = (0.5, 0.5, 0.8)
    mask = np.zeros((60, 50, 30), bool)
    mask[1:5, 2:6, 0:3] = True  # touches the edge along z
    mask[30:38, 20:24, 12:16] = True
    for radius in (0.5, 1.0, 2.0):
        element = ball(radius, spacing)
        np.testing.assert_array_equal(dilate_ball(mask, radius, spacing),
                                      ndimage.binary_dilation(mask, structure=element))
        np.testing.assert_array_equal(erode_ball(mask, radius, spacing),
                                      ndimage.binary_erosion(mask, structure=element))


@pytest.mark.parametrize("order", [0, 1])
def test_resample_of_a_small_box_into_a_large_grid_equals_the_whole_grid(order):
    """A crop pasted back onto a large grid is resampled only where it can reach: the same
    values as SciPy's transform of the whole grid (0 elsewhere)."""
    from scipy import ndimage

    from pvsquant.grids import voxel_map

    rng = np.random.default_rng(order)
    box_affine = oblique_affine((0.5, 0.5, 0.8), (24, 30, 14), angle_deg=9.0)
    data = rng.random((24, 30, 14)).astype(np.float32) if order else rng.integers(0, 5, (24, 30, 14)).astype(np.int32)
    target = np.diag([0.7, 0.7, 3.0, 1.0])
    target[:3, 3] = [-70.0, -70.0, -45.0]
    shape = (200, 200, 30)
    m = voxel_map(box_affine, target)
    whole = ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order,
                                     mode="constant", prefilter=False)
    fast = resample(Volume(data, box_affine), target, shape, order=order).array
    assert np.count_nonzero(whole) > 100
    np.testing.assert_array_equal(fast, whole)
