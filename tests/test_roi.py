from __future__ import annotations

import numpy as np
import pytest

from pvsquant.grids import resample, reslice_affine, world_coordinates
from pvsquant.pipeline.regions import make_regions
from pvsquant.pipeline.roi import box_grid, crop_region, crop_regions, paste_back
from pvsquant.types import REGION_CODES, RigidTransform, Settings, Volume

from .anatomy_phantom import anatomy_phantom
from .conftest import oblique_affine

IDENTITY = RigidTransform(np.eye(4), -1.0, -1.0)


@pytest.fixture(scope="module")
def t2_and_regions():
    shape = (300, 340, 40)
    aff = oblique_affine((0.5, 0.5, 4.0), shape, 8.0)
    world = world_coordinates(aff, np.indices(shape).reshape(3, -1).T)
    t2 = (100 + 0.5 * world[:, 0] + 0.3 * world[:, 1] - 0.2 * world[:, 2]).reshape(shape).astype(np.float32)
    vol = Volume(t2, aff)
    return vol, make_regions(anatomy_phantom(), IDENTITY, vol)


def test_crop_has_fixed_shape_spacing_and_range(t2_and_regions):
    t2, regions = t2_and_regions
    settings = Settings()
    crops = crop_regions(t2, regions, settings)
    assert set(crops) == set(REGION_CODES)
    for name, crop in crops.items():
        expected = tuple(
            round(m / s) for m, s in zip(settings.roi_box_mm[name], settings.target_spacing_mm, strict=False)
        )
        assert crop.image.shape == expected
        np.testing.assert_allclose(crop.image.spacing_mm, [0.5, 0.5, 0.8], atol=1e-9)
        support = crop.mask.array > 1e-2
        assert crop.image.array.min() == 0.0 and crop.image.array.max() == pytest.approx(1.0)
        assert np.all(crop.image.array[~support] == 0)
        assert not crop.clipped


def test_mask_is_dilated_and_smooth(t2_and_regions):
    t2, regions = t2_and_regions
    crop = crop_region(t2, regions, "hippocampi")
    mask = crop.mask.array
    region = (
        resample(
            regions.work.with_array((regions.work.array == 3).astype(np.float32)),
            crop.image.affine,
            crop.image.shape,
            order=1,
        ).array
        >= 0.5
    )
    assert mask.max() <= 1.0 + 1e-6
    assert (mask > 0.5).sum() > region.sum()  # dilated
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 0  # smooth border


def test_region_larger_than_box_is_flagged(t2_and_regions):
    t2, regions = t2_and_regions
    small = Settings(roi_box_mm={**Settings().roi_box_mm, "centrum_semiovale": (40.0, 40.0, 20.0)})
    assert crop_region(t2, regions, "centrum_semiovale", small).clipped


def test_box_centred_and_padded_beyond_the_scan():
    aff = np.diag([0.5, 0.5, 0.8, 1.0])
    grid_aff, _ = reslice_affine(aff, (100, 100, 50), (0.5, 0.5, 0.8))
    box_aff, start = box_grid(grid_aff, np.array([0.0, 0.0, 0.0]), (20, 20, 10))
    assert start == (-10, -10, -4)  # the box leaves the scan
    src = Volume(np.ones((100, 100, 50), np.float32), aff)
    out = resample(src, box_aff, (20, 20, 10), order=1).array
    assert out[0, 0, 0] == 0 and out[-1, -1, -1] == 1  # zero padding outside


def test_crop_then_paste_restores_the_t2(t2_and_regions):
    t2, regions = t2_and_regions
    crop = crop_region(t2, regions, "basal_ganglia")
    raw = resample(t2, crop.image.affine, crop.image.shape, order=1)
    back = paste_back(raw, t2)
    inside = back.array != 0
    assert inside.sum() > 1000
    np.testing.assert_allclose(back.array[inside], t2.array[inside], rtol=1e-3, atol=0.3)


def test_network_grid_is_closest_ras_whatever_the_storage():
    from pvsquant.pipeline.roi import network_grid

    shape = (100, 120, 30)
    lps = Volume(np.zeros(shape, np.float32), oblique_affine((0.5, 0.5, 4.0), shape, 10.0))
    affine, grid_shape = network_grid(lps, (0.5, 0.5, 0.8))
    import nibabel as nib

    assert "".join(nib.aff2axcodes(affine)) == "RAS"
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), [0.5, 0.5, 0.8])
    assert grid_shape == (100, 120, 150)
    # a sagittal acquisition (thick axis left-right) still gets 0.8 mm along superior
    sag = np.zeros((4, 4))
    sag[:3, :3] = [[0, 0, -4.0], [0.5, 0, 0], [0, 0.5, 0]]
    sag[3, 3] = 1
    affine, grid_shape = network_grid(Volume(np.zeros((200, 200, 40), np.float32), sag), (0.5, 0.5, 0.8))
    np.testing.assert_allclose(affine[:3, :3], np.diag([0.5, 0.5, 0.8]), atol=1e-12)
    assert grid_shape == (320, 200, 125)


def test_network_t2_is_unmasked_and_scaled_to_the_region(t2_and_regions):
    """The networks' T2 channel keeps the anatomy around the region (no mask edge) and puts the
    region's median at the reference level."""
    from pvsquant.pipeline.roi import scale_to_region

    t2, regions = t2_and_regions
    settings = Settings()
    crop = crop_region(t2, regions, "basal_ganglia", settings)
    scaled, inside = crop.t2.array, crop.inside
    assert np.median(scaled[inside]) == pytest.approx(settings.region_reference_level, rel=1e-3)
    raw = resample(t2, crop.image.affine, crop.image.shape, order=1).array
    outside = (crop.mask.array < 1e-3) & (raw > 0)
    # far outside the mask the paper's input is black; the network's T2 is the scan itself
    assert np.all(crop.image.array[outside] == 0)
    np.testing.assert_allclose(
        scaled[outside],
        np.clip(raw[outside] * scaled[inside].mean() / raw[inside].mean(), 0, settings.region_clip_level),
        rtol=1e-3,
    )
    bright = scale_to_region(
        np.full((4, 4, 4), 50.0, np.float32) * np.arange(1, 5)[:, None, None], np.ones((4, 4, 4), bool), settings
    )
    assert bright.max() <= settings.region_clip_level and bright.min() > 0


def test_network_input_has_three_channels(t2_and_regions):
    from pvsquant.pipeline.counting import network_input

    t2, regions = t2_and_regions
    crop = crop_region(t2, regions, "midbrain")
    net = network_input(crop, (0.5, 0.5, 0.8))
    assert net.x.shape[:2] == (1, 3)
    np.testing.assert_array_equal(net.x[0, 0].numpy(), crop.t2.array[net.box])
    np.testing.assert_array_equal(net.x[0, 2].numpy() > 0.5, crop.inside[net.box])
    np.testing.assert_array_equal(net.x[0, 1].numpy(), net.frangi.vesselness)
