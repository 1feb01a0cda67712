from __future__ import annotations

import numpy as np
import pytest

from pvsquant.grids import world_coordinates
from pvsquant.pipeline import anatomy as an
from pvsquant.pipeline.regions import make_regions, regions_on_grid
from pvsquant.pipeline.registration import rigid_from_parameters
from pvsquant.types import REGION_CODES, RigidTransform, Settings, Volume

from .anatomy_phantom import SHAPE, anatomy_phantom
from .conftest import oblique_affine

IDENTITY = RigidTransform(np.eye(4), -1.0, -1.0)


def t2_grid(angle=0.0) -> Volume:
    shape = (300, 340, 40)
    return Volume(np.zeros(shape, np.float32), oblique_affine((0.5, 0.5, 4.0), shape, angle))


def region_world(regions, name):
    idx = np.argwhere(regions.work.array == REGION_CODES[name])
    return world_coordinates(regions.work.affine, idx)


def test_centrum_semiovale_slab_above_caudate():
    regions = make_regions(anatomy_phantom(), IDENTITY, t2_grid())
    assert regions.caudate_top_mm == pytest.approx(15, abs=1.5)
    z = region_world(regions, "centrum_semiovale")[:, 2]
    assert z.min() >= 15 + 10 - 1.5 and z.max() <= 15 + 30 + 1.5
    assert z.max() - z.min() > 17
    labels_at = regions.work.array
    assert regions.volumes_ml["centrum_semiovale"] > 50
    assert not np.any((labels_at == 1) & (labels_at == 2))


def test_slab_follows_the_head_not_the_voxel_rows():
    """An oblique T2 of the same head gives the same CSO (volume and height range)."""
    straight = make_regions(anatomy_phantom(), IDENTITY, t2_grid(0.0))
    oblique = make_regions(anatomy_phantom(), IDENTITY, t2_grid(20.0))
    v0, v1 = straight.volumes_ml["centrum_semiovale"], oblique.volumes_ml["centrum_semiovale"]
    assert abs(v0 - v1) / v0 < 0.05
    z = region_world(oblique, "centrum_semiovale")[:, 2]
    assert z.min() >= 23.5 and z.max() <= 46.5


def test_tilted_head_uses_the_anatomical_superior_axis():
    """Head tilted 25 deg in the T1 world, T1 moved against the T2: the slab is still
    10-30 mm above the caudate along the head's own axis."""
    tilt = rigid_from_parameters((25.0, 0.0, 0.0), (0.0, 0.0, 0.0))  # phantom -> T1 world
    anatomy = anatomy_phantom(superior=tilt[:3, :3] @ [0, 0, 1], world_to_phantom=np.linalg.inv(tilt))
    t2_to_t1 = rigid_from_parameters((0.0, 6.0, -4.0), (3.0, -5.0, 2.0))
    regions = make_regions(anatomy, RigidTransform(t2_to_t1, -1, -1), t2_grid(10.0))
    world_t2 = region_world(regions, "centrum_semiovale")
    world_t1 = world_t2 @ t2_to_t1[:3, :3].T + t2_to_t1[:3, 3]
    phantom = world_t1 @ np.linalg.inv(tilt)[:3, :3].T
    assert phantom[:, 2].min() >= 23.5 and phantom[:, 2].max() <= 46.5


