"""Counting on held-out synthetic patches: the shipped GP-Unet and CNN against the Frangi baseline.

    python benchmarks/synthetic_validation.py CACHE/val [--regions R ...] [--out FILE] [--models DIR]
    python benchmarks/synthetic_validation.py FOLDER --generate [--max-density 8] [--samples 50]

CACHE/val holds the validation shards that ``pvsquant train`` makes (label maps never seen in
training); ``--generate`` writes them into FOLDER first, exactly as ``pvsquant train`` does
(the last two label maps, seed 1000 (``--seed`` + 1000 of train), shards of 25), so the patches are
those of a training run with that ``--max-density``. Per region: Pearson r and MAE of each model's
patch count against the true number of PVS centres in the patch, and the mean count on the empty
patches (no PVS; should be ~0). Shards that record how visible each PVS is (written since 2026-12-07) also
give r and MAE against the number of *visible* PVS (peak partial-volume fraction in the simulated
scan's voxels >= 0.3 or 0.5, ``trainingdata.VISIBILITY_LEVELS``): what a rater can count.
Writes benchmarks/results_synthetic_validation.md (or ``--out``; with ``--regions``, only the
regions whose shards the cache holds).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pvsquant.learning.training import count_agreement, load_shards, predict_counts
from pvsquant.learning.trainingdata import VISIBILITY_LEVELS, default_label_maps, generate_validation_dataset
from pvsquant.pipeline.counting import load_models
from pvsquant.pipeline.frangi import count_frangi
from pvsquant.types import REGION_CODES, Settings

HERE = Path(__file__).resolve().parent
SHOWN_LEVELS = VISIBILITY_LEVELS[:2]


def frangi_counts(data: dict[str, np.ndarray]) -> np.ndarray:
    unmasked = Settings().frangi  # the cached patches are the unmasked network input
    return np.array([count_frangi(i.astype(np.float32), m.astype(np.float32), (0.5, 0.5, 0.8), unmasked).count
                     for i, m in zip(data["image"], data["mask"], strict=True)], float)


def main(val_dir: str, regions: tuple[str, ...] = tuple(REGION_CODES),
         out: Path = HERE / "results_synthetic_validation.md", models_dir: Path | None = None) -> None:
    models = load_models(models_dir)
    visible_header = "".join(f" r / MAE vs PVS visible at >= {level} |" for level in SHOWN_LEVELS)
    lines = [
        "# Synthetic validation: patch counts on held-out label maps",
        "",
        "Command: `python benchmarks/synthetic_validation.py CACHE/val` (cache of `pvsquant train`, or `--generate`).",
        "",
        "| region | patches | model | Pearson r | MAE | mean count on empty patches |" + visible_header,
        "|---|---|---|---|---|---|" + "---|" * len(SHOWN_LEVELS),
    ]
    start = time.perf_counter()
    ceilings = []
    for region in regions:
        data = load_shards(val_dir, [region])
        truth = data["count"].astype(float)
        visible = data.get("visible_count")
        preds = {name: predict_counts(models[(region, name)].network, data) for name in ("gpunet", "cnn")}
        preds["frangi"] = frangi_counts(data)
        for name, pred in preds.items():
            r, mae = count_agreement(pred, truth)
            empty = f"{pred[truth == 0].mean():.3f} ({int((truth == 0).sum())})" if np.any(truth == 0) else "-"
            cells = ""
            for k in range(len(SHOWN_LEVELS)):
                if visible is None:
                    cells += " - |"
                else:
                    rv, maev = count_agreement(pred, visible[:, k])
                    cells += f" {rv:.3f} / {maev:.2f} |"
            lines.append(f"| {region} | {len(truth)} | {name} | {r:.3f} | {mae:.2f} | {empty} |{cells}")
        if visible is not None:
            share = " / ".join(f"{visible[:, k].sum() / max(truth.sum(), 1):.2f}"
                               for k in range(len(VISIBILITY_LEVELS)))
            ceiling = " / ".join(f"{count_agreement(visible[:, k], truth)[0]:.3f}"
                                 for k in range(len(VISIBILITY_LEVELS)))
            ceilings.append(f"| {region} | {share} | {ceiling} |")
    if ceilings:
        levels = " / ".join(str(level) for level in VISIBILITY_LEVELS)
        lines += ["", "How many PVS a counter could see: the share of the PVS centred in the patches whose peak "
                  "partial-volume fraction reaches each level, and the Pearson r of a perfect counter of those "
                  "visible PVS against the true count (all PVS): the r that counting what is visible can reach.",
                  "", f"| region | share visible at {levels} | r of a perfect counter of the visible PVS at {levels} |",
                  "|---|---|---|", *ceilings]
    lines += ["", f"{time.perf_counter() - start:.0f} s."]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_dir")
    parser.add_argument("--regions", nargs="+", choices=list(REGION_CODES), default=list(REGION_CODES))
    parser.add_argument("--out", type=Path, default=HERE / "results_synthetic_validation.md")
    parser.add_argument("--generate", action="store_true", help="write the validation shards into val_dir first")
    parser.add_argument("--max-density", type=float, default=8.0, help="as pvsquant train --max-density")
    parser.add_argument("--samples", type=int, default=50, help="patches per region, as pvsquant train --val-samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, help="folder of <region>_<model>.pt weights (the shipped ones fill "
                        "the rest)")
    args = parser.parse_args()
    if args.generate:
        maps = default_label_maps()
        for region in args.regions:
            generate_validation_dataset(maps, region, args.samples, args.val_dir, workers=args.threads,
                                        max_density_per_ml=args.max_density)
    main(args.val_dir, tuple(args.regions), args.out, args.models)
