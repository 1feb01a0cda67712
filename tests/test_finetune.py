"""Fine-tuning the output layer on visual scores: the algebra, and the gain out of fold on a
small synthetic cohort whose rater counts differently from the shipped networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pvsquant.cli import main
from pvsquant.learning.finetune import (
    FinetuneSettings,
    feature_scale,
    finetune_cohort,
    fold_of,
    loo_error,
    ridge_towards,
)
from pvsquant.learning.synthesis import Tube, tube_occupancy
from pvsquant.models import build_model, get_head, head_features, set_head
from pvsquant.pipeline.counting import count_region, load_models, network_input, save_count_outputs
from pvsquant.pipeline.roi import load_crop, save_crop, scale_to_region
from pvsquant.types import RegionCrop, Volume

SPACING = (0.5, 0.5, 0.8)


@pytest.mark.parametrize("name", ["gpunet", "cnn"])
def test_count_is_linear_in_the_output_layer(name):
    torch.manual_seed(0)
    model = build_model(name, 4).eval()
    x = torch.rand(1, 3, 24, 24, 16)
    mask = (torch.rand(1, 1, 24, 24, 16) > 0.3).float()
    with torch.no_grad():
        count, _ = model(x, mask)
        features = head_features(model, x, mask)
        assert float(features[0] @ get_head(model)) == pytest.approx(float(count[0]), rel=1e-4, abs=1e-5)
        head = get_head(model) * 2 + 0.1
        set_head(model, head)
        assert float(model(x, mask)[0][0]) == pytest.approx(float(features[0] @ head), rel=1e-4, abs=1e-5)


def test_ridge_towards_start_and_leave_one_out():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(12, 4)) * [1, 10, 100, 0.1]
    y = X @ [1.0, 0.2, 0.01, 5.0] + rng.normal(0, 0.1, 12)
    start = np.array([0.5, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(ridge_towards(X, y, start, 1e9), start, atol=1e-6)
    np.testing.assert_allclose(ridge_towards(X, y, start, 0.0), np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-6)
    for penalty in (1e-3, 0.1, 10.0):  # closed-form leave-one-out equals refitting without each subject
        brute = [(y[i] - X[i] @ ridge_towards(np.delete(X, i, 0), np.delete(y, i), start, penalty * 12 / 11,
                                              scale=feature_scale(X))) ** 2 for i in range(12)]
        assert loo_error(X, y, start, penalty) == pytest.approx(np.mean(brute), rel=1e-6)


def test_folds_are_balanced_and_leave_one_out_when_small():
    fold = fold_of(23, 5, seed=0)
    assert sorted(np.bincount(fold)) == [4, 4, 5, 5, 5]
    assert sorted(fold_of(4, 5, seed=0)) == [0, 1, 2, 3]


def synthetic_crop(n_pvs: int, rng: np.random.Generator, shape=(48, 48, 28)) -> RegionCrop:
    """A basal-ganglia-like crop: textured tissue with ``n_pvs`` bright 1.5 mm tubes inside the region."""
    affine = np.diag([*list(SPACING), 1.0])
    region = np.zeros(shape, bool)
    region[8:40, 8:40, 5:23] = True
    image = (0.3 + 0.03 * rng.normal(size=shape)).astype(np.float32)
    lo, hi = np.array([10, 10, 7]) * SPACING, np.array([38, 38, 21]) * SPACING
    tubes = [Tube(rng.uniform(lo, hi), np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.2, 3), rng.uniform(4, 8), 1.5)
             for _ in range(n_pvs)]
    tubes = [Tube(t.centre, t.direction / np.linalg.norm(t.direction), t.length_mm, t.diameter_mm) for t in tubes]
    if tubes:
        occ = tube_occupancy(tubes, affine, shape)
        image = image * (1 - occ) + 0.95 * occ
    t2 = Volume(scale_to_region(image, region), affine)  # what the networks see: unmasked
    image = np.clip(image * region, 0, 1)
    return RegionCrop("basal_ganglia", Volume(image, affine), Volume(region.astype(np.float32), affine), affine,
                      (0, 0, 0), shape, False, Volume(region, affine), t2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """16 run-like folders with a basal ganglia crop; rater 1 counts every PVS (the true n), which the
    shipped networks undercount on these crops (slope ~0.3)."""
    d = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(7)
    lines, folders = ["subject\tregion\trater1\tscanner"], []
    for i in range(16):
        n = int(rng.integers(0, 15))
        folder = d / f"sub-{i:02d}"
        save_crop(synthetic_crop(n, rng), folder / "roi")
        (folder / "counts.tsv").write_text("region\tmodel\tcount\n")
        lines.append(f"sub-{i:02d}\tbasal_ganglia\t{n}\tsynthetic")
        folders.append(folder)
    lines.append("sub-99\tbasal_ganglia\t3\tsynthetic")  # scored, but no result folder
    (d / "visual.tsv").write_text("\n".join(lines) + "\n")
    return d / "visual.tsv", folders


def test_finetuned_beats_the_shipped_networks_out_of_fold(cohort, tmp_path):
    scores, folders = cohort
    summary = finetune_cohort(scores, folders, tmp_path / "models", settings=FinetuneSettings(folds=4))
    entry = summary["regions"]["basal_ganglia"]
    assert entry["n"] == 16 and summary["left_out_subjects"] == ["sub-99"]
    for name in ("gpunet", "cnn"):
        start, tuned = entry[name]["start"], entry[name]["finetuned_out_of_fold"]
        assert tuned["mae"] < 0.7 * start["mae"], (name, start, tuned)
    assert entry["gpunet"]["finetuned_out_of_fold"]["pearson_r"] > 0.7
    for f in ("basal_ganglia_gpunet.pt", "basal_ganglia_cnn.pt", "finetune.json", "finetune.md", "finetune.png",
              "finetune_out_of_fold.tsv"):
        assert (tmp_path / "models" / f).is_file(), f
    assert not (tmp_path / "models" / "centrum_semiovale_gpunet.pt").exists()  # no scores there: shipped stays

    # pvsquant run --models: the tuned weights are picked up, the shipped ones fill the other regions
    models = load_models(tmp_path / "models")
    assert str(tmp_path / "models") in models[("basal_ganglia", "gpunet")].source
    assert "data/models" in models[("hippocampi", "gpunet")].source
    crop = load_crop(folders[0] / "roi", "basal_ganglia")
    tuned_count = count_region(crop, models, SPACING).counts["gpunet"]
    shipped_count = count_region(crop, load_models(), SPACING).counts["gpunet"]
    assert tuned_count != pytest.approx(shipped_count, abs=0.01)


def test_cli_finetune_reports_too_few_subjects(cohort, tmp_path, capsys):
    scores, folders = cohort
    assert main(["finetune", "--scores", str(scores), "--results", *map(str, folders[:3]),
                 "--out", str(tmp_path / "m")]) == 1
    assert not (tmp_path / "m").exists()
    assert main(["finetune", "--scores", str(scores), "--results", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "m")]) == 1
    # a region without scores: nothing to fine-tune, said so, nothing written
    assert main(["finetune", "--scores", str(scores), "--results", *map(str, folders), "--region", "midbrain",
                 "--out", str(tmp_path / "m")]) == 1
    assert not (tmp_path / "m").exists()


def test_finetune_reuses_the_runs_vesselness_exactly(tmp_path):
    """A run saves the vesselness channel (roi/<region>_vesselness.nii.gz); read back, it gives the
    same network input as recomputing it, without the Frangi filter."""
    crop = synthetic_crop(6, np.random.default_rng(3))
    counted = count_region(crop, load_models(), SPACING)
    assert counted.vesselness is not None and counted.vesselness.shape == crop.image.shape
    save_crop(crop, tmp_path / "roi")
    save_count_outputs({"basal_ganglia": counted}, ("basal_ganglia",), Volume(np.zeros((8, 8, 8), np.float32),
                       np.eye(4)), tmp_path)
    loaded = load_crop(tmp_path / "roi", "basal_ganglia")
    assert loaded.vesselness is not None
    reused = network_input(loaded, SPACING, reuse_vesselness=True)
    recomputed = network_input(loaded, SPACING)
    assert reused.frangi is None and recomputed.frangi is not None
    assert torch.equal(reused.x, recomputed.x)
