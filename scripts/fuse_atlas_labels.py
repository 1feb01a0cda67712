"""Relabel the shipped template by majority vote of ten SynthSeg label maps (run once, offline).

Step 3 of the atlas (after ``scripts/make_atlas.py``). SAMSEG's labels of the MNI template draw
the small structures larger than the SynthSeg label maps do once carried onto the template
(caudate 10.7 ml against 9.8 ml on average over the ten maps, pallidum 4.4 against 3.8,
hippocampus 10.9 against 9.9), and the painted segmentation benchmark scores against such maps.
This script paints each map as a T1 (mean tissue intensities, skull and scalp removed),
registers it to the template with ANTs (affine + SyN, cross-correlation, on a 1.5 mm copy of
both), carries its labels onto the template grid and takes the majority vote per voxel.
Inside the template's brain the vote replaces
SAMSEG's label wherever the vote or SAMSEG says a subcortical structure (deep grey nuclei,
hippocampus, amygdala, accumbens, ventral diencephalon, ventricles); the cortex, white matter,
cerebellum and brainstem keep SAMSEG's labels, and the midbrain is split off the brainstem again.
The vote erodes small structures where the maps disagree on a border, so each deep grey nucleus,
hippocampus and amygdala is then grown back to the maps' mean volume (voxels of highest vote share
first).

The maps are ``training_seg_11`` ... ``training_seg_20`` of github.com/BBillot/SynthSeg at commit
66342c1f05e520f3729a6d7ca1042eb7f01b6266 (Apache-2.0), folder ``data/training_label_maps``. Maps
01-10 of that folder (in ../shared) are the segmentation benchmark's and are deliberately not used.

    python scripts/fuse_atlas_labels.py --maps DIR_WITH_MAPS_11_20 [--work DIR]

It reads ``template_labels_samseg.nii.gz`` (the label map ``scripts/make_atlas.py`` writes: SAMSEG's
codes, midbrain split off; shipped too, as `Settings.atlas_labels = "samseg"`) and writes ``template_labels.nii.gz``.
About 6 minutes per map on one thread of a 2-core VM.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pvsquant.labels import (
    AMYGDALA,
    BRAINSTEM,
    CAUDATE,
    CORTEX_CODES,
    CSF_CODES,
    DEEP_GM_CODES,
    HIPPOCAMPUS,
    LATERAL_VENTRICLE,
    MIDBRAIN,
    PALLIDUM,
    PUTAMEN,
    THALAMUS,
    WM_CODES,
)
from pvsquant.pipeline.anatomy import atlas_files, split_midbrain
from pvsquant.types import Settings, Volume

ATLAS = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "atlas"
OUT = ATLAS / "template_labels.nii.gz"
DEEP_STRUCTURES = (*CAUDATE, *PUTAMEN, *PALLIDUM, *THALAMUS, *HIPPOCAMPUS, *AMYGDALA)
"""Grown back to their mean volume, in this order (a structure grown first keeps its voxels)."""
SUBCORTICAL = (*DEEP_STRUCTURES, 26, 58, 28, 60, *LATERAL_VENTRICLE, 5, 44, 14, 15)
"""Codes whose extent the vote decides: the deep structures, accumbens, ventral diencephalon, lateral,
inferior lateral, third and fourth ventricles."""
GRID_MM = 1.5


def mean_t1(code: int) -> float:
    """T1 intensity of a label: the means of the painted benchmark's ranges (pvsquant.learning.synthesis)."""
    wm, gm, csf = 0.85, 0.535, 0.13
    if code == 0 or code >= 500:  # background and extra-cerebral tissue: stripped
        return 0.0
    if code in WM_CODES:
        return wm
    if code in CORTEX_CODES:
        return gm
    if code in DEEP_GM_CODES:
        return gm * 1.06
    if code in (*PALLIDUM, BRAINSTEM):
        return gm + 0.65 * (wm - gm)
    if code in THALAMUS:
        return gm + 0.42 * (wm - gm)
    if code in CSF_CODES:
        return csf
    return gm


