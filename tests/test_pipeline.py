"""run_subject() and the CLI on a small phantom with a user label map (no atlas registration)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pvsquant.pipeline.registration import register_t1_to_t2
from pvsquant.pipeline.run import registration_flags, run_subject
from pvsquant.types import REGION_CODES, Settings, SubjectInputs, Volume

from .conftest import write_phantom_case


def test_run_subject_writes_every_output(phantom_case, phantom_run):
    t1, t2, _ = phantom_case
    out, result = phantom_run
    for name in ("anatomy.nii.gz", "regions.nii.gz", "qc.json", "settings.json", "regions.png", "roi.png",
                 "counts.tsv", "counts.json", "pvs.tsv", "pvs.nii.gz", "attention.png", "pvs.png",
                 "registration.png", "report.html"):
        assert (out / name).is_file(), name
    t2_img, regions = nib.load(str(t2)), nib.load(str(out / "regions.nii.gz"))
    assert regions.shape == t2_img.shape
    np.testing.assert_allclose(regions.affine, t2_img.affine, atol=1e-4)
    assert set(np.unique(np.asarray(regions.dataobj))) <= {0, 1, 2, 3, 4}
    anatomy = nib.load(str(out / "anatomy.nii.gz"))
    assert anatomy.shape == nib.load(str(t1)).shape
    for region in REGION_CODES:
        vesselness = nib.load(str(out / "roi" / f"{region}_vesselness.nii.gz"))
        roi = nib.load(str(out / "roi" / f"{region}.nii.gz"))
        assert vesselness.shape == roi.shape and np.asarray(vesselness.dataobj).max() > 0
        np.testing.assert_allclose(np.sqrt((roi.affine[:3, :3] ** 2).sum(0)), [0.5, 0.5, 0.8], atol=1e-5)
        data = np.asarray(roi.dataobj)
        assert data.min() >= 0 and data.max() == pytest.approx(1.0)
    qc = json.loads((out / "qc.json").read_text())
    assert set(qc["timings_s"]) >= {"load", "registration", "anatomy", "regions", "roi", "total"}
    assert qc["anatomy"]["method"] == "labels"
    assert qc["registration"]["mattes_mi"] < 0
    assert qc["regions"]["volumes_ml"]["hippocampi"] > 2
    assert result.qc == qc
    # counts: every region x model, names as other programs read them
    rows = [line.split("\t") for line in (out / "counts.tsv").read_text().splitlines()]
    assert rows[0] == ["region", "model", "count"]
    assert {(r[0], r[1]) for r in rows[1:]} == {(r, m) for r in REGION_CODES for m in ("gpunet", "cnn", "frangi")}
    assert all(float(r[2]) == float(r[2]) for r in rows[1:])  # numbers, not n/a: every region exists here
    assert json.loads((out / "counts.json").read_text()) == qc["counts"]
    assert (out / "pvs.tsv").read_text().splitlines()[0] == "id\tregion\tx\ty\tz\tpeak\tsize_vox"
    for region in REGION_CODES:
        attention = nib.load(str(out / f"attention_{region}.nii.gz"))
        assert attention.shape == t2_img.shape
    pvs = nib.load(str(out / "pvs.nii.gz"))
    assert (
        pvs.shape == t2_img.shape
        and np.asarray(pvs.dataobj).max() == len((out / "pvs.tsv").read_text().splitlines()) - 1
    )
    assert set(qc["inference_seconds"]) == set(REGION_CODES)
    assert json.loads((out / "settings.json").read_text())["cso_offset_mm"] == 10.0


def test_thick_slices_give_a_flag_not_an_error(tmp_path):
    paths = write_phantom_case(tmp_path, shape=(90, 110, 28), spacing=(2.0, 2.0, 7.0), angle_deg=0.0)
    result = run_subject(SubjectInputs(*paths), tmp_path / "out")
    codes = [f["code"] for f in result.qc["flags"]]
    assert "thick_slices_t2" in codes and "thick_slices_t1" in codes
    assert result.qc["status"] == "warn"
    assert result.qc["inputs"]["slices"] == {"target_mm": None, "native_mm": 7.0, "slice_axis": 2, "applied": False}
    # a cohort matched to 5 mm slices: this T2 cannot be made thinner, and says so
    matched = run_subject(SubjectInputs(*paths), tmp_path / "matched", Settings(match_slice_thickness_mm=5.0))
    assert "slices_thicker_than_matched" in [f["code"] for f in matched.qc["flags"]]
    assert matched.qc["inputs"]["slices"]["applied"] is False
    assert matched.qc["counts"] == result.qc["counts"]  # counted on the same, unchanged T2


def test_poor_registration_is_flagged(phantom_volumes):
    t1, t2 = phantom_volumes
    noise = Volume(np.random.default_rng(1).random(t1.shape).astype(np.float32), t1.affine)
    settings = Settings(registration_iterations=20)
    good = register_t1_to_t2(t1, t2, settings)
    bad = register_t1_to_t2(noise, t2, settings)
    assert registration_flags(good, settings) == []
    assert [f.code for f in registration_flags(bad, settings)] == ["registration_poor"]
