"""Fine-tuning on a cohort with visual scores (the paper's future work), judged out of fold.

Starting weights are the shipped ones (or ``--models``). Image-level labels only, as the
original training: each scan's visual count of a region. What is tuned is the networks'
output layer: after sum pooling both networks are linear in it, so a count is
``head_features(scan) @ [w, b]`` (:func:`pvsquant.models.head_features`), and fine-tuning
on counts is a ridge regression of the visual counts on the pooled features, shrunk towards
the starting weights except for a free gain of the starting count. The strength is chosen by
leave-one-out inside the training data.
The GP-Unet's attention map stays the same linear combination of its last feature maps,
now with the tuned weights, so it still localises what it counts.

Honest gain: K-fold cross-validation over subjects. Every fine-tuned count reported for a
subject comes from a model fitted without that subject (out of fold). The weights written
for ``pvsquant run --models`` are then fitted on all subjects.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cohort.evaluate import read_scores
from ..cohort.stats import pearson
from ..errors import InputFileNotFoundError, InputTableError
from ..io import atomic_output_dir, write_json, write_tsv
from ..labels import NETWORKS, REGION_CODES
from ..reporting.figures import save_figure

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("subject", "region", "model", "rater1", "shipped", "finetuned_oof", "fold")


@dataclass(frozen=True)
class FinetuneSettings:
    folds: int = 5
    """Outer cross-validation folds (leave-one-out when there are fewer subjects)."""
    penalties: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 3, 15))
    """Candidate ridge strengths (relative to the number of subjects, on standardised features)."""
    min_subjects: int = 6
    """Regions with fewer scored subjects are not fine-tuned."""
    seed: int = 0
    threads: int = 2
    regions: tuple[str, ...] = tuple(REGION_CODES)
    """Regions to fine-tune (those with enough scores)."""


def feature_scale(features: np.ndarray) -> np.ndarray:
    """RMS of each feature: puts the pooled features (sums over ~1e5 voxels) and the voxel count
    on one footing in the penalty."""
    return np.sqrt(np.mean(features ** 2, axis=0)) + 1e-12


def ridge_towards(features: np.ndarray, target: np.ndarray, start: np.ndarray, penalty: float,
                  scale: np.ndarray | None = None) -> np.ndarray:
    """argmin_w |target - features @ w|^2 + penalty * n * sum_j (s_j (w_j - start_j))^2, with s_j the
    RMS of feature j (``scale``): ridge regression shrunk towards ``start`` instead of zero."""
    scale = feature_scale(features) if scale is None else scale
    n = len(target)
    lhs = features.T @ features + penalty * n * np.diag(scale ** 2)
    return start + np.linalg.solve(lhs, features.T @ (target - features @ start))


def loo_error(features: np.ndarray, target: np.ndarray, start: np.ndarray, penalty: float,
              scale: np.ndarray | None = None) -> float:
    """Mean squared leave-one-out error of :func:`ridge_towards`, in closed form (hat matrix; the
    feature scale, by default that of all ``features``, held fixed)."""
    scale = feature_scale(features) if scale is None else scale
    n = len(target)
    lhs = features.T @ features + penalty * n * np.diag(scale ** 2)
    hat = features @ np.linalg.solve(lhs, features.T)
    residual = target - features @ start
    loo = (residual - hat @ residual) / np.maximum(1 - np.diag(hat), 1e-9)
    return float(np.mean(loo ** 2))


def fit_head(features: np.ndarray, target: np.ndarray, start: np.ndarray,
             penalties: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """The tuned output layer ``w = a * start + delta`` and the penalty chosen by leave-one-out on
    these subjects only. The gain ``a`` of the starting count is free (a rater's scale differs from
    the network's: one slice or the whole region); ``delta``, any other combination of the pooled
    features, is shrunk towards zero."""
    design = np.column_stack([features @ start, features])
    scale = np.concatenate([[0.0], feature_scale(features)])
    initial = np.concatenate([[1.0], np.zeros(len(start))])
    errors = [loo_error(design, target, initial, p, scale) for p in penalties]
    best = penalties[int(np.argmin(errors))]
    coef = ridge_towards(design, target, initial, best, scale)
    return coef[0] * start + coef[1:], best


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index of each of ``n`` subjects (shuffled, sizes within one)."""
    k = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, int)
    fold[order] = np.arange(n) % k
    return fold