def map_on_template(path: Path, template, work: Path) -> np.ndarray:
    """One SynthSeg map's labels carried onto the template grid (extra-cerebral codes removed).

    ``template``: the template T1 as an ANTs image (the labels' grid; registered on a GRID_MM copy)."""
    import ants

    name = path.name.removesuffix(".nii.gz")
    cached = work / f"{name}_on_template.nii.gz"
    if cached.is_file():
        return np.asarray(nib.load(str(cached)).dataobj).astype(np.int32)
    img = nib.load(str(path))
    lab = np.asarray(img.dataobj).astype(np.int32)
    lut = np.array([mean_t1(c) for c in range(int(lab.max()) + 1)], np.float32)
    painted, labels = work / f"{name}_t1.nii.gz", work / f"{name}_labels.nii.gz"
    nib.save(nib.Nifti1Image(lut[lab], img.affine), str(painted))
    nib.save(nib.Nifti1Image(np.where(lab >= 500, 0, lab).astype(np.float32), img.affine), str(labels))
    fixed = ants.resample_image(template, (GRID_MM,) * 3, use_voxels=False, interp_type=0)
    moving = ants.resample_image(ants.image_read(str(painted)), (GRID_MM,) * 3, use_voxels=False, interp_type=0)
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN", syn_metric="CC", syn_sampling=2,
                            reg_iterations=(40, 30, 10), outprefix=str(work / f"{name}_"))
    warped = ants.apply_transforms(fixed=template, moving=ants.image_read(str(labels)),
                                   transformlist=reg["fwdtransforms"], interpolator="genericLabel")
    ants.image_write(warped, str(cached))
    return np.asarray(warped.numpy()).astype(np.int32)


def majority_vote(maps: list[np.ndarray]) -> np.ndarray:
    """The most frequent code per voxel (ties: the smaller code)."""
    best = np.zeros(maps[0].shape, np.int32)
    best_n = np.zeros(maps[0].shape, np.int16)
    for code in np.unique(np.concatenate([np.unique(m) for m in maps])):
        n = sum((m == code).astype(np.int16) for m in maps)
        better = n > best_n
        best[better] = code
        best_n[better] = n[better]
    return best


def grow_to_mean_volume(fused: np.ndarray, maps: list[np.ndarray], brain: np.ndarray) -> np.ndarray:
    """Grow each deep structure to the maps' mean volume, voxels of highest vote share first.

    A majority vote erodes small structures where the maps disagree on their border (a voxel
    that 4 of 10 maps call pallidum goes to its neighbour); this gives them their volume back."""
    out = fused.copy()
    for code in DEEP_STRUCTURES:
        share = sum((m == code).astype(np.float32) for m in maps) / len(maps)
        have = out == code
        need = round(float(share.sum())) - int(have.sum())
        if need <= 0:
            continue
        candidates = np.flatnonzero(brain & ~have & (share > 0) & ~np.isin(out, DEEP_STRUCTURES))
        order = candidates[np.argsort(-share.ravel()[candidates], kind="stable")][:need]
        out.ravel()[order] = code
    return out


def fuse(samseg: np.ndarray, maps: list[np.ndarray], affine: np.ndarray) -> np.ndarray:
    """SAMSEG's labels with the vote's subcortical structures (see the module docstring)."""
    vote = majority_vote(maps)
    fused = samseg.copy()
    fused[fused == MIDBRAIN] = BRAINSTEM
    take = (samseg > 0) & (vote > 0) & (np.isin(vote, SUBCORTICAL) | np.isin(samseg, SUBCORTICAL))
    fused[take] = vote[take]
    fused = grow_to_mean_volume(fused, maps, samseg > 0)
    out = split_midbrain(Volume(fused, affine), np.array([0.0, 0.0, 1.0]), Settings().midbrain_height_mm)
    return out.array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", required=True, type=Path, help="folder with training_seg_11..20.nii.gz")
    parser.add_argument("--samseg-labels", type=Path, default=ATLAS / "template_labels_samseg.nii.gz")
    parser.add_argument("--work", type=Path, default=None, help="keep the warped maps here")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    files = [args.maps / f"training_seg_{i}.nii.gz" for i in range(11, 21)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{args.maps}: missing {', '.join(missing)}")
    import ants

    template = ants.image_read(str(atlas_files()[0]))
    seg = nib.load(str(args.samseg_labels))
    samseg = np.asarray(seg.dataobj).astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        maps = []
        for f in files:
            tic = time.perf_counter()
            maps.append(map_on_template(f, template, work))
            print(f"{f.name}: registered in {time.perf_counter() - tic:.0f} s", flush=True)
    fused = fuse(samseg, maps, seg.affine)
    nib.save(nib.Nifti1Image(fused.astype(np.uint16), seg.affine), str(args.out))
    for name, codes in (("caudate", CAUDATE), ("pallidum", PALLIDUM), ("hippocampus", HIPPOCAMPUS)):
        before, after = np.isin(samseg, codes).sum() / 1000, np.isin(fused, codes).sum() / 1000
        print(f"{name}: SAMSEG {before:.1f} ml -> fused {after:.1f} ml")


if __name__ == "__main__":
    main()
