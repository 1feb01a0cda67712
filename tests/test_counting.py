"""Counting stage: detection on an attention map, outputs with stable names and world coordinates."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pvsquant.grids import voxel_indices
from pvsquant.labels import METHODS as MODELS
from pvsquant.learning.synthesis import Tube
from pvsquant.learning.trainingdata import density_map, line_density
from pvsquant.models import Weights, build_model
from pvsquant.pipeline.counting import (
    BOX_MARGIN_VOXELS,
    DETECTION_FLOOR,
    RegionCounts,
    count_region,
    detect_pvs,
    load_models,
    network_box,
    save_count_outputs,
)
from pvsquant.pipeline.roi import count_mask, scale_to_region
from pvsquant.types import REGION_CODES, RegionCrop, Settings, Volume

SPACING = (0.5, 0.5, 0.8)


def blobs(centres, shape=(60, 60, 30)):
    return density_map(np.asarray(centres, float), shape, np.asarray(SPACING))


def test_detect_pvs_finds_each_pvs_once():
    centres = [[10, 10, 10], [30, 40, 15], [45, 20, 20]]
    attention = blobs(centres)
    affine = np.diag([*list(SPACING), 1.0])
    long_pvs = Tube(np.array([10.0, 25.0, 12.0]), np.array([0.0, 0.0, 1.0]), 16.0, 1.5)
    attention += line_density([long_pvs], affine, attention.shape)  # a 16 mm PVS along z
    region = np.ones(attention.shape, bool)
    labels, found = detect_pvs(attention, region)
    assert len(found) == 4 and labels.max() == 4
    assert {tuple(c) for c in centres} <= {p for p, _, _, _ in found}
    assert all(mass == pytest.approx(1.0, abs=0.15) for *_, mass in found)
    line = next(f for f in found if f[0] not in {tuple(c) for c in centres})
    assert line[2] > 40  # the long PVS is one component along its length
    # A PVS peaking outside the region is none of its detections (even inside the counting rim);
    # a faint blob (a tenth of a PVS, below min_mass 0.15) is not a PVS.
    region[:25] = False
    assert len(detect_pvs(attention, region)[1]) == 2
    region[:31] = False  # the blob at x = 30 now peaks 0.5 mm outside the region
    assert [p for p, *_ in detect_pvs(attention, region)[1]] == [(45, 20, 20)]
    assert detect_pvs(0.1 * blobs(centres), np.ones_like(region))[1] == []


def test_neighbouring_pvs_are_separate_detections():
    """Two PVS 4 mm apart are two detections at the shipped level; the former level (1.5e-3)
    merged their maps into one component (why the level was raised, benchmarks/results_detection.md)."""
    attention = blobs([[20, 20, 12], [28, 20, 12]])
    region = np.ones(attention.shape, bool)
    found = detect_pvs(attention, region)[1]
    assert len(found) == 2
    assert all(mass == pytest.approx(1.0, abs=0.15) for *_, mass in found)
    assert len(detect_pvs(attention, region, level=1.5e-3)[1]) == 1


@pytest.mark.parametrize("region_name", list(REGION_CODES))
def test_prominence_splits_touching_pvs_not_a_long_one(region_name):
    """Two PVS 2.5 mm apart touch above the level (one component); split at their peaks with the
    region's shipped prominence they are two detections of one PVS each. A 16 mm PVS (its map's
    ripples along the axis, and its peak only just above the level) stays one detection, and so
    does a single blob."""
    prominence = Settings().detection_prominence[region_name]
    attention = blobs([[20, 20, 12], [25, 20, 12]])
    region = np.ones(attention.shape, bool)
    assert len(detect_pvs(attention, region)[1]) == 1
    found = detect_pvs(attention, region, prominence=prominence)[1]
    assert sorted(p for p, *_ in found) == [(20, 20, 12), (25, 20, 12)]
    assert all(mass == pytest.approx(1.0, abs=0.15) for *_, mass in found)
    affine = np.diag([*list(SPACING), 1.0])
    long_pvs = line_density([Tube(np.array([10.0, 15.0, 12.0]), np.array([0.0, 0.0, 1.0]), 16.0, 1.5)],
                            affine, (60, 60, 40))
    assert Settings().detection_level < long_pvs.max() < Settings().detection_level + 2 * prominence
    (single,) = detect_pvs(long_pvs, np.ones(long_pvs.shape, bool), prominence=prominence)[1]
    assert single[3] == pytest.approx(1.0, abs=0.15)
    assert len(detect_pvs(blobs([[30, 30, 15]]), region, prominence=prominence)[1]) == 1


def test_a_prominence_above_the_map_keeps_each_component_and_a_negative_one_is_refused():
    """The highest peak of a component always counts: a prominence above the map's height gives the
    unsplit detections (not none), and a negative prominence is an error, not skimage's."""
    attention = blobs([[20, 20, 12], [25, 20, 12]])
    region = np.ones(attention.shape, bool)
    unsplit = detect_pvs(attention, region)[1]
    for prominence in (0.05, 1.0):
        assert detect_pvs(attention, region, prominence=prominence)[1] == unsplit
    with pytest.raises(ValueError, match="prominence must be 0 or more"):
        detect_pvs(attention, region, prominence=-1e-3)


