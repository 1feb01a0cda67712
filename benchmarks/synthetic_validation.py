"""Counting on held-out synthetic patches: the shipped GP-Unet and CNN against the Frangi baseline.

    python benchmarks/synthetic_validation.py CACHE/val [--regions R ...] [--out FILE]

CACHE/val holds the validation shards that ``pvsquant train`` makes (label maps never seen in
training). Per region: Pearson r and MAE of each model's patch count against the true number
of PVS centres in the patch, and the mean count on the empty patches (no PVS; should be ~0).
Writes benchmarks/results_synthetic_validation.md (or ``--out``; with ``--regions``, only the
regions whose shards the cache holds).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pvsquant.learning.training import evaluate, load_shards
from pvsquant.pipeline.counting import load_models
from pvsquant.pipeline.frangi import count_frangi
from pvsquant.types import REGION_CODES, Settings

HERE = Path(__file__).resolve().parent


def main(val_dir: str, regions: tuple[str, ...] = tuple(REGION_CODES),
         out: Path = HERE / "results_synthetic_validation.md") -> None:
    models = load_models()
    lines = [
        "# Synthetic validation: patch counts on held-out label maps",
        "",
        "Command: `python benchmarks/synthetic_validation.py CACHE/val` (cache of `pvsquant train`).",
        "",
        "| region | patches | model | Pearson r | MAE | mean count on empty patches |",
        "|---|---|---|---|---|---|",
    ]
    for region in regions:
        data = load_shards(val_dir, [region])
        truth = data["count"].astype(float)
        for name in ("gpunet", "cnn"):
            res = evaluate(models[(region, name)].network, data)
            lines.append(
                f"| {region} | {res['n']} | {name} | {res['pearson_r']:.3f} | {res['mae']:.2f} | "
                f"{res['mean_pred_when_empty']} ({int((truth == 0).sum())}) |"
            )
        unmasked = Settings().frangi  # the cached patches are the unmasked network input
        frangi = np.array(
            [
                count_frangi(i.astype(np.float32), m.astype(np.float32), (0.5, 0.5, 0.8), unmasked).count
                for i, m in zip(data["image"], data["mask"], strict=False)
            ],
            float,
        )
        r = float(np.corrcoef(frangi, truth)[0, 1])
        empty = round(float(frangi[truth == 0].mean()), 3) if np.any(truth == 0) else None
        lines.append(f"| {region} | {len(truth)} | frangi | {r:.3f} | {np.abs(frangi - truth).mean():.2f} | {empty} |")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_dir")
    parser.add_argument("--regions", nargs="+", choices=list(REGION_CODES), default=list(REGION_CODES))
    parser.add_argument("--out", type=Path, default=HERE / "results_synthetic_validation.md")
    args = parser.parse_args()
    main(args.val_dir, tuple(args.regions), args.out)
