"""run_subject() and the CLI on a small phantom with a user label map (no atlas registration)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pvsquant.cli import main
from pvsquant.pipeline import registration_flags, run_subject
from pvsquant.registration import register_t1_to_t2
from pvsquant.types import REGION_CODES, Settings, SubjectInputs, Volume

from .conftest import save_nifti, write_phantom_case


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    return write_phantom_case(tmp_path_factory.mktemp("case"))


def test_run_subject_writes_every_output(phantom_case, tmp_path):
    t1, t2, aseg = phantom_case
    out = tmp_path / "sub-01"
    result = run_subject(SubjectInputs(t1, t2, labels=aseg, subject_id="sub-01"), out)
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
        roi = nib.load(str(out / "roi" / f"{region}.nii.gz"))
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
    assert pvs.shape == t2_img.shape and np.asarray(pvs.dataobj).max() == len((out / "pvs.tsv").read_text().splitlines()) - 1
    assert set(qc["inference_seconds"]) == set(REGION_CODES)
    assert json.loads((out / "settings.json").read_text())["cso_offset_mm"] == 10.0


def test_thick_slices_give_a_flag_not_an_error(tmp_path):
    paths = write_phantom_case(tmp_path, shape=(90, 110, 28), spacing=(2.0, 2.0, 7.0), angle_deg=0.0)
    result = run_subject(SubjectInputs(*paths), tmp_path / "out")
    codes = [f["code"] for f in result.qc["flags"]]
    assert "thick_slices_t2" in codes and "thick_slices_t1" in codes
    assert result.qc["status"] == "warn"


def test_poor_registration_is_flagged(phantom_volumes):
    t1, t2 = phantom_volumes
    noise = Volume(np.random.default_rng(1).random(t1.shape).astype(np.float32), t1.affine)
    settings = Settings(registration_iterations=20)
    good = register_t1_to_t2(t1, t2, settings)
    bad = register_t1_to_t2(noise, t2, settings)
    assert registration_flags(good, settings) == []
    assert [f.code for f in registration_flags(bad, settings)] == ["registration_poor"]


def test_cli_bad_input_exits_nonzero_and_writes_nothing(phantom_case, tmp_path, caplog):
    t1, _, _ = phantom_case
    out = tmp_path / "out"
    code = main(["run", "--t1", str(t1), "--t2", str(tmp_path / "missing_T2.nii.gz"), "--out", str(out)])
    assert code == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "missing_T2.nii.gz does not exist" in caplog.text


def test_cli_refuses_existing_output(phantom_case, tmp_path, caplog):
    t1, t2, aseg = phantom_case
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out)]) == 1
    assert "--overwrite" in caplog.text
    assert (out / "keep.txt").read_text() == "precious"


def test_cli_labels_lacking_structures(phantom_case, tmp_path, caplog):
    t1, t2, _ = phantom_case
    lab = np.zeros((60, 70, 60), np.int32)
    lab[20:40, 20:40, 20:40] = 17
    aseg = save_nifti(tmp_path / "only_hippo.nii.gz", lab, np.diag([3.0, 3.0, 3.0, 1.0]))
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(tmp_path / "o")]) == 1
    assert "lacks white matter (2/41)" in caplog.text


def test_cli_bad_models_folder_or_weights_exit_nonzero_and_write_nothing(phantom_case, tmp_path, caplog):
    t1, t2, aseg = phantom_case
    out = tmp_path / "out"
    missing = tmp_path / "no_such_models"
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out),
                 "--models", str(missing)]) == 1
    assert str(missing) in caplog.text and not out.exists()
    bad = tmp_path / "models"
    bad.mkdir()
    (bad / "basal_ganglia_gpunet.pt").write_bytes(b"not a checkpoint")
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out),
                 "--models", str(bad)]) == 1
    assert "basal_ganglia_gpunet.pt: not pvsquant weights" in caplog.text and not out.exists()


def test_cli_train_without_label_maps_exits_nonzero(tmp_path, caplog):
    empty = tmp_path / "maps"
    empty.mkdir()
    assert main(["train", "--region", "midbrain", "--model", "gpunet", "--out", str(tmp_path / "run"),
                 "--maps", str(empty)]) == 1
    assert f"need more than 2 label maps (*.nii, *.nii.gz) in {empty}, found 0" in caplog.text
