"""Cohort throughput of `pvsquant bids ... participant` with 1 and 2 local Dask workers.

    python benchmarks/cohort.py [--subjects 4] [--workers 1 2]

Builds a BIDS dataset of N subjects from the shipped example (the example and copies in other
header positions), runs the participant level once per worker count in a fresh output folder,
and reports wall time, scans per hour, the speed-up over 1 worker, and the peak memory of each
worker process (qc.json `peak_memory_mb` is the worker's maximum resident set so far). Then a
rerun on the finished output, which must skip every subject. Writes benchmarks/results_cohort.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.pipeline import machine  # noqa: E402
from pvsquant.cli import example_inputs  # noqa: E402
from tests.bids_dataset import add_image, rotated_copy, write_description  # noqa: E402


def make_dataset(root: Path, n: int) -> Path:
    example = example_inputs()
    write_description(root)
    for i in range(n):
        label = f"{i + 1:02d}"
        if i == 0:
            add_image(root, label, "T1w", example.t1)
            add_image(root, label, "T2w", example.t2)
            continue
        tmp = root / f"tmp{i}"
        tmp.mkdir()
        angle, shift = 3.0 * i, (2.0 * i, -1.5 * i, i)
        add_image(root, label, "T1w", rotated_copy(example.t1, tmp / "t1.nii.gz", angle, shift))
        add_image(root, label, "T2w", rotated_copy(example.t2, tmp / "t2.nii.gz", angle, shift))
        shutil.rmtree(tmp)
    return root


def run_level(bids: Path, out: Path, workers: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pvsquant.cli", "bids", str(bids), str(out), "participant",
                           "--workers", str(workers), "--no-progress"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"participant level failed:\n{proc.stdout}\n{proc.stderr}")
    peaks: dict[str, float] = {}
    stages: dict[str, list[float]] = {}
    for qc_file in sorted((out / "sourcedata" / "pvsquant_runs").glob("*/qc.json")):
        qc = json.loads(qc_file.read_text())
        worker = (out / "logs" / f"{qc_file.parent.name}.log").read_text().split("process ")[1].split()[0]
        peaks[worker] = max(peaks.get(worker, 0.0), qc["peak_memory_mb"])
        for stage, seconds in qc["timings_s"].items():
            stages.setdefault(stage, []).append(seconds)
    return {"wall_s": round(wall, 1), "summary": proc.stdout.strip().splitlines()[0], "peak_mb": peaks,
            "stages": {k: round(sum(v) / len(v), 1) for k, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bids = make_dataset(Path(tmp) / "bids", args.subjects)
        for workers in args.workers:
            out = Path(tmp) / f"out{workers}"
            results[workers] = run_level(bids, out, workers)
            print(workers, "worker(s):", results[workers], flush=True)
        start = time.perf_counter()
        rerun = subprocess.run([sys.executable, "-m", "pvsquant.cli", "bids", str(bids),
                                str(Path(tmp) / f"out{args.workers[-1]}"), "participant", "--no-progress"],
                               capture_output=True, text=True)
        rerun_s = round(time.perf_counter() - start, 1)
    base = results[args.workers[0]]["wall_s"]
    lines = [
        "# Cohort throughput: `pvsquant bids ... participant` on local Dask workers",
        "",
        f"Machine: {machine()}, {os.cpu_count()} cores. Command: `python benchmarks/cohort.py --subjects "
        f"{args.subjects} --workers {' '.join(map(str, args.workers))}`. Dataset: the shipped example and "
        f"{args.subjects - 1} copies in other header positions; one thread per worker.",
        "",
        "| workers | wall (s) | s per scan | scans per hour | speed-up vs 1 worker | peak memory per worker (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for workers, r in results.items():
        per_scan = r["wall_s"] / args.subjects
        peaks = ", ".join(f"{v:.0f}" for v in r["peak_mb"].values())
        lines.append(f"| {workers} | {r['wall_s']} | {per_scan:.1f} | {3600 / per_scan:.0f} | "
                     f"{base / r['wall_s']:.2f} | {peaks} |")
    lines += ["", "Mean stage times per subject (s), from qc.json:", "",
              "| workers | " + " | ".join(results[args.workers[0]]["stages"]) + " |",
              "|---|" + "---|" * len(results[args.workers[0]]["stages"])]
    for workers, r in results.items():
        lines.append(f"| {workers} | " + " | ".join(str(v) for v in r["stages"].values()) + " |")
    lines += ["", f"Rerun on the finished output: {rerun.stdout.strip().splitlines()[0]} ({rerun_s} s).", ""]
    text = "\n".join(lines)
    print(text)
    (HERE / "results_cohort.md").write_text(text)


if __name__ == "__main__":
    main()
