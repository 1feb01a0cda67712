"""DICOM input: series found, checked, converted by dcm2niix with the geometry and header intact.

The series are written by the tests themselves (tests/dicom_writer.py) from a NIfTI volume, so
the expected affine and voxels are known exactly.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pvsquant.errors import DependencyError, InputDicomError, InputFileNotFoundError, PvsError
from pvsquant.pipeline import dicom
from pvsquant.pipeline.dicom import dicom_to_nifti, is_dicom_dir, list_series, resolve_input

from .conftest import oblique_affine
from .dicom_writer import SeriesSpec, quantise, write_series

EXAMPLE_T2 = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "example" / "sub-example_T2w.nii.gz"
SHAPE = (48, 40, 20)
SPACING = (1.6, 1.8, 3.5)  # at least 60 mm along every axis, as io.load_volume asks


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    """A small float volume (smooth background, bright tubes) on an oblique, anisotropic grid."""
    rng = np.random.default_rng(3)
    idx = np.indices(SHAPE, dtype=float)
    array = 400 + 200 * np.sin(idx[0] / 5) * np.cos(idx[1] / 7) + 30 * idx[2] + rng.normal(0, 20, SHAPE)
    array[10:13, 5:35, :] += 900
    return array.astype(np.float32), oblique_affine(SPACING, SHAPE, angle_deg=17.0)


def corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return idx @ affine[:3, :3].T + affine[:3, 3]


def assert_same_image(nifti: Path, array: np.ndarray, affine: np.ndarray, tolerance: float) -> None:
    """The converted image shows ``array`` on ``affine``: same world corners (to 0.01 mm) and voxels,
    whatever axis order and flips dcm2niix chose (both compared in their closest canonical orientation)."""
    got = nib.as_closest_canonical(nib.load(str(nifti)))
    want = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    assert got.shape == want.shape
    distance = np.linalg.norm(corners(got.affine, got.shape) - corners(want.affine, want.shape), axis=1)
    assert distance.max() < 0.01, f"corners {distance.max():.4f} mm apart"
    assert np.abs(got.get_fdata() - want.get_fdata()).max() <= tolerance


def test_round_trip_oblique_float_volume(small, tmp_path):
    array, affine = small
    write_series(array, affine, tmp_path / "dicom", signed=True)
    _, slope, _ = quantise(array, signed=True)
    converted = dicom_to_nifti(tmp_path / "dicom", tmp_path / "work")
    assert converted.nifti == tmp_path / "work" / "T2_from_dicom.nii.gz" and converted.nifti.is_file()
    assert_same_image(converted.nifti, array, affine, tolerance=slope / 2 + 1e-3)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["T2_from_dicom.json", "T2_from_dicom.nii.gz"]


def test_round_trip_shipped_example(tmp_path):
    """The example T2 (406 x 448 x 36, 4 mm oblique slices, uint16) through DICOM and back."""
    img = nib.load(str(EXAMPLE_T2))
    array = np.asanyarray(img.dataobj)
    spec = SeriesSpec(manufacturer="GE MEDICAL SYSTEMS", model="DISCOVERY MR750", field_strength_t=1.5,
                      description="AX T2 FSE", number=4)
    write_series(array, img.affine, tmp_path / "dicom", spec)
    converted = dicom_to_nifti(tmp_path / "dicom", tmp_path / "work", role="T2")
    assert_same_image(converted.nifti, array, img.affine, tolerance=0)
    assert converted.scanner == "GE DISCOVERY MR750 1.5T"
    assert converted.header["SliceThickness"] == pytest.approx(4.0, abs=0.01)


def test_header_fields_come_through(small, tmp_path):
    array, affine = small
    spec = SeriesSpec(number=7, description="T2_TSE_TRA", protocol="t2_tse_tra_p2", station="AWP66051",
                      date="20230302", time="083015.500000")
    write_series(array, affine, tmp_path / "dicom", spec)
    converted = dicom_to_nifti(tmp_path / "dicom", tmp_path / "work", role="T1")
    header = converted.header
    assert converted.scanner == "Siemens Prisma 3T"  # dcm2niix writes the manufacturer as "Siemens"
    assert header["MagneticFieldStrength"] == 3
    assert header["ManufacturersModelName"] == "Prisma"
    assert header["SliceThickness"] == pytest.approx(3.5)
    assert header["AcquisitionDateTime"].startswith("2023-03-02T08:30:15")
    assert header["SeriesDescription"] == "T2_TSE_TRA" and header["ProtocolName"] == "t2_tse_tra_p2"
    assert header["StationName"] == "AWP66051" and int(header["SeriesNumber"]) == 7
    assert converted.series.number == 7 and converted.series.n_files == SHAPE[2]
    assert converted.nifti.name == "T1_from_dicom.nii.gz"
    sidecar = json.loads(converted.sidecar.read_text())
    assert "PatientName" not in sidecar and "PatientID" not in sidecar  # dcm2niix -ba o: no PII, dates kept


def test_two_series_need_a_choice(small, tmp_path):
    array, affine = small
    folder = tmp_path / "study"
    write_series(array, affine, folder / "a", SeriesSpec(number=3, description="T1_MPRAGE"), prefix="A")
    write_series(array[::-1], affine, folder / "b", SeriesSpec(number=5, description="T2_TSE_AX"), prefix="B")
    assert [(s.number, s.description, s.n_files) for s in list_series(folder)] == [
        (3, "T1_MPRAGE", SHAPE[2]), (5, "T2_TSE_AX", SHAPE[2])]
    with pytest.raises(InputDicomError, match="holds 2 series") as info:
        dicom_to_nifti(folder, tmp_path / "work")
    message = str(info.value)
    assert str(folder) in message and "--t2-series" in message
    assert f"series 3 'T1_MPRAGE' ({SHAPE[2]} files)" in message
    assert f"series 5 'T2_TSE_AX' ({SHAPE[2]} files)" in message
    assert not (tmp_path / "work").exists()  # nothing written before the choice

    converted = dicom_to_nifti(folder, tmp_path / "work", series=5)
    assert converted.series.description == "T2_TSE_AX"
    assert_same_image(converted.nifti, array[::-1], affine, tolerance=1.0)
    by_name = dicom_to_nifti(folder, tmp_path / "work2", series="t1_mprage", role="T1")
    assert by_name.series.number == 3 and by_name.header["SeriesDescription"] == "T1_MPRAGE"
    with pytest.raises(InputDicomError, match=r"no series '9' \(--t1-series\)"):
        dicom_to_nifti(folder, tmp_path / "work", series="9", role="T1")


def test_same_series_number_in_two_studies_asks_for_the_uid(small, tmp_path):
    array, affine = small
    write_series(array, affine, tmp_path / "d" / "a", SeriesSpec(number=2), prefix="A")
    second = SeriesSpec(number=2)
    write_series(array, affine, tmp_path / "d" / "b", second, prefix="B")
    with pytest.raises(InputDicomError, match="matches 2 series") as info:
        dicom_to_nifti(tmp_path / "d", tmp_path / "work", series=2)
    assert second.series_uid in str(info.value) and "SeriesInstanceUID" in str(info.value)
    assert dicom_to_nifti(tmp_path / "d", tmp_path / "work", series=second.series_uid).series.uid == second.series_uid


def test_missing_slices_in_the_middle(small, tmp_path):
    array, affine = small
    folder = tmp_path / "gappy"
    write_series(array, affine, folder, slices=[k for k in range(SHAPE[2]) if k not in (8, 9)])
    with pytest.raises(InputDicomError, match="slices are missing") as info:
        dicom_to_nifti(folder, tmp_path / "work")
    message = str(info.value)
    assert str(folder) in message and "gap of 10.500 mm" in message and "about 2 of 20 slices" in message
    assert not (tmp_path / "work").exists()


def test_irregular_spacing(small, tmp_path):
    array, affine = small
    folder = tmp_path / "irregular"
    paths = write_series(array, affine, folder)
    ds = pydicom.dcmread(paths[5])  # move one slice 1 mm along the stack
    step = affine[:3, 2] * [-1, -1, 1] / np.linalg.norm(affine[:3, 2])
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + step]
    ds.save_as(paths[5])
    with pytest.raises(InputDicomError, match=f"{re.escape(str(folder))}.*slice spacing is irregular"):
        dicom_to_nifti(folder, tmp_path / "work")


def test_mixed_orientations(small, tmp_path):
    array, affine = small
    folder = tmp_path / "mixed"
    write_series(array, affine, folder, orientation_override={4: [1, 0, 0, 0, 0, -1], 12: [0, 1, 0, 0, 0, -1]})
    with pytest.raises(InputDicomError, match="3 different orientations") as info:
        dicom_to_nifti(folder, tmp_path / "work")
    assert str(folder) in str(info.value) and "localizer" in str(info.value)


def test_two_echoes_in_one_series(small, tmp_path):
    array, affine = small
    spec = SeriesSpec()
    write_series(array, affine, tmp_path / "pdt2", spec, prefix="E1")
    write_series(array / 2, affine, tmp_path / "pdt2", SeriesSpec(series_uid=spec.series_uid, echo_number=2,
                                                                  echo_time_ms=110.0), prefix="E2")
    assert len(list_series(tmp_path / "pdt2")) == 1
    with pytest.raises(InputDicomError, match=r"mixes 2 echoes \(number/TE\) \(1/98: 20 images; 2/110: 20 images\)"):
        dicom_to_nifti(tmp_path / "pdt2", tmp_path / "work")


def test_duplicated_slices(small, tmp_path):
    array, affine = small
    paths = write_series(array, affine, tmp_path / "dup")
    shutil.copy(paths[3], tmp_path / "dup" / "copy_of_slice_4.dcm")
    with pytest.raises(InputDicomError, match="2 or more images share a slice position"):
        dicom_to_nifti(tmp_path / "dup", tmp_path / "work")


def test_sheared_stack(small, tmp_path):
    array, affine = small
    sheared = affine.copy()
    sheared[:3, 2] += 0.5 * affine[:3, 0] / np.linalg.norm(affine[:3, 0])  # 0.5 mm in-plane per slice
    write_series(array, sheared, tmp_path / "tilt")
    with pytest.raises(InputDicomError, match=r"shifted in-plane by up to 9\.50 mm"):
        dicom_to_nifti(tmp_path / "tilt", tmp_path / "work")


def test_single_slice_and_no_geometry(small, tmp_path):
    array, affine = small
    write_series(array, affine, tmp_path / "one", slices=[3])
    with pytest.raises(InputDicomError, match="single slice"):
        dicom_to_nifti(tmp_path / "one", tmp_path / "work")
    paths = write_series(array, affine, tmp_path / "capture")
    ds = pydicom.dcmread(paths[0])
    del ds.ImagePositionPatient
    ds.save_as(paths[0])
    with pytest.raises(InputDicomError, match=r"1 of 20 images lack ImagePositionPatient.*IM0001\.dcm"):
        dicom_to_nifti(tmp_path / "capture", tmp_path / "work")


def test_empty_and_non_dicom_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputDicomError, match=f"{re.escape(str(empty))} is empty"):
        dicom_to_nifti(empty, tmp_path / "work")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("scan notes\n")
    (notes / "fake.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(InputDicomError, match=r"holds 2 file\(s\) \(fake.dcm, readme.txt\) but none is DICOM"):
        dicom_to_nifti(notes, tmp_path / "work")
    assert not is_dicom_dir(notes) and not is_dicom_dir(empty)
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        list_series(tmp_path / "nowhere")
    with pytest.raises(InputDicomError, match="is not a folder"):
        dicom_to_nifti(notes / "readme.txt", tmp_path / "work")


def test_truncated_and_non_image_files(small, tmp_path):
    array, affine = small
    paths = write_series(array, affine, tmp_path / "bad", slices=[0, 1, 2])
    whole = paths[1].read_bytes()
    paths[1].write_bytes(whole[:-1000])  # pixel data cut short
    truncated = r"IM0002\.dcm is truncated \(\d+ bytes of pixel data; its 1 x 40 x 48 pixels need 3840\)"
    with pytest.raises(InputDicomError, match=truncated):
        dicom_to_nifti(tmp_path / "bad", tmp_path / "work")
    paths[1].write_bytes(whole[:400])  # cut inside the header
    with pytest.raises(InputDicomError, match=r"IM0002\.dcm is a DICOM image whose header is incomplete"):
        list_series(tmp_path / "bad")
    # a DICOM object that is no image (here a Raw Data object) is skipped
    ds = pydicom.dcmread(paths[0])
    del ds.Rows, ds.Columns, ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (tmp_path / "only").mkdir()
    ds.save_as(tmp_path / "only" / "raw.dcm")
    with pytest.raises(InputDicomError, match=r"holds 1 DICOM file.*but no image"):
        list_series(tmp_path / "only")
    shutil.copy(tmp_path / "only" / "raw.dcm", tmp_path / "bad" / "raw.dcm")
    paths[1].write_bytes(whole)
    assert [s.n_files for s in list_series(tmp_path / "bad")] == [3]


def test_dicom_in_sub_folders_and_is_dicom_dir(small, tmp_path):
    array, affine = small
    write_series(array, affine, tmp_path / "patient" / "study" / "series5")
    assert is_dicom_dir(tmp_path / "patient")
    (tmp_path / "patient" / "DICOMDIR.txt").write_text("not dicom")
    converted = dicom_to_nifti(tmp_path / "patient", tmp_path / "work")
    assert converted.series.n_files == SHAPE[2]


def test_dcm2niix_messages_are_a_second_line_of_defence(small, tmp_path, monkeypatch):
    """With our own checks switched off, dcm2niix's complaint about a gap still stops the conversion."""
    array, affine = small
    write_series(array, affine, tmp_path / "gappy", slices=[k for k in range(SHAPE[2]) if k != 10])
    monkeypatch.setattr(dicom, "check_stack", lambda frames, where: (np.eye(4), (1, 1, 1), []))
    with pytest.raises(InputDicomError, match=r"dcm2niix could not convert.*[Ii]nterslice distance varies"):
        dicom_to_nifti(tmp_path / "gappy", tmp_path / "work")
    # a truncated file: dcm2niix's message names the user's file, not the staged link
    cut = write_series(array, affine, tmp_path / "cut", slices=[0, 1, 2])[1]
    cut.write_bytes(cut.read_bytes()[:-500])
    monkeypatch.setattr(dicom, "_check_sizes", lambda *args: None)
    with pytest.raises(InputDicomError, match="not large enough") as info:
        dicom_to_nifti(tmp_path / "cut", tmp_path / "work")
    assert str(cut) in str(info.value) and ".pvsquant-dicom-" not in str(info.value)
    assert not list((tmp_path / "work").iterdir())  # the scratch folder is gone