def cross_validate(features: np.ndarray, target: np.ndarray, start: np.ndarray,
                   settings: FinetuneSettings) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold fine-tuned counts (each from a model fitted without that subject) and the folds."""
    fold = fold_of(len(target), settings.folds, settings.seed)
    predicted = np.empty(len(target))
    for k in np.unique(fold):
        train = fold != k
        head, _ = fit_head(features[train], target[train], start, settings.penalties)
        predicted[~train] = features[~train] @ head
    return predicted, fold


def cohort_features(scores: dict, result_dirs: list[Path], models: dict, settings: FinetuneSettings
                    ) -> dict[str, dict[str, Any]]:
    """Per region: subjects, rater1 and every network's pooled head features on each scan."""
    import torch

    from ..models import head_features
    from ..pipeline.counting import model_channels, network_input
    from ..pipeline.roi import load_crop

    by_subject = {Path(d).name: Path(d) for d in result_dirs}
    per_region: dict[str, dict[str, Any]] = {}
    jobs = [(s, r) for (s, r), row in sorted(scores.items())
            if s in by_subject and r in settings.regions and not math.isnan(row["rater1"])]
    start = time.perf_counter()
    for i, (subject, region) in enumerate(jobs, start=1):
        crop = load_crop(by_subject[subject] / "roi", region)
        if crop is None:
            log.warning("%s: no %s crop in %s (region empty); left out", subject, region, by_subject[subject])
            continue
        spacing = crop.image.spacing_mm
        net_input = network_input(crop, (float(spacing[0]), float(spacing[1]), float(spacing[2])),
                                  model_channels(models, region), reuse_vesselness=True)
        entry = per_region.setdefault(region, {"subjects": [], "rater1": [], **{m: [] for m in NETWORKS}})
        entry["subjects"].append(subject)
        entry["rater1"].append(scores[(subject, region)]["rater1"])
        with torch.no_grad():
            for name in NETWORKS:
                features = head_features(models[(region, name)].network, net_input.x, net_input.mask)
                entry[name].append(features[0].double().numpy())
        elapsed = time.perf_counter() - start
        log.info(
            "features %d/%d (%s, %s) %.0f s, about %.0f s left",
            i,
            len(jobs),
            subject,
            region,
            elapsed,
            elapsed / i * (len(jobs) - i),
        )
    return per_region


def summarise(target: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "pearson_r": round(pearson(predicted, target)[0], 4),
        "mae": round(float(np.mean(np.abs(predicted - target))), 3),
    }


