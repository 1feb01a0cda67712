"""Do the quality gates catch broken scans? Clean shared scans must pass, broken versions must not.

    python benchmarks/quality_gates.py

Clean: every shared clinical T1/T2 pair of open_ms_data (longitudinal, MS patients), run as
``pvsquant run`` does (atlas anatomy). Broken versions of patient01 study1, each a realistic
failure (the anatomy of the clean run is reused where the T1 is untouched, as ``--labels``):

- ``header_rotated``: the T2's header rotated by 12 degrees and shifted by 20 mm;
- ``swapped``: the T2 given as the T1 and the T1 as the T2;
- ``t1_is_flair``: the patient's FLAIR given as the T1;
- ``motion``: the T2 with motion ghosting (40% of the phase-encoding lines of every slice moved
  by 2-6 mm, i.e. a linear phase in k-space);
- ``cut_above_ventricles``: the T2 cut 5 mm above the top of the caudate (no centrum semiovale);
- ``noise``: Rician noise with sigma 25% of the T2's brain median.

Writes benchmarks/results_quality_gates.md and .json; the broken images and runs go to
benchmarks/_work/quality/ (delete it to recompute).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pvsquant.pipeline.run import run_subject
from pvsquant.types import Settings, SubjectInputs

HERE = Path(__file__).resolve().parent
RAW = HERE.parents[1] / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw"
SCANS = [("patient01", "study1"), ("patient01", "study2"), ("patient12", "study1")]
WORK = HERE / "_work" / "quality"


def save_like(img: nib.Nifti1Image, data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    out = nib.Nifti1Image(data.astype(np.float32), img.affine if affine is None else affine)
    nib.save(out, str(path))
    return path


def rotated_header(t2: Path, out: Path, degrees: float = 12.0, shift_mm: float = 20.0) -> Path:
    img = nib.load(str(t2))
    a = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:3, :3] = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    centre = img.affine @ np.r_[(np.asarray(img.shape) - 1) / 2, 1]
    move = np.eye(4)
    move[:3, 3] = centre[:3]
    back = np.eye(4)
    back[:3, 3] = -centre[:3]
    shift = np.eye(4)
    shift[:3, 3] = [shift_mm, 0, 0]
    return save_like(img, np.asarray(img.dataobj), out, shift @ move @ rot @ back @ img.affine)


def motion_ghosts(t2: Path, out: Path, rng: np.random.Generator, fraction: float = 0.4) -> Path:
    img = nib.load(str(t2))
    data = np.asarray(img.dataobj, dtype=np.float64)
    zooms = np.asarray(img.header.get_zooms()[:3])
    slice_axis = int(np.argmax(zooms))
    inplane = [a for a in range(3) if a != slice_axis]
    readout, phase = inplane[0], inplane[1]
    k = np.fft.fftshift(np.fft.fft2(data, axes=inplane), axes=inplane)
    n = data.shape[phase]
    moved = rng.uniform(size=n) < fraction
    shifts_mm = rng.uniform(2.0, 6.0, size=n) * rng.choice([-1, 1], size=n)
    freq = np.fft.fftshift(np.fft.fftfreq(data.shape[readout], d=zooms[readout]))
    for line in np.flatnonzero(moved):
        ramp = np.exp(-2j * np.pi * freq * shifts_mm[line])
        index = [slice(None)] * 3
        index[phase] = line
        shape = [1, 1, 1]
        shape[readout] = len(freq)
        k[tuple(index)] *= ramp.reshape([s for i, s in enumerate(shape) if i != phase])
    ghosted = np.abs(np.fft.ifft2(np.fft.ifftshift(k, axes=inplane), axes=inplane))
    return save_like(img, ghosted, out)


def cut_above(t2: Path, out: Path, height_mm: float) -> Path:
    img = nib.load(str(t2))
    data = np.asarray(img.dataobj)
    slice_axis = int(np.argmax(img.header.get_zooms()[:3]))
    keep = []
    for k in range(data.shape[slice_axis]):
        centre = (np.asarray(data.shape) - 1) / 2
        centre[slice_axis] = k
        keep.append(float((img.affine @ np.r_[centre, 1])[2]) < height_mm)
    index = np.flatnonzero(keep)
    sl = [slice(None)] * 3
    sl[slice_axis] = slice(int(index.min()), int(index.max()) + 1)
    start = np.zeros(3)
    start[slice_axis] = index.min()
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.r_[start, 1])[:3]
    return save_like(img, data[tuple(sl)], out, affine)


def noisy(t2: Path, out: Path, brain_median: float, rng: np.random.Generator, level: float = 0.25) -> Path:
    img = nib.load(str(t2))
    data = np.asarray(img.dataobj, dtype=np.float64)
    sigma = level * brain_median
    return save_like(img, np.hypot(data + rng.normal(0, sigma, data.shape), rng.normal(0, sigma, data.shape)), out)


def run(name: str, t1: Path, t2: Path, labels: Path | None = None) -> dict:
    out = WORK / name
    if not (out / "qc.json").is_file():
        run_subject(SubjectInputs(t1, t2, labels=labels, subject_id=name), out, Settings(), overwrite=True)
    qc = json.loads((out / "qc.json").read_text())
    bad = [c for c in qc["checks"] if c["status"] != "pass"]
    return {"case": name, "status": qc["status"], "checks": qc["checks"],
            "reasons": [f"{c['name']} {c['value']} ({c['status']})" for c in bad]
            + [f"{f['code']} ({f['severity']})" for f in qc["flags"] if f["code"] not in {c["name"] for c in bad}]}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for patient, study in SCANS:
        t1, t2 = RAW / patient / f"{study}_T1W.nii.gz", RAW / patient / f"{study}_T2W.nii.gz"
        rows.append({**run(f"clean_{patient}_{study}", t1, t2), "expected": "pass"})
        print(f"[{time.perf_counter() - start:5.0f} s] {rows[-1]['case']}: {rows[-1]['status']}", flush=True)
    base = WORK / "clean_patient01_study1"
    t1, t2 = RAW / "patient01" / "study1_T1W.nii.gz", RAW / "patient01" / "study1_T2W.nii.gz"
    anatomy = base / "anatomy.nii.gz"
    qc = json.loads((base / "qc.json").read_text())
    rng = np.random.default_rng(2026)
    t2_img = nib.load(str(t2))
    regions = np.asarray(nib.load(str(base / "regions.nii.gz")).dataobj)
    brain_median = float(np.median(np.asarray(t2_img.dataobj)[regions > 0]))
    broken = [
        ("header_rotated", lambda: (t1, rotated_header(t2, WORK / "t2_rotated.nii.gz"), anatomy)),
        ("swapped", lambda: (t2, t1, None)),
        ("t1_is_flair", lambda: (RAW / "patient01" / "study1_FLAIR.nii.gz", t2, None)),
        ("motion", lambda: (t1, motion_ghosts(t2, WORK / "t2_motion.nii.gz", rng), anatomy)),
        ("cut_above_ventricles", lambda: (t1, cut_above(t2, WORK / "t2_cut.nii.gz", qc["regions"]["caudate_top_mm"]
                                                        + 5.0), anatomy)),
        ("noise", lambda: (t1, noisy(t2, WORK / "t2_noise.nii.gz", brain_median, rng), anatomy)),
    ]
    for name, make in broken:
        a, b, labels = make()
        try:
            rows.append({**run(name, a, b, labels), "expected": "warn or fail"})
        except Exception as exc:  # a clear error is also a catch
            rows.append({"case": name, "status": f"error: {type(exc).__name__}", "checks": [],
                         "reasons": [str(exc)[:200]], "expected": "warn or fail"})
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: {rows[-1]['status']}", flush=True)

    ok = [r["status"] == "pass" if r["expected"] == "pass" else r["status"] != "pass" for r in rows]
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    lines = ["# Quality gates on clean and broken scans", "",
             f"Machine: 2 CPU cores ({machine}). Command: `python benchmarks/quality_gates.py` "
             f"({time.perf_counter() - start:.0f} s in all, runs cached in benchmarks/_work/quality).", "",
             f"{sum(ok)} of {len(rows)} cases got the expected status.", "",
             "| case | expected | status | why (checks not passed: value) |", "|---|---|---|---|"]
    for r, good in zip(rows, ok, strict=True):
        lines.append(f"| {r['case']} | {r['expected']} | {'' if good else '**'}{r['status']}{'' if good else '**'} | "
                     f"{'; '.join(r['reasons']) or '-'} |")
    names = sorted({c["name"] for r in rows for c in r["checks"]})
    lines += ["", "Measured values (pass range in Settings.qc_limits):", "",
              "| check | " + " | ".join(r["case"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name in names:
        values = []
        for r in rows:
            c = next((c for c in r["checks"] if c["name"] == name), None)
            values.append("-" if c is None or c["value"] is None else f"{c['value']:.3g}"
                          + ("" if c["status"] == "pass" else f" ({c['status']})"))
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    text = "\n".join(lines) + "\n"
    (HERE / "results_quality_gates.md").write_text(text)
    (HERE / "results_quality_gates.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
