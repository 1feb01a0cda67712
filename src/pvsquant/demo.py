"""A demo cohort with known answers, from the shipped example alone (no private data).

The example patient (open_ms_data, real clinical T1/T2) is processed once. Each synthetic
case is that T2 with a known number of synthetic PVS injected into every region (capsules
1-3 mm wide at the scan's CSF brightness, with partial volume over the real slice
thickness: :func:`inject_pvs`), then passed through one of three simulated "scanners"
(as acquired; noisier; blurrier, as thicker slices) and through the same roi, count,
figure and report stages as any scan. ``visual.tsv`` holds, standing in for visual scores:

* ``rater1``: the number injected (known exactly);
* ``rater2``: that number with a simulated rater's error (x 0.8-1.2, +/- 1.5), rounded.

The example's own PVS are in every case and in no score: an offset common to all cases.
Every synthetic output says so (qc.json ``synthetic``, a banner in report.html, and
``pvsquant evaluate`` marks the tables SYNTHETIC DEMO DATA).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .grids import world_coordinates
from .io import atomic_output_dir, is_run_folder, write_tsv
from .learning.backgrounds import injection_landmarks
from .learning.synthesis import tube_occupancy
from .learning.trainingdata import AnatomyMap, pvs_tubes, spaced_points
from .types import REGION_CODES, Settings, SubjectInputs, Volume

log = logging.getLogger(__name__)

DEMO_RANGES = {"centrum_semiovale": (0, 40), "basal_ganglia": (0, 20), "hippocampi": (0, 10), "midbrain": (0, 8)}
"""Injected PVS per region, drawn uniformly (inclusive)."""
SCANNERS = ("A_as_acquired", "B_noisier", "C_blurrier")


def inject_pvs(t2: Volume, regions: Any, n_per_region: dict[str, int], csf: float, ventricle_centre: np.ndarray,
               rng: np.random.Generator) -> tuple[Volume, dict[str, list]]:
    """The T2 with ``n_per_region[region]`` synthetic PVS in each region (centres >= 2.5 mm apart,
    shapes and orientations of :data:`pvsquant.learning.trainingdata.PVS_SHAPES`, brightness 0.85-1.0 x
    ``csf``, partial volume from 2 x 2 x 8 sub-samples per voxel); returns the tubes per region."""
    amap = AnatomyMap("real", regions.work, regions.work, ventricle_centre, regions.superior_axis_t2)
    image = t2.array.astype(np.float32).copy()
    tubes_by_region: dict[str, list] = {}
    for region, code in REGION_CODES.items():
        n = int(n_per_region.get(region, 0))
        idx = np.argwhere(regions.work.array == code)
        if n == 0 or len(idx) == 0:
            tubes_by_region[region] = []
            continue
        points = world_coordinates(regions.work.affine, idx + rng.uniform(-0.5, 0.5, idx.shape))
        tubes = pvs_tubes(amap, region, spaced_points(points, n, 2.5, rng), rng)
        for tube in tubes:
            occupancy = tube_occupancy([tube], t2.affine, t2.shape, supersample=(2, 2, 8))
            image = image * (1 - occupancy) + csf * rng.uniform(0.85, 1.0) * occupancy
        tubes_by_region[region] = tubes
    return t2.with_array(image), tubes_by_region


def simulate_scanner(t2: Volume, scanner: str, csf: float, rng: np.random.Generator) -> Volume:
    """``A``: unchanged; ``B``: Rician noise at 4% of the CSF level; ``C``: blurred, most along the
    slice axis (as a thicker slice profile) and a little in-plane."""
    image = t2.array.astype(np.float32)
    if scanner.startswith("B"):
        sigma = 0.04 * csf
        image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
    elif scanner.startswith("C"):
        slice_axis = int(np.argmax(t2.spacing_mm))
        blur = np.full(3, 0.7)
        blur[slice_axis] = 0.6
        image = ndimage.gaussian_filter(image, blur)
    return t2.with_array(image.astype(np.float32))


def demo_case_plan(n_cases: int, seed: int) -> list[dict[str, Any]]:
    """Subject id, scanner, injected counts and the simulated second rater of each synthetic case."""
    rng = np.random.default_rng([seed, 0])
    plan = []
    for i in range(n_cases):
        counts = {r: int(rng.integers(lo, hi + 1)) for r, (lo, hi) in DEMO_RANGES.items()}
        rater2 = {r: max(0, round(n * rng.uniform(0.8, 1.2) + rng.normal(0, 1.5))) for r, n in counts.items()}
        plan.append({"subject": f"synth-{i + 1:02d}", "scanner": SCANNERS[i % len(SCANNERS)], "injected": counts,
                     "rater2": rater2, "seed": [seed, i + 1]})
    return plan


def write_scores(plan: list[dict[str, Any]], path: Path) -> Path:
    rows = [{"subject": case["subject"], "region": region, "rater1": case["injected"][region],
             "rater2": case["rater2"][region], "scanner": case["scanner"], "source": "synthetic"}
            for case in plan for region in REGION_CODES]
    comment = ("SYNTHETIC DEMO SCORES: rater1 = number of PVS injected into the example scan (known); rater2 = "
               "rater1 with a simulated rater's error. The example's own PVS are not in them.")
    return write_tsv(rows, ("subject", "region", "rater1", "rater2", "scanner", "source"), path, comments=(comment,))


def make_demo_cohort(out_dir: Path, inputs: SubjectInputs, n_cases: int = 12, settings: Settings = Settings(),
                     seed: int = 2026) -> dict[str, Any]:
    """``out_dir/results/<subject>`` for the example and each synthetic case, and ``out_dir/visual.tsv``.

    Resumable: a case whose folder already holds a qc.json is kept (the same seed makes the same case)."""
    from .pipeline.run import StageTimer, prepare_subject, quantify_subject

    out_dir = Path(out_dir)
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    plan = demo_case_plan(n_cases, seed)
    todo = [c for c in plan if not is_run_folder(results / c["subject"])]
    example_id = inputs.subject_id or "sub-example"
    example_done = is_run_folder(results / example_id)
    start = time.perf_counter()
    if todo or not example_done:
        timer, t_example = StageTimer(), time.perf_counter()
        prep = prepare_subject(inputs, settings, timer)
        if not example_done:
            with atomic_output_dir(results / example_id, overwrite=True) as tmp:
                quantify_subject(prep, tmp, settings, timer, t_example)
        csf, centre = injection_landmarks(prep)
        for k, case in enumerate(todo, start=1):
            t0 = time.perf_counter()
            rng = np.random.default_rng(case["seed"])
            injected, _ = inject_pvs(prep.t2, prep.regions, case["injected"], csf, centre, rng)
            t2 = simulate_scanner(injected, case["scanner"], csf, rng)
            case_prep = replace(prep, t2=t2, inputs=replace(inputs, subject_id=case["subject"]))
            description = (f"the example scan with {', '.join(f'{n} {r}' for r, n in case['injected'].items())} "
                           f"synthetic PVS injected, through simulated scanner {case['scanner']}. Its counts are "
                           "known (they stand in for visual scores); the example's own PVS come on top.")
            extra = {"synthetic": {"description": description, "injected": case["injected"],
                                   "scanner": case["scanner"], "seed": case["seed"]}}
            with atomic_output_dir(results / case["subject"], overwrite=True) as tmp:
                quantify_subject(case_prep, tmp, settings, StageTimer(), t0, extra_qc=extra)
            elapsed = time.perf_counter() - start
            log.info("demo cohort: case %d/%d (%s) done, %.0f s so far, about %.0f s left", k, len(todo),
                     case["subject"], elapsed, elapsed / k * (len(todo) - k))
    write_scores(plan, out_dir / "visual.tsv")
    folders = [results / example_id] + [results / c["subject"] for c in plan]
    return {"scores": out_dir / "visual.tsv", "results": folders, "plan": plan}
