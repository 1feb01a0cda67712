"""Lesions kept out of the count: lesion Dice and PVS detections on lesions, on real MS patients.

    python benchmarks/lesions.py [--patients 19 26] [--work DIR]

Data: open_ms_data cross_sectional/MNI patients (Lesjak et al. 2017, CC BY; read from ../shared, never
copied): skull-stripped T1 and T2 on the FSL MNI152 1 mm grid with consensus lesion masks
(GOLD_STANDARD). No FLAIR is staged with them, so the FLAIR path is not measured here.

Per patient, two ``pvsquant run``s (reused when their folder exists):
  off: T1 + T2, atlas anatomy, lesion stage off (settings ``{"lesions": {"enabled": false}}``);
  on:  the same with the off run's anatomy.nii.gz as ``--labels`` (the same labels, no second atlas
       registration), lesion stage on (defaults).
Measured: Dice of lesions.nii.gz with the gold standard and the volumes found / true; the same for the
T2-alone rule (the stage called on the same labels); detections (pvs.tsv, world mm) whose voxel lies on a
gold-standard lesion, or within 2 mm of one, in each run; counts per region. Writes
benchmarks/results_lesions.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from pvsquant.io import load_volume, read_tsv
from pvsquant.labels import REGION_CODES
from pvsquant.pipeline.lesions import segment_lesions
from pvsquant.pipeline.regions import make_regions
from pvsquant.types import Anatomy, RigidTransform, Settings

HERE = Path(__file__).resolve().parent
MNI = HERE.parents[1] / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI"
T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
T2 = "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
GOLD = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
PVSQUANT = Path(sys.executable).parent / "pvsquant"


def run(args: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        subprocess.run([str(PVSQUANT), "run", *args], check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def ensure_runs(patient: str, work: Path, threads: int) -> tuple[Path, Path]:
    d = MNI / patient
    off, on = work / f"{patient}_off", work / f"{patient}_on"
    common = ["--t1", str(d / T1), "--t2", str(d / T2), "--subject", patient, "--threads", str(threads)]
    if not (off / "qc.json").is_file():
        settings = work / "lesions_off.json"
        settings.write_text(json.dumps({"lesions": {"enabled": False}}))
        run([*common, "--out", str(off), "--settings", str(settings), "--overwrite"], work / f"{patient}_off.log")
    if not (on / "qc.json").is_file():
        run([*common, "--labels", str(off / "anatomy.nii.gz"), "--out", str(on), "--overwrite"],
            work / f"{patient}_on.log")
    return off, on


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def on_grid(path: Path, reference: nib.Nifti1Image) -> np.ndarray:
    img = nib.load(str(path))
    if img.shape != reference.shape or not np.allclose(img.affine, reference.affine, atol=1e-3):
        raise SystemExit(f"{path} is not on the gold standard's grid")
    return np.asarray(img.dataobj) > 0


def detections_on(run_dir: Path, gold: np.ndarray, near: np.ndarray, affine: np.ndarray) -> dict[str, int]:
    rows = read_tsv(run_dir / "pvs.tsv", ("id", "region", "x", "y", "z", "peak", "size_vox"), "detections")
    xyz = np.array([[float(r["x"]), float(r["y"]), float(r["z"])] for r in rows]).reshape(-1, 3)
    vox = np.round(xyz @ np.linalg.inv(affine)[:3, :3].T + np.linalg.inv(affine)[:3, 3]).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(gold.shape)), axis=1)
    hit = np.zeros(len(rows), bool)
    hit_near = np.zeros(len(rows), bool)
    hit[inside] = gold[tuple(vox[inside].T)]
    hit_near[inside] = near[tuple(vox[inside].T)]
    out = {"detections": len(rows), "on_lesion": int(hit.sum()), "within_2mm": int(hit_near.sum())}
    for region in REGION_CODES:
        sel = np.array([r["region"] == region for r in rows], bool)
        out[f"on_lesion:{region}"] = int((hit & sel).sum())
        out[f"detections:{region}"] = int(sel.sum())
    return out


def t2_alone(off: Path, patient: str) -> tuple[np.ndarray, float]:
    """The stage's T2-alone rule on the off run's labels (no T1), timed."""
    qc = json.loads((off / "qc.json").read_text())
    t2 = load_volume(MNI / patient / T2, "T2")
    labels = load_volume(off / "anatomy.nii.gz", "label map", labels=True)
    anatomy = Anatomy(labels, "labels", np.asarray(qc["anatomy"]["superior_axis_t1_world"]))
    transform = RigidTransform(np.asarray(qc["registration"]["t2_to_t1_world"]), 0.0, 0.0)
    regions = make_regions(anatomy, transform, t2, Settings())
    start = time.perf_counter()
    lesions = segment_lesions(t2, anatomy, transform, regions, Settings())
    seconds = time.perf_counter() - start
    from pvsquant.pipeline.lesions import lesions_on_grid

    return lesions_on_grid(lesions, t2.affine, t2.shape).array > 0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", nargs="+", default=["19", "26"])
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "lesions")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for number in args.patients:
        patient = f"patient{int(number):02d}"
        off, on = ensure_runs(patient, args.work, args.threads)
        ref = nib.load(str(MNI / patient / GOLD))
        gold = np.asarray(ref.dataobj) > 0
        near = ndimage.distance_transform_edt(~gold) <= 2.0
        found = on_grid(on / "lesions.nii.gz", ref)
        alone, alone_s = t2_alone(off, patient)
        qc_on, qc_off = (json.loads((d / "qc.json").read_text()) for d in (on, off))
        components, n = ndimage.label(gold)
        sizes = np.bincount(components.ravel())[1:]
        big = [i + 1 for i in range(n) if sizes[i] >= 27]  # lesions that can hold a 3x3x3 block
        hit = sum(bool(found[components == i].any()) for i in big)
        rows.append({
            "patient": patient, "true_ml": gold.sum() / 1000, "found_ml": found.sum() / 1000,
            "dice": dice(found, gold), "dice_t2_alone": dice(alone, gold), "found_t2_alone_ml": alone.sum() / 1000,
            "lesions_ge_27vox_hit": f"{hit}/{len(big)}",
            "false_ml": (found & ~near).sum() / 1000,
            "stage_s": qc_on["timings_s"].get("lesions"), "t2_alone_s": round(alone_s, 2),
            "excluded_ml": qc_on["lesions"]["excluded_ml"], "method": qc_on["lesions"]["method"],
            "off": detections_on(off, gold, near, ref.affine), "on": detections_on(on, gold, near, ref.affine),
            "counts_off": {(c["region"], c["model"]): c["count"] for c in qc_off["counts"]},
            "counts_on": {(c["region"], c["model"]): c["count"] for c in qc_on["counts"]},
            "status": (qc_off["status"], qc_on["status"]),
            "run_s": (qc_off["timings_s"]["total"], qc_on["timings_s"]["total"]),
        })
    write_markdown(rows, args, time.perf_counter() - start)


def _f(v: object) -> str:
    return "n/a" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def write_markdown(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    machine = f"{os.cpu_count()} CPU cores shared ({platform.processor() or platform.machine()}), " \
              f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end"
    lines = [
        "# Lesions kept out of the count (open_ms_data MNI patients)", "",
        f"Machine: {machine}. Command: `python benchmarks/lesions.py --patients {' '.join(args.patients)}` "
        f"({seconds / 60:.0f} min with the runs).", "",
        "Data: open_ms_data cross_sectional/MNI (Lesjak et al. 2017, CC BY), skull-stripped T1 + T2 on the "
        "MNI152 1 mm grid, consensus lesion masks. No FLAIR with them: the FLAIR path is not measured.", "",
        "## Lesion segmentation", "",
        "| patient | true (ml) | found T2+T1 (ml) | Dice T2+T1 | found T2 alone (ml) | Dice T2 alone | "
        "found > 2 mm from any true lesion (ml) | true lesions >= 27 voxels touched | stage time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['patient']} | {r['true_ml']:.2f} | {r['found_ml']:.2f} | {r['dice']:.3f} | "
                     f"{r['found_t2_alone_ml']:.2f} | {r['dice_t2_alone']:.3f} | {r['false_ml']:.2f} | "
                     f"{r['lesions_ge_27vox_hit']} | {_f(r['stage_s'])} (T2 alone {r['t2_alone_s']:.1f}) |")
    lines += ["", "## Detections (pvs.tsv) on gold-standard lesions, stage off vs on", "",
              "| patient | detections off | on lesion off | within 2 mm off | detections on | on lesion on | "
              "within 2 mm on | excluded (ml) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, n = r["off"], r["on"]
        excl = ", ".join(f"{k} {v:.1f}" for k, v in r["excluded_ml"].items())
        lines.append(f"| {r['patient']} | {o['detections']} | {o['on_lesion']} | {o['within_2mm']} | "
                     f"{n['detections']} | {n['on_lesion']} | {n['within_2mm']} | {excl} |")
    lines += ["", "Per region (detections / on a lesion), off -> on:", ""]
    for r in rows:
        per = "; ".join(f"{reg}: {r['off'][f'detections:{reg}']}/{r['off'][f'on_lesion:{reg}']} -> "
                        f"{r['on'][f'detections:{reg}']}/{r['on'][f'on_lesion:{reg}']}" for reg in REGION_CODES)
        lines.append(f"- {r['patient']}: {per}")
    lines += ["", "Counts (GP-Unet / CNN / Frangi), off -> on:", ""]
    for r in rows:
        per = "; ".join(
            f"{reg}: " + "/".join(_f(r['counts_off'].get((reg, m))) for m in ("gpunet", "cnn", "frangi"))
            + " -> " + "/".join(_f(r['counts_on'].get((reg, m))) for m in ("gpunet", "cnn", "frangi"))
            for reg in REGION_CODES)
        lines.append(f"- {r['patient']}: {per} (QC status {r['status'][0]} / {r['status'][1]}, "
                     f"run {r['run_s'][0]:.0f} s / {r['run_s'][1]:.0f} s)")
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results_lesions.md").write_text(text)


if __name__ == "__main__":
    main()