def test_detect_pvs_matches_scipy_per_component_statistics():
    """Mass, size and peak per component computed from the component voxels only give what
    ndimage's per-label functions give, and the label array numbers the kept detections 1..n."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    rng = np.random.default_rng(3)
    smooth = ndimage.gaussian_filter(rng.random((50, 40, 30)), 1.0)
    attention = np.clip(smooth - np.quantile(smooth, 0.95), 0, None)
    attention = attention / attention.max()
    region = np.ones(attention.shape, bool)
    region[:10] = False
    level, min_mass = 0.05, 0.3
    labels, found = detect_pvs(attention, region, level, min_mass)
    cores, n = ndimage.label(attention > level, structure=np.ones((3, 3, 3), bool))
    components = watershed(-attention, cores, mask=attention > min(DETECTION_FLOOR, level))
    index = np.arange(1, n + 1)
    masses = ndimage.sum_labels(attention, components, index)
    sizes = ndimage.sum_labels(np.ones_like(attention), components, index)
    peaks = ndimage.maximum_position(attention, components, index)
    expected = [(tuple(int(v) for v in pk), int(sz), float(m)) for m, sz, pk in zip(masses, sizes, peaks, strict=True)
                if m >= min_mass and region[pk]]
    assert len(expected) > 5 and n > len(expected)  # some are dropped, by mass or by peaking outside the region
    assert [(f[0], f[2]) for f in found] == [(e[0], e[1]) for e in expected]
    np.testing.assert_allclose([f[3] for f in found], [e[2] for e in expected], rtol=1e-9)
    assert labels.max() == len(found)
    for k, (peak, *_rest) in enumerate(found, start=1):
        assert labels[peak] == k


def _crop(shape=(40, 40, 24)):
    affine = np.diag([0.5, 0.5, 0.8, 1.0])
    affine[:3, 3] = [-10.0, -10.0, -9.6]
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.3, shape).astype(np.float32)
    region = np.zeros(shape, bool)
    region[8:32, 8:32, 5:19] = True
    soft = region.astype(np.float32)
    return RegionCrop("basal_ganglia", Volume(image, affine), Volume(soft, affine), affine, (0, 0, 0), shape,
                      False, Volume(region, affine), Volume(image, affine))


def test_count_region_runs_every_model():
    models = {("basal_ganglia", m): Weights(build_model(m, 4).eval(), m, "basal_ganglia") for m in ("gpunet", "cnn")}
    res = count_region(_crop(), models, SPACING)
    assert set(res.counts) == set(MODELS)
    assert res.attention.shape == (40, 40, 24)
    counting = count_mask(_crop().region_mask.array, SPACING)  # the region grown by 1 mm
    assert res.counts["gpunet"] == pytest.approx(max(0.0, float(res.attention.array[counting].sum())), rel=1e-4)
    with pytest.raises(KeyError, match=r"no cnn weights"):
        count_region(_crop(), {("basal_ganglia", "gpunet"): models[("basal_ganglia", "gpunet")]}, SPACING)


def test_negative_network_sums_are_counted_as_zero():
    """A GP-Unet whose mass read-out is negative everywhere sums to a negative number; the
    count it reports is 0 (the attention map keeps its values)."""
    import torch

    network = build_model("gpunet", 4).eval()
    with torch.no_grad():
        network.segment.weight.zero_()
        network.segment.bias.fill_(5.0)  # the gate open on every voxel
        network.output.weight.zero_()
        network.output.bias.fill_(-1.0)  # mass -1 per voxel
    models = {("basal_ganglia", "gpunet"): Weights(network, "gpunet", "basal_ganglia"),
              ("basal_ganglia", "cnn"): Weights(build_model("cnn", 4).eval(), "cnn", "basal_ganglia")}
    res = count_region(_crop(), models, SPACING)
    assert float(res.attention.array.sum()) < -1.0
    assert res.counts["gpunet"] == 0.0


def test_outputs_have_stable_names_and_world_coordinates(tmp_path):
    crop = _crop()
    attention = blobs([[20, 20, 12], [12, 28, 9]], shape=crop.box_shape)
    labels, found = detect_pvs(attention, crop.region_mask.array)
    from pvsquant.grids import world_coordinates
    from pvsquant.pipeline.counting import Detection

    dets = [Detection("basal_ganglia", tuple(world_coordinates(crop.image.affine, np.array([p]))[0]), pk, n)
            for p, pk, n, _ in found]
    res = RegionCounts("basal_ganglia", {"gpunet": 2.0, "cnn": 1.5, "frangi": 3.0},
                       Volume(attention, crop.image.affine), dets, Volume(labels, crop.image.affine),
                       Volume(np.zeros(crop.box_shape, np.int32), crop.image.affine))
    t2_affine = np.diag([0.45, 0.45, 3.0, 1.0])
    t2_affine[:3, 3] = [-12.0, -12.0, -12.0]
    t2 = Volume(np.zeros((60, 60, 9), np.float32), t2_affine)
    save_count_outputs({"basal_ganglia": res}, tuple(REGION_CODES), t2, tmp_path)

    lines = (tmp_path / "counts.tsv").read_text().splitlines()
    assert lines[0] == "region\tmodel\tcount" and len(lines) == 1 + 4 * 3
    assert "basal_ganglia\tgpunet\t2.0" in lines and "hippocampi\tcnn\tn/a" in lines
    assert json.loads((tmp_path / "counts.json").read_text())[3] == {"region": "basal_ganglia", "model": "gpunet",
                                                                      "count": 2.0}
    table = (tmp_path / "pvs.tsv").read_text().splitlines()
    assert table[0] == "id\tregion\tx\ty\tz\tpeak\tsize_vox" and len(table) == 3
    pvs = nib.load(str(tmp_path / "pvs.nii.gz"))
    data = np.asarray(pvs.dataobj)
    for row in table[1:]:
        pid, region, x, y, z = row.split("\t")[:5]
        vox = np.round(voxel_indices(pvs.affine, np.array([[float(x), float(y), float(z)]]))[0]).astype(int)
        assert data[tuple(vox)] == int(pid) and region == "basal_ganglia"
    att = nib.load(str(tmp_path / "attention_basal_ganglia.nii.gz"))
    assert att.shape == t2.shape and np.asarray(att.dataobj).max() > 0


def lacune_crop(n_lacunes: int, rng: np.random.Generator, shape=(96, 96, 48)) -> RegionCrop:
    """A basal-ganglia-like crop with lacunes: CSF-bright balls 5-10 mm wide with a gliotic rim."""
    affine = np.diag([*SPACING, 1.0])
    region = np.zeros(shape, bool)
    region[12:84, 12:84, 8:40] = True
    image = (0.3 + 0.03 * rng.normal(size=shape)).astype(np.float32)
    mm = np.indices(shape).astype(float) * np.asarray(SPACING)[:, None, None, None]
    for _ in range(n_lacunes):
        centre, radius = rng.uniform([14, 14, 12], [34, 34, 20]), rng.uniform(2.5, 5.0)
        distance = np.sqrt(((mm - centre[:, None, None, None]) ** 2).sum(0))
        image[(distance >= radius) & (distance < radius + 1.0)] = 0.42  # rim, brighter than white matter
        image[distance < radius] = 0.95
    t2 = Volume(scale_to_region(image, region), affine)
    return RegionCrop("basal_ganglia", Volume(np.clip(image * region, 0, 1), affine),
                      Volume(region.astype(np.float32), affine), affine, (0, 0, 0), shape, False,
                      Volume(region, affine), t2)


@pytest.mark.parametrize("seed", [
    pytest.param(0, marks=pytest.mark.xfail(strict=True, reason=(
        "known: seed 0's three lacunes add 1.000 with the counting-mask box of 2026-12-07 (0.986 with the larger "
        "box before): 0.66-1.18 over eight one-voxel shifts of the box, since the GP-Unet's max-pooling is not "
        "shift-invariant; in pvsquant run the lesion stage takes lacunes out of the regions first"))),
    1, 2])
def test_lacunes_are_not_counted_as_pvs_by_the_gpunet(seed):
    """Three lacunes add less than one PVS to the GP-Unet's count (three PVS add ~2.4, measured)."""
    models = load_models()
    clean = count_region(lacune_crop(0, np.random.default_rng(seed)), models, SPACING).counts
    lacunes = count_region(lacune_crop(3, np.random.default_rng(seed)), models, SPACING).counts
    assert lacunes["gpunet"] - clean["gpunet"] < 1.0


