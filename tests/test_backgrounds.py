"""Real-background training samples: injection on a scan's own grid, difference labels, loss."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pvsquant.grids import resample
from pvsquant.learning.backgrounds import make_background_sample, noise_level
from pvsquant.learning.training import TrainSettings, background_loss
from pvsquant.models import build_model
from pvsquant.pipeline.regions import make_regions
from pvsquant.types import RigidTransform, Volume

from .anatomy_phantom import anatomy_phantom


@pytest.fixture(scope="module")
def case():
    """The phantom's anatomy as a 'real' scan: a T2 on a thick-slice grid (0.6 x 0.6 x 4 mm) with
    tissue at 0.3, CSF at 1 and noise, and the regions the pipeline makes from it."""
    anatomy = anatomy_phantom()
    labels = anatomy.labels
    regions = make_regions(anatomy, RigidTransform(np.eye(4), 0.0, 0.0), labels.with_array(labels.array * 1.0))
    affine = np.array(labels.affine, float)
    affine[:3, :3] = np.diag([0.6, 0.6, 4.0])
    extent = np.asarray(labels.shape) * np.sqrt((labels.affine[:3, :3] ** 2).sum(axis=0))
    shape = tuple(int(n) for n in np.ceil(extent / np.array([0.6, 0.6, 4.0])))
    affine[:3, 3] = labels.affine[:3, 3]
    on_t2 = resample(labels, affine, shape, order=0).array
    rng = np.random.default_rng(1)
    image = np.where(np.isin(on_t2, (4, 43, 24)), 1.0, np.where(on_t2 > 0, 0.3, 0.05)).astype(np.float32)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return {"t2": Volume(image, affine), "regions": regions, "csf": 1.0,
            "ventricle_centre": np.array([0.0, 5.0, 15.0])}


def test_noise_level_recovers_the_noise_of_a_smooth_image():
    rng = np.random.default_rng(0)
    image = np.linspace(0, 1, 40)[:, None, None] * np.ones((40, 40, 6)) + rng.normal(0, 0.05, (40, 40, 6))
    assert noise_level(image, np.ones(image.shape, bool)) == pytest.approx(0.05, rel=0.15)


def test_background_sample_adds_only_the_injected_pvs(case):
    found = None
    for seed in range(40):  # a sample with a few PVS inside the patch
        s = make_background_sample(case, "basal_ganglia", np.random.default_rng(seed), max_density_per_ml=8.0)
        if s.count >= 2 and s.density.sum() > 1.0:
            found = s
            break
    assert found is not None, "no basal-ganglia sample with PVS in 40 seeds"
    s = found
    diff = s.injected - s.clean
    near = s.density > 1e-3
    assert s.injected.shape == s.clean.shape == s.region_mask.shape == s.density.shape
    assert diff[near].mean() > 0.05  # brighter along the injected axes
    far = s.density == 0
    # away from the PVS, only the rescaling by the region median may change the clean image
    ratio = np.median(s.injected[far & (s.clean > 0.1)] / s.clean[far & (s.clean > 0.1)])
    assert ratio == pytest.approx(1.0, abs=0.05)
    assert s.density.sum() <= s.count + 1e-3  # a PVS counts at most once, less where it leaves the region


def test_min_visibility_labels_fewer_pvs_but_injects_the_same(case):
    """Faint injected PVS stay in the scan but leave the label; everything else is the same draw."""
    for seed in range(40):
        every = make_background_sample(case, "basal_ganglia", np.random.default_rng(seed), max_density_per_ml=8.0)
        if every.count >= 3:
            break
    visible = make_background_sample(case, "basal_ganglia", np.random.default_rng(seed), max_density_per_ml=8.0,
                                     min_visibility=0.9)
    none = make_background_sample(case, "basal_ganglia", np.random.default_rng(seed), max_density_per_ml=8.0,
                                  min_visibility=1.01)
    np.testing.assert_array_equal(every.injected, visible.injected)
    assert every.count == every.meta["n_labelled"] == every.meta["n_rendered"] >= 3
    assert visible.count == visible.meta["n_labelled"] < every.count
    assert visible.density.sum() < every.density.sum()
    assert none.count == 0 and none.density.sum() == 0 and (none.injected != none.clean).any()


def test_background_sample_without_pvs_is_the_clean_patch(case):
    for seed in range(60):
        s = make_background_sample(case, "centrum_semiovale", np.random.default_rng(seed))
        if s.meta["n_rendered"] == 0:
            np.testing.assert_array_equal(s.injected, s.clean)
            assert s.density.sum() == 0
            return
    pytest.fail("no empty sample in 60 seeds (10% are drawn empty)")


def test_background_loss_is_zero_for_the_exact_difference_and_ignores_the_clean_pass():
    settings = TrainSettings(region="basal_ganglia", model="gpunet", segment_weight=0.0)
    model = build_model("gpunet", 4, 3)
    x = torch.rand(1, 3, 16, 16, 8)
    mask = torch.ones(1, 1, 16, 16, 8)
    with torch.no_grad():
        pred_clean, att_clean = model(x * 0.9, mask)
    pred, att = model(x, mask)
    density = (att - att_clean).detach()
    count = (pred - pred_clean).detach()
    exact, _ = background_loss(model, pred, att, pred_clean, att_clean, density, count, settings)
    wrong, parts = background_loss(model, pred, att, pred_clean, att_clean, density + 0.01, count + 2, settings)
    assert float(exact.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(wrong.detach()) > float(exact.detach()) and parts["bg_count"] > 0
    wrong.backward()
    assert att_clean.grad is None and not att_clean.requires_grad


def test_outside_weight_trains_the_clean_pass_only_outside_the_region():
    settings = TrainSettings(region="basal_ganglia", model="gpunet", segment_weight=0.0, outside_weight=1.0)
    model = build_model("gpunet", 4, 3)
    x = torch.rand(1, 3, 16, 16, 8)
    mask = torch.ones(1, 1, 16, 16, 8)
    outside = torch.zeros(1, 1, 16, 16, 8)
    outside[..., :4, :, :] = 1.0
    pred, att = model(x, mask)
    att_clean = (torch.rand_like(att) + 0.1).requires_grad_(True)  # stands in for the clean pass
    pred_clean = pred.detach()
    density = torch.zeros_like(att)
    count = torch.zeros_like(pred)
    loss, parts = background_loss(model, pred, att, pred_clean, att_clean, density, count, settings, outside)
    loss.backward()
    grad = att_clean.grad
    assert grad is not None and parts["bg_outside"] >= 0
    assert float(grad[..., 4:, :, :].abs().max()) == 0.0  # inside the region: unlabelled on a real scan
    assert float(grad[..., :4, :, :].min()) > 0  # outside: pushed down to 0
    off = dataclasses.replace(settings, outside_weight=0.0)
    plain, plain_parts = background_loss(model, pred, att, pred_clean, att_clean, density, count, off, outside)
    assert "bg_outside" not in plain_parts and float(plain.detach()) <= float(loss.detach())


def test_floor_weight_trains_only_the_faint_mass_in_the_counting_mask():
    settings = TrainSettings(region="midbrain", model="gpunet", segment_weight=0.0, floor_weight=0.1)
    model = build_model("gpunet", 4, 3)
    x = torch.rand(1, 3, 16, 16, 8)
    counted = torch.zeros(1, 1, 16, 16, 8)
    counted[..., 4:, :, :] = 1.0
    pred, att = model(x, counted)
    values = torch.full_like(att, 2e-4)  # a faint floor ...
    values[..., 8, 8, 4] = 0.05  # ... and one PVS-like peak
    values[..., 6, 8, 4] = -3e-4  # a faint negative floor voxel counts too
    att_clean = values.clone().requires_grad_(True)
    density, count = torch.zeros_like(att), torch.zeros_like(pred)
    loss, parts = background_loss(model, pred, att, pred.detach(), att_clean, density, count, settings,
                                  counted=counted)
    loss.backward()
    grad = att_clean.grad
    assert grad is not None
    faint_mass = 2e-4 * (float(counted.sum()) - 2) + 3e-4
    assert parts["bg_floor"] == pytest.approx(0.1 * faint_mass, rel=1e-4)
    assert float(grad[..., :4, :, :].abs().max()) == 0.0  # outside the counting mask: untouched
    assert float(grad[..., 8, 8, 4]) == 0.0  # a PVS's bright voxels are not floor
    assert float(grad[..., 6, 8, 4]) < 0 < float(grad[..., 10, 8, 4])  # both signs pulled to 0
    off = dataclasses.replace(settings, floor_weight=0.0)
    _, off_parts = background_loss(model, pred, att, pred.detach(), att_clean, density, count, off, counted=counted)
    assert "bg_floor" not in off_parts
