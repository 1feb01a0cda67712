from __future__ import annotations

import os

import numpy as np
import pytest

from pvsquant.errors import InputImageError, SegmentationError
from pvsquant.pipeline import anatomy as an
from pvsquant.types import Settings, Volume

from .anatomy_phantom import label_phantom


def test_standardise_keeps_used_codes_and_folds_variants():
    lab = np.array([[[2, 5, 44, 25, 1000, 8, 173, 16, 3]]])
    out = an.standardise_labels(lab)
    assert out.tolist() == [[[2, 4, 43, 77, 0, 0, 173, 16, 3]]]


def test_split_midbrain_takes_the_top_of_the_brainstem_along_the_given_axis():
    lab = np.zeros((10, 10, 60), np.int32)
    lab[4:6, 4:6, 5:55] = 16  # 50 mm of brainstem, 1 mm voxels
    vol = Volume(lab, np.eye(4))
    out = an.split_midbrain(vol, np.array([0.0, 0.0, 1.0]), 20.0).array
    assert np.argwhere(out == 173)[:, 2].min() == 34 and np.argwhere(out == 173)[:, 2].max() == 54
    flipped = an.split_midbrain(vol, np.array([0.0, 0.0, -1.0]), 20.0).array  # head upside down
    assert np.argwhere(flipped == 173)[:, 2].max() == 25


def test_user_labels_resampled_to_t1_grid_and_midbrain_added():
    labels = label_phantom()
    t1 = Volume(np.ones((55, 65, 30), np.float32), np.diag([2.0, 2.0, 4.0, 1.0]) @ _centre((55, 65, 30)))
    anatomy = an.labels_from_file(labels, t1, Settings())
    assert anatomy.labels.shape == t1.shape
    assert np.any(anatomy.labels.array == an.MIDBRAIN) and anatomy.method == "labels"


def _centre(shape):
    m = np.eye(4)
    m[:3, 3] = -(np.asarray(shape) - 1) / 2
    return m


def test_user_labels_must_be_aseg_coded():
    lab = Volume(np.full((20, 20, 20), 7, np.int32), np.eye(4))
    with pytest.raises(InputImageError, match=r"lacks white matter"):
        an.labels_from_file(lab, Volume(np.ones((20, 20, 20), np.float32), np.eye(4)), Settings())


@pytest.mark.parametrize(("csf", "cortex", "wm", "lesion"), [(0.1, 0.55, 0.85, 0.3), (1.0, 0.55, 0.35, 0.8)],
                         ids=["T1", "T2"])
def test_refinement_moves_misplaced_boundary_and_keeps_deep_lesion(csf, cortex, wm, lesion):
    """Atlas labels shifted 3 voxels against the image: the WM/cortex border follows the
    intensities; a lesion deep inside the white matter (dark on the T1, bright on the T2) stays
    white matter. The tissue models are fitted, so a T2's contrast works as a T1's."""
    rng = np.random.default_rng(0)
    shape = (60, 40, 40)
    image = np.full(shape, csf, np.float32)  # CSF outside
    image[5:55] = cortex
    image[15:45] = wm
    image[28:32, 18:22, 18:22] = lesion
    image += rng.normal(0, 0.02, shape).astype(np.float32)
    atlas = np.full(shape, 24, np.int32)
    atlas[8:58] = 3
    atlas[18:48] = 2  # the atlas is 3 voxels off
    mask = np.ones(shape, bool)
    refined = an.refine_labels(Volume(image, np.eye(4)), Volume(atlas, np.eye(4)), mask).array
    truth_wm = np.zeros(shape, bool)
    truth_wm[15:45] = True
    before = 2 * ((atlas == 2) & truth_wm).sum() / ((atlas == 2).sum() + truth_wm.sum())
    after = 2 * ((refined == 2) & truth_wm).sum() / ((refined == 2).sum() + truth_wm.sum())
    assert before < 0.92 and after > 0.97
    assert np.all(refined[28:32, 18:22, 18:22] == 2)


def test_t2_only_settings_keep_the_refinement():
    assert an.settings_for_t2(Settings()).refine_labels
    assert an.settings_for_t2(Settings()).atlas_syn_metric == "mattes"


