"""Quality gates: each check judged by its ranges, and each gate catching what it is for."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pvsquant import labels as fs
from pvsquant.cohort.evaluate import evaluate_cohort
from pvsquant.pipeline.anatomy import segment_anatomy
from pvsquant.pipeline.quality import (
    QCCheck,
    anatomy_checks,
    attention_cancelled_ratio,
    attention_outside_fraction,
    counting_checks,
    head_mask,
    input_checks,
    noise_sigma,
    registration_checks,
    subject_status,
)
from pvsquant.pipeline.registration import rigid_from_parameters
from pvsquant.reporting.report import write_report
from pvsquant.types import Anatomy, QCFlag, RigidTransform, Settings, Volume

from .anatomy_phantom import label_phantom

IDENTITY = RigidTransform(np.eye(4), -0.8, -0.8)


def by_name(checks):
    return {c.name: c for c in checks}


def test_check_ranges():
    c = QCCheck("input", "x", 5.0, (0.0, 6.0), (0.0, 8.0), "x")
    assert c.status == "pass"
    assert QCCheck("input", "x", 7.0, (0.0, 6.0), (0.0, 8.0), "x").status == "warn"
    assert QCCheck("input", "x", 9.0, (0.0, 6.0), (0.0, 8.0), "x").status == "fail"
    assert QCCheck("input", "x", None, (0.0, 6.0), (0.0, 8.0), "x").status == "pass"  # not measured: not judged
    assert c.to_json()["status"] == "pass" and "expected 0-6" in c.message
    fail = QCCheck("input", "y", 9.0, (0.0, 6.0), (0.0, 8.0), "y")
    assert subject_status([c]) == "pass" and subject_status([c, fail]) == "fail"
    assert subject_status([c], [QCFlag("roi_clipped", "cut")]) == "warn"


def test_noise_estimate_and_head_mask():
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.linspace(-1, 1, 80), np.linspace(-1, 1, 80), np.linspace(-1, 1, 20), indexing="ij")
    head = (x ** 2 + y ** 2 + z ** 2) < 0.6
    image = np.where(head, 100.0 + 20 * x, 0.0)
    noisy = image + rng.normal(0, 5.0, image.shape)
    assert noise_sigma(noisy, 2, head) == pytest.approx(5.0, rel=0.15)
    assert np.mean(head_mask(np.abs(noisy)) == head) > 0.97


def paint(labels: np.ndarray, table: dict[tuple[int, ...], float], other: float, rng) -> np.ndarray:
    image = np.where(labels > 0, other, 0.0)
    for codes, value in table.items():
        image[np.isin(labels, codes)] = value
    return (image + rng.normal(0, 0.02, labels.shape)).clip(0) * 1000


@pytest.fixture(scope="module")
def labelled():
    """T1 and T2 painted from the phantom's labels (CSF bright on the T2, white matter bright on the T1)."""
    labels = label_phantom()
    rng = np.random.default_rng(0)
    t2 = labels.with_array(paint(labels.array, {fs.LATERAL_VENTRICLE: 1.0, fs.WM: 0.3}, 0.45, rng))
    t1 = labels.with_array(paint(labels.array, {fs.LATERAL_VENTRICLE: 0.15, fs.WM: 0.85}, 0.55, rng))
    anatomy = segment_anatomy(t1, Settings(), labels=labels)
    return t1, t2, anatomy


def test_contrast_gates_catch_swapped_inputs(labelled):
    t1, t2, anatomy = labelled
    good = by_name(input_checks(t1, t2, anatomy, IDENTITY, Settings()))
    assert good["t2_csf_to_wm"].status == "pass" and good["t1_wm_to_csf"].status == "pass"
    swapped = by_name(input_checks(t2, t1, anatomy, IDENTITY, Settings()))
    assert swapped["t2_csf_to_wm"].status == "fail" and swapped["t1_wm_to_csf"].status == "fail"


def test_snr_gate_catches_noise(labelled):
    t1, t2, anatomy = labelled
    rng = np.random.default_rng(1)
    brain = float(np.median(t2.array[anatomy.labels.array > 0]))
    noisy = t2.with_array(np.hypot(t2.array + rng.normal(0, 0.4 * brain, t2.shape), rng.normal(0, 0.4 * brain,
                                                                                                 t2.shape)))
    clean_snr = by_name(input_checks(t1, t2, anatomy, IDENTITY, Settings()))["t2_snr"].value
    noisy_check = by_name(input_checks(t1, noisy, anatomy, IDENTITY, Settings()))["t2_snr"]
    assert noisy_check.value < 0.5 * clean_snr and noisy_check.status != "pass"


