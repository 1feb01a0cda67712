"""Copy trained weights into the package and write its model card.

    python scripts/ship_models.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a ``pvsquant train --out`` folder holding ``<region>_<model>.pt`` and
``train_log.json``. The weights go to src/pvsquant/data/models/, and MODEL_CARD.md there
is rewritten from ``scripts/model_card_header.md`` and the training logs (settings, steps,
time, validation on held-out maps); the loss curves go to ``training_curves.png`` beside it.
A run on ``--region all`` gives the same weights to every region.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pvsquant.labels import REGION_CODES
from pvsquant.models import load_weights, save_weights
from pvsquant.reporting.figures import save_figure

DEST = Path(__file__).resolve().parents[1] / "src" / "pvsquant" / "data" / "models"

HEADER_FILE = Path(__file__).resolve().parent / "model_card_header.md"


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
    return out


def plot_curves(logs: list[tuple[str, dict]], path: Path) -> None:
    """Training loss (and its parts) per step of every run, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 3.6), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs, strict=False):
        steps = [h["step"] for h in log["history"]]
        for key in ("loss", "density", "segment", "count", "bg_density", "bg_count", "bg_segment", "bg_outside"):
            values = [h.get(key) for h in log["history"]]
            if any(v is not None for v in values):
                ax.plot(steps, values, label=key, lw=1)
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
            + (f" --init RUNS/{Path(s['init']).parent.name}/{Path(s['init']).name}" if s.get("init") else "")
            + train_options(s)
            + f" --out RUNS/{run.name} --cache CACHE"
        )
    plot_curves(logs, DEST / "training_curves.png")
    total = sum(log["train_seconds"] for _, log in logs)
    text = HEADER_FILE.read_text().format(
        regions=", ".join(REGION_CODES),
        commands="\n".join(commands),
        runs="\n".join(rows),
        total_minutes=f"{total / 60:.0f}",
    )
    (DEST / "MODEL_CARD.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
