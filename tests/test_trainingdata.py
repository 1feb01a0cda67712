"""Synthetic PVS and training samples: shapes, partial volume, counts, reproducibility."""
from __future__ import annotations

import numpy as np
import pytest

from pvsquant.learning.synthesis import Tube, blob_occupancy, tube_occupancy
from pvsquant.learning.trainingdata import (
    PVS_SHAPES,
    VISIBILITY_LEVELS,
    AnatomyMap,
    density_map,
    line_density,
    make_sample,
    peak_partial_volume,
    pvs_tubes,
    sample_rng,
    spaced_points,
)
from pvsquant.pipeline.anatomy import standardise_labels
from pvsquant.pipeline.regions import make_regions
from pvsquant.types import REGION_CODES, RigidTransform

from .anatomy_phantom import anatomy_phantom


def grid(spacing, shape):
    affine = np.diag([*list(spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    return affine


def capsule_volume(length, diameter):
    r = diameter / 2
    return np.pi * r ** 2 * (length - diameter) + 4 / 3 * np.pi * r ** 3


@pytest.mark.parametrize("diameter", [0.8, 2.0])
def test_tube_partial_volume_matches_its_volume_on_fine_and_thick_grids(diameter):
    tube = Tube(np.array([0.3, -0.2, 0.4]), np.array([0.6, 0.0, 0.8]), 10.0, diameter)
    expected = capsule_volume(10.0, diameter)
    fine = tube_occupancy([tube], grid((0.5, 0.5, 0.5), (60, 60, 60)), (60, 60, 60), supersample=(2, 2, 2))
    assert fine.sum() * 0.125 == pytest.approx(expected, rel=0.08)
    # Without sub-samples (as the training generator renders on its 0.5 mm grid) the one-voxel
    # linear edge adds about pi * h^2 / 12 per mm of length: ~13% for a 0.8 mm tube.
    coarse = tube_occupancy([tube], grid((0.5, 0.5, 0.5), (60, 60, 60)), (60, 60, 60))
    assert coarse.sum() * 0.125 == pytest.approx(expected, rel=0.15)
    thick_shape = (70, 70, 8)
    thick = tube_occupancy([tube], grid((0.45, 0.45, 4.0), thick_shape), thick_shape, supersample=(2, 2, 8))
    assert thick.sum() * 0.45 * 0.45 * 4.0 == pytest.approx(expected, rel=0.1)
    if diameter < 1.0:
        assert thick.max() < 0.6  # a thin tube fills only part of a 4 mm voxel


def test_blob_occupancy_volume():
    occ = blob_occupancy(np.zeros(3), np.array([3.0, 2.0, 4.0]), np.eye(3), grid((0.5,) * 3, (40,) * 3), (40,) * 3)
    assert occ.sum() * 0.125 == pytest.approx(4 / 3 * np.pi * 24, rel=0.05)


def test_density_map_has_unit_mass_per_centre():
    centres = np.array([[10.2, 12.7, 8.1], [30.0, 20.0, 15.5]])
    d = density_map(centres, (48, 48, 32), np.array([0.5, 0.5, 0.8]))
    assert d.sum() == pytest.approx(2.0, abs=1e-4)
    assert np.unravel_index(d.argmax(), d.shape) in {(10, 13, 8), (30, 20, 15), (30, 20, 16)}
    edge = density_map(np.array([[0.0, 20.0, 15.0]]), (48, 48, 32), np.array([0.5, 0.5, 0.8]))
    assert 0.4 < edge.sum() < 0.7  # half the blob lies outside the grid


def test_line_density_spreads_one_pvs_along_its_axis():
    affine = grid((0.5, 0.5, 0.8), (80, 80, 40))
    inside = Tube(np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.6, 0.8]), 12.0, 1.5)
    d = line_density([inside], affine, (80, 80, 40))
    assert d.sum() == pytest.approx(1.0, abs=0.01)
    along = d.reshape(-1)[np.argsort(d.reshape(-1))[-50:]]  # the brightest voxels lie along the axis
    assert along.min() > 0.3 * along.max()
    # A PVS half outside the grid keeps half its mass.
    half = Tube(np.array([0.0, 0.0, -15.6]), np.array([0.0, 0.0, 1.0]), 12.0, 1.5)
    assert line_density([half], affine, (80, 80, 40)).sum() == pytest.approx(0.5, abs=0.08)


def test_spaced_points_keep_their_distance():
    rng = np.random.default_rng(0)
    pts = spaced_points(rng.uniform(0, 20, (500, 3)), 30, 2.5, rng)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 99
    assert len(pts) > 10 and d.min() >= 2.5


@pytest.fixture(scope="module")
def phantom_map() -> AnatomyMap:
    anatomy = anatomy_phantom()
    labels = anatomy.labels
    regions = make_regions(anatomy, RigidTransform(np.eye(4), 0.0, 0.0), labels.with_array(labels.array * 1.0))
    return AnatomyMap("phantom", labels, regions.work, np.array([0.0, 5.0, 15.0]), np.array([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("region", list(REGION_CODES))
def test_pvs_shapes_in_range(phantom_map, region):
    rng = np.random.default_rng(1)
    tubes = pvs_tubes(phantom_map, region, rng.uniform(-10, 10, (50, 3)), rng)
    shape = PVS_SHAPES[region]
    for t in tubes:
        assert shape.diameter_mm[0] - 1e-9 <= t.diameter_mm <= shape.diameter_mm[1] + 1e-9
        assert t.length_mm <= shape.length_mm[1] + 1e-9
        assert np.linalg.norm(t.direction) == pytest.approx(1.0)
    if shape.orientation == "vertical":  # mostly along the superior axis
        assert np.median([abs(t.direction[2]) for t in tubes]) > 0.7


def test_sample_holds_the_pvs_its_label_says(phantom_map):
    s = make_sample(phantom_map, "basal_ganglia", sample_rng(0, "basal_ganglia", 3), density_per_ml=3.0)
    assert s.image.shape == s.density.shape == s.region_mask.shape == (64, 64, 40)
    assert s.image.min() >= 0.0 and s.image.max() <= 1.0
    assert s.count == len(s.centres_vox) and s.count >= 5
    # The density counts every rendered PVS by the fraction of its axis inside the region (and patch).
    assert 0.5 * s.count <= s.density.sum() <= s.meta["n_rendered"] + 1e-3
    centres = np.round(s.centres_vox).astype(int)
    assert s.region_mask[tuple(centres.T)].all()
    # the PVS are bright: brighter at their centres than the region around them
    assert np.median(s.image[tuple(centres.T)]) > np.median(s.image[s.region_mask]) + 0.05
    assert s.meta["n_rendered"] >= s.count and 3.0 <= s.meta["slice_mm"] <= 7.0


def test_peak_partial_volume_falls_with_slice_thickness_and_tube_width():
    """A 2 mm tube along the slices fills whole 0.5 mm voxels; lying across 6 mm slices, a 1 mm
    tube fills at most ~1/6 of one."""
    along = Tube(np.zeros(3), np.array([0.0, 0.0, 1.0]), 12.0, 2.0)
    across = Tube(np.zeros(3), np.array([1.0, 0.0, 0.0]), 12.0, 1.0)
    fine = grid((0.5, 0.5, 0.5), (50, 50, 50))
    assert peak_partial_volume(along, fine, (50, 50, 50)) == pytest.approx(1.0, abs=1e-6)
    thick = grid((0.5, 0.5, 6.0), (50, 50, 5))
    assert peak_partial_volume(along, thick, (50, 50, 5)) == pytest.approx(1.0, abs=1e-6)
    assert 0.08 <= peak_partial_volume(across, thick, (50, 50, 5)) <= 0.2
    far = Tube(np.array([500.0, 0, 0]), np.array([1.0, 0, 0]), 3.0, 1.0)
    assert peak_partial_volume(far, thick, (50, 50, 5)) == 0.0


def test_sample_records_how_visible_each_counted_pvs_is(phantom_map):
    s = make_sample(phantom_map, "basal_ganglia", sample_rng(0, "basal_ganglia", 3), density_per_ml=3.0)
    assert s.visibility.shape == (s.count,)
    assert np.all((s.visibility >= 0) & (s.visibility <= 1))
    visible = s.visible_counts()
    assert visible.shape == (len(VISIBILITY_LEVELS),)
    assert s.count >= visible[0] >= visible[1] >= visible[2]
    assert visible[-1] < s.count  # 3-7 mm slices: some PVS fill no voxel to 0.7
    # the visibility is computed, not drawn: the same sample as before it existed
    again = make_sample(phantom_map, "basal_ganglia", sample_rng(0, "basal_ganglia", 3), density_per_ml=3.0)
    np.testing.assert_array_equal(s.visibility, again.visibility)


def test_min_visibility_labels_only_the_visible_pvs(phantom_map):
    """The same patch, rendered alike; only the PVS that reach the visibility are labelled."""
    rng = lambda: sample_rng(0, "basal_ganglia", 3)  # noqa: E731
    every = make_sample(phantom_map, "basal_ganglia", rng(), density_per_ml=3.0)
    level = float(np.median(every.visibility))
    visible = make_sample(phantom_map, "basal_ganglia", rng(), density_per_ml=3.0, min_visibility=level)
    np.testing.assert_array_equal(every.image, visible.image)
    np.testing.assert_array_equal(every.visibility, visible.visibility)
    assert visible.count == int((every.visibility >= level).sum()) < every.count
    assert visible.density.sum() < every.density.sum()
    assert visible.meta["min_visibility"] == level


def test_sample_is_reproducible_and_empty_when_asked(phantom_map):
    a = make_sample(phantom_map, "centrum_semiovale", sample_rng(5, "centrum_semiovale", 0))
    b = make_sample(phantom_map, "centrum_semiovale", sample_rng(5, "centrum_semiovale", 0))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.count == b.count
    empty = make_sample(phantom_map, "hippocampi", np.random.default_rng(2), density_per_ml=0.0)
    assert empty.count == 0 and empty.density.sum() == 0.0
    assert empty.visible_counts().tolist() == [0] * len(VISIBILITY_LEVELS)


def test_max_density_bounds_the_drawn_density(phantom_map):
    """The same draw with a lower ceiling: never above it; with a higher one, above the old ceiling."""
    drawn = [make_sample(phantom_map, "basal_ganglia", sample_rng(1, "basal_ganglia", i), max_density_per_ml=m)
             .meta["density_per_ml"] for i in range(3) for m in (0.2, 20.0)]
    low, high = drawn[0::2], drawn[1::2]
    assert max(low) <= 0.2
    assert all(h >= lo for h, lo in zip(high, low, strict=True)) and max(high) > 1.0


def test_standardised_phantom_labels_are_unchanged():
    lab = anatomy_phantom().labels.array
    np.testing.assert_array_equal(standardise_labels(lab), lab)
