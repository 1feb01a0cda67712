"""Cohort evaluation as in Dubost, Dünnwald et al.: automated counts against visual scores.

Inputs: ``visual.tsv`` (subject, region, rater1, optional rater2, optional scanner, any other
columns kept) and the counts, either ``pvsquant run`` output folders (folder name = subject)
or one ``all_counts.tsv`` (subject, region, model, count).

Per region, for GP-Unet, CNN, Frangi and rater2 against rater1 (:mod:`pvsquant.cohort.stats`):
Pearson r with 95% CI and p, Spearman rho, ICC(A,1), MAE, Bland-Altman bias and limits;
Williams' test between the methods' correlations with rater1; Bonferroni over all the
tests of a table, as the paper's Table 2. Outputs: table_correlation.tsv, table_williams.tsv,
data.tsv, summary.md, figure_scatter.png (the paper's Fig. 1, by scanner), evaluation.html.
"""
from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileNotFoundError, InputTableError
from ..io import atomic_output_dir, format_cell, read_tsv, write_tsv
from ..labels import METHOD_TITLES
from ..labels import METHODS as MODELS
from ..reporting.figures import save_figure
from ..types import REGION_CODES
from .stats import agreement, bonferroni, pearson, williams_test

log = logging.getLogger(__name__)

METHODS = (*MODELS, "rater2")
WILLIAMS_PAIRS = (("gpunet", "cnn"), ("gpunet", "frangi"), ("cnn", "frangi"))
LABELS = {**METHOD_TITLES, "rater1": "rater 1", "rater2": "rater 2"}
CORRELATION_COLUMNS = ("region", "method", "n", "pearson_r", "ci_low", "ci_high", "p", "spearman_rho", "icc", "mae",
                       "bias", "loa_low", "loa_high", "significant_bonferroni")
WILLIAMS_COLUMNS = ("region", "method_a", "method_b", "r_a", "r_b", "r_ab", "t", "p", "significant_bonferroni")
REGION_ALIASES = {"cso": "centrum_semiovale", "centrum semiovale": "centrum_semiovale", "bg": "basal_ganglia",
                  "basal ganglia": "basal_ganglia", "hippocampus": "hippocampi", "hc": "hippocampi",
                  "hippocampi": "hippocampi", "mb": "midbrain"}
ICC_FORM = "ICC(A,1): two-way random effects, absolute agreement, single measurement (McGraw & Wong 1996)"


@dataclass
class Cohort:
    """Visual scores joined with counts: one row per (subject, region) present in both."""

    rows: list[dict[str, Any]]
    only_in_scores: list[str] = field(default_factory=list)
    only_in_counts: list[str] = field(default_factory=list)
    synthetic_subjects: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    incomplete_pairs: list[str] = field(default_factory=list)
    """``subject/region`` of a subject in both tables lacking a region's counts or scores (or n/a)."""
    failed_qc: list[str] = field(default_factory=list)
    """Subjects whose run failed its quality gates (qc.json status 'fail'): left out."""


def region_name(value: str, where: str) -> str:
    key = value.strip().lower().replace("-", " ")
    name = REGION_ALIASES.get(key, key.replace(" ", "_"))
    if name not in REGION_CODES:
        raise InputTableError(f"{where}: unknown region {value!r}; expected one of {', '.join(REGION_CODES)} "
                              "(or cso, bg, hippocampus)")
    return name


