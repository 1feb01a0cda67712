"""Accuracy of the T1 segmentation on painted images with known labels.

Paints T1-like images from the SynthSeg training label maps in ../shared (random tissue
intensities, texture, blur, bias field, skull and scalp from the maps' own extra-cerebral
labels), acquires them on random clinical grids (in-plane 0.6-0.9 mm, axial slices 4-5 mm,
tilts up to 10 degrees), runs pvsquant's segmentation and reports Dice per structure
against the map's own labels on the same grid.

    python benchmarks/segmentation.py [--method atlas|samseg] [--contrast t1|t2] [--maps 10] [--seed 0]

``--contrast t2`` paints T2-like images instead and labels them as ``pvsquant run --t2`` alone
does (the atlas registered with mutual information, no intensity refinement). Prints a table and
writes it to benchmarks/results_segmentation_<method>[_t2].md.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from pvsquant.grids import resample_labels
from pvsquant.io import load_volume
from pvsquant.learning.synthesis import acquire, clinical_grid, paint_t1, paint_t2
from pvsquant.pipeline import anatomy as an
from pvsquant.types import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "SynthSeg" / "data" / "training_label_maps"
STRUCTURES = {"white matter": an.WM, "caudate": an.CAUDATE, "putamen": an.PUTAMEN, "pallidum": an.PALLIDUM,
              "thalamus": an.THALAMUS, "hippocampus": an.HIPPOCAMPUS, "lateral ventricle": an.LATERAL_VENTRICLE}
TARGETS = {"white matter": 0.80, "caudate": 0.80, "putamen": 0.80, "thalamus": 0.80,
           "hippocampus": 0.75, "pallidum": 0.75}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="atlas", choices=["atlas", "samseg"])
    parser.add_argument("--contrast", default="t1", choices=["t1", "t2"])
    parser.add_argument("--maps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=SHARED)
    args = parser.parse_args()

    files = sorted(args.data.glob("training_seg_*.nii.gz"))[: args.maps]
    if not files:
        raise SystemExit(f"no label maps in {args.data}")
    settings = Settings(segmenter=args.method)
    if args.contrast == "t2":
        settings = an.settings_for_t2(settings)
    rows, times = [], []
    for i, f in enumerate(files):
        rng = np.random.default_rng(args.seed + i)
        labels = load_volume(f, "label map", labels=True)
        painted = paint_t1(labels, rng) if args.contrast == "t1" else paint_t2(labels, rng)
        affine, shape, thick = clinical_grid(labels, rng, in_plane_mm=(0.6, 0.9), slice_mm=(4.0, 5.0))
        t1 = acquire(painted, affine, shape, rng)
        truth = resample_labels(labels.with_array(an.standardise_labels(labels.array)), affine, shape).array
        start = time.perf_counter()
        result = an.segment_anatomy(t1, settings)
        times.append(time.perf_counter() - start)
        scores = {name: dice(np.isin(result.labels.array, codes), np.isin(truth, codes))
                  for name, codes in STRUCTURES.items()}
        rows.append(scores)
        print(f"{f.name}: slices {thick:.1f} mm, {times[-1]:.1f} s, "
              + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)

    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in STRUCTURES}
    sd = {k: float(np.nanstd([r[k] for r in rows])) for k in STRUCTURES}
    lines = [f"## Segmentation Dice, method `{args.method}`, {args.contrast.upper()}-like images, {len(rows)} painted "
             f"SynthSeg maps, seed {args.seed}",
             "", f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
             f"threads {settings.threads}; {time.strftime('%Y-%m-%d')}; mean time {np.mean(times):.1f} s per image.",
             "", "| structure | Dice mean | sd | min | target | met |", "|---|---|---|---|---|---|"]
    for k in STRUCTURES:
        target = TARGETS.get(k)
        met = "" if target is None else ("yes" if mean[k] >= target else "**no**")
        lines.append(f"| {k} | {mean[k]:.3f} | {sd[k]:.3f} | {min(r[k] for r in rows):.3f} | "
                     f"{'' if target is None else target} | {met} |")
    text = "\n".join(lines) + "\n"
    print(text)
    suffix = "" if args.contrast == "t1" else "_t2"
    out = Path(__file__).with_name(f"results_segmentation_{args.method}{suffix}.md")
    out.write_text(text)


if __name__ == "__main__":
    main()