def test_resolve_input(small, tmp_path):
    array, affine = small
    nifti = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(nifti))
    assert resolve_input(nifti, tmp_path / "work") == (nifti, None)
    with pytest.raises(InputDicomError, match="--t2-series 5 chooses a series in a DICOM folder"):
        resolve_input(nifti, tmp_path / "work", series=5)
    write_series(array, affine, tmp_path / "dicom")
    path, converted = resolve_input(tmp_path / "dicom", tmp_path / "work", role="T1")
    assert converted is not None and path == converted.nifti == tmp_path / "work" / "T1_from_dicom.nii.gz"


def test_missing_dcm2niix(small, tmp_path, monkeypatch):
    import dcm2niix as package

    array, affine = small
    write_series(array, affine, tmp_path / "dicom", slices=[0, 1, 2])
    monkeypatch.setenv("PVSQUANT_DCM2NIIX", str(tmp_path / "nothing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(package, "bin_path", tmp_path / "no-binary")
    monkeypatch.setattr(dicom.sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(DependencyError, match="pip install dcm2niix") as info:
        dicom_to_nifti(tmp_path / "dicom", tmp_path / "work")
    assert isinstance(info.value, PvsError)
    assert not (tmp_path / "work").exists()


def test_scanner_name():
    assert dicom.scanner_name({"Manufacturer": "Philips", "ManufacturersModelName": "Achieva",
                               "MagneticFieldStrength": 1.5}) == "Philips Achieva 1.5T"
    assert dicom.scanner_name({"Manufacturer": "GE", "MagneticFieldStrength": 15000}) == "GE 1.5T"  # gauss
    assert dicom.scanner_name({}) == "unknown"


def test_instance_numbers_with_a_hole_give_a_warning(small, tmp_path, caplog):
    """Uniform positions cannot show a slice missing at either end; instance numbers can hint at it."""
    array, affine = small
    for path in write_series(array, affine, tmp_path / "dicom"):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(ds.InstanceNumber) + 1  # 2..21: slice 1 missing?
        ds.save_as(path)
    converted = dicom_to_nifti(tmp_path / "dicom", tmp_path / "work")
    assert any("instance numbers run from 2 to 21 for 20 slices" in w for w in converted.warnings)
    assert "missing at either end" in caplog.text


def enhanced_frames(n_frames: int, skip: int | None = None) -> pydicom.Dataset:
    """An Enhanced MR header (no pixels): one frame per slice, orientation and spacing shared."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    iop = [1.0, 0.0, 0.0, 0.0, np.cos(0.3), -np.sin(0.3)]
    normal = np.cross(iop[:3], iop[3:])
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = iop
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.9, 0.8]
    frames = []
    for k in range(n_frames):
        if k == skip:
            continue
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = list(np.array([-100.0, -90.0, -40.0]) + 2.5 * k * normal)
        frames.append(frame)
    ds = Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 72, len(frames)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def test_enhanced_multiframe_geometry():
    """The checks read an enhanced (multi-frame) file's per-frame positions and shared orientation."""
    frames = dicom._frames(Path("enhanced.dcm"), enhanced_frames(30))
    affine, shape, warnings = dicom.check_stack(frames, "folder X")
    assert shape == (72, 64, 30) and warnings == []
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.8, 0.9, 2.5])
    assert np.allclose(affine[:3, 3], [100.0, 90.0, -40.0])  # LPS -> RAS
    with pytest.raises(InputDicomError, match=r"folder X: slices are missing: a gap of 5\.000 mm"):
        dicom.check_stack(dicom._frames(Path("enhanced.dcm"), enhanced_frames(30, skip=12)), "folder X")
