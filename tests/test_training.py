"""Training: a tiny GP-Unet learns on toy samples; checkpoints resume; the CNN starts from the GP-Unet."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from pvsquant.learning.training import TrainSettings, evaluate, load_shards, predict_counts, train
from pvsquant.learning.trainingdata import density_map
from pvsquant.models import GPUnet


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Eight toy samples (bright spots on a noisy background, 0-5 each) in the shard format of
    pvsquant train: easy enough that a tiny network shows learning in a few seconds."""
    rng = np.random.default_rng(0)
    images, densities, counts = [], [], []
    unit = ndimage.gaussian_filter(np.pad([[[1.0]]], 5), 1.2).max()
    for _ in range(8):
        k = int(rng.integers(0, 6))
        centres = np.round(rng.uniform(4, [28, 28, 16], (k, 3)))
        spikes = np.zeros((32, 32, 20), np.float32)
        spikes[tuple(centres.astype(int).T)] = 1
        image = 0.3 + 0.02 * rng.normal(size=spikes.shape) + 0.6 * ndimage.gaussian_filter(spikes, 1.2) / unit
        images.append(image.clip(0, 1))
        densities.append(density_map(centres, (32, 32, 20), np.array([0.5, 0.5, 0.8])))
        counts.append(k)
    d = tmp_path_factory.mktemp("cache")
    np.savez_compressed(d / "basal_ganglia_0_0000.npz", image=np.stack(images).astype(np.float16),
                        mask=np.ones((8, 32, 32, 20), bool), density=np.stack(densities).astype(np.float16),
                        count=np.array(counts), index=np.arange(8))
    return d


def test_tiny_gpunet_loss_falls(cache, tmp_path):
    settings = TrainSettings(region="basal_ganglia", model="gpunet", steps=80, batch_size=4, crop=(32, 32, 20),
                             width=4, learning_rate=3e-3, checkpoint_every=1000, threads=1)
    result = train(settings, cache, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "train_log.json").read_text())["history"]
    assert result["steps_done"] == 80
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert result["settings"]["in_channels"] == 3  # T2, vesselness, region
    weights = torch.load(tmp_path / "run" / "basal_ganglia_gpunet.pt", weights_only=True)
    assert weights["model"] == "gpunet" and weights["region"] == "basal_ganglia"


def test_training_resumes_from_its_checkpoint_and_cnn_starts_from_gpunet(cache, tmp_path):
    base = TrainSettings(region="basal_ganglia", model="gpunet", steps=10, batch_size=2, crop=(24, 24, 16),
                         width=4, checkpoint_every=5, threads=1)
    train(base, cache, tmp_path / "a")
    resumed = TrainSettings(**{**base.__dict__, "steps": 14})
    result = train(resumed, cache, tmp_path / "a")
    assert result["steps_done"] == 14
    steps = [h["step"] for h in json.loads((tmp_path / "a" / "train_log.json").read_text())["history"]]
    assert steps == sorted(set(steps))  # no step counted twice

    cnn = TrainSettings(region="basal_ganglia", model="cnn", steps=2, batch_size=2, crop=(24, 24, 16), width=4,
                        threads=1, init=str(tmp_path / "a" / "basal_ganglia_gpunet.pt"))
    train(cnn, cache, tmp_path / "cnn")
    gp = torch.load(tmp_path / "a" / "basal_ganglia_gpunet.pt", weights_only=True)["state_dict"]
    # After 2 steps the CNN's encoder is still close to the GP-Unet's it started from.
    cnn_state = torch.load(tmp_path / "cnn" / "basal_ganglia_cnn.pt", weights_only=True)["state_dict"]
    w = "encoder.level1.0.0.weight"
    assert torch.allclose(cnn_state[w], gp[w], atol=0.05)


def test_load_shards_names_the_missing_region(cache):
    with pytest.raises(FileNotFoundError, match=r"hippocampi"):
        load_shards(cache, ["hippocampi"])


def test_visible_counts_load_only_when_every_shard_has_them(cache, tmp_path):
    """Shards of pvsquant >= 0.4 carry the counts of visible PVS; a cache mixing in older shards
    gives none rather than misaligned rows."""
    with np.load(cache / "basal_ganglia_0_0000.npz") as old:
        arrays = {k: old[k] for k in old.files}
    visible = np.stack([np.minimum(arrays["count"], k) for k in (3, 2, 1)], axis=1)
    np.savez_compressed(tmp_path / "basal_ganglia_0_0000.npz", **arrays, visible_count=visible)
    data = load_shards(tmp_path, ["basal_ganglia"])
    np.testing.assert_array_equal(data["visible_count"], visible)
    np.savez_compressed(tmp_path / "basal_ganglia_0_0001.npz", **arrays)
    mixed = load_shards(tmp_path, ["basal_ganglia"])
    assert len(mixed["count"]) == 16 and "visible_count" not in mixed


def test_evaluate_scores_the_predicted_counts(cache):
    torch.manual_seed(0)
    model = GPUnet(width=4)
    data = load_shards(cache, ["basal_ganglia"])
    pred = predict_counts(model, data, batch_size=3)
    assert pred.shape == (8,) and model.training  # the mode it was in is kept
    truth = data["count"].astype(float)
    result = evaluate(model, data)
    assert result["mae"] == pytest.approx(np.abs(pred - truth).mean(), abs=1e-3)
    assert result["pearson_r"] == pytest.approx(np.corrcoef(pred, truth)[0, 1], abs=1e-4)


def test_training_mixes_real_background_pairs_into_each_batch(cache, tmp_path):
    """A real-background shard (clean and injected patches, density of the injected PVS only):
    part of every batch comes from it and the loss reports its difference terms."""
    with np.load(cache / "basal_ganglia_0_0000.npz") as d:
        density = d["density"].astype(np.float32)
        injected = d["image"].astype(np.float32)
        clean = np.clip(injected - 0.6 * density / max(float(density.max()), 1e-6), 0, 1)
        real = tmp_path / "real"
        real.mkdir()
        np.savez_compressed(real / "basal_ganglia_0_0000.npz", image=injected.astype(np.float16),
                            clean=clean.astype(np.float16), mask=d["mask"], density=d["density"], count=d["count"],
                            index=d["index"])
    settings = TrainSettings(region="basal_ganglia", model="gpunet", steps=20, batch_size=4, crop=(24, 24, 16),
                             width=4, checkpoint_every=1000, threads=1, background_fraction=0.5)
    result = train(settings, cache, tmp_path / "run", background_dir=real)
    history = json.loads((tmp_path / "run" / "train_log.json").read_text())["history"]
    assert result["real_background_samples"] == 8
    assert {"bg_density", "bg_count", "density"} <= set(history[-1])
    assert (real / "basal_ganglia_0_0000.clean_vesselness.npy").is_file()
