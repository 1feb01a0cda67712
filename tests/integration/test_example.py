"""End-to-end on the real example patient shipped in the package (clinical 3 mm T1, 4 mm T2)."""
from __future__ import annotations

import hashlib
import json
import tempfile

import nibabel as nib
import numpy as np
import pytest

from pvsquant.cli import example_inputs, main
from pvsquant.io import load_volume
from pvsquant.pipeline.regions import EXPECTED_VOLUME_ML
from pvsquant.pipeline.registration import register_t1_to_t2, rigid_from_parameters, transform_error
from pvsquant.types import REGION_CODES, Volume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example():
    inputs = example_inputs()
    return inputs, load_volume(inputs.t1, "T1"), load_volume(inputs.t2, "T2")


@pytest.fixture(scope="module")
def run_tempdir(tmp_path_factory):
    """The folder that stands for the system's temporary folder during the demo run."""
    return tmp_path_factory.mktemp("system_tmp")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, run_tempdir):
    out = tmp_path_factory.mktemp("demo") / "sub-example"
    saved = tempfile.tempdir
    tempfile.tempdir = str(run_tempdir)
    try:
        assert main(["demo", "--out", str(out)]) == 0
    finally:
        tempfile.tempdir = saved
    return out


def test_run_leaves_no_temporary_files(demo_out, run_tempdir):
    # ANTs writes its warp fields (~40 MB a subject) to temporary files; a cohort must not pile them up.
    assert sorted(p.name for p in run_tempdir.iterdir()) == []


def brain_box(t2: Volume) -> np.ndarray:
    centre = t2.affine[:3, :3] @ ((np.asarray(t2.shape) - 1) / 2) + t2.affine[:3, 3]
    return np.array([centre + np.array([x, y, z]) for x in (-60, 60) for y in (-75, 75) for z in (-50, 50)])


@pytest.mark.parametrize("angles, shift", [((10.0, 0.0, 0.0), (15.0, 0.0, 0.0)),
                                           ((-6.0, 5.0, 8.0), (-8.0, 10.0, -7.0))])
def test_registration_recovers_known_perturbation(example, angles, shift):
    _, t1, t2 = example
    reference = register_t1_to_t2(t1, t2)
    # the scanner headers already align this pair within about a millimetre
    assert transform_error(reference.t2_to_t1, np.eye(4), brain_box(t2))[0] < 2.0
    centre = tuple(brain_box(t2).mean(axis=0))
    perturb = rigid_from_parameters(angles, shift, centre)
    moved = Volume(t1.array, perturb @ t1.affine)
    result = register_t1_to_t2(moved, t2)
    dist, angle = transform_error(result.t2_to_t1, perturb @ reference.t2_to_t1, brain_box(t2))
    assert dist < 1.0, f"max displacement error {dist:.2f} mm"
    assert angle < 1.0, f"rotation error {angle:.2f} deg"


def test_demo_outputs(demo_out, example):
    _, t1, t2 = example
    regions = nib.load(str(demo_out / "regions.nii.gz"))
    assert regions.shape == t2.shape
    np.testing.assert_allclose(regions.affine, t2.affine, atol=1e-4)
    codes = np.asarray(regions.dataobj)
    for name, code in REGION_CODES.items():
        assert (codes == code).sum() > 0, name
    anatomy = nib.load(str(demo_out / "anatomy.nii.gz"))
    assert anatomy.shape == t1.shape
    labels = set(np.unique(np.asarray(anatomy.dataobj)).tolist())
    assert {2, 41, 4, 43, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 173} <= labels
    qc = json.loads((demo_out / "qc.json").read_text())
    for name, (lo, hi) in EXPECTED_VOLUME_ML.items():
        assert lo <= qc["regions"]["volumes_ml"][name] <= hi, name
    # The CSF next to the basal ganglia and hippocampi (third ventricle, temporal horns) is taken out of
    # them, a small part of each (the example: 2.8 of 47.8 ml, 1.2 of 9.0 ml); the centrum semiovale keeps
    # nearly all (no wide fluid inside the white matter).
    csf = qc["csf"]
    assert csf["enabled"] and csf["csf_to_wm_ratio"] > 2.0
    for name in ("basal_ganglia", "hippocampi"):
        whole = qc["regions"]["volumes_ml"][name] + csf["excluded_ml"][name]
        assert 0.01 * whole < csf["excluded_ml"][name] < 0.25 * whole, name
    assert csf["excluded_ml"]["centrum_semiovale"] < 0.01 * qc["regions"]["volumes_ml"]["centrum_semiovale"]
    assert qc["registration"]["mattes_mi"] < -0.6
    assert qc["registration"]["translation_mm"] < 3
    # head's superior axis from the atlas is close to the scanner's
    assert np.dot(qc["regions"]["superior_axis_t2_world"], [0, 0, 1]) > 0.9
    for name in REGION_CODES:
        roi = nib.load(str(demo_out / "roi" / f"{name}.nii.gz"))
        assert roi.shape == tuple(qc["roi"][name]["shape"])
        assert not qc["roi"][name]["clipped"], name
    assert (demo_out / "regions.png").stat().st_size > 50_000