def test_basal_ganglia_include_internal_capsule_only():
    regions = make_regions(anatomy_phantom(), IDENTITY, t2_grid())
    bg = regions.work.array == REGION_CODES["basal_ganglia"]
    labels_work = regions_on_grid(regions, regions.work.affine, regions.work.shape)
    assert np.array_equal(labels_work.array == 2, bg)
    # volume of the four nuclei in the phantom, and the capsule added by the closing
    nuclei_ml = sum(np.isin(anatomy_phantom().labels.array, c).sum() for c in
                    (an.CAUDATE, an.PUTAMEN, an.PALLIDUM, an.THALAMUS)) / 1000
    assert nuclei_ml < regions.volumes_ml["basal_ganglia"] < 1.8 * nuclei_ml
    # the white matter added (the capsule) lies within the closing radius of the nuclei
    from scipy import ndimage

    from pvsquant.grids import resample_labels
    labels = resample_labels(anatomy_phantom().labels, regions.work.affine, regions.work.shape).array
    capsule = bg & np.isin(labels, an.WM)
    assert capsule.sum() > 500
    nuclei = np.isin(labels, an.CAUDATE + an.PUTAMEN + an.PALLIDUM + an.THALAMUS)
    assert ndimage.distance_transform_edt(~nuclei)[capsule].max() <= 5.0
    # far white matter is not basal ganglia
    assert not np.any(bg & (ndimage.distance_transform_edt(~nuclei) > 6))


def test_hippocampi_and_midbrain():
    anatomy = anatomy_phantom()
    assert np.any(anatomy.labels.array == an.MIDBRAIN) and np.any(anatomy.labels.array == an.BRAINSTEM)
    regions = make_regions(anatomy, IDENTITY, t2_grid())
    z = region_world(regions, "midbrain")[:, 2]
    assert z.max() == pytest.approx(-7, abs=1.5) and z.min() == pytest.approx(-27, abs=1.5)
    assert regions.volumes_ml["hippocampi"] == pytest.approx(2 * 4 / 3 * np.pi * 5 * 14 * 5 / 1000, rel=0.15)


def test_missing_structure_is_a_flag_not_an_error():
    anatomy = anatomy_phantom()
    arr = anatomy.labels.array.copy()
    arr[np.isin(arr, an.HIPPOCAMPUS)] = 0
    from dataclasses import replace
    regions = make_regions(replace(anatomy, labels=anatomy.labels.with_array(arr)), IDENTITY, t2_grid())
    codes = [f.code for f in regions.flags]
    assert "region_missing_hippocampi" in codes
    assert regions.volumes_ml["hippocampi"] == 0


def test_thin_slab_setting_changes_volume():
    thin = make_regions(anatomy_phantom(), IDENTITY, t2_grid(), Settings(cso_slab_thickness_mm=10.0))
    thick = make_regions(anatomy_phantom(), IDENTITY, t2_grid(), Settings(cso_slab_thickness_mm=20.0))
    assert thin.volumes_ml["centrum_semiovale"] < 0.7 * thick.volumes_ml["centrum_semiovale"]


def test_phantom_shape_is_what_tests_assume():
    assert anatomy_phantom().labels.shape == SHAPE


def test_region_beyond_the_t2_field_of_view_is_dropped_and_flagged():
    """A T2 slab that stops below the top of the white matter cuts the centrum semiovale."""
    shape = (300, 340, 14)  # 56 mm of slices
    aff = oblique_affine((0.5, 0.5, 4.0), shape, 0.0)
    aff[:3, 3] += [0, 0, -5]  # covers z = -33 .. +23 mm: the slab (25-45 mm) lies above it
    regions = make_regions(anatomy_phantom(), IDENTITY, Volume(np.zeros(shape, np.float32), aff))
    codes = [f.code for f in regions.flags]
    assert "region_cut_by_fov_centrum_semiovale" in codes
    assert regions.volumes_ml["centrum_semiovale"] == 0
    full = make_regions(anatomy_phantom(), IDENTITY, t2_grid())
    assert regions.volumes_ml["basal_ganglia"] == pytest.approx(full.volumes_ml["basal_ganglia"], rel=0.02)
    assert "region_cut_by_fov_basal_ganglia" not in codes


def test_implausible_region_volume_is_flagged():
    """The phantom's basal ganglia (about 10 ml) are smaller than any adult's (>= 20 ml)."""
    regions = make_regions(anatomy_phantom(), IDENTITY, t2_grid())
    flags = {f.code: f.message for f in regions.flags}
    assert "region_volume_basal_ganglia" in flags
    assert "expected 20-90 ml" in flags["region_volume_basal_ganglia"]
    assert "region_volume_centrum_semiovale" not in flags