@pytest.mark.xfail(strict=True, reason="known: the CNN counts lacunes as PVS (3 lacunes add 3.4-5.2); "
                   "the GP-Unet does not (see the issue 11 note)")
def test_lacunes_are_not_counted_as_pvs_by_the_cnn():
    models = load_models()
    clean = count_region(lacune_crop(0, np.random.default_rng(0)), models, SPACING).counts
    lacunes = count_region(lacune_crop(3, np.random.default_rng(0)), models, SPACING).counts
    assert lacunes["cnn"] - clean["cnn"] < 1.0


def test_channels_last_networks_give_the_same_numbers():
    """load_models() puts the networks in channels-last 3D layout for speed; the output must not change."""
    import torch

    from pvsquant.models import build_model

    torch.manual_seed(0)
    x, m = torch.rand(1, 3, 32, 40, 24), torch.ones(1, 1, 32, 40, 24)
    for name in ("gpunet", "cnn"):
        net = build_model(name, 8, 3).eval()
        with torch.no_grad():
            value, attention = net(x, m)
            net.to(memory_format=torch.channels_last_3d)
            value_cl, attention_cl = net(x.contiguous(memory_format=torch.channels_last_3d), m)
        torch.testing.assert_close(value_cl, value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(attention_cl, attention, rtol=1e-5, atol=1e-6)


def test_primary_model_is_the_benchmarks_choice():
    """PRIMARY_MODEL follows its rule on the committed counting benchmark: of the methods with
    r >= 0.9, the smallest MAE (so the shipped choice cannot drift from the shipped figures)."""
    import json
    from pathlib import Path

    from pvsquant.pipeline.counting import PRIMARY_MODEL

    summary = json.loads((Path(__file__).parents[1] / "benchmarks" / "results_counting.json").read_text())["summary"]
    assert set(summary) == set(PRIMARY_MODEL)
    for region, figures in summary.items():
        eligible = {m: figures[m]["mae"] for m in ("gpunet", "cnn", "frangi") if figures[m]["pearson_r"] >= 0.9}
        assert PRIMARY_MODEL[region] == min(eligible, key=eligible.__getitem__), (region, eligible)


def test_the_network_box_holds_the_counting_mask_and_its_margin():
    counting = np.zeros((60, 50, 30), bool)
    counting[20:31, 10:17, 5:9] = True
    box = network_box(counting)
    for b, (lo, hi), n in zip(box, ((20, 31), (10, 17), (5, 9)), counting.shape, strict=True):
        assert b.start <= lo - BOX_MARGIN_VOXELS and b.stop >= hi + BOX_MARGIN_VOXELS  # the context kept
        assert (b.stop - b.start) % 4 == 0 and b.start >= 0 and b.stop <= n  # the pooling's multiple, inside
        assert b.stop - b.start < hi - lo + 2 * BOX_MARGIN_VOXELS + 4  # no more than that
    # at the crop's edge the box stays inside it and still a multiple of 4
    counting[:] = False
    counting[0:3, 47:50, 0:2] = True
    box = network_box(counting)
    assert all(b.start >= 0 and b.stop <= n and (b.stop - b.start) % 4 == 0 for b, n in zip(box, counting.shape,
                                                                                              strict=True))
    assert counting[box].sum() == counting.sum()
