"""Does counting work on real clinical scans? Inject known numbers of synthetic PVS.

    python benchmarks/counting.py [--levels 0 5 10 20 30 40] [--repeats 2] [--models DIR]

For each real clinical T1/T2 pair of open_ms_data in ../shared (MS patients, 3.3-4 mm
slices; never used in training, which is synthetic only):

1. Registration, anatomy and regions once, as ``pvsquant run`` does.
2. Clean scan: ROI crops and counts of every model (GP-Unet, CNN, Frangi).
3. For each level N and repeat: N synthetic PVS injected into *each* region of the T2 at
   its native resolution: capsules with the shape distribution of ``PVS_SHAPES``, centres
   at least 2.5 mm apart inside the region, 1-3 mm wide (as the training data's
   enlarged PVS), intensity 0.85-1.0 x the scan's CSF level (90th
   percentile of the T2 in the lateral ventricles), partial volume from 2 x 2 x 8 sub-samples
   per voxel, i.e. over the real slice thickness. Then crops and counts again.
4. Per region and model: Pearson r between N and the count's increase over the clean scan,
   the slope of that increase on N, MAE = mean |increase - N|. For the GP-Unet, detection
   recall and precision within 2.5 mm: a *new* detection (none in the clean scan within 2.5 mm)
   matched one-to-one to an injected PVS whose axis passes within 2.5 mm of its peak.

5. Placement on the clean scans (no injection): per region, the fraction of GP-Unet detections
   whose peak lies outside the region, and the edge enrichment: the fraction of detections
   within 1.5 mm of the region's edge (inside or out) divided by the fraction of the region's
   volume within 1.5 mm of its edge (distances on the 0.5 x 0.5 x 0.8 mm crop grid). 1 is
   chance; a map that traces the borders gives 3 or more. Detections are only listed where
   their peak lies in the region (since 2026-12-06), so the outside fraction is 0 by
   construction; what the map still puts outside is the rim mass: the fraction of the map's
   positive mass over the region grown by 1 mm (where the count is summed) that lies in that
   1 mm rim outside the region.
6. Scan-rescan: patient01 study1 vs study2 (one patient, two protocols): |difference| / mean of
   the clean counts per region and model; on the native slices (4.0 and 3.3 mm), and with the
   thinner scan's slices matched to the thicker's (``Settings.match_slice_thickness_mm``, what
   a cohort of mixed protocols is run with).

The preparation of each scan (registration, anatomy, regions) is cached in
benchmarks/_work/ (delete it to recompute). Writes benchmarks/results_counting.md,
benchmarks/results_counting.json, and figures in docs/.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from pvsquant.demo import inject_pvs, injection_landmarks
from pvsquant.learning.training import count_agreement
from pvsquant.learning.trainingdata import line_density, peak_partial_volume
from pvsquant.pipeline.counting import count_region, load_models
from pvsquant.pipeline.roi import count_mask, crop_regions
from pvsquant.pipeline.run import StageTimer, prepare_subject
from pvsquant.pipeline.slices import match_slice_thickness, slice_thickness_of
from pvsquant.reporting.figures import plot_attention
from pvsquant.types import REGION_CODES, Settings, SubjectInputs, Volume

HERE = Path(__file__).resolve().parent
RAW = HERE.parents[1] / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw"
SCANS = [("patient01", "study1"), ("patient01", "study2"), ("patient12", "study1")]
MATCH_MM = 2.5
VISIBILITY_BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01))
"""Bins of an injected PVS's peak partial-volume fraction for the recall by visibility."""
VISIBLE = 0.3
"""The peak partial-volume fraction from which an injected PVS counts as visible (the synthetic
validation's lower level, ``trainingdata.VISIBILITY_LEVELS``) for the slope against visible PVS."""


EDGE_MM = 1.5
WORK = HERE / "_work"