def finetune_cohort(
    scores_path: Path,
    result_dirs: list[Path],
    out_dir: Path,
    models_dir: str | None = None,
    settings: FinetuneSettings = FinetuneSettings(),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cross-validate, then fit on all subjects and write ``<region>_<model>.pt`` and the report to ``out_dir``."""
    import torch

    from ..models import get_head, save_weights, set_head
    from ..pipeline.counting import load_models

    scores, _ = read_scores(Path(scores_path))
    for folder in result_dirs:
        if not (Path(folder) / "roi").is_dir():
            raise InputFileNotFoundError(
                f"{folder} is not a pvsquant run output: {Path(folder) / 'roi'} does not exist"
            )
    missing = sorted({s for s, _ in scores} - {Path(d).name for d in result_dirs})
    if missing:
        log.warning("subjects with visual scores but no result folder (left out): %s", ", ".join(missing))
    models = load_models(models_dir, settings.threads)
    per_region = cohort_features(scores, result_dirs, models, settings)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        "folds": settings.folds,
        "seed": settings.seed,
        "regions": {},
        "left_out_subjects": missing,
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
    }
    tuned: dict[tuple[str, str], torch.nn.Module] = {}
    for region in REGION_CODES:
        data = per_region.get(region)
        n = len(data["subjects"]) if data else 0
        if data is None or n < settings.min_subjects:
            if n:
                log.warning("%s: %d scored subjects, fewer than %d: not fine-tuned", region, n, settings.min_subjects)
            continue
        target = np.asarray(data["rater1"], float)
        summary["regions"][region] = {"n": n}
        for name in NETWORKS:
            features = np.stack(data[name])
            start = get_head(models[(region, name)].network).double().numpy()
            shipped = features @ start
            predicted, fold = cross_validate(features, target, start, settings)
            head, penalty = fit_head(features, target, start, settings.penalties)
            summary["regions"][region][name] = {
                "start": summarise(target, shipped),
                "finetuned_out_of_fold": summarise(target, predicted),
                "penalty_all_subjects": penalty,
            }
            rows += [
                {
                    "subject": s,
                    "region": region,
                    "model": name,
                    "rater1": t,
                    "shipped": float(a),
                    "finetuned_oof": float(b),
                    "fold": int(f),
                }
                for s, t, a, b, f in zip(data["subjects"], target, shipped, predicted, fold, strict=False)
            ]
            model = models[(region, name)].network
            set_head(model, torch.from_numpy(head).float())
            tuned[(region, name)] = model
            log.info(
                "%-18s %-6s n=%d  r %.2f -> %.2f  MAE %.1f -> %.1f (out of fold)",
                region,
                name,
                n,
                *(
                    summary["regions"][region][name][k][m]
                    for m in ("pearson_r", "mae")
                    for k in ("start", "finetuned_out_of_fold")
                ),
            )
    if not tuned:
        raise InputTableError(
            f"no region has {settings.min_subjects} or more subjects with both a visual score in "
            f"{scores_path} and a result folder; nothing to fine-tune"
        )
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        for (region, name), model in tuned.items():
            info = {"finetuned": summary["regions"][region][name]}
            save_weights(model, tmp / f"{region}_{name}.pt", name, region, info)
        write_tsv(rows, RESULT_COLUMNS, tmp / "finetune_out_of_fold.tsv")
        write_json(summary, tmp / "finetune.json")
        (tmp / "finetune.md").write_text(summary_markdown(summary))
        plot_out_of_fold(rows, tmp / "finetune.png")
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Fine-tuning on visual scores",
        "",
        summary["method"],
        "",
        f"{summary['folds']}-fold cross-validation over subjects (seed {summary['seed']}); every fine-tuned "
        "figure below is out of fold.",
        "",
        "| region | model | n | r start | r fine-tuned (OOF) | MAE start | MAE fine-tuned (OOF) |",
        "|---|---|---|---|---|---|---|",
    ]
    for region, entry in summary["regions"].items():
        for name in NETWORKS:
            e = entry[name]
            lines.append(
                f"| {region} | {name} | {entry['n']} | {e['start']['pearson_r']:.3f} | "
                f"{e['finetuned_out_of_fold']['pearson_r']:.3f} | {e['start']['mae']:.2f} | "
                f"{e['finetuned_out_of_fold']['mae']:.2f} |"
            )
    if summary["left_out_subjects"]:
        lines += ["", "Left out (visual scores but no result folder): " + ", ".join(summary["left_out_subjects"])]
    return "\n".join(lines) + "\n"


def plot_out_of_fold(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows: networks; columns: regions. rater1 against the starting and the out-of-fold fine-tuned counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [r for r in REGION_CODES if any(row["region"] == r for row in rows)]
    models = [m for m in NETWORKS if any(row["model"] == m for row in rows)]
    fig, axes = plt.subplots(len(models), len(regions), figsize=(3.4 * len(regions), 3.3 * len(models)), squeeze=False)
    for i, name in enumerate(models):
        for j, region in enumerate(regions):
            ax = axes[i, j]
            sel = [r for r in rows if r["region"] == region and r["model"] == name]
            t = np.array([r["rater1"] for r in sel])
            for key, colour, label in (
                ("shipped", "#999999", "start"),
                ("finetuned_oof", "#d62728", "fine-tuned (out of fold)"),
            ):
                ax.scatter(t, [r[key] for r in sel], s=18, color=colour, label=label)
            hi = max(t.max(), max(max(r["shipped"], r["finetuned_oof"]) for r in sel)) * 1.05
            ax.plot([0, hi], [0, hi], "k--", lw=0.8)
            ax.set_title(f"{region.replace('_', ' ')}, {name}", fontsize=9)
            ax.set_xlabel("rater 1")
            ax.set_ylabel("count")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