def test_registration_gates_catch_a_misplaced_brain(labelled):
    _, t2, anatomy = labelled
    good = by_name(registration_checks(t2, anatomy, IDENTITY, Settings()))
    assert good["brain_in_head"].value > 0.97 and good["header_translation_mm"].status == "pass"
    moved = RigidTransform(rigid_from_parameters((0.0, 0.0, 0.0), (0.0, 40.0, 0.0), (0.0, 0.0, 0.0)), -0.2, -0.8)
    bad = by_name(registration_checks(t2, anatomy, moved, Settings()))
    assert bad["brain_in_head"].value < good["brain_in_head"].value - 0.05
    assert bad["header_translation_mm"].status == "fail" and bad["registration_mi"].status == "fail"


def test_region_and_counting_gates(labelled):
    _, _, anatomy = labelled
    settings = Settings()
    regions = by_name(anatomy_checks(anatomy, {"centrum_semiovale": 0.0, "hippocampi": 60.0},
                                     {"centrum_semiovale": 0.2, "hippocampi": 1.0}, 10.0, settings))
    assert regions["volume:centrum_semiovale"].status == "warn"  # empty: not counted, flagged
    assert regions["volume:hippocampi"].status == "fail"  # far too large to be a hippocampus
    assert regions["in_fov:centrum_semiovale"].status == "fail" and regions["in_fov:hippocampi"].status == "pass"
    assert regions["brain_above_caudate_mm"].status == "fail"
    assert anatomy.brain_mask is None and regions["brain_ml"].value is None  # user labels: no mask, not judged
    counting = by_name(counting_checks({"basal_ganglia": {"gpunet": 400.0, "cnn": 10.0, "frangi": 5.0}},
                                       {"basal_ganglia": 40.0}, {"basal_ganglia": 0.9}, settings))
    assert counting["pvs_per_ml:basal_ganglia"].value == pytest.approx(10.0)
    assert counting["pvs_per_ml:basal_ganglia"].status == "fail"
    assert counting["attention_outside:basal_ganglia"].status == "fail"
    attention = np.zeros((10, 10, 10))
    attention[2, 2, 2], attention[8, 8, 8] = 3.0, 1.0
    inside = np.zeros((10, 10, 10), bool)
    inside[:5, :5, :5] = True
    assert attention_outside_fraction(attention, inside) == pytest.approx(0.25)
    assert attention_outside_fraction(np.zeros((4, 4, 4)), inside[:4, :4, :4]) is None
    attention[9, 0, 0] = -2.0  # negative mass outside is no attention there (the share stays in [0, 1])
    assert attention_outside_fraction(attention, inside) == pytest.approx(0.25)


def test_a_count_cancelled_by_its_own_negative_floor_is_flagged():
    settings = Settings()
    counted = np.ones((10, 10, 10), bool)
    attention = np.zeros((10, 10, 10))
    attention[2, 2, 2] = attention[7, 7, 7] = 1.0  # two PVS
    attention[5:, :, :] -= 0.01  # a faint floor: 5 PVS of negative mass spread over the region
    ratio = attention_cancelled_ratio(attention, counted)
    assert ratio == pytest.approx(4.99 / 1.99, rel=1e-6)  # the PVS at [7, 7, 7] sits on the floor
    attention[5:, :, :] += 0.008  # 1 PVS of negative mass left: less than one PVS cancelled
    assert attention_cancelled_ratio(attention, counted) is None
    checks = by_name(counting_checks({"centrum_semiovale": {"gpunet": 0.0, "cnn": 12.0, "frangi": 7.0}},
                                     {"centrum_semiovale": 60.0}, {"centrum_semiovale": 0.01}, settings,
                                     {"centrum_semiovale": ratio}))
    assert checks["attention_cancelled:centrum_semiovale"].status == "warn"
    fine = by_name(counting_checks({"centrum_semiovale": {"gpunet": 10.0, "cnn": 12.0, "frangi": 7.0}},
                                   {"centrum_semiovale": 60.0}, {"centrum_semiovale": 0.01}, settings,
                                   {"centrum_semiovale": 0.4}))
    assert fine["attention_cancelled:centrum_semiovale"].status == "pass"