def voxel_sha256(path) -> str:
    """sha256 of an image's voxel data (dtype, shape and values; not the gzip stream or its header)."""
    data = np.asarray(nib.load(str(path)).dataobj)
    return hashlib.sha256(f"{data.dtype}{data.shape}".encode() + np.ascontiguousarray(data).tobytes()).hexdigest()


def test_demo_is_bit_identical_from_run_to_run(demo_out, tmp_path):
    """A second run of the example gives the same labels, regions and counts, bit for bit. Before the
    fix the atlas labels differed by ~1000-2500 voxels between runs (the multithreaded Mattes metric in
    ANTs' affine stage and in the rigid registration) and the centrum semiovale count by ~0.2."""
    again = tmp_path / "again"
    assert main(["demo", "--out", str(again)]) == 0
    for name in ("anatomy.nii.gz", "regions.nii.gz", "pvs.nii.gz"):
        assert voxel_sha256(demo_out / name) == voxel_sha256(again / name), name
    for name in ("counts.tsv", "pvs.tsv"):
        assert (demo_out / name).read_text() == (again / name).read_text(), name
    first, second = (json.loads((d / "qc.json").read_text()) for d in (demo_out, again))
    assert first["registration"] == second["registration"]
    assert first["settings"]["deterministic"] is True


