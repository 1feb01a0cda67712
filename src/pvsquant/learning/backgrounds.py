"""Training samples on real scans: synthetic PVS injected into a real clinical T2.

Synthetic patches (:mod:`pvsquant.learning.trainingdata`) teach where PVS are *not* (borders,
lesions, look-alikes, all with a zero label); they cannot teach what real anatomy, real noise
and a real slice profile look like. Here a real T1/T2 pair goes through the pipeline's own
registration, anatomy and regions once (:func:`prepare_background`), then each sample:

1. a patch centre anywhere within 8 mm of the region, the box of the network grid around it;
2. a Poisson number of PVS (the density per ml drawn as for the synthetic patches) with the
   region's shapes (:data:`~pvsquant.learning.trainingdata.PVS_SHAPES`), centres in the region
   at least 2.5 mm apart, written into the T2 at its *native* (thick-slice) resolution with
   partial volume from 2 x 2 x 8 sub-samples per voxel, brightness 0.85-1.0 x the scan's CSF
   level plus noise at the scan's own level (so that an injected PVS is not told by being
   smoother than the tissue around it);
3. the clean and the injected T2 resampled to the box and scaled as ``pvsquant run`` does.

The real scan has PVS of its own, which nobody has counted: so the label is the *difference*
between the injected and the clean patch (:func:`pvsquant.learning.training.background_loss`):
the network's map on the injected patch minus its map on the clean patch must be the injected
PVS's density, and the count difference their number. Borders and the scan's own PVS cancel
out of that difference; the synthetic patches keep teaching that borders count zero.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..grids import resample, resample_labels, world_coordinates
from ..io import atomic_file
from ..labels import LATERAL_VENTRICLE
from ..pipeline.roi import box_grid, count_mask, network_grid, scale_to_region
from ..types import REGION_CODES, Settings, SubjectInputs, Volume
from .synthesis import tube_occupancy
from .trainingdata import PATCH_SHAPE, AnatomyMap, _region_points, line_density, pvs_tubes, spaced_points


@dataclass
class BackgroundSample:
    """One patch of a real scan, clean and with injected PVS, and the injected PVS's labels."""

    injected: np.ndarray
    clean: np.ndarray
    region_mask: np.ndarray
    density: np.ndarray
    count: int
    meta: dict[str, Any]


def injection_landmarks(prep: Any) -> tuple[float, np.ndarray]:
    """The scan's CSF brightness (90th percentile of the T2 in the lateral ventricles) and the
    ventricles' centre (world mm), which orients the centrum semiovale's radial PVS."""
    t2, regions, transform = prep.t2, prep.regions, prep.transform
    on_t2 = resample_labels(prep.anatomy.labels, t2.affine, t2.shape, target_to_source_world=transform.t2_to_t1,
                            smooth=False).array
    csf = float(np.percentile(t2.array[np.isin(on_t2, LATERAL_VENTRICLE)], 90))
    on_work = resample_labels(prep.anatomy.labels, regions.work.affine, regions.work.shape,
                              target_to_source_world=transform.t2_to_t1, smooth=False).array
    ventricles = np.argwhere(np.isin(on_work, LATERAL_VENTRICLE))
    return csf, world_coordinates(regions.work.affine, ventricles.mean(axis=0)[None])[0]


def background_file(t2: Path, cache_dir: Path) -> Path:
    """Where :func:`prepare_background` caches a scan: named by its folder and file (several
    datasets name every subject's T2 alike)."""
    return Path(cache_dir) / "backgrounds" / f"{Path(t2).parent.name}_{Path(t2).name.split('.')[0]}.pkl"