def prepare(t1_path: Path, t2_path: Path, settings: Settings) -> dict:
    """Registration, anatomy and regions as pvsquant run does, and the injection landmarks
    (cached in benchmarks/_work: the preparation does not depend on the networks)."""
    import pickle

    cached = WORK / f"prepared_{t2_path.parent.name}_{t2_path.name.split('.')[0]}.pkl"
    if cached.is_file():
        with open(cached, "rb") as f:
            return pickle.load(f)
    prep = prepare_subject(SubjectInputs(t1_path, t2_path), settings, StageTimer())
    csf, centre = injection_landmarks(prep)
    case = {"t2": prep.t2, "regions": prep.regions, "csf": csf, "ventricle_centre": centre}
    WORK.mkdir(parents=True, exist_ok=True)
    with open(cached, "wb") as f:
        pickle.dump(case, f)
    return case


def placement(crop, res) -> dict:
    """Where a region's detections lie: outside fraction, edge enrichment, and the map's positive
    mass over the counting mask and in its 1 mm rim outside the region (see the docstring)."""
    inside, detections = crop.inside, res.detections
    spacing = crop.image.spacing_mm
    attention = np.clip(res.attention.array, 0, None)  # positive mass: a share of a signed sum near 0 is noise
    counted = count_mask(inside, spacing)
    total = float(attention[counted].sum())
    rim = float(attention[counted & ~inside].sum())
    depth_in = ndimage.distance_transform_edt(inside, sampling=spacing)  # inside voxels: distance to outside
    depth_out = ndimage.distance_transform_edt(~inside, sampling=spacing)  # outside voxels: distance to inside
    edge_volume = float((depth_in[inside] <= EDGE_MM).mean()) if inside.any() else float("nan")
    if not detections:
        return {"detections": 0, "outside": 0, "near_edge": 0, "edge_volume_fraction": round(edge_volume, 3),
                "rim_mass": rim, "mass": total}
    inv = np.linalg.inv(crop.image.affine)
    vox = np.round(np.array([inv[:3, :3] @ np.asarray(d.xyz) + inv[:3, 3] for d in detections])).astype(int)
    vox = np.clip(vox, 0, np.asarray(inside.shape) - 1)
    at = tuple(vox.T)
    outside = ~inside[at]
    distance = np.where(inside[at], depth_in[at], depth_out[at])
    return {"detections": len(detections), "outside": int(outside.sum()), "near_edge": int((distance <= EDGE_MM).sum()),
            "edge_volume_fraction": round(edge_volume, 3), "rim_mass": rim, "mass": total}


def inject(case: dict, n: int, rng: np.random.Generator) -> tuple[Volume, dict[str, list]]:
    """The T2 with ``n`` PVS in every region, and the injected tubes per region."""
    return inject_pvs(case["t2"], case["regions"], {r: n for r in REGION_CODES}, case["csf"],
                      case["ventricle_centre"], rng)


def count_all(t2: Volume, case: dict, models: dict, settings: Settings, regions: tuple[str, ...] = ()) -> dict:
    crops = crop_regions(t2, case["regions"], settings)
    crops = {name: crop for name, crop in crops.items() if not regions or name in regions}
    return {name: count_region(crop, models, settings.target_spacing_mm, settings.detection_level,
                               settings.detection_min_mass, settings.frangi, workers=settings.threads,
                               prominence=settings.detection_prominence.get(name))
            for name, crop in crops.items()}, crops


def relative_differences(a: dict, b: dict) -> dict:
    """Per region and model: |a - b| / mean(a, b)."""
    return {region: {m: round(abs(a[region][m] - b[region][m]) / max((a[region][m] + b[region][m]) / 2, 1e-6), 3)
                     for m in ("gpunet", "cnn", "frangi")} for region in a}


