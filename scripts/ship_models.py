"""Copy trained weights into the package, add their rows to the model card, redraw the curves.

    python scripts/ship_models.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a ``pvsquant train --out`` folder holding ``<region>_<model>.pt`` and
``train_log.json``. The weights go to src/pvsquant/data/models/; each run adds one row (its
settings, steps, time, validation on held-out maps) to the ``## Runs`` table of MODEL_CARD.md
there, whose hand-written text (stages, benchmarks) is kept as it is; the command that
reproduces the run is printed, for the card's text. ``training_curves.png`` beside it is
redrawn from every training log in ``training/`` and the new runs. A run on ``--region all``
gives the same weights to every region. Copy a shipped run's ``train_log.json`` (and
checkpoint) into ``training/`` so that later curves keep it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pvsquant.labels import REGION_CODES
from pvsquant.models import load_weights, save_weights
from pvsquant.reporting.figures import save_figure

DEST = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "models"

LOGS = Path(__file__).resolve().parents[1] / "training"


def ship(run: Path, log: dict, region: str) -> Path:
    """Write the weight file of one region from a run (a run on ``all`` regions serves every region)."""
    s = log["settings"]
    weights = load_weights(run / f"{s['region']}_{s['model']}.pt")
    info = {"trained_on": s["region"], "steps": log["steps_done"], "train_seconds": log["train_seconds"],
            "validation": log.get("validation"), "pvsquant_version": log["pvsquant_version"]}
    return save_weights(weights.network, DEST / f"{region}_{s['model']}.pt", s["model"], region, info)


def train_options(s: dict) -> str:
    """The pvsquant train options of a run that differ from their defaults (from its settings)."""
    defaults = {"count_weight": 1e-4, "density_weight": 1e5, "batch_size": 8}
    flags = {"count_weight": "--count-weight", "density_weight": "--density-weight", "batch_size": "--batch-size"}
    out = "".join(f" {flags[k]} {s[k]}" for k in defaults if s.get(k, defaults[k]) != defaults[k])
    extra = s.get("extra") or {}
    if extra.get("max_density", 3.0) != 3.0:
        out += f" --max-density {extra['max_density']}"
    for t1, t2 in extra.get("backgrounds", []):
        out += f" --background {t1} {t2}"
    if extra.get("backgrounds"):
        out += f" --background-samples {extra['background_samples']} --background-fraction {s['background_fraction']}"
    if s.get("outside_weight"):
        out += f" --outside-weight {s['outside_weight']}"
    if s.get("floor_weight"):
        out += f" --floor-weight {s['floor_weight']}"
    return out


def add_run_rows(card: str, rows: list[str]) -> str:
    """The card with ``rows`` appended to the table of its ``## Runs`` section (after its last row)."""
    lines = card.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "## Runs")
    except StopIteration:
        raise ValueError("the model card has no '## Runs' section") from None
    end = start + 1
    while end < len(lines) and not lines[end].startswith("|"):
        end += 1
    if end == len(lines):
        raise ValueError("the model card's '## Runs' section has no table")
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:end] + [row + "\n" for row in rows] + lines[end:])


def running_median(values: list, width: int = 5) -> list[float]:
    """Median over the last ``width`` logged values (a logged loss is one batch's: noisy)."""
    import numpy as np

    series = np.array([np.nan if v is None else float(v) for v in values])
    out = []
    for i in range(len(series)):
        window = series[max(0, i - width + 1): i + 1]
        window = window[np.isfinite(window)]
        out.append(float(np.median(window)) if window.size else float("nan"))
    return out


def plot_curves(logs: list[tuple[str, dict]], path: Path) -> None:
    """Training loss (and its parts) per step of every run, one panel per run (running medians)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(logs))
    rows = -(-len(logs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(logs):]:
        ax.axis("off")
    for ax, (name, log) in zip(axes.flat, logs, strict=False):
        steps = [h["step"] for h in log["history"]]
        for key in ("loss", "density", "segment", "count", "bg_density", "bg_count", "bg_segment", "bg_outside",
                    "bg_floor"):
            values = [h.get(key) for h in log["history"]]
            if any(v is not None for v in values):
                ax.plot(steps, running_median(values), label=key, lw=1)
        for probe in log.get("probes", []):
            ax.axvline(probe["step"], color="0.8", lw=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def main(run_dirs: list[str]) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    rows, commands, logs = [], [], []
    for run in map(Path, run_dirs):
        log = json.loads((run / "train_log.json").read_text())
        s = log["settings"]
        logs.append((run.name, log))
        targets = list(REGION_CODES) if s["region"] == "all" else [s["region"]]
        for region in targets:
            ship(run, log, region)
        v = log.get("validation") or {}
        init = Path(s["init"]).name if s.get("init") else "random"
        names = ", ".join(f"{r}_{s['model']}.pt" for r in targets)
        rows.append(f"| {names} "
                    f"| {init} | {log['steps_done']} | {log['train_seconds'] / 60:.1f} | "
                    f"{v.get('pearson_r')} | {v.get('mae')} | {v.get('mean_pred_when_empty')} |")
        commands.append(
            f"pvsquant train --region {s['region']} --model {s['model']} --steps {s['steps']} "
            f"--samples {log['samples'] // len(targets)} --lr {s['learning_rate']} --seed {s['seed']}"
            + (f" --init {s['init']}" if s.get("init") else "")
            + train_options(s)
            + f" --out RUNS/{run.name} --cache CACHE"
        )
    kept = [(path.name.removesuffix("_train_log.json"), json.loads(path.read_text()))
            for path in sorted(LOGS.glob("*_train_log.json"))]
    plot_curves(kept + logs, DEST / "training_curves.png")
    card = DEST / "MODEL_CARD.md"
    card.write_text(add_run_rows(card.read_text(), rows))
    print(f"{len(rows)} row(s) added to {card}; describe the run(s) there. Commands:")
    print("\n".join(commands))


if __name__ == "__main__":
    main(sys.argv[1:])