def prepare_background(t1: Path, t2: Path, cache_dir: Path, settings: Settings = Settings()) -> dict[str, Any]:
    """Registration, anatomy and regions of a real pair (as ``pvsquant run``), the scan's CSF
    level and ventricles' centre; cached in :func:`background_file`."""
    from ..pipeline.run import StageTimer, prepare_subject

    cached = background_file(t2, cache_dir)
    if cached.is_file():
        with open(cached, "rb") as f:
            return dict(pickle.load(f))
    prep = prepare_subject(SubjectInputs(Path(t1), Path(t2)), settings, StageTimer())
    csf, centre = injection_landmarks(prep)
    case = {"t2": prep.t2, "regions": prep.regions, "csf": csf, "ventricle_centre": centre}
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cached) as tmp, open(tmp, "wb") as f:
        pickle.dump(case, f)
    return case


def noise_level(image: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise standard deviation of ``image`` inside ``mask``: the median absolute
    deviation of the image minus its 3 x 3 x 1 local mean (in-plane, where the signal is smooth)."""
    residual = image - ndimage.uniform_filter(image, size=(3, 3, 1))
    values = residual[mask]
    if values.size < 10:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))) * np.sqrt(9 / 8))


def _native_box(t2: Volume, box_affine: np.ndarray, box_shape: tuple[int, ...], margin: int = 2
                ) -> tuple[tuple[slice, ...], np.ndarray]:
    """The T2 voxels that cover a box of another grid (index slices and their affine)."""
    corners = np.array(list(np.ndindex(2, 2, 2))) * (np.asarray(box_shape) - 1)
    world = world_coordinates(box_affine, corners)
    vox = np.linalg.solve(t2.affine, np.c_[world, np.ones(len(world))].T)[:3].T
    lo = np.maximum(np.floor(vox.min(axis=0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(vox.max(axis=0)).astype(int) + margin + 1, np.asarray(t2.shape[:3]))
    affine = np.array(t2.affine, float)
    affine[:3, 3] = world_coordinates(t2.affine, lo[None])[0]
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), affine


def make_background_sample(case: dict[str, Any], region: str, rng: np.random.Generator,
                           settings: Settings = Settings(), patch_shape: tuple[int, int, int] = PATCH_SHAPE,
                           max_density_per_ml: float = 3.0, min_visibility: float = 0.0) -> BackgroundSample:
    """One real-background sample of a region (see the module docstring). With ``min_visibility``,
    only the injected PVS whose peak partial-volume fraction in the scan's voxels reaches it are
    labelled (all are written into the scan), as in :func:`~pvsquant.learning.trainingdata.make_sample`."""
    t2, regions = case["t2"], case["regions"]
    work = regions.work
    spacing = np.asarray(settings.target_spacing_mm, float)
    idx = np.argwhere(work.array == REGION_CODES[region])
    if len(idx) == 0:
        raise ValueError(f"the background scan has no {region}")
    centre = world_coordinates(work.affine, idx[rng.integers(len(idx))][None])[0] + rng.uniform(-8, 8, 3)
    grid_affine, _ = network_grid(t2, settings.target_spacing_mm)
    box_affine, _ = box_grid(grid_affine, centre, patch_shape)

    amap = AnatomyMap("real", work, work, np.asarray(case["ventricle_centre"], float),
                      np.asarray(regions.superior_axis_t2, float))
    half = 0.5 * np.asarray(patch_shape) * spacing
    candidates = _region_points(amap, region, centre - half - 4.0, centre + half + 4.0)
    density_per_ml = 0.0 if rng.uniform() < 0.1 else float(np.exp(rng.uniform(np.log(0.05),
                                                                              np.log(max_density_per_ml))))
    n = int(rng.poisson(density_per_ml * len(candidates) / 1000.0))
    tubes = pvs_tubes(amap, region, spaced_points(candidates, min(n, 120), 2.5, rng), rng)

    sl, sub_affine = _native_box(t2, box_affine, patch_shape)
    clean_native = t2.array[sl].astype(np.float32)
    inside_native = resample(work.with_array((work.array > 0).astype(np.float32)), sub_affine,
                             clean_native.shape, order=1).array > 0.5
    sigma = noise_level(clean_native, inside_native if inside_native.sum() > 100 else clean_native > 0)
    injected_native = clean_native.copy()
    labelled = []
    for tube in tubes:
        occ = tube_occupancy([tube], sub_affine, clean_native.shape, supersample=(2, 2, 8))
        if occ.size and occ.max() >= min_visibility:
            labelled.append(tube)
        hit = occ > 0
        level = case["csf"] * rng.uniform(0.85, 1.0) + rng.normal(0.0, sigma, int(hit.sum()))
        injected_native[hit] = injected_native[hit] * (1 - occ[hit]) + level * occ[hit]

    region_vol = work.with_array((work.array == REGION_CODES[region]).astype(np.float32))
    region_mask = resample(region_vol, box_affine, patch_shape, order=1).array >= 0.5
    clean = resample(Volume(clean_native, sub_affine), box_affine, patch_shape, order=1).array
    injected = resample(Volume(injected_native, sub_affine), box_affine, patch_shape, order=1).array
    density = line_density(labelled, box_affine, patch_shape) * count_mask(region_mask, spacing)
    meta = {"region": region, "density_per_ml": round(density_per_ml, 4), "n_rendered": len(tubes),
            "noise": round(sigma, 3), "n_labelled": len(labelled)}
    return BackgroundSample(scale_to_region(injected, region_mask, settings),
                            scale_to_region(clean, region_mask, settings),
                            region_mask, density.astype(np.float32), len(labelled), meta)


def _write_background_shard(args: tuple) -> str:
    case_files, region, seed, indices, out_file, settings, max_density, min_visibility = args
    cases = []
    for f in case_files:
        with open(f, "rb") as fh:
            cases.append(pickle.load(fh))
    parts: dict[str, list] = {"image": [], "clean": [], "mask": [], "density": [], "count": []}
    for i in indices:
        rng = np.random.default_rng([seed, 1000 + list(REGION_CODES).index(region), i])
        s = make_background_sample(cases[int(rng.integers(len(cases)))], region, rng, settings,
                                   max_density_per_ml=max_density, min_visibility=min_visibility)
        parts["image"].append(s.injected.astype(np.float16))
        parts["clean"].append(s.clean.astype(np.float16))
        parts["mask"].append(s.region_mask)
        parts["density"].append(s.density.astype(np.float16))
        parts["count"].append(s.count)
    arrays = {k: np.stack(v) if k != "count" else np.array(v) for k, v in parts.items()}
    with atomic_file(out_file) as tmp:
        np.savez_compressed(tmp, index=np.array(indices), **arrays)  # type: ignore[arg-type]
    return str(out_file)


def generate_background_dataset(case_files: list[Path], region: str, n_samples: int, out_dir: str | Path,
                                seed: int = 0, workers: int = 1, shard_size: int = 50,
                                settings: Settings = Settings(), max_density_per_ml: float = 3.0,
                                progress: bool = True, min_visibility: float = 0.0) -> list[Path]:
    """``n_samples`` real-background samples of a region as shards ``<region>_<seed>_<k>.npz``
    in ``out_dir`` (existing shards are kept: an interrupted run resumes; one folder per
    ``max_density_per_ml`` and ``min_visibility``)."""
    from concurrent.futures import ProcessPoolExecutor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, files = [], []
    for k, start in enumerate(range(0, n_samples, shard_size)):
        f = out_dir / f"{region}_{seed}_{k:04d}.npz"
        files.append(f)
        if not f.exists():
            indices = list(range(start, min(start + shard_size, n_samples)))
            jobs.append(([str(c) for c in case_files], region, seed, indices, f, settings, max_density_per_ml,
                         min_visibility))
    if workers <= 1:
        done = map(_write_background_shard, jobs)
        for i, _ in enumerate(done):
            if progress:
                print(f"\r{region} (real backgrounds): shard {i + 1}/{len(jobs)}", end="", flush=True)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for i, _ in enumerate(pool.map(_write_background_shard, jobs)):
                if progress:
                    print(f"\r{region} (real backgrounds): shard {i + 1}/{len(jobs)}", end="", flush=True)
    if progress and jobs:
        print()
    return files
