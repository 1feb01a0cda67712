"""group_report.html: a cohort at a glance (primary count per region and its distribution, QC
summary, the subjects flagged or failed), self-contained like report.html."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_file
from ..labels import REGION_CODES, REGION_TITLES
from .evaluate import html_table


def plot_distributions(rows: list[dict[str, Any]]) -> str:
    """Strip-and-box plot of the primary count per region (QC-failed subjects as red crosses); a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGION_CODES), figsize=(3.2 * len(REGION_CODES), 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, region in zip(axes[0], REGION_CODES, strict=True):
        primary = [r for r in rows if r["region"] == region and r["primary"] and r["count"] is not None]
        kept = np.array([float(r["count"]) for r in primary if r["qc_status"] != "fail"])
        failed = np.array([float(r["count"]) for r in primary if r["qc_status"] == "fail"])
        if kept.size:
            ax.boxplot(kept, widths=0.5, showfliers=False)
            ax.scatter(1 + rng.uniform(-0.15, 0.15, kept.size), kept, s=14, alpha=0.7, color="#1565c0",
                       label="pass / warn")
        if failed.size:
            ax.scatter(1 + rng.uniform(-0.15, 0.15, failed.size), failed, s=22, marker="x", color="#c62828",
                       label="QC fail (left out)")
        model = primary[0]["model"] if primary else "n/a"
        ax.set_title(f"{REGION_TITLES[region]}\n({model}, n={kept.size})", fontsize=10)
        ax.set_xticks([])
        ax.set_ylabel("PVS count")
        if failed.size:
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# Counted slice thicknesses further apart than this make a cohort's counts incomparable: 3.3 vs 4.0 mm
# halved the basal-ganglia count of one patient (benchmarks/results_counting.md).
SLICE_MISMATCH_MM = 0.25


def mixed_slices_message(rows: list[dict[str, Any]]) -> str | None:
    """A warning when the subjects' T2s were counted on slices of different thickness, naming the option
    that matches them; None when they agree (or qc.json does not say)."""
    found = sorted({float(r["t2_slice_mm"]) for r in rows if r.get("t2_slice_mm") is not None})
    if len(found) < 2 or found[-1] - found[0] <= SLICE_MISMATCH_MM:
        return None
    return (f"the T2s were counted on slices of {found[0]:g} to {found[-1]:g} mm: PVS counts depend on the "
            "slice thickness, so these subjects are not comparable as they are; run the participant level "
            f"again with --match-slice-thickness {found[-1]:g} or auto (column t2_slice_mm of group_counts.tsv)")


def write_group_report(rows: list[dict[str, Any]], failed: list[dict[str, Any]], n_subjects: int,
                       path: Path) -> Path:
    """The cohort page, written atomically."""
    from ..reporting.report import STYLE

    status: dict[tuple[str, str], str] = {(r["subject"], r["session"]): r["qc_status"] for r in rows}
    tally = {s: sum(v == s for v in status.values()) for s in ("pass", "warn", "fail")}
    errors = [f for f in failed if f["reason"] == "error"]
    summary = [{"status": s, "subjects": tally[s]} for s in ("pass", "warn", "fail")]
    summary.append({"status": "error (no result)", "subjects": len(errors)})
    table_rows = []
    for (subject, session), qc_status in sorted(status.items()):
        counts = {r["region"]: r["count"] for r in rows
                  if (r["subject"], r["session"]) == (subject, session) and r["primary"]}
        table_rows.append({"subject": subject, "session": session, "qc": qc_status,
                           **{REGION_TITLES[k]: counts.get(k) for k in REGION_CODES}})
    flagged = [*failed, *({"subject": s, "session": ses, "reason": "qc warn", "detail": "see the subject's report"}
                          for (s, ses), st in sorted(status.items()) if st == "warn")]
    banner = ""
    mixed = mixed_slices_message(rows)
    if mixed:
        banner += f"<div class='banner warn'>Mixed protocols: {html.escape(mixed)}</div>"
    if failed:
        names = ", ".join(f["subject"] + (" " + f["session"] if f["session"] else "") for f in failed)
        banner += (f"<div class='banner failed'>{len(failed)} subject(s) left out of the group statistics: "
                  f"{html.escape(names)}</div>")
    page = "\n".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>PVS cohort report</title>"
        f"<style>{STYLE}</style></head><body><h1>PVS cohort report</h1>",
        f"<p>{n_subjects} subject(s) selected; {len(status)} with results. Counts are each region's primary "
        "method (see the model card); subjects whose quality checks failed are left out of the statistics.</p>",
        banner,
        "<h2>Quality</h2>",
        html_table(summary, ("status", "subjects"), "qc-summary"),
        "<h2>Counts per region</h2>",
        f"<figure><img alt='count distributions' src='{plot_distributions(rows)}'><figcaption>Primary PVS count "
        "per subject and region; boxes: quartiles of the subjects kept.</figcaption></figure>",
        "<h2>Subjects flagged or failed</h2>",
        html_table(flagged, ("subject", "session", "reason", "detail"), "flagged") if flagged
        else "<p>None.</p>",
        "<h2>All subjects</h2>",
        html_table(table_rows, ["subject", "session", "qc", *[REGION_TITLES[k] for k in REGION_CODES]], "subjects"),
        "</body></html>",
    ])
    with atomic_file(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