def test_t2_only_settings_take_the_t2_refiner_unless_it_is_off():
    assert Settings().subcortical_refiner == "t1"
    assert an.settings_for_t2(Settings()).subcortical_refiner == "t2"
    assert an.settings_for_t2(Settings(subcortical_refiner="none")).subcortical_refiner == "none"
    with pytest.raises(ValueError, match="subcortical_refiner"):
        Settings(subcortical_refiner="flair")


def test_refinement_shrinks_deep_structure_into_fluid_only():
    shape = (40, 40, 40)
    image = np.full(shape, 0.85, np.float32)  # white matter
    image[10:30, 10:30, 10:30] = 0.55  # a grey nucleus
    image[10:30, 10:14, 10:30] = 0.1  # ... whose front is really ventricle (atrophy)
    atlas = np.full(shape, 2, np.int32)
    atlas[10:30, 10:30, 10:30] = 11  # caudate in the atlas, including the fluid part
    atlas[10:30, 5:10, 10:30] = 4
    refined = an.refine_labels(Volume(image, np.eye(4)), Volume(atlas, np.eye(4)), np.ones(shape, bool)).array
    assert np.all(refined[12:28, 10:13, 12:28] == 4)  # fluid-looking caudate voxels became ventricle
    assert np.all(refined[12:28, 15:28, 12:28] == 11)  # the rest of the nucleus kept its label


def test_refinement_moves_deep_nucleus_border_to_its_contrast():
    """A grey nucleus in white matter with the atlas 2 voxels off: its border with the white matter
    follows the intensities; a putamen and a pallidum brighter than it keep their own models."""
    rng = np.random.default_rng(1)
    shape = (50, 40, 40)
    image = np.full(shape, 0.85, np.float32)  # white matter
    image[10:25, 10:30, 10:30] = 0.55  # caudate
    image[30:40, 10:30, 10:30] = 0.70  # pallidum, between grey and white matter
    image += rng.normal(0, 0.02, shape).astype(np.float32)
    atlas = np.full(shape, 2, np.int32)
    atlas[12:27, 10:30, 10:30] = 11  # shifted by 2 voxels
    atlas[30:40, 10:30, 10:30] = 13
    refined = an.refine_labels(Volume(image, np.eye(4)), Volume(atlas, np.eye(4)), np.ones(shape, bool)).array
    truth = np.zeros(shape, bool)
    truth[10:25, 10:30, 10:30] = True

    def dice(a):
        return 2 * (a & truth).sum() / (a.sum() + truth.sum())

    assert dice(atlas == 11) < 0.9 and dice(refined == 11) > 0.97
    assert ((refined == 13) == (atlas == 13)).mean() > 0.999  # the pallidum stays where it is


def test_ants_random_seed_is_set_inside_and_restored_after():
    import ants

    before = ants.config._random_seed
    with an.ants_random_seed(7):
        assert ants.config._random_seed == 7
    assert ants.config._random_seed == before
    with pytest.raises(RuntimeError, match="inside"), an.ants_random_seed(8):
        raise RuntimeError("inside")
    assert ants.config._random_seed == before



def test_ants_runs_on_the_settings_threads():
    """ANTs' stages are deterministic on any number of threads (the affine, which is not, runs in SimpleITK)."""
    assert an.ants_threads(Settings(threads=4)) == 4
    assert an.ants_threads(Settings(threads=1, deterministic=False)) == 1