def _number(value: str | None, where: str, column: str) -> float:
    text = (value or "").strip()
    if text.lower() in ("", "n/a", "na", "nan"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputTableError(f"{where}: column {column!r} holds {text!r}, not a number") from None


def read_scores(path: Path) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
    """visual.tsv as {(subject, region): row} with rater1/rater2 as floats, and its extra columns."""
    rows = read_tsv(path, ("subject", "region", "rater1"), "visual scores")
    scores: dict[tuple[str, str], dict[str, Any]] = {}
    extra = [c for c in rows[0] if c not in ("subject", "region", "rater1", "rater2", "scanner")] if rows else []
    for i, row in enumerate(rows, start=2):
        where = f"{path} line {i}"
        key = (row["subject"], region_name(row["region"], where))
        if key in scores:
            raise InputTableError(f"{where}: subject {key[0]} region {key[1]} appears twice")
        scores[key] = {
            **row,
            "region": key[1],
            "rater1": _number(row["rater1"], where, "rater1"),
            "rater2": _number(row.get("rater2"), where, "rater2"),
            "scanner": row.get("scanner") or "unknown",
        }
    return scores, extra


def read_counts_table(path: Path, subject: str | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """all_counts.tsv (subject, region, model, count), or one run's counts.tsv (region, model, count)
    for ``subject``, as {(subject, region): {model: count}}."""
    required = ("region", "model", "count") if subject else ("subject", "region", "model", "count")
    counts: dict[tuple[str, str], dict[str, float]] = {}
    for i, row in enumerate(read_tsv(path, required, "counts table"), start=2):
        where = f"{path} line {i}"
        key = (subject or row["subject"], region_name(row["region"], where))
        if row["model"] in counts.get(key, {}):
            raise InputTableError(f"{where}: subject {key[0]} region {key[1]} model {row['model']} appears twice")
        counts.setdefault(key, {})[row["model"]] = _number(row["count"], where, "count")
    return counts


def read_results(out_dirs: list[Path]) -> tuple[dict[tuple[str, str], dict[str, float]], list[str], list[str]]:
    """counts.tsv of ``pvsquant run`` folders (subject = folder name), the synthetic subjects among
    them, and those whose quality gates failed (their counts are not returned)."""
    counts: dict[tuple[str, str], dict[str, float]] = {}
    synthetic: list[str] = []
    failed: list[str] = []
    names = [Path(d).name for d in out_dirs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputTableError(f"two result folders share the subject name(s) {', '.join(duplicates)}")
    for folder in map(Path, out_dirs):
        table = folder / "counts.tsv"
        if not table.is_file():
            raise InputFileNotFoundError(f"{folder} is not a pvsquant run output: {table} does not exist")
        try:
            qc = json.loads((folder / "qc.json").read_text())
        except (OSError, ValueError):
            qc = {}
        if qc.get("status") == "fail":
            failed.append(folder.name)
            continue
        for key, values in read_counts_table(table, folder.name).items():
            counts[key] = values
        if qc.get("synthetic"):
            synthetic.append(folder.name)
    return counts, synthetic, failed


def join(scores: dict, extra: list[str], counts: dict, synthetic: list[str] | None = None,
         failed_qc: list[str] | None = None) -> Cohort:
    """Scores and counts side by side; subjects in only one of them are listed, not silently dropped.
    ``failed_qc``: subjects whose counts were left out because their quality gates failed."""
    failed = sorted(failed_qc or [])
    score_subjects = {s for s, _ in scores}
    count_subjects = {s for s, _ in counts}
    rows, incomplete = [], []
    both = score_subjects & count_subjects
    scored_regions = {r for _, r in scores}  # a region nobody scored (e.g. midbrain) is not a gap
    for subject, region in sorted(k for k in set(scores) | set(counts) if k[1] in scored_regions):
        score, values = scores.get((subject, region)), counts.get((subject, region))
        if subject in both and (
            score is None
            or values is None
            or math.isnan(score["rater1"])
            or all(math.isnan(values.get(m, math.nan)) for m in MODELS)
        ):
            incomplete.append(f"{subject}/{region}")
        if score is None or values is None:
            continue
        rows.append(
            {
                "subject": subject,
                "region": region,
                "scanner": score["scanner"],
                "rater1": score["rater1"],
                "rater2": score["rater2"],
                **{m: values.get(m, math.nan) for m in MODELS},
                **{c: score.get(c, "") for c in extra},
            }
        )
    cohort = Cohort(
        rows,
        sorted(score_subjects - count_subjects - set(failed)),
        sorted(count_subjects - score_subjects),
        sorted(set(synthetic or []) & {r["subject"] for r in rows}),
        extra,
        incomplete,
        failed,
    )
    if not rows:
        raise InputTableError(
            "no subject has both visual scores and counts (subject ids must match the result "
            f"folder names); scores: {', '.join(sorted(score_subjects)[:5])}...; counts: "
            f"{', '.join(sorted(count_subjects)[:5])}..."
        )
    return cohort


def correlation_table(cohort: Cohort) -> list[dict[str, Any]]:
    """Agreement of every method with rater1, per region; Bonferroni over all the table's tests."""
    table = []
    for region in REGION_CODES:
        rows = [r for r in cohort.rows if r["region"] == region]
        if not rows:
            continue
        reference = [r["rater1"] for r in rows]
        for method in METHODS:
            values = [r[method] for r in rows]
            if all(math.isnan(v) for v in values):
                continue
            a = agreement(values, reference)
            table.append({"region": region, "method": method, **{k: getattr(a, k) for k in CORRELATION_COLUMNS[2:-1]}})
    _, significant = bonferroni([row["p"] for row in table])
    for row, sig in zip(table, significant, strict=False):
        row["significant_bonferroni"] = bool(sig)
    return table


def williams_table(cohort: Cohort) -> list[dict[str, Any]]:
    """Williams' test: is method a's correlation with rater1 different from method b's?"""
    table = []
    for region in REGION_CODES:
        rows = [r for r in cohort.rows if r["region"] == region]
        for a, b in WILLIAMS_PAIRS:
            keep = [r for r in rows if not any(math.isnan(r[k]) for k in ("rater1", a, b))]
            if len(keep) < 4:
                continue
            ref, xa, xb = (np.array([r[k] for r in keep]) for k in ("rater1", a, b))
            r_a, r_b, r_ab = pearson(xa, ref)[0], pearson(xb, ref)[0], pearson(xa, xb)[0]
            t, p = williams_test(r_a, r_b, r_ab, len(keep))
            table.append(
                {"region": region, "method_a": a, "method_b": b, "r_a": r_a, "r_b": r_b, "r_ab": r_ab, "t": t, "p": p}
            )
    _, significant = bonferroni([float(row["p"]) for row in table])  # type: ignore[arg-type]
    for row, sig in zip(table, significant, strict=False):
        row["significant_bonferroni"] = bool(sig)
    return table


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format_cell(row.get(c, "")) for c in columns]
        if row.get("significant_bonferroni") and "pearson_r" in columns:
            cells[columns.index("pearson_r")] = f"**{cells[columns.index('pearson_r')]}**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def cohort_notes(cohort: Cohort) -> list[str]:
    notes = []
    if cohort.synthetic_subjects:
        notes.append(
            f"SYNTHETIC DEMO DATA: {len(cohort.synthetic_subjects)} of "
            f"{len({r['subject'] for r in cohort.rows})} subjects are synthetic cases whose 'visual scores' "
            "are known numbers of injected PVS, not a rater's scores."
        )
    if cohort.failed_qc:
        notes.append(f"Subjects whose quality gates failed (qc.json status 'fail'; left out): "
                     f"{', '.join(cohort.failed_qc)}")
    if cohort.only_in_scores:
        notes.append(f"Subjects with visual scores but no counts (left out): {', '.join(cohort.only_in_scores)}")
    if cohort.only_in_counts:
        notes.append(f"Subjects with counts but no visual scores (left out): {', '.join(cohort.only_in_counts)}")
    if cohort.incomplete_pairs:
        notes.append(
            "Subject/region pairs without a score or without a count (empty region, n/a; left out of that "
            f"region): {', '.join(cohort.incomplete_pairs)}"
        )
    return notes


def summary_markdown(cohort: Cohort, correlation: list[dict], williams: list[dict]) -> str:
    n_subjects = len({r["subject"] for r in cohort.rows})
    parts = ["# PVS counts against visual scores", ""]
    parts += [f"> {note}\n" for note in cohort_notes(cohort)]
    parts += [
        f"{n_subjects} subjects, {len(cohort.rows)} subject-region pairs. All methods against rater 1. "
        f"ICC is {ICC_FORM}. Bland-Altman: bias = mean(method - rater1), limits = bias -/+ 1.96 SD. "
        f"Bonferroni over the {sum(not math.isnan(r['p']) for r in correlation)} correlation tests; "
        "significant Pearson r in bold (as the paper's Table 2).",
        "",
        "## Correlation with rater 1",
        "",
        markdown_table(correlation, CORRELATION_COLUMNS),
        "",
        "## Williams' test between dependent correlations",
        "",
        f"t with n - 3 degrees of freedom (Steiger 1980, eq. 7); Bonferroni over the "
        f"{sum(not math.isnan(r['p']) for r in williams)} tests.",
        "",
        markdown_table(williams, WILLIAMS_COLUMNS),
        "",
    ]
    return "\n".join(parts)


def plot_scatter(cohort: Cohort, path: Path) -> Path:
    """The paper's Fig. 1: per region, rater1 vs GP-Unet, CNN and rater2, and GP-Unet vs CNN,
    points coloured by scanner, identity line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [r for r in REGION_CODES if any(row["region"] == r for row in cohort.rows)]
    panels = (("rater1", "gpunet"), ("rater1", "cnn"), ("rater1", "rater2"), ("gpunet", "cnn"))
    scanners = sorted({row["scanner"] for row in cohort.rows})
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(scanners)}
    fig, axes = plt.subplots(len(regions), 4, figsize=(15, 3.6 * len(regions)), squeeze=False)
    for i, region in enumerate(regions):
        rows = [r for r in cohort.rows if r["region"] == region]
        for j, (xk, yk) in enumerate(panels):
            ax = axes[i, j]
            pts = [(r[xk], r[yk], r["scanner"]) for r in rows if not (math.isnan(r[xk]) or math.isnan(r[yk]))]
            if not pts:
                ax.text(0.5, 0.5, f"no {LABELS[yk]}", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            for scanner in scanners:
                sel = [(x, y) for x, y, s in pts if s == scanner]
                if sel:
                    ax.scatter(
                        *zip(*sel, strict=False),
                        s=22,
                        color=colours[scanner],
                        label=scanner,
                        edgecolor="k",
                        linewidth=0.3,
                    )
            x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
            lo, hi = min(x.min(), y.min(), 0), max(x.max(), y.max()) * 1.05 + 1e-9
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            r = pearson(x, y)[0]
            ax.set_title(f"{region.replace('_', ' ')}: r = {r:.2f} (n = {len(pts)})", fontsize=9)
            ax.set_xlabel(LABELS[xk])
            ax.set_ylabel(LABELS[yk])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(scanners), 8), title="scanner", frameon=False)
    title = "PVS counts vs visual scores" + (" (SYNTHETIC DEMO DATA)" if cohort.synthetic_subjects else "")
    fig.suptitle(title, fontsize=12)
    bottom = 0.6 / (3.6 * len(regions))
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.35 / (3.6 * len(regions))))
    return save_figure(fig, path, dpi=80)


def html_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            number = isinstance(value, float) and not math.isnan(value)
            text = html.escape(f"{value:.3g}" if number else format_cell(value))
            bold = c == "pearson_r" and row.get("significant_bonferroni")
            cells.append(f"<td>{'<b>' + text + '</b>' if bold else text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<div style='overflow-x:auto'><table id='{table_id}' style='font-size:0.85em'><tr>{head}</tr>"
        f"{''.join(body)}</table></div>"
    )


def evaluation_html(cohort: Cohort, correlation: list[dict], williams: list[dict], figure: Path) -> str:
    from ..reporting.report import STYLE, embed_png

    notes = "".join(f"<div class='banner'>{html.escape(n)}</div>" for n in cohort_notes(cohort))
    data_columns = ["subject", "region", "scanner", "rater1", "rater2", *MODELS, *cohort.extra_columns]
    return "\n".join(
        [
            f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>PVS evaluation</title>"
            f"<style>{STYLE}</style></head><body><h1>PVS counts against visual scores</h1>",
            notes,
            f"<p>{len({r['subject'] for r in cohort.rows})} subjects. All methods against rater 1. ICC is "
            f"{html.escape(ICC_FORM)}. Significant Pearson r after Bonferroni correction in bold.</p>",
            "<h2>Correlation with rater 1</h2>",
            html_table(correlation, CORRELATION_COLUMNS, "correlation"),
            "<h2>Williams' test</h2>",
            html_table(williams, WILLIAMS_COLUMNS, "williams"),
            f"<h2>Scatter plots</h2><figure><img alt='scatter' src='{embed_png(figure)}'><figcaption>Per region: "
            "rater 1 against GP-Unet, CNN and rater 2, and GP-Unet against CNN; colours are scanners; dashed: identity."
            "</figcaption></figure>",
            "<h2>Data</h2>",
            html_table(cohort.rows, data_columns, "data"),
            "</body></html>",
        ]
    )


def evaluate_cohort(
    scores_path: Path,
    out_dir: Path,
    results: list[Path] | None = None,
    counts_path: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Read, compare and write every output of ``pvsquant evaluate`` into ``out_dir`` (atomically)."""
    if bool(results) == bool(counts_path):
        raise InputTableError("give either result folders or one counts table, not both or neither")
    scores, extra = read_scores(Path(scores_path))
    if counts_path:
        counts, synthetic, failed = read_counts_table(Path(counts_path)), list[str](), list[str]()
    else:
        counts, synthetic, failed = read_results([Path(r) for r in results or []])
    cohort = join(scores, extra, counts, synthetic, failed)
    for note in cohort_notes(cohort):
        log.warning(note)
    correlation, williams = correlation_table(cohort), williams_table(cohort)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        write_tsv(correlation, CORRELATION_COLUMNS, tmp / "table_correlation.tsv")
        write_tsv(williams, WILLIAMS_COLUMNS, tmp / "table_williams.tsv")
        write_tsv(cohort.rows, ["subject", "region", "scanner", "rater1", "rater2", *MODELS, *extra], tmp / "data.tsv")
        summary = summary_markdown(cohort, correlation, williams)
        (tmp / "summary.md").write_text(summary)
        figure = plot_scatter(cohort, tmp / "figure_scatter.png")
        (tmp / "evaluation.html").write_text(evaluation_html(cohort, correlation, williams, figure), encoding="utf-8")
    return {"cohort": cohort, "correlation": correlation, "williams": williams, "summary": summary}
