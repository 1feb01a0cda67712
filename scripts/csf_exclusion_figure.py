"""Picture of what the CSF stage takes out of the counting regions, and the GP-Unet's detections
with and without it (docs/csf_exclusion_example.png).

    python scripts/csf_exclusion_figure.py [--t1 T1 --t2 T2] [--out docs/csf_exclusion_example.png]

Default: the shipped example. For each of the basal ganglia, hippocampi and midbrain, the slices
of the network grid holding a detection: the T2, the region (yellow), the removed CSF zone (red),
the detections of the region without the CSF stage (red circles) and with it (cyan dots).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from pvsquant.grids import resample
from pvsquant.pipeline.counting import count_region, load_models
from pvsquant.pipeline.csf import exclude_csf, find_csf_spaces
from pvsquant.pipeline.roi import crop_regions
from pvsquant.pipeline.run import StageTimer, prepare_subject
from pvsquant.types import CsfSettings, Settings, SubjectInputs

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "example"
REGIONS = ("basal_ganglia", "hippocampi", "midbrain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t1", type=Path, default=EXAMPLE / "sub-example_T1w.nii.gz")
    parser.add_argument("--t2", type=Path, default=EXAMPLE / "sub-example_T2w.nii.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs"
                        / "csf_exclusion_example.png")
    parser.add_argument("--slices", type=int, default=4, help="slices per region (those with most detections)")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = Settings()
    prep = prepare_subject(SubjectInputs(args.t1, args.t2), dataclasses.replace(settings, csf=CsfSettings(False)),
                           StageTimer())
    csf = find_csf_spaces(prep.t2, prep.anatomy, prep.transform, prep.regions, settings)
    without_csf, _ = exclude_csf(prep.regions, csf)
    models = load_models(None, settings.threads)
    fig, axes = plt.subplots(len(REGIONS), args.slices, figsize=(4 * args.slices, 4 * len(REGIONS)))
    for row, region in zip(axes, REGIONS, strict=True):
        for ax in row:
            ax.axis("off")
        results = []
        for regions in (prep.regions, without_csf):
            crop = crop_regions(prep.t2, regions, settings)[region]
            res = count_region(crop, models, settings.target_spacing_mm, settings.detection_level,
                               settings.detection_min_mass, settings.frangi, workers=settings.threads,
                               prominence=settings.detection_prominence.get(region))
            results.append((crop, res))
        (crop, before), (_, after) = results
        assert crop.t2 is not None
        inv = np.linalg.inv(crop.image.affine)

        def voxels(res, inv: np.ndarray = inv) -> list[np.ndarray]:
            return [np.round(inv[:3, :3] @ np.asarray(d.xyz) + inv[:3, 3]).astype(int) for d in res.detections]

        zone = resample(csf.zone.with_array(csf.zone.array.astype(np.float32)), crop.image.affine, crop.image.shape,
                        order=0).array > 0.5
        dots_before, dots_after = voxels(before), voxels(after)
        slices, counts = np.unique([int(d[2]) for d in dots_before], return_counts=True)
        chosen = sorted(slices[np.argsort(-counts, kind="stable")][: args.slices])
        box = np.argwhere(crop.inside)
        lo, hi = box.min(axis=0) - 8, box.max(axis=0) + 8
        image = crop.t2.array
        for ax, k in zip(row, chosen, strict=False):
            ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=float(np.percentile(image, 99.5)))
            ax.contour(crop.inside[:, :, k].T, [0.5], colors="yellow", linewidths=0.7)
            if (zone & crop.inside)[:, :, k].any():
                ax.contour((zone & crop.inside)[:, :, k].T, [0.5], colors="red", linewidths=0.7)
            for d in dots_before:
                if d[2] == k:
                    ax.plot(d[0], d[1], "o", mfc="none", mec="red", ms=12)
            for d in dots_after:
                if d[2] == k:
                    ax.plot(d[0], d[1], "o", mfc="cyan", mec="cyan", ms=4)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_title(f"{region} z={k}: GP-Unet {before.counts['gpunet']:.1f} -> {after.counts['gpunet']:.1f}",
                         fontsize=9)
        print(f"{region}: GP-Unet {before.counts['gpunet']:.2f} -> {after.counts['gpunet']:.2f}, detections "
              f"{len(before.detections)} -> {len(after.detections)}, CNN {before.counts['cnn']:.2f} -> "
              f"{after.counts['cnn']:.2f}, Frangi {before.counts['frangi']:.0f} -> {after.counts['frangi']:.0f}")
    fig.suptitle("CSF spaces taken out of the regions (red: removed; yellow: region before; red circles: detections "
                 "before, cyan dots: after)", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
