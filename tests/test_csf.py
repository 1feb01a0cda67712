"""CSF spaces the labels miss (a third ventricle, a cistern): found by width and contrast, removed
from the counting regions, thin PVS left in."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pvsquant.errors import InputSettingsError
from pvsquant.pipeline.csf import csf_record, exclude_csf, find_csf_spaces
from pvsquant.pipeline.regions import Regions
from pvsquant.reporting.report import csf_table
from pvsquant.types import REGION_CODES, Anatomy, CsfSettings, RigidTransform, Settings, Volume

SHAPE = (64, 64, 40)
IDENTITY = RigidTransform(np.eye(4), -0.8, -0.8)
BG = REGION_CODES["basal_ganglia"]


def phantom(ventricle_label: bool = True) -> dict:
    """Deep grey matter (the basal-ganglia region) in white matter, a labelled lateral ventricle
    away from it, an unlabelled 6 mm wide fluid slab through the region's middle (a third
    ventricle) and a 2 mm wide tube (a PVS) in the region."""
    affine = np.eye(4)
    i, j, k = np.indices(SHAPE)
    labels = np.full(SHAPE, 2, np.int32)  # white matter everywhere
    region = (i >= 12) & (i < 52) & (j >= 12) & (j < 44) & (k >= 8) & (k < 32)
    labels[region] = 10  # thalamus
    ventricle = (i >= 20) & (i < 44) & (j >= 50) & (j < 60) & (k >= 8) & (k < 32)
    if ventricle_label:
        labels[ventricle] = 4
    slab = (np.abs(i - 32) <= 2.5) & (j >= 12) & (j < 44) & (k >= 8) & (k < 32)
    labels[slab] = 10  # the anatomy missed the fluid: labelled as the nucleus around it
    pvs = ((i - 20) ** 2 + (j - 28) ** 2 <= 1) & (k >= 12) & (k < 28)
    t2 = np.full(SHAPE, 400.0)
    t2[region] = 500.0
    t2[ventricle] = 1600.0
    t2[slab] = 1600.0
    t2[pvs] = 1500.0
    rng = np.random.default_rng(0)
    t2 = (t2 + rng.normal(0, 10, SHAPE)).astype(np.float32)
    codes = np.where(region, BG, 0).astype(np.uint8)
    work = Volume(codes, affine)
    regions = Regions(work, np.array([0.0, 0.0, 1.0]), None,
                      {name: float((codes == code).sum()) / 1000 for name, code in REGION_CODES.items()}, ())
    return {"t2": Volume(t2, affine), "anatomy": Anatomy(Volume(labels, affine), "labels"), "regions": regions,
            "slab": slab, "pvs": pvs, "region": region}


@pytest.fixture(scope="module")
def case() -> dict:
    return phantom()


def test_fluid_slab_and_its_rim_are_removed_thin_pvs_stays(case: dict) -> None:
    csf = find_csf_spaces(case["t2"], case["anatomy"], IDENTITY, case["regions"])
    assert csf.csf_level == pytest.approx(1600 / 400, rel=0.02)
    assert csf.threshold == pytest.approx(1 + 0.5 * (csf.csf_level - 1))
    zone = csf.zone.array
    assert zone[case["slab"]].mean() > 0.99
    i = np.indices(SHAPE)[0]
    rim = case["region"] & (np.abs(i - 32) == 3)  # 1 mm from the slab (the margin is 1.5 mm)
    _, j, k = np.indices(SHAPE)
    away_from_its_ends = (j >= 16) & (j < 40) & (k >= 12) & (k < 28)  # the opening rounds the slab's corners
    assert zone[rim & away_from_its_ends].all()
    assert not zone[case["pvs"]].any()
    far = case["region"] & (np.abs(i - 32) >= 4)  # 2 mm and more from the slab
    assert not zone[far & ~case["pvs"]].any()
    regions, lost = exclude_csf(case["regions"], csf)
    assert regions.work.array[case["slab"] & away_from_its_ends].max() == 0
    assert (regions.work.array[case["pvs"]] == BG).all()
    removed_ml = float((case["region"] & zone).sum()) / 1000
    assert lost["basal_ganglia"] == pytest.approx(removed_ml)
    before = case["regions"].volumes_ml["basal_ganglia"]
    assert regions.volumes_ml["basal_ganglia"] == pytest.approx(before - removed_ml)
    record = csf_record(csf, lost)
    assert record["enabled"] is True and record["excluded_ml"]["basal_ganglia"] == pytest.approx(removed_ml, abs=1e-3)


def test_a_narrower_slab_than_the_ball_is_kept(case: dict) -> None:
    wide_ball = Settings(csf=CsfSettings(ball_diameter_mm=8.0))
    csf = find_csf_spaces(case["t2"], case["anatomy"], IDENTITY, case["regions"], wide_ball)
    assert not csf.zone.array[case["slab"]].any()


def test_disabled_or_without_ventricles_nothing_is_removed(case: dict) -> None:
    off = find_csf_spaces(case["t2"], case["anatomy"], IDENTITY, case["regions"],
                          Settings(csf=CsfSettings(enabled=False)))
    assert not off.zone.array.any() and not off.flags
    regions, lost = exclude_csf(case["regions"], off)
    assert regions is case["regions"] and set(lost.values()) == {0.0}
    unlabelled = phantom(ventricle_label=False)
    csf = find_csf_spaces(unlabelled["t2"], unlabelled["anatomy"], IDENTITY, unlabelled["regions"])
    assert not csf.zone.array.any()
    assert [f.code for f in csf.flags] == ["csf_not_measured"]
    dark = dataclasses.replace(case["t2"], array=np.full(SHAPE, 400.0, np.float32))
    csf = find_csf_spaces(dark, case["anatomy"], IDENTITY, case["regions"])
    assert not csf.zone.array.any() and [f.code for f in csf.flags] == ["csf_not_bright"]


def test_zone_on_another_grid_is_refused(case: dict) -> None:
    csf = find_csf_spaces(case["t2"], case["anatomy"], IDENTITY, case["regions"])
    shifted = dataclasses.replace(csf, zone=csf.zone.with_array(csf.zone.array[1:]))
    with pytest.raises(ValueError, match="working grid"):
        exclude_csf(case["regions"], shifted)


def test_settings_are_checked_and_read_from_json() -> None:
    with pytest.raises(ValueError, match="fraction"):
        CsfSettings(fraction=1.5)
    with pytest.raises(InputSettingsError, match="margin_mm"):
        Settings.from_json({"csf": {"margin_mm": -1.0}})
    assert Settings.from_json({"csf": {"margin_mm": 2.0}}).csf == CsfSettings(margin_mm=2.0)


def test_report_table(case: dict) -> None:
    csf = find_csf_spaces(case["t2"], case["anatomy"], IDENTITY, case["regions"])
    _, lost = exclude_csf(case["regions"], csf)
    html = csf_table({"csf": csf_record(csf, lost)})
    assert "id='csf'" in html and "basal ganglia" in html and f"{lost['basal_ganglia']:.2f}" in html
    assert "switched off" in csf_table({"csf": {"enabled": False}})
    assert csf_table({}) == ""
