"""T2-only runs against T1+T2 runs on the shared clinical pairs: regions and counts.

    python benchmarks/t2_only.py

For each shared clinical pair of open_ms_data (longitudinal, MS patients): ``pvsquant run`` with
the T1 and T2 (reused from benchmarks/_work/quality/clean_<scan> when the quality-gate benchmark
has run) and with the T2 alone. Per region: Dice of the two regions (on the T2 grid) and the
counts of each method, with their difference. Writes benchmarks/results_t2_only.md and .json.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pvsquant.io import read_tsv
from pvsquant.labels import METHODS, REGION_CODES
from pvsquant.pipeline.run import run_subject
from pvsquant.types import Settings, SubjectInputs

HERE = Path(__file__).resolve().parent
RAW = HERE.parents[1] / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw"
SCANS = [("patient01", "study1"), ("patient01", "study2"), ("patient12", "study1")]
WORK = HERE / "_work"


def counts_of(run: Path) -> dict[tuple[str, str], float]:
    rows = read_tsv(run / "counts.tsv", ("region", "model", "count"), "counts table")
    return {(r["region"], r["model"]): float("nan") if r["count"] == "n/a" else float(r["count"]) for r in rows}


def ensure(out: Path, inputs: SubjectInputs) -> Path:
    if not (out / "qc.json").is_file():
        run_subject(inputs, out, Settings(), overwrite=True)
    return out


def main() -> None:
    start = time.perf_counter()
    rows = []
    for patient, study in SCANS:
        scan = f"{patient}_{study}"
        t1, t2 = RAW / patient / f"{study}_T1W.nii.gz", RAW / patient / f"{study}_T2W.nii.gz"
        reused = WORK / "quality" / f"clean_{scan}"
        both = reused if (reused / "qc.json").is_file() else ensure(WORK / "t2only" / f"{scan}_t1t2",
                                                                     SubjectInputs(t1, t2, subject_id=scan))
        alone = ensure(WORK / "t2only" / f"{scan}_t2", SubjectInputs(None, t2, subject_id=scan))
        a = np.asarray(nib.load(str(both / "regions.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(alone / "regions.nii.gz")).dataobj)
        ca, cb = counts_of(both), counts_of(alone)
        qa, qb = (json.loads((d / "qc.json").read_text()) for d in (both, alone))
        for region, code in REGION_CODES.items():
            x, y = a == code, b == code
            dice = 2 * float((x & y).sum()) / max(float(x.sum() + y.sum()), 1.0)
            rows.append({"scan": scan, "region": region, "dice": round(dice, 3),
                         "volume_t1t2_ml": qa["regions"]["volumes_ml"][region],
                         "volume_t2_ml": qb["regions"]["volumes_ml"][region],
                         **{f"{m}_t1t2": ca[(region, m)] for m in METHODS},
                         **{f"{m}_t2": cb[(region, m)] for m in METHODS},
                         "status_t1t2": qa["status"], "status_t2": qb["status"]})
        print(f"[{time.perf_counter() - start:5.0f} s] {scan}", flush=True)

    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    lines = ["# T2-only against T1+T2 on the shared clinical pairs", "",
             f"Machine: 2 CPU cores ({machine}). Command: `python benchmarks/t2_only.py` "
             f"({time.perf_counter() - start:.0f} s in this call; runs cached in benchmarks/_work).", "",
             "Regions: Dice of the T2-only region with the T1+T2 region on the T2 grid. Counts: T1+T2 -> "
             "T2-only per method.", "",
             "| scan | region | Dice | volume ml (T1+T2 -> T2) | " + " | ".join(METHODS) + " |",
             "|---|---|---|---|" + "---|" * len(METHODS)]
    for r in rows:
        lines.append(f"| {r['scan']} | {r['region']} | {r['dice']} | {r['volume_t1t2_ml']:.1f} -> "
                     f"{r['volume_t2_ml']:.1f} | " + " | ".join(f"{r[m + '_t1t2']:.1f} -> {r[m + '_t2']:.1f}"
                                                             for m in METHODS) + " |")
    header = " | ".join(f"{m} mean abs. difference (% of the T1+T2 total)" for m in METHODS)
    lines += ["", "Mean over the scans:", "", f"| region | Dice | {header} |", "|---|---|" + "---|" * len(METHODS)]
    for region in REGION_CODES:
        sub = [r for r in rows if r["region"] == region]
        cells = []
        for m in METHODS:
            diff = np.array([abs(r[m + "_t2"] - r[m + "_t1t2"]) for r in sub])
            ref = np.array([r[m + "_t1t2"] for r in sub])
            share = f"{100 * np.nansum(diff) / np.nansum(ref):.0f}%" if np.nansum(ref) > 0 else "n/a"
            cells.append(f"{np.nanmean(diff):.1f} ({share})")
        lines.append(f"| {region} | {np.mean([r['dice'] for r in sub]):.3f} | " + " | ".join(cells) + " |")
    lines += ["", "QC status (T1+T2 / T2-only): " + ", ".join(
        f"{r['scan']} {r['status_t1t2']} / {r['status_t2']}" for r in rows if r["region"] == "centrum_semiovale")]
    text = "\n".join(lines) + "\n"
    (HERE / "results_t2_only.md").write_text(text)
    (HERE / "results_t2_only.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
