"""Fingerprint of a run folder: hashes of the regions' voxels and the count tables.

Used to show that a refactoring changed no result: run the example twice on the same labels
(``pvsquant run ... --labels anatomy.nii.gz``, a deterministic path) before and after, and compare::

    python scripts/run_fingerprint.py RUN_DIR
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def fingerprint(run_dir: Path) -> dict[str, str]:
    """sha256 (first 16 hex digits) of regions.nii.gz's voxels and affine, counts.tsv and pvs.tsv."""
    img = nib.load(run_dir / "regions.nii.gz")
    regions = hashlib.sha256(np.asarray(img.dataobj).tobytes() + np.round(img.affine, 6).tobytes())
    out = {"regions.nii.gz": regions.hexdigest()[:16]}
    for name in ("counts.tsv", "pvs.tsv"):
        out[name] = hashlib.sha256((run_dir / name).read_bytes()).hexdigest()[:16]
    return out


if __name__ == "__main__":
    for key, value in fingerprint(Path(sys.argv[1])).items():
        print(f"{key}\t{value}")
