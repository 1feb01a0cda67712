"""Bad input gives a clear error naming the file; good input loads with its affine."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from pvsquant.errors import (
    InputFileNotFoundError,
    InputImageError,
    InputPairError,
    InputTableError,
    OutputExistsError,
    PvsError,
)
from pvsquant.io import (
    atomic_file,
    atomic_output_dir,
    check_pair_overlap,
    is_run_folder,
    load_volume,
    read_tsv,
    write_tsv,
)
from pvsquant.types import Volume

from .conftest import head_phantom, oblique_affine, save_nifti


def test_loads_volume_with_affine(phantom_files):
    t1_path, _ = phantom_files
    vol = load_volume(t1_path, "T1")
    assert vol.shape == (80, 96, 40)
    np.testing.assert_allclose(vol.spacing_mm, [2, 2, 4], atol=1e-5)
    assert vol.source == t1_path


def test_missing_file(tmp_path):
    with pytest.raises(InputFileNotFoundError, match=r"nope.nii.gz does not exist"):
        load_volume(tmp_path / "nope.nii.gz", "T1")
    assert issubclass(InputFileNotFoundError, FileNotFoundError)


def test_not_nifti_by_name(tmp_path):
    p = tmp_path / "scan.dcm"
    p.write_bytes(b"DICM")
    with pytest.raises(InputImageError, match=r"scan.dcm is not a NIfTI file"):
        load_volume(p, "T2")


def test_not_nifti_content(tmp_path):
    p = tmp_path / "fake.nii"
    p.write_text("this is not an image\n" * 50)
    with pytest.raises(InputImageError, match=r"fake.nii"):
        load_volume(p, "T2")


def test_truncated_gzip(tmp_path, phantom_files):
    t1_path, _ = phantom_files
    data = t1_path.read_bytes()
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match=r"cut.nii.gz .*(truncated|could not be read)"):
        load_volume(p, "T1")


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "bad.nii.gz"
    p.write_bytes(gzip.compress(b"x" * 1000)[:20] + b"garbage" * 100)
    with pytest.raises(InputImageError, match=r"bad.nii.gz"):
        load_volume(p, "T1")


def test_4d_with_several_volumes(tmp_path):
    t1, _ = head_phantom()
    p = save_nifti(tmp_path / "dwi.nii.gz", np.stack([t1, t1], axis=-1), oblique_affine())
    with pytest.raises(InputImageError, match=r"dwi.nii.gz has shape \(80, 96, 40, 2\); expected 3D"):
        load_volume(p, "T2")


def test_4d_with_one_volume_is_accepted(tmp_path):
    t1, _ = head_phantom()
    p = save_nifti(tmp_path / "one.nii.gz", t1[..., None], oblique_affine())
    assert load_volume(p, "T1").shape == (80, 96, 40)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, value):
    t1, _ = head_phantom()
    t1[10, 10, 10] = value
    p = save_nifti(tmp_path / "nan.nii.gz", t1, oblique_affine())
    with pytest.raises(InputImageError, match=r"nan.nii.gz contains 1 NaN or Inf"):
        load_volume(p, "T1")


def test_empty_image(tmp_path):
    p = save_nifti(tmp_path / "zeros.nii.gz", np.zeros((80, 96, 40), np.float32), oblique_affine())
    with pytest.raises(InputImageError, match=r"zeros.nii.gz is empty"):
        load_volume(p, "T1")


def test_constant_image(tmp_path):
    p = save_nifti(tmp_path / "flat.nii.gz", np.full((80, 96, 40), 7, np.float32), oblique_affine())
    with pytest.raises(InputImageError, match=r"flat.nii.gz is constant"):
        load_volume(p, "T1")


def _with_pixdim(tmp_path, name, pixdim):
    """A file whose only spatial information is its pixdim (qform and sform codes 0)."""
    t1, _ = head_phantom()
    img = nib.Nifti1Image(t1, np.diag([2.0, 2.0, 4.0, 1.0]))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    p = tmp_path / name
    nib.save(img, str(p))
    raw = bytearray(p.read_bytes())
    for i, v in enumerate(pixdim):  # pixdim[1..3] start at byte 80 of the NIfTI-1 header
        raw[80 + 4 * i: 84 + 4 * i] = np.float32(v).tobytes()
    p.write_bytes(bytes(raw))
    return p


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (-2.0, 2.0, 4.0), (1.0, 1.0, 12.0)])
def test_absurd_voxel_size(tmp_path, pixdim):
    p = _with_pixdim(tmp_path, "vox.nii", pixdim)
    with pytest.raises(InputImageError, match=r"vox.nii has voxel size"):
        load_volume(p, "T1")


def test_too_small_to_hold_a_brain(tmp_path):
    p = save_nifti(tmp_path / "tiny.nii.gz", np.random.default_rng(0).random((20, 20, 10)).astype(np.float32),
                   np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InputImageError, match=r"tiny.nii.gz covers only"):
        load_volume(p, "T1")


def test_no_overlap_between_t1_and_t2(phantom_volumes):
    t1, t2 = phantom_volumes
    moved = np.array(t2.affine)
    moved[:3, 3] += [0, 0, 500]
    with pytest.raises(InputPairError, match=r"do not overlap"):
        check_pair_overlap(t1, Volume(t2.array, moved))
    assert check_pair_overlap(t1, t2) == pytest.approx(1.0)


def test_label_map_must_hold_integers(tmp_path):
    lab = np.zeros((80, 96, 40), np.float32)
    lab[10:20, 10:20, 10:20] = 2.5
    p = save_nifti(tmp_path / "lab.nii.gz", lab, oblique_affine())
    with pytest.raises(InputImageError, match=r"non-integer"):
        load_volume(p, "label map", labels=True)


def test_errors_derive_from_pvserror():
    for cls in (InputFileNotFoundError, InputImageError, InputPairError, OutputExistsError):
        assert issubclass(cls, PvsError)


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_refuses_existing_and_replaces_on_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match=r"--overwrite"), atomic_output_dir(out):
        pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.tsv"]
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tsv" and tmp != target
        tmp.write_text("new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_tsv_round_trip_with_comments_and_cells(tmp_path):
    rows = [{"subject": "sub-01", "count": 12.3456789, "flag": True, "missing": float("nan"), "text": "7.50"},
            {"subject": "sub-02", "count": 3, "flag": False, "missing": None}]
    path = write_tsv(rows, ("subject", "count", "flag", "missing", "text"), tmp_path / "t.tsv", comments=("made here",))
    assert path.read_text().splitlines()[0] == "# made here"
    back = read_tsv(path, ("subject", "count"), "test table")
    assert back[0] == {"subject": "sub-01", "count": "12.35", "flag": "yes", "missing": "n/a", "text": "7.50"}
    assert back[1] == {"subject": "sub-02", "count": "3", "flag": "no", "missing": "n/a", "text": ""}
    with pytest.raises(InputTableError, match=r"test table .*t\.tsv: missing column\(s\) rater1"):
        read_tsv(path, ("subject", "rater1"), "test table")
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        read_tsv(tmp_path / "nope.tsv", ("subject",), "test table")


def test_is_run_folder(tmp_path):
    assert not is_run_folder(tmp_path)
    (tmp_path / "qc.json").write_text("{}")
    assert is_run_folder(tmp_path)


def test_deferred_writes_wait_for_start_and_report_errors(tmp_path):
    """Queued writes happen only once started, all of them before wait() returns; a failing one
    re-raises in wait() (the output is never silently incomplete)."""
    from pvsquant.io import DeferredWrites, save_volume

    volume = Volume(np.ones((4, 4, 4), np.float32), np.eye(4))
    with DeferredWrites() as writes:
        writes.add(save_volume, volume, tmp_path / "a.nii.gz")
        writes.add(save_volume, volume, tmp_path / "b.nii.gz")
        assert not (tmp_path / "a.nii.gz").exists()
        writes.start()
    assert (tmp_path / "a.nii.gz").exists() and (tmp_path / "b.nii.gz").exists()

    def fail() -> None:
        raise OSError("disk full")

    broken = DeferredWrites()
    broken.add(fail)
    broken.start()
    with pytest.raises(OSError, match="disk full"):
        broken.wait()
    with pytest.raises(RuntimeError):
        broken.add(fail)