def segment_distance(points: np.ndarray, tube) -> np.ndarray:
    a, b = tube.ends
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def not_near(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The detections of ``new`` (world mm, n x 3) with none of ``old`` within MATCH_MM: those the
    injection added, not the clean scan's own."""
    if len(old) and len(new):
        return new[np.linalg.norm(new[:, None] - old[None], axis=-1).min(axis=1) > MATCH_MM]
    return new


def match(new: np.ndarray, tubes: list) -> list[int]:
    """One-to-one greedy matches between detections (peak, world mm) and injected PVS: a
    detection matches a PVS when its peak lies within MATCH_MM of the PVS's axis. Returns the
    indices of the matched PVS."""
    if len(new) == 0 or len(tubes) == 0:
        return []
    d = np.stack([segment_distance(new, t) for t in tubes], axis=1)
    matched = []
    while d.size and d.min() <= MATCH_MM:
        i, j = np.unravel_index(d.argmin(), d.shape)
        matched.append(int(j))
        d[i, :] = np.inf
        d[:, j] = np.inf
    return matched


def labelled_mass(tubes: list, crop, counted) -> float:
    """What the networks were trained to count for these PVS: each a unit mass along its axis,
    blurred as the training labels are, summed over the counting mask (a PVS that leaves the
    mask counts by the fraction inside; ``trainingdata.line_density``)."""
    if not tubes or counted.counting_mask is None:
        return 0.0
    density = line_density(tubes, crop.image.affine, crop.image.shape)
    return float(density[counted.counting_mask > 0].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 5, 10, 20, 30, 40])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", type=Path)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--scans", type=int, default=len(SCANS), help="use only the first N scans (quick check)")
    parser.add_argument("--regions", nargs="+", choices=list(REGION_CODES), default=[],
                        help="only these regions (quick check; default all)")
    parser.add_argument("--out", type=Path, help="write results and figures here instead of benchmarks/ and docs/ "
                        "(quick checks that must not replace the committed results)")
    args = parser.parse_args()
    results_dir, figures_dir = (args.out, args.out) if args.out else (HERE, HERE.parent / "docs")
    results_dir.mkdir(parents=True, exist_ok=True)
    regions = tuple(args.regions)
    settings = Settings(models_dir=str(args.models) if args.models else None)
    models = load_models(settings.models_dir, settings.threads)
    rows, clean_counts, clean_placement, timings, cases = [], {}, {}, [], {}
    start = time.perf_counter()
    for patient, study in SCANS[: args.scans]:
        scan = f"{patient}_{study}"
        t1p, t2p = RAW / patient / f"{study}_T1W.nii.gz", RAW / patient / f"{study}_T2W.nii.gz"
        if not t2p.exists():
            print(f"skipping {scan}: {t2p} not found")
            continue
        print(f"[{time.perf_counter() - start:6.0f} s] {scan}: registration, anatomy, regions", flush=True)
        case = prepare(t1p, t2p, settings)
        cases[scan] = case
        clean, crops = count_all(case["t2"], case, models, settings, regions)
        clean_counts[scan] = {r: res.counts for r, res in clean.items()}
        clean_placement[scan] = {r: placement(crops[r], res) for r, res in clean.items()}
        timings += [{"region": r, **res.seconds} for r, res in clean.items()]
        plot_attention(crops, clean, figures_dir / f"counting_clean_{scan}.png")
        rng = np.random.default_rng([args.seed, SCANS.index((patient, study))])
        for n in args.levels:
            for rep in range(args.repeats if n > 0 else 1):
                injected, centres = inject(case, n, rng)
                res, crops = count_all(injected, case, models, settings, regions)
                if n == max(args.levels) and rep == 0:
                    plot_attention(crops, res, figures_dir / f"counting_injected{n}_{scan}.png")
                for region in res:
                    old = np.array([d.xyz for d in clean[region].detections]).reshape(-1, 3)
                    new = not_near(np.array([d.xyz for d in res[region].detections]).reshape(-1, 3), old)
                    matched = set(match(new, centres[region]))
                    seen = [round(peak_partial_volume(t, case["t2"].affine, case["t2"].shape), 3)
                            for t in centres[region]]
                    rows.append({"scan": scan, "region": region, "n": len(centres[region]), "level": n,
                                 "repeat": rep, "new_detections": len(new), "matched": len(matched),
                                 "labelled": round(labelled_mass(centres[region], crops[region], res[region]), 3),
                                 "visibility": seen, "found": [i in matched for i in range(len(seen))],
                                 **{f"delta_{m}": res[region].counts[m] - clean[region].counts[m]
                                    for m in ("gpunet", "cnn", "frangi")}})
                print(f"[{time.perf_counter() - start:6.0f} s] {scan} N={n} rep {rep}: " + ", ".join(
                    f"{r} +{rows[-len(res) + i]['delta_gpunet']:.1f}" for i, r in enumerate(res)), flush=True)

    summary = {}
    for region in REGION_CODES:
        sub = [r for r in rows if r["region"] == region]
        if not sub:
            continue
        n = [r["n"] for r in sub]
        n_visible = [sum(v >= VISIBLE for v in r.get("visibility", [])) for r in sub]
        labelled = [r.get("labelled", float("nan")) for r in sub]
        out = {"samples": len(sub),
               "labelled_per_pvs": round(sum(labelled) / sum(n), 3) if sum(n) else None}
        for m in ("gpunet", "cnn", "frangi"):
            d = [r[f"delta_{m}"] for r in sub]
            slope = float(np.polyfit(n, d, 1)[0]) if np.std(n) > 0 else float("nan")
            slope_visible = float(np.polyfit(n_visible, d, 1)[0]) if np.std(n_visible) > 0 else float("nan")
            slope_labelled = (float(np.polyfit(labelled, d, 1)[0]) if np.all(np.isfinite(labelled))
                              and np.std(labelled) > 0 else float("nan"))
            out[m] = {"pearson_r": round(count_agreement(d, n)[0], 3), "slope": round(slope, 3),
                      "mae": round(float(np.mean(np.abs(np.asarray(d) - np.asarray(n)))), 2),
                      "slope_visible": round(slope_visible, 3), "slope_labelled": round(slope_labelled, 3)}
        injected = sum(n)
        new = sum(r["new_detections"] for r in sub)
        hits = sum(r["matched"] for r in sub)
        out["gpunet_detection"] = {"recall": round(hits / injected, 3) if injected else None,
                                   "precision": round(hits / new, 3) if new else None,
                                   "injected": injected, "new_detections": new}
        seen = np.array([v for r in sub for v in r.get("visibility", [])])
        found = np.array([f for r in sub for f in r.get("found", [])], bool)
        out["recall_by_visibility"] = {
            f"{lo}-{hi}": {"injected": int(((seen >= lo) & (seen < hi)).sum()),
                           "recall": round(float(found[(seen >= lo) & (seen < hi)].mean()), 3)
                           if ((seen >= lo) & (seen < hi)).any() else None}
            for lo, hi in VISIBILITY_BINS}
        summary[region] = out
    for region in summary:
        per = [clean_placement[s][region] for s in clean_placement if region in clean_placement[s]]
        dets = sum(p["detections"] for p in per)
        edge_volume = float(np.mean([p["edge_volume_fraction"] for p in per]))
        near = sum(p["near_edge"] for p in per)
        summary[region]["placement"] = {
            "detections": dets, "outside_fraction": round(sum(p["outside"] for p in per) / dets, 3) if dets else None,
            "edge_enrichment": round(near / dets / edge_volume, 2) if dets else None,
            "edge_volume_fraction": round(edge_volume, 3),
            "rim_mass_fraction": round(sum(p["rim_mass"] for p in per) / max(sum(p["mass"] for p in per), 1e-6), 3)}
    pair = ("patient01_study1", "patient01_study2")
    rescan, rescan_matched, matched_counts = {}, {}, {}
    if set(pair) <= set(clean_counts):
        rescan = relative_differences(*(clean_counts[s] for s in pair))
        thickest = max(slice_thickness_of(cases[s]["t2"].affine) for s in pair)
        for scan in pair:
            matched = match_slice_thickness(cases[scan]["t2"], thickest)
            counted = count_all(matched.t2, cases[scan], models, settings, regions)[0] if matched.applied else None
            matched_counts[scan] = {r: res.counts for r, res in counted.items()} if counted else clean_counts[scan]
        rescan_matched = {"slice_mm": thickest, "counts": matched_counts,
                          "difference": relative_differences(*(matched_counts[s] for s in pair))}
        print(f"[{time.perf_counter() - start:6.0f} s] scan-rescan with slices matched to {thickest:.2f} mm: "
              + ", ".join(f"{r} {d['gpunet']:.0%}" for r, d in rescan_matched["difference"].items()), flush=True)
    network_s = {m: round(float(np.mean([t[m] for t in timings])), 3) for m in ("gpunet", "cnn", "frangi")}
    network_max = {m: round(float(np.max([t[m] for t in timings])), 3) for m in ("gpunet", "cnn", "frangi")}
    result = {
        "summary": summary,
        "clean_counts": clean_counts,
        "clean_placement": clean_placement,
        "scan_rescan": rescan,
        "scan_rescan_matched_slices": rescan_matched,
        "seconds_per_region_mean": network_s,
        "seconds_per_region_max": network_max,
        "rows": rows,
        "levels": args.levels,
        "repeats": args.repeats,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (results_dir / "results_counting.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, results_dir)
    plot_injection(rows, figures_dir)


def write_markdown(result: dict, results_dir: Path = HERE) -> None:
    import sys

    sys.path.insert(0, str(HERE))
    from pipeline import machine  # type: ignore[import-not-found]  # benchmarks/pipeline.py

    lines = [
        "# Counting benchmark: synthetic PVS injected into real clinical scans",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/counting.py` "
        f"(levels {result['levels']}, {result['repeats']} repeats; {result['total_seconds']:.0f} s in all).",
        "",
        f"Per region, N PVS injected into each of {len(result['clean_counts'])} real T2 scans "
        "(open_ms_data, MS patients, 3.3-4 mm slices). "
        "r, slope and MAE compare N with the increase of the count over the clean scan. "
        "Recall and precision: GP-Unet detections new in the injected scan, within 2.5 mm of an injected centre. "
        "The labelled mass is what the networks were trained to count for the injected PVS: each a unit mass "
        "along its axis, blurred as the training labels, summed over the counting mask (a PVS that sticks out "
        "of the region counts by the part inside); mass per injected PVS: "
        + ", ".join(f"{region} {s.get('labelled_per_pvs')}" for region, s in result["summary"].items()) + ".",
        "",
        "| region | model | Pearson r | slope | MAE | GP-Unet recall | GP-Unet precision | "
        f"slope against the visible PVS (>= {VISIBLE}) | slope against the labelled mass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for region, s in result["summary"].items():
        for m in ("gpunet", "cnn", "frangi"):
            det = s["gpunet_detection"] if m == "gpunet" else {"recall": "", "precision": ""}
            lines.append(
                f"| {region} | {m} | {s[m]['pearson_r']} | {s[m]['slope']} | {s[m]['mae']} | "
                f"{det['recall']} | {det['precision']} | {s[m].get('slope_visible', '')} | "
                f"{s[m].get('slope_labelled', '')} |"
            )
    bins = [f"{lo}-{hi}" for lo, hi in VISIBILITY_BINS]
    lines += [
        "",
        "GP-Unet recall by how visible the injected PVS is: its peak partial-volume fraction in the scan's own "
        "voxels (1 = some voxel is all PVS; a 1 mm tube lying in a 4 mm slice reaches ~0.25). "
        "Injected PVS per bin in brackets.",
        "",
        "| region | " + " | ".join(bins) + " |",
        "|---|" + "---|" * len(bins),
    ]
    for region, s in result["summary"].items():
        by = s.get("recall_by_visibility", {})
        lines.append(f"| {region} | " + " | ".join(
            f"{by[b]['recall']} ({by[b]['injected']})" if b in by else "" for b in bins) + " |")
    lines += [
        "",
        f"Placement of the GP-Unet detections on the clean scans (all {len(result['clean_counts'])} scans pooled): "
        f"outside = fraction of detections outside the region; edge enrichment = fraction within {EDGE_MM} mm "
        "of the region's edge / fraction of the region's volume there (1 = chance); rim mass = fraction of the "
        "GP-Unet map's positive mass over the region grown by 1 mm (where the count is summed) in that 1 mm rim "
        "outside the region. "
        "Detections are listed only where their peak lies in the region (since 2026-12-06): outside is 0 "
        "by construction.",
        "",
        "| region | detections | outside | edge enrichment | region volume near the edge | rim mass |",
        "|---|---|---|---|---|---|",
    ]
    for region, s in result["summary"].items():
        p = s["placement"]
        lines.append(
            f"| {region} | {p['detections']} | {p['outside_fraction']} | {p['edge_enrichment']} | "
            f"{p['edge_volume_fraction']} | {p['rim_mass_fraction']} |"
        )
    if result["scan_rescan"]:
        lines += [
            "",
            "Scan-rescan, patient01 study1 vs study2 (two protocols): |difference| / mean of the clean counts.",
            "",
            "| region | gpunet | cnn | frangi |",
            "|---|---|---|---|",
        ]
        for region, d in result["scan_rescan"].items():
            lines.append(f"| {region} | {d['gpunet']:.0%} | {d['cnn']:.0%} | {d['frangi']:.0%} |")
    matched = result.get("scan_rescan_matched_slices")
    if matched:
        lines += [
            "",
            f"The same with both scans' slices matched to {matched['slice_mm']:.1f} mm (the thinner scan averaged "
            "along its slices, `Settings.match_slice_thickness_mm`): |difference| / mean, and the counts "
            "(study1 / study2).",
            "",
            "| region | gpunet | cnn | frangi | gpunet counts | cnn counts | frangi counts |",
            "|---|---|---|---|---|---|---|",
        ]
        c1, c2 = (matched["counts"][s] for s in ("patient01_study1", "patient01_study2"))
        for region, d in matched["difference"].items():
            lines.append(f"| {region} | {d['gpunet']:.0%} | {d['cnn']:.0%} | {d['frangi']:.0%} | "
                         + " | ".join(f"{c1[region][m]:.1f} / {c2[region][m]:.1f}" for m in ("gpunet", "cnn", "frangi"))
                         + " |")
    lines += [
        "",
        "Absolute counts on the clean scans:",
        "",
        "| scan | region | gpunet | cnn | frangi |",
        "|---|---|---|---|---|",
    ]
    for scan, per in result["clean_counts"].items():
        for region, c in per.items():
            lines.append(f"| {scan} | {region} | {c['gpunet']:.1f} | {c['cnn']:.1f} | {c['frangi']:.0f} |")
    lines += [
        "",
        "Inference time per region (s, mean / max over regions and scans): "
        + ", ".join(
            f"{m} {result['seconds_per_region_mean'][m]} / {result['seconds_per_region_max'][m]}"
            for m in ("gpunet", "cnn", "frangi")
        ),
        "",
    ]
    (results_dir / "results_counting.md").write_text("\n".join(lines))
    print("\n".join(lines))


def plot_injection(rows: list[dict], figures_dir: Path = HERE.parent / "docs") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [r for r in REGION_CODES if any(row["region"] == r for row in rows)]
    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.8), squeeze=False)
    for ax, region in zip(axes[0], regions, strict=False):
        sub = [r for r in rows if r["region"] == region]
        n = np.array([r["n"] for r in sub])
        for m, colour in (("gpunet", "tab:red"), ("cnn", "tab:blue"), ("frangi", "tab:gray")):
            ax.scatter(
                n + {"gpunet": -0.6, "cnn": 0.0, "frangi": 0.6}[m],
                [r[f"delta_{m}"] for r in sub],
                s=12,
                color=colour,
                label=m,
            )
        top = max(n.max(), 1)
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set_title(region.replace("_", " "))
        ax.set_xlabel("injected PVS")
        ax.set_ylabel("count increase")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figures_dir / "counting_injection.png", dpi=90)


if __name__ == "__main__":
    main()
