"""White-matter lesions: found by shape and contrast, removed from the counting regions."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pvsquant import labels as fs
from pvsquant.pipeline.lesions import (
    exclude_lesions,
    lesion_record,
    lesions_into_anatomy,
    lesions_on_grid,
    segment_lesions,
)
from pvsquant.pipeline.regions import Regions
from pvsquant.types import REGION_CODES, Anatomy, LesionSettings, RigidTransform, Settings, Volume

SHAPE = (64, 64, 48)
IDENTITY = RigidTransform(np.eye(4), -0.8, -0.8)


def grid() -> tuple[np.ndarray, np.ndarray]:
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(SHAPE) - 1) / 2
    idx = np.indices(SHAPE).astype(float)
    return affine, np.stack([idx[a] + affine[a, 3] for a in range(3)], axis=-1)


def ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    return sum(((p[..., a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1


def tube(p: np.ndarray, centre, radius_mm: float, half_length_mm: float) -> np.ndarray:
    """A tube along z (a PVS of ``2 * radius_mm`` width)."""
    return (((p[..., 0] - centre[0]) ** 2 + (p[..., 1] - centre[1]) ** 2) <= radius_mm ** 2) \
        & (np.abs(p[..., 2] - centre[2]) <= half_length_mm)


LESION = ((-12, 8, 4), (4, 4, 4))  # an 8 mm ball in white matter
PVS = ((12, -8, 0), 1.0, 9.0)      # a 2 mm wide, 18 mm long tube in white matter
VENTRICLE = ((12, 12, 0), (4, 6, 6))


def phantom(flair_lesion: bool = True) -> dict:
    """Labels (white matter, cortex, a ventricle), T1, T2 and FLAIR with a lesion and a PVS."""
    affine, p = grid()
    labels = np.zeros(SHAPE, np.int32)
    brain = ellipsoid(p, (0, 0, 0), (30, 30, 22))
    wm = ellipsoid(p, (0, 0, 0), (25, 25, 18))
    labels[brain] = 3
    labels[wm & (p[..., 0] < 0)] = 2
    labels[wm & (p[..., 0] >= 0)] = 41
    ventricle = ellipsoid(p, *VENTRICLE)
    labels[ventricle] = 43
    lesion = ellipsoid(p, *LESION)
    pvs = tube(p, *PVS)
    rng = np.random.default_rng(0)
    t2 = np.where(brain, 600.0, 0.0)
    t1 = np.where(brain, 550.0, 0.0)
    flair = np.where(brain, 650.0, 0.0)
    t2[wm], t1[wm], flair[wm] = 400, 800, 500
    t2[ventricle], t1[ventricle], flair[ventricle] = 1200, 150, 200
    t2[lesion], t1[lesion] = 800, 550
    flair[lesion] = 900 if flair_lesion else 500
    t2[pvs], t1[pvs], flair[pvs] = 1100, 300, 250
    noisy = [Volume((a + rng.normal(0, 15, SHAPE) * (a > 0)).astype(np.float32), affine) for a in (t1, t2, flair)]
    regions = np.zeros(SHAPE, np.uint8)
    regions[wm & ~ventricle] = REGION_CODES["centrum_semiovale"]
    work = Volume(regions, affine)
    reg = Regions(work, np.array([0.0, 0.0, 1.0]), None,
                  {name: float((regions == code).sum()) / 1000 for name, code in REGION_CODES.items()}, ())
    return {"t1": noisy[0], "t2": noisy[1], "flair": noisy[2], "regions": reg, "lesion": lesion, "pvs": pvs,
            "ventricle": ventricle, "anatomy": Anatomy(Volume(labels, affine), "labels"), "p": p}


@pytest.fixture(scope="module")
def case() -> dict:
    return phantom()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("inputs", ["t2", "t2+t1"])
def test_blob_is_a_lesion_tube_and_ventricle_are_not(case, inputs):
    t1 = case["t1"] if inputs == "t2+t1" else None
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"], t1=t1)
    mask = lesions.mask.array
    assert lesions.method == inputs
    assert dice(mask, case["lesion"]) > 0.85
    assert not (mask & case["pvs"]).any()
    assert not (mask & case["ventricle"]).any()
    assert lesions.references["t2"] == pytest.approx(400, rel=0.05)
    assert lesions.volume_ml == pytest.approx(case["lesion"].sum() / 1000, rel=0.2)


def test_t1_bright_blob_is_not_a_lesion_with_a_t1(case):
    """With a T1, a T2-bright blob as bright as white matter on the T1 is not taken."""
    t1 = case["t1"].with_array(np.where(case["lesion"], 800.0, case["t1"].array).astype(np.float32))
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"], t1=t1)
    assert not lesions.mask.array.any()


def test_wide_bright_tube_is_a_lesion_thin_one_is_not(case):
    """The ball: a 6 mm wide tube holds a 4 mm ball, a 3 mm one does not."""
    for radius, expected in ((1.5, False), (3.0, True)):
        pvs = tube(case["p"], (-8, -10, 0), radius, 9.0)
        t2 = case["t2"].with_array(np.where(pvs, 1100.0, case["t2"].array).astype(np.float32))
        lesions = segment_lesions(t2, case["anatomy"], IDENTITY, case["regions"])
        assert bool((lesions.mask.array & pvs).any()) is expected


def test_switched_off(case):
    settings = Settings(lesions=LesionSettings(enabled=False))
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"], settings)
    assert lesions.method == "off" and not lesions.mask.array.any()
    regions, lost = exclude_lesions(case["regions"], lesions, settings)
    assert regions is case["regions"] and set(lost.values()) == {0.0}


@pytest.mark.parametrize("margin_mm", [0.0, 1.0, 2.0])
def test_exclusion_removes_the_dilated_lesion_and_records_its_volume(case, margin_mm):
    settings = Settings(lesions=LesionSettings(margin_mm=margin_mm))
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"], settings)
    regions, lost = exclude_lesions(case["regions"], lesions, settings)
    before = case["regions"].work.array == REGION_CODES["centrum_semiovale"]
    after = regions.work.array == REGION_CODES["centrum_semiovale"]
    removed = before & ~after
    distance = np.sqrt(sum((case["p"][..., a] - LESION[0][a]) ** 2 for a in range(3)))
    assert not (after & lesions.mask.array).any()
    assert not (removed & (distance > LESION[1][0] + margin_mm + 1.5)).any()  # nothing far from the lesion
    assert removed.sum() / 1000 == pytest.approx(lost["centrum_semiovale"])
    assert regions.volumes_ml["centrum_semiovale"] == pytest.approx(after.sum() / 1000)
    assert lost["basal_ganglia"] == 0.0
    record = lesion_record(lesions, lost, settings)
    assert record["method"] == "t2" and record["excluded_ml"]["centrum_semiovale"] == round(lost[
        "centrum_semiovale"], 3)
    assert record["volume_ml"] == round(lesions.volume_ml, 3)
    if margin_mm > 0:
        assert lost["centrum_semiovale"] > lesions.volume_ml  # the margin takes more than the lesion


def test_flair_bright_blob_is_a_lesion_flair_dark_tube_is_not(case):
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"], flair=case["flair"],
                              flair_transform=IDENTITY)
    assert lesions.method == "flair+t2"
    assert dice(lesions.mask.array, case["lesion"]) > 0.85
    assert not (lesions.mask.array & case["pvs"]).any()
    assert "flair" in lesions.references


def test_flair_finds_a_lesion_too_small_for_the_ball(case):
    small = ellipsoid(case["p"], (-10, -12, -4), (1.5, 1.5, 1.5))  # 3 mm: no 4 mm ball fits
    t2 = case["t2"].with_array(np.where(small, 800.0, case["t2"].array).astype(np.float32))
    flair = case["flair"].with_array(np.where(small, 900.0, case["flair"].array).astype(np.float32))
    without = segment_lesions(t2, case["anatomy"], IDENTITY, case["regions"])
    with_flair = segment_lesions(t2, case["anatomy"], IDENTITY, case["regions"], flair=flair,
                                 flair_transform=IDENTITY)
    assert not (without.mask.array & small).any()
    assert (with_flair.mask.array & small).sum() >= 0.5 * small.sum()


def test_flair_registered_when_no_transform_is_given(case):
    shifted = case["flair"].array.copy()
    affine = case["flair"].affine.copy()
    affine[:3, 3] += (2.0, -1.0, 1.0)  # a header offset the registration must undo
    flair = Volume(shifted, affine)
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"], flair=flair)
    assert lesions.flair_transform is not None
    assert lesions.flair_transform.t2_to_t1[:3, 3] == pytest.approx((2.0, -1.0, 1.0), abs=0.5)
    assert dice(lesions.mask.array, case["lesion"]) > 0.8
    assert "flair_registration" in lesion_record(lesions, {}, Settings())


def test_lesions_go_into_the_anatomy_on_white_matter_only(case):
    lesions = segment_lesions(case["t2"], case["anatomy"], IDENTITY, case["regions"])
    anatomy = lesions_into_anatomy(case["anatomy"], lesions, IDENTITY)
    coded = anatomy.labels.array == fs.WM_LESION
    assert dice(coded, case["lesion"]) > 0.85
    assert np.array_equal(anatomy.labels.array[~coded], case["anatomy"].labels.array[~coded])
    assert np.isin(case["anatomy"].labels.array[coded], fs.WM).all()
    on_t2 = lesions_on_grid(lesions, case["t2"].affine, case["t2"].shape)
    assert on_t2.array.dtype == np.uint8 and on_t2.array.sum() == lesions.mask.array.sum()


def test_no_white_matter_label_gives_a_flag(case):
    anatomy = dataclasses.replace(case["anatomy"], labels=case["anatomy"].labels.with_array(
        np.where(np.isin(case["anatomy"].labels.array, fs.WM), 3, case["anatomy"].labels.array)))
    lesions = segment_lesions(case["t2"], anatomy, IDENTITY, case["regions"])
    assert not lesions.mask.array.any() and lesions.flags[0].code == "lesions_no_white_matter"


def test_settings_round_trip_and_checks():
    settings = Settings(lesions=LesionSettings(margin_mm=2.0, t1_max_ratio=None))
    assert Settings.from_json(settings.to_json()) == settings
    assert Settings.from_json({"lesions": {"enabled": False}}).lesions.enabled is False
    with pytest.raises(ValueError, match="must not exceed"):
        LesionSettings(t2_extent_ratio=2.0)
    with pytest.raises(ValueError, match="ball_diameter_mm must be positive"):
        LesionSettings(ball_diameter_mm=0)


def test_run_writes_lesions_qc_and_report(phantom_run):
    out, result = phantom_run
    record = result.qc["lesions"]
    assert record["method"] == "t2+t1"
    assert set(record["excluded_ml"]) == set(REGION_CODES)
    assert (out / "lesions.nii.gz").is_file()
    assert "lesions" in result.qc["timings_s"]
    assert "id='lesions'" in (out / "report.html").read_text()


def test_prepare_subject_with_a_flair_and_the_cli_option(phantom_case, tmp_path):
    from pvsquant.cli import build_parser, resolve_run_inputs
    from pvsquant.pipeline.run import StageTimer, prepare_subject

    t1, t2, aseg = phantom_case
    args = build_parser().parse_args(["run", "--t1", str(t1), "--t2", str(t2), "--flair", str(t2),
                                      "--labels", str(aseg), "--out", str(tmp_path / "out")])
    inputs, _ = resolve_run_inputs(args, tmp_path)
    assert inputs.flair == t2
    timer = StageTimer()
    prep = prepare_subject(inputs, Settings(), timer)
    assert prep.lesions is not None and prep.lesions.method == "flair+t2+t1"
    assert {"flair_registration", "lesions"} <= set(timer.timings)
    for name, lost in prep.excluded_ml.items():
        assert lost >= 0 and prep.regions.volumes_ml[name] >= 0
    assert sum(prep.excluded_ml.values()) > 0  # the phantom's T2 has grey-matter-bright blobs in white matter
