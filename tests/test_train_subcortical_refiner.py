"""scripts/train_subcortical_refiner.py: a case's voxels and the training loop."""
import numpy as np

from pvsquant.pipeline import subcortical as sc
from tests.script_module import load_script

script = load_script("train_subcortical_refiner")


def test_training_learns_classes_that_the_features_separate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(sc.CLASSES), 12 * script.BATCH)
    x = rng.normal(0, 0.3, (len(y), sc.N_FEATURES)).astype(np.float32)
    x[np.arange(len(y)), y] += 2.0  # class k: feature k is high
    model, losses = script.train(x, y, epochs=5)
    assert losses[-1] < 0.5 * losses[0]
    test_y = rng.integers(0, len(sc.CLASSES), 2000)
    test_x = rng.normal(0, 0.3, (2000, sc.N_FEATURES)).astype(np.float32)
    test_x[np.arange(2000), test_y] += 2.0
    import torch
    with torch.no_grad():
        predicted = model(torch.from_numpy(test_x)).argmax(1).numpy()
    assert (predicted == test_y).mean() > 0.95


def test_case_voxels_pairs_each_feature_row_with_the_maps_class(tmp_path):
    labels = np.full((40, 30, 20), 2, np.int32)
    labels[10:18, 10:20, 5:15] = 12
    truth = labels.copy()
    truth[10:12, 10:20, 5:15] = 13  # the map says pallidum where the atlas says putamen
    image = np.where(labels == 12, 0.7, 1.0).astype(np.float32)
    path = tmp_path / "case.npz"
    np.savez(path, image=image, affine=np.eye(4), atlas=labels, labels=labels, mask=np.ones(labels.shape, bool),
             truth=truth)
    x, y = script.case_voxels(path)
    assert x.shape == (len(y), sc.N_FEATURES)
    names = [sc.CLASSES[k][0] for k in np.unique(y)]
    assert names == ["white matter", "putamen", "pallidum"]
    assert (y == 7).sum() == (truth == 13).sum()