def test_brain_mask_volume_gate(labelled):
    _, _, anatomy = labelled
    settings = Settings()

    def status(ml: float) -> str:
        voxels = np.zeros((20, 20, 20), bool)
        voxels.flat[: int(ml)] = True  # 1 ml voxels
        mask = Volume(voxels, np.diag([10.0, 10.0, 10.0, 1.0]))
        with_mask = dataclasses.replace(anatomy, brain_mask=mask)
        return by_name(anatomy_checks(with_mask, {}, {}, 40.0, settings))["brain_ml"].status

    assert status(1400) == "pass"
    assert status(700) == "warn" and status(2300) == "warn"
    assert status(3500) == "fail"  # a mask with the scalp and neck


def test_phantom_run_records_its_checks(phantom_run):
    out, _ = phantom_run
    qc = json.loads((out / "qc.json").read_text())
    stages = {c["stage"] for c in qc["checks"]}
    assert stages == {"input", "registration", "anatomy", "regions", "counting"}
    statuses = [c["status"] for c in qc["checks"]] + [f["severity"] for f in qc["flags"]]
    expected = max(statuses, key=["pass", "warn", "fail"].index) if statuses else "pass"
    assert qc["status"] == expected


def test_failed_subject_gets_a_red_banner_and_is_left_out_of_statistics(phantom_run, tmp_path):
    out, _ = phantom_run
    qc = json.loads((out / "qc.json").read_text())
    folders = []
    for i in range(6):
        folder = tmp_path / f"sub-{i}"
        folder.mkdir()
        (folder / "counts.tsv").write_text("region\tmodel\tcount\n" + "".join(
            f"basal_ganglia\t{m}\t{i + (3 if m == 'cnn' else 0)}\n" for m in ("gpunet", "cnn", "frangi")))
        failed = i == 5
        (folder / "qc.json").write_text(json.dumps({**qc, "status": "fail" if failed else "pass",
                                                    "flags": [{"code": "t2_snr", "severity": "fail",
                                                               "message": "T2 signal-to-noise: 2"}] if failed else []}))
        folders.append(folder)
    for name in ("regions.png", "roi.png", "attention.png", "pvs.png", "registration.png"):
        (folders[5] / name).write_bytes((out / name).read_bytes())
    text = write_report(folders[5]).read_text()
    assert 'id="qc-banner"' in text and "QC FAILED: T2 signal-to-noise: 2" in text
    scores = tmp_path / "visual.tsv"
    scores.write_text("subject\tregion\trater1\n" + "".join(f"sub-{i}\tbasal_ganglia\t{i}\n" for i in range(6)))
    result = evaluate_cohort(scores, tmp_path / "evaluation", results=folders)
    assert result["cohort"].failed_qc == ["sub-5"]
    assert {r["subject"] for r in result["cohort"].rows} == {f"sub-{i}" for i in range(5)}
    assert "quality gates failed" in result["summary"] and "sub-5" in result["summary"]


def test_ghosting_index_sees_ghosts_beyond_the_head():
    """A brain with its ghosts along the phase direction, as motion makes them, raises the index."""
    shape, spacing = (120, 120, 24), (2.0, 2.0, 5.0)
    affine = np.diag([*spacing, 1.0])
    x, y, z = (np.indices(shape) - (np.asarray(shape) - 1)[:, None, None, None] / 2) * np.asarray(spacing)[
        :, None, None, None]
    radius = np.sqrt(x ** 2 + y ** 2 + (z * 1.5) ** 2)
    labels = np.where(radius < 45, fs.WM[0], 0)
    labels[radius < 12] = fs.LATERAL_VENTRICLE[0]
    rng = np.random.default_rng(2)
    t2 = np.where(labels == fs.WM[0], 300.0, 0.0) + 1000.0 * (labels == fs.LATERAL_VENTRICLE[0])
    t2 = t2 + rng.normal(0, 5, shape).clip(0)
    head = Volume(labels.astype(np.int32), affine)
    anatomy = Anatomy(head, "labels")
    ghosted = t2 + sum(0.4 * np.roll(t2, shift, axis=1) for shift in (-60, -30, 30, 60))
    clean = by_name(input_checks(head.with_array(t2), head.with_array(t2), anatomy, IDENTITY, Settings(),
                                 t2_only=True))["t2_ghosting"]
    moved = by_name(input_checks(head.with_array(t2), head.with_array(ghosted), anatomy, IDENTITY, Settings(),
                                 t2_only=True))["t2_ghosting"]
    assert clean.status == "pass" and moved.value > 3 * clean.value and moved.status != "pass"
