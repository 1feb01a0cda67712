"""Small BIDS datasets written by the tests from the shipped example (or any image)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from pvsquant.cli import example_inputs


def write_description(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))


def add_image(root: Path, subject: str, suffix: str, source: Path | None = None, session: str | None = None,
              entities: str = "", sidecar: dict | None = None, array: np.ndarray | None = None,
              affine: np.ndarray | None = None) -> Path:
    """``sub-<subject>[/ses-<session>]/anat/sub-<subject>[_ses-<session>]<entities>_<suffix>.nii.gz``: a copy
    of ``source``, or ``array``/``affine`` (a small image by default)."""
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"sub-{subject}" + (f"_ses-{session}" if session else "") + entities + f"_{suffix}.nii.gz"
    path = folder / name
    if source is not None:
        shutil.copy(source, path)
    else:
        data = np.zeros((8, 8, 8), np.float32) if array is None else array
        nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    if sidecar is not None:
        path.with_name(name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def rotated_copy(source: Path, dest: Path, degrees: float = 8.0, shift_mm: tuple = (6.0, -4.0, 3.0)) -> Path:
    """The same voxels with a rotated and shifted header (another scanner position of the same head)."""
    img = nib.load(str(source))
    a = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0, 0], [0, np.cos(a), -np.sin(a), 0], [0, np.sin(a), np.cos(a), 0], [0, 0, 0, 1]])
    rotation[:3, 3] = shift_mm
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), rotation @ img.affine, img.header), str(dest))
    return dest


def example_dataset(root: Path, broken: bool = True) -> Path:
    """sub-01: the example; sub-02: the example in another header position, with a scanner sidecar;
    with ``broken``: sub-03 whose T2 is not an image, and sub-04 without a T2."""
    example = example_inputs()
    write_description(root)
    scanner = {"Manufacturer": "Siemens", "ManufacturersModelName": "Skyra", "MagneticFieldStrength": 3}
    add_image(root, "01", "T1w", example.t1)
    add_image(root, "01", "T2w", example.t2, sidecar=scanner)
    tmp = root / "tmp_rotated"
    tmp.mkdir(exist_ok=True)
    add_image(root, "02", "T1w", rotated_copy(example.t1, tmp / "t1.nii.gz"))
    add_image(root, "02", "T2w", rotated_copy(example.t2, tmp / "t2.nii.gz"),
              sidecar={**scanner, "Manufacturer": "GE", "ManufacturersModelName": "Discovery"})
    shutil.rmtree(tmp)
    if broken:
        add_image(root, "03", "T1w", example.t1)
        t2 = root / "sub-03" / "anat" / "sub-03_T2w.nii.gz"
        t2.write_bytes(b"this is not a NIfTI file")
        add_image(root, "04", "T1w", example.t1)
    return root