def test_demo_counts_and_detections(demo_out, example):
    """The real example gets a finite count from every model in every region, attention maps on the
    T2 grid, and detected PVS that lie where pvs.nii.gz labels them."""
    _, _, t2 = example
    rows = [line.split("\t") for line in (demo_out / "counts.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 12
    for region, model, count in rows:
        assert np.isfinite(float(count)), (region, model)
        if model == "frangi":
            assert float(count) >= 0
    pvs = nib.load(str(demo_out / "pvs.nii.gz"))
    labels = np.asarray(pvs.dataobj)
    table = [line.split("\t") for line in (demo_out / "pvs.tsv").read_text().splitlines()[1:]]
    assert labels.max() == len(table)
    inv = np.linalg.inv(pvs.affine)
    for pid, region, x, y, z, *_ in table:
        vox = np.round(inv[:3, :3] @ [float(x), float(y), float(z)] + inv[:3, 3]).astype(int)
        assert labels[tuple(vox)] == int(pid) and region in REGION_CODES
    for region in REGION_CODES:
        assert nib.load(str(demo_out / f"attention_{region}.nii.gz")).shape == t2.shape
    qc = json.loads((demo_out / "qc.json").read_text())
    assert set(qc["models"]) >= {f"{r}_{m}" for r in REGION_CODES for m in ("gpunet", "cnn")}
    assert set(qc["primary_counts"]) == set(REGION_CODES)


def test_demo_detections_lie_inside_their_regions(demo_out):
    """The detected PVS are in their regions, not on the regions' borders outside them. Measured on
    the region as the networks count over it (roi/<region>_region.nii.gz, 0.5 x 0.5 x 0.8 mm); on
    the T2 grid, 4 mm slices move a point up to 2 mm through-plane and the label there is not the
    region's. A detection is listed only where its peak lies in its region (counting.detect_pvs),
    so every one must be inside; before that rule the example had 25 of 30 inside (83%) with the
    0.2 weights, 38 of 63 (60%) with the 0.1 networks."""
    table = [line.split("\t") for line in (demo_out / "pvs.tsv").read_text().splitlines()[1:]]
    assert len(table) >= 5  # a real patient has visible PVS
    inside = []
    for _, region, x, y, z, *_ in table:
        img = nib.load(str(demo_out / "roi" / f"{region}_region.nii.gz"))
        mask = np.asarray(img.dataobj) > 0
        inv = np.linalg.inv(img.affine)
        vox = np.round(inv[:3, :3] @ [float(x), float(y), float(z)] + inv[:3, 3]).astype(int)
        inside.append(bool(mask[tuple(np.clip(vox, 0, np.asarray(mask.shape) - 1))]))
    assert all(inside), f"{np.mean(inside):.0%} of {len(inside)} detections inside their region"


def test_user_labels_reproduce_the_atlas_regions(demo_out, example, tmp_path):
    """--labels with the demo's own anatomy.nii.gz gives the same basal ganglia and hippocampi."""
    inputs, _, _ = example
    out = tmp_path / "labels_run"
    assert main(["run", "--t1", str(inputs.t1), "--t2", str(inputs.t2),
                 "--labels", str(demo_out / "anatomy.nii.gz"), "--out", str(out)]) == 0
    a = np.asarray(nib.load(str(demo_out / "regions.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(out / "regions.nii.gz")).dataobj)
    for code in (2, 3):
        dice = 2 * ((a == code) & (b == code)).sum() / ((a == code).sum() + (b == code).sum())
        assert dice > 0.9, (code, dice)
    assert json.loads((out / "qc.json").read_text())["anatomy"]["method"] == "labels"


def test_pair_from_different_places_is_refused(example, tmp_path, caplog):
    inputs, t1, _ = example
    far = tmp_path / "far_T1.nii.gz"
    aff = np.array(t1.affine)
    aff[:3, 3] += [0, 0, 400]
    nib.save(nib.Nifti1Image(t1.array, aff), str(far))
    out = tmp_path / "out"
    assert main(["run", "--t1", str(far), "--t2", str(inputs.t2), "--out", str(out)]) == 1
    assert "do not overlap" in caplog.text and not out.exists()


def test_clean_example_passes_every_quality_gate(demo_out):
    """A clean clinical pair: no gate may warn or fail (the gates' false alarms, measured)."""
    qc = json.loads((demo_out / "qc.json").read_text())
    not_passed = [c["message"] for c in qc["checks"] if c["status"] != "pass"]
    assert not not_passed and qc["status"] == "pass", not_passed


def test_t2_only_on_the_example(demo_out, tmp_path):
    """pvsquant run --t2 alone on the example: anatomy from the T2, regions overlapping those from the T1.

    A regression guard, not the issue's target: measured on this scan (benchmarks/results_t2_only.md,
    patient01 study1) Dice 0.59 CSO, 0.90 BG, 0.77 hippocampi, 0.84 midbrain."""
    inputs = example_inputs()
    out = tmp_path / "t2only"
    assert main(["run", "--t2", str(inputs.t2), "--out", str(out)]) == 0
    qc = json.loads((out / "qc.json").read_text())
    assert qc["anatomy_from"] == "T2"
    with_t1 = np.asarray(nib.load(str(demo_out / "regions.nii.gz")).dataobj)
    alone = np.asarray(nib.load(str(out / "regions.nii.gz")).dataobj)
    for name, code in REGION_CODES.items():
        a, b = with_t1 == code, alone == code
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        floor = {"centrum_semiovale": 0.5, "basal_ganglia": 0.8}.get(name, 0.65)
        assert dice > floor, f"{name}: Dice {dice:.2f} between the T2-only and the T1+T2 regions"
