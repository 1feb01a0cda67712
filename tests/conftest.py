"""Small synthetic volumes shared by the unit tests."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pvsquant.types import Volume


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def head_phantom(shape=(80, 96, 40), spacing=(2.0, 2.0, 4.0), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A crude head: scalp, CSF, grey and white matter ellipsoids and two 'ventricles'.

    Returns (T1-like array, T2-like array) on the same grid.
    """
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    centre = (np.asarray(shape) - 1) / 2
    r = [(idx[a] - centre[a]) * spacing[a] for a in range(3)]

    def ellipsoid(ax, ay, az, off=(0, 0, 0)):
        return ((r[0] - off[0]) / ax) ** 2 + ((r[1] - off[1]) / ay) ** 2 + ((r[2] - off[2]) / az) ** 2 <= 1

    head = ellipsoid(75, 90, 75)
    brain = ellipsoid(65, 80, 62)
    wm = ellipsoid(50, 65, 45)
    vent_l = ellipsoid(6, 25, 10, (-10, 5, 5))
    vent_r = ellipsoid(6, 25, 10, (12, 5, 5))
    blob = ellipsoid(8, 8, 8, (-25, -30, -15))
    blob2 = ellipsoid(12, 6, 10, (30, 35, 20))
    blob3 = ellipsoid(5, 14, 6, (20, -40, -25))
    t1 = np.zeros(shape, np.float32)
    t2 = np.zeros(shape, np.float32)
    t1[head], t2[head] = 300, 200
    t1[brain], t2[brain] = 500, 700
    t1[wm], t2[wm] = 800, 400
    t1[vent_l | vent_r], t2[vent_l | vent_r] = 150, 1200
    t1[blob], t2[blob] = 650, 900
    t1[blob2], t2[blob2] = 350, 1000
    t1[blob3], t2[blob3] = 950, 250
    # shared smooth texture (tissue inhomogeneity): gives registration features at every scale
    from scipy import ndimage
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), (2.0, 2.0, 1.0))
    texture = (1 + 0.25 * texture / texture.std()).astype(np.float32)
    t1 *= texture
    t2 *= texture
    t1 += rng.normal(0, 10, shape).astype(np.float32)
    t2 += rng.normal(0, 10, shape).astype(np.float32)
    return np.clip(t1, 0, None), np.clip(t2, 0, None)


def oblique_affine(spacing=(2.0, 2.0, 4.0), shape=(80, 96, 40), angle_deg=12.0) -> np.ndarray:
    """LPS-stored, oblique affine centred on the world origin."""
    a = np.radians(angle_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1, -1, 1]) @ np.diag(spacing)
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return aff


@pytest.fixture
def phantom_volumes() -> tuple[Volume, Volume]:
    t1, t2 = head_phantom()
    aff = oblique_affine()
    return Volume(t1, aff), Volume(t2, aff)


@pytest.fixture
def phantom_files(tmp_path: Path) -> tuple[Path, Path]:
    t1, t2 = head_phantom()
    aff = oblique_affine()
    return (save_nifti(tmp_path / "t1.nii.gz", t1, aff), save_nifti(tmp_path / "t2.nii.gz", t2, aff))


@pytest.fixture(scope="session")
def example_dir() -> Path:
    from importlib import resources
    return Path(str(resources.files("pvsquant") / "data" / "example"))


def write_phantom_case(folder: Path, shape=(90, 110, 48), spacing=(2.0, 2.0, 4.0), angle_deg=5.0
                       ) -> tuple[Path, Path, Path]:
    """T1, T2 (head phantom, oblique grid) and an aseg label map written to ``folder``: one subject's inputs."""
    from .anatomy_phantom import label_phantom

    t1, t2 = head_phantom(shape=shape, spacing=spacing)
    aff = oblique_affine(spacing, shape, angle_deg)
    labels = label_phantom()
    return (save_nifti(folder / "t1.nii.gz", t1, aff), save_nifti(folder / "t2.nii.gz", t2, aff),
            save_nifti(folder / "aseg.nii.gz", labels.array, labels.affine))


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One phantom subject's inputs (T1, T2, aseg labels), written once per test session."""
    return write_phantom_case(tmp_path_factory.mktemp("phantom_case"))


@pytest.fixture(scope="session")
def phantom_run(phantom_case, tmp_path_factory):
    """The whole pipeline run once per test session on the phantom subject (its labels, no atlas):
    ``(output folder, SubjectResult)``. Tests read it; a test that changes a file restores it."""
    from pvsquant.pipeline.run import run_subject
    from pvsquant.types import SubjectInputs

    t1, t2, aseg = phantom_case
    out = tmp_path_factory.mktemp("phantom_run") / "sub-07"
    return out, run_subject(SubjectInputs(t1, t2, labels=aseg, subject_id="sub-07"), out)
