"""The learned subcortical refinement: features, relabelling, weights."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from pvsquant.errors import DependencyError
from pvsquant.pipeline import subcortical as sc
from pvsquant.types import Volume


def _scene(shape=(60, 40, 30)):
    """White matter with a left (x < 30) and a right putamen, a brainstem column in the middle."""
    labels = np.full(shape, 2, np.int32)
    labels[30:] = 41
    labels[15:22, 15:25, 10:20] = 12
    labels[38:45, 15:25, 10:20] = 51
    labels[28:32, 5:10, :] = 16
    image = np.where(np.isin(labels, (12, 51)), 0.7, 1.0).astype(np.float32)
    image[labels == 16] = 0.9
    return Volume(image, np.eye(4)), labels


def _constant_model(k):
    """A refiner that says class k everywhere."""
    model = sc.SubcorticalRefiner()
    with torch.no_grad():
        last = model.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[k] = 10.0
    return model.eval()


def test_class_map_merges_hemispheres_and_calls_the_rest_other():
    codes = np.array([2, 41, 3, 42, 4, 43, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 16, 173, 0, 77])
    names = [sc.CLASSES[k][0] for k in sc.class_map(codes)]
    assert names[:16:2] == names[1:16:2]
    assert names[:16:2] == ["white matter", "cortex", "lateral ventricle", "thalamus", "caudate", "putamen",
                            "pallidum", "hippocampus"]
    assert set(names[16:]) == {"other"}


def test_features_cover_only_voxels_near_deep_structures_inside_the_mask():
    image, labels = _scene()
    mask = np.ones(labels.shape, bool)
    mask[:, :, 25:] = False
    x, box, todo = sc.features(image, labels, labels, mask)
    assert x.shape == (int(todo.sum()), sc.N_FEATURES) and np.isfinite(x).all()
    near = ndimage.distance_transform_edt(~np.isin(labels, (12, 51))) <= sc.REACH_MM
    full = np.zeros(labels.shape, bool)
    full[box] = todo
    assert not full[~mask].any()
    assert full[near & mask].all() and not full[~near].any()


def test_refine_relabels_near_voxels_by_hemisphere_and_leaves_the_rest():
    image, labels = _scene()
    mask = np.ones(labels.shape, bool)
    out = sc.refine(image, labels, labels, mask, _constant_model(7))  # pallidum everywhere near
    changed = out != labels
    assert changed.any()
    assert set(np.unique(out[changed])) == {13, 52}
    assert (out[:30][changed[:30]] == 13).all() and (out[30:][changed[30:]] == 52).all()
    assert (out[0:5] == labels[0:5]).all()  # far from both putamina


def test_other_keeps_codes_that_are_already_other():
    image, labels = _scene()
    labels[22:38, 15:25, 10:20] = 16  # brainstem between the putamina
    out = sc.refine(image, labels, labels, np.ones(labels.shape, bool), _constant_model(0))
    assert (out[labels == 16] == 16).all()
    assert (out[np.isin(labels, (12, 51))] == 0).all()


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_shipped_weights_load_and_missing_weights_say_so(tmp_path, contrast):
    model = sc.load_refiner(contrast)
    assert sum(p.numel() for p in model.parameters()) > 1000
    with pytest.raises(DependencyError, match="subcortical refiner"):
        sc.load_refiner(path=tmp_path / "none.pt")


def test_labels_without_deep_structures_come_back_unchanged():
    """A failed registration can leave no deep structure near the brain: nothing to relabel."""
    image, labels = _scene()
    labels[np.isin(labels, (12, 51))] = 2
    x, _, _ = sc.features(image, labels, labels, np.ones(labels.shape, bool))
    assert x.shape == (0, sc.N_FEATURES)
    out = sc.refine(image, labels, labels, np.ones(labels.shape, bool), _constant_model(7))
    np.testing.assert_array_equal(out, labels)