@pytest.mark.parametrize("before", [None, "3"])
def test_ants_itk_threads_sets_the_variable_inside_and_restores_it(monkeypatch, before):
    monkeypatch.setattr(an, "_ants_itk_threads", [])
    if before is None:
        monkeypatch.delenv(an.ITK_THREADS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(an.ITK_THREADS_VARIABLE, before)
    with an.ants_itk_threads(1):
        assert os.environ[an.ITK_THREADS_VARIABLE] == "1"
    assert os.environ.get(an.ITK_THREADS_VARIABLE) == before
    with pytest.raises(RuntimeError, match="inside"), an.ants_itk_threads(1):
        raise RuntimeError("inside")
    assert os.environ.get(an.ITK_THREADS_VARIABLE) == before


def test_ants_itk_threads_warns_when_the_count_differs_from_the_first(monkeypatch, caplog):
    monkeypatch.setattr(an, "_ants_itk_threads", [])
    monkeypatch.delenv(an.ITK_THREADS_VARIABLE, raising=False)
    with an.ants_itk_threads(1), an.ants_itk_threads(1):
        pass
    assert "ANTs keeps" not in caplog.text
    with an.ants_itk_threads(2):
        pass
    assert "ANTs keeps the 1 thread(s) it started with in this process; 2 asked for" in caplog.text


def test_atlas_affine_failure_is_a_clear_error(tmp_path):
    """The atlas's affine stage runs in a child process; when it fails, the error says so (with the
    child's message), not a missing file later."""
    subject = Volume(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    with pytest.raises(SegmentationError, match="affine registration failed"):
        an.atlas_affine(subject, tmp_path / "no_template.nii.gz", tmp_path, Settings())


def test_brain_grid_covers_the_mask_with_its_margin_on_the_isotropic_grid():
    affine = np.diag([0.7, 0.7, 4.0, 1.0])
    affine[:3, 3] = [-50.0, -60.0, -30.0]
    mask = np.zeros((160, 180, 20), bool)
    mask[40:120, 50:150, 5:15] = True
    t1 = Volume(np.zeros(mask.shape, np.float32), affine)
    full_affine, full_shape = an.reslice_affine(affine, mask.shape, (1.5,) * 3)
    crop_affine, crop_shape = an.brain_grid(t1, t1.with_array(mask), 1.5, margin_mm=6.0)
    np.testing.assert_allclose(crop_affine[:3, :3], full_affine[:3, :3])  # same axes and spacing
    offset = np.linalg.solve(full_affine, crop_affine)[:3, 3]
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-6)  # on the full grid's voxels
    assert np.all(offset >= 0) and np.all(offset + crop_shape <= np.asarray(full_shape))
    assert np.prod(crop_shape) < 0.7 * np.prod(full_shape)
    # the brain's outer corners lie at least the margin inside the crop's first and last voxel centres
    # (the full grid leaves room on every side here)
    inside = np.argwhere(mask)
    for corner in (inside.min(axis=0) - 0.5, inside.max(axis=0) + 0.5):
        world = affine[:3, :3] @ corner + affine[:3, 3]
        at = np.linalg.solve(crop_affine[:3, :3], world - crop_affine[:3, 3])
        room = np.minimum(at, np.asarray(crop_shape) - 1 - at) * 1.5
        assert np.all(room >= 6.0 - 1e-6)


def test_brain_grid_of_an_empty_mask_is_the_whole_grid():
    t1 = Volume(np.zeros((20, 20, 10), np.float32), np.eye(4))
    affine, shape = an.brain_grid(t1, t1.with_array(np.zeros((20, 20, 10), bool)), 1.5)
    full = an.reslice_affine(t1.affine, t1.shape, (1.5,) * 3)
    np.testing.assert_allclose(affine, full[0])
    assert shape == full[1]


def test_smoothed_on_the_bounding_box_equals_the_whole_volume_filter():
    from scipy import ndimage

    mask = np.zeros((60, 50, 14), bool)
    mask[20:27, 30:34, 5:8] = True  # small, inside
    mask[0:4, 0:6, 0:3] = True  # touching the array's edges (reflected there)
    sigma = np.array([1.4, 1.4, 0.33])
    expected = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    np.testing.assert_array_equal(an._smoothed(mask, sigma), expected)
    assert not an._smoothed(np.zeros_like(mask), sigma).any()


def test_both_paths_use_the_fused_labels_unless_told_otherwise():
    from pvsquant.pipeline.anatomy import atlas_files, settings_for_t2

    assert Settings().atlas_labels == "fused"
    t2_settings = settings_for_t2(Settings())
    assert t2_settings.atlas_labels == "fused" and t2_settings.atlas_syn_metric == "mattes"
    assert settings_for_t2(Settings(atlas_labels="samseg")).atlas_labels == "samseg"
    fused, samseg = atlas_files("fused")[1], atlas_files("samseg")[1]
    assert fused.is_file() and samseg.is_file() and fused != samseg
    # The fused map's hippocampi and pallida are smaller than SAMSEG's (the SynthSeg maps' convention).
    import nibabel as nib

    f, s = (np.asarray(nib.load(str(p)).dataobj) for p in (fused, samseg))
    for codes in ((17, 53), (13, 52)):
        assert np.isin(f, codes).sum() < 0.95 * np.isin(s, codes).sum()


def test_unknown_atlas_labels_are_refused():
    with pytest.raises(ValueError, match="atlas_labels"):
        Settings(atlas_labels="aseg")
