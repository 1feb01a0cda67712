"""Synthetic training samples for the counting networks: a patch of a region with a known
number of PVS at known places, made the way a real scan reaches the networks.

One sample, from a SynthSeg label map (anatomy) and a random generator:

1. Acquisition frame: axial (80%), coronal or sagittal, tilted up to 12 degrees; a fine grid
   (0.5 mm isotropic) on the scanner's axes around a random point of the region.
2. T2 contrast painted on the labels (random tissue intensities, texture).
3. PVS: Poisson number of straight capsules (density per ml of region drawn per sample,
   zero in 15% of samples), 1-3 mm wide, CSF-bright (0.85-1.0 x CSF), partial volume from sub-voxel distances. Shapes
   follow the perforating arteries: radial from the lateral ventricles in the centrum
   semiovale, mostly vertical in the basal ganglia and midbrain, short and ovoid in the
   hippocampi. Centres lie in the region, at least 2.5 mm apart.
4. Look-alikes the networks must not count: white-matter hyperintensities (1-4 ellipsoids,
   3-16 mm, between WM and CSF brightness, often at the ventricles), lacunes (4-12 mm,
   CSF-bright), flow voids (dark tubes).
5. Bias field; clinical acquisition: slice profile (Gaussian, FWHM = slice thickness
   3-7 mm), slice gap 0-1 mm, in-plane resolution 0.4-0.7 mm, Rician noise.
6. The pipeline's own code: :func:`pvsquant.pipeline.roi.network_grid` and :func:`pvsquant.grids.resample`
   to 0.5 x 0.5 x 0.8 mm, then :func:`pvsquant.pipeline.roi.scale_to_region` (the unmasked T2 scaled to
   the region's median; the region itself is the networks' third channel). Patches are centred
   anywhere within 8 mm of the region, so the borders (cortex, sulci, ventricles, cisterns)
   enter them with a zero label.

Labels of a sample: the number of PVS centres inside the patch and the region, and a density
map: each PVS a unit mass spread along its axis (:func:`line_density`), kept inside the
region's counting mask, so that ``density.sum()`` is the region's PVS count in the patch
(a PVS crossing the region's or the patch's edge counts by its fraction inside). Everything
follows from the seed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..grids import resample, voxel_indices, world_coordinates
from ..io import atomic_file, load_volume
from ..labels import LATERAL_VENTRICLE
from ..pipeline.anatomy import labels_from_file
from ..pipeline.regions import make_regions
from ..pipeline.roi import box_grid, count_mask, network_grid, scale_to_region
from ..types import REGION_CODES, RigidTransform, Settings, Volume
from .synthesis import (
    CSF_CODES,
    WM_CODES,
    Tube,
    bias_field,
    blob_occupancy,
    paint,
    perturb_direction,
    random_rotation,
    t2_intensities,
    tube_occupancy,
)

PATCH_SHAPE = (64, 64, 40)
"""Training patch in voxels of the 0.5 x 0.5 x 0.8 mm grid (32 mm cube)."""
DENSITY_SIGMA_MM = 0.8
FINE_MM = 0.5


@dataclass(frozen=True)
class PvsShape:
    """Per-region PVS geometry (ranges drawn uniformly)."""

    length_mm: tuple[float, float]
    diameter_mm: tuple[float, float]
    orientation: str  # "radial", "vertical" or "random"
    spread: float  # direction noise


PVS_SHAPES = {
    "centrum_semiovale": PvsShape((3.0, 20.0), (1.0, 3.0), "radial", 0.25),
    "basal_ganglia": PvsShape((2.0, 12.0), (1.0, 3.0), "vertical", 0.35),
    "hippocampi": PvsShape((1.5, 5.0), (1.0, 2.5), "random", 0.0),
    "midbrain": PvsShape((1.5, 6.0), (1.0, 2.0), "vertical", 0.4),
}
"""Enlarged PVS only: at 3-7 mm slices a PVS under 1 mm wide is not visible, and raters do not
count it. With 0.6 mm as the lower bound, the first training runs could not learn (the
density-weighted contrast at the true centres was barely above that 1 mm away)."""


@dataclass(frozen=True)
class AnatomyMap:
    """A label map made ready for sampling: labels, counting regions, landmarks (world mm)."""

    name: str
    labels: Volume
    regions: Volume
    ventricle_centre: np.ndarray
    superior: np.ndarray


def prepare_map(path: str | Path, settings: Settings = Settings()) -> AnatomyMap:
    """Counting regions of an aseg-coded label map, made by the pipeline's own region code."""
    labels = load_volume(path, "label map", labels=True)
    anatomy = labels_from_file(labels, labels, settings)
    identity = RigidTransform(np.eye(4), 0.0, 0.0)
    regions = make_regions(anatomy, identity, labels.with_array(labels.array.astype(np.float32)), settings)
    vent = np.argwhere(np.isin(anatomy.labels.array, LATERAL_VENTRICLE))
    centre = world_coordinates(labels.affine, vent.mean(axis=0)[None])[0]
    return AnatomyMap(Path(path).name.split(".")[0], anatomy.labels, regions.work, centre,
                      np.asarray(anatomy.superior_axis, float))


@dataclass
class Sample:
    """One training patch and its labels."""

    image: np.ndarray
    region_mask: np.ndarray
    density: np.ndarray
    count: int
    centres_vox: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    visibility: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """Per PVS centred in the patch and region (labelled or not), its peak partial-volume fraction
    in the simulated scan's voxels (:func:`peak_partial_volume`)."""

    def visible_counts(self) -> np.ndarray:
        """How many PVS centred in the patch and region reach each of :data:`VISIBILITY_LEVELS`."""
        return np.array([(self.visibility >= level).sum() for level in VISIBILITY_LEVELS], np.int32)


VISIBILITY_LEVELS = (0.3, 0.5, 0.7)
"""Peak partial-volume fractions at which a PVS is called visible in the synthetic validation
(the counting benchmark's bins of recall by visibility): with CSF-bright PVS on tissue at a
third of that, a fraction of 0.3 lifts a voxel ~0.2 of the CSF level above its surroundings."""


def peak_partial_volume(tube: Tube, affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """The largest fraction of one of the scan's voxels (``affine``, ``shape``: the simulated
    clinical grid) that a PVS fills: 1 when some voxel is all PVS; a 1 mm tube lying in a 4 mm
    slice reaches ~0.25. How visible the PVS is to anyone, rater or network (the counting
    benchmark's measure of the injected PVS)."""
    occupancy = tube_occupancy([tube], affine, shape, supersample=(2, 2, 8))
    return float(occupancy.max()) if occupancy.size else 0.0


def acquisition_frame(rng: np.random.Generator, max_tilt_deg: float = 12.0) -> tuple[np.ndarray, str]:
    """Scanner axes (columns: in-plane 1, in-plane 2, slice normal) in world, and the plane's name."""
    u = rng.uniform()
    if u < 0.8:
        base, plane = np.eye(3), "axial"
    elif u < 0.95:
        base, plane = np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]), "coronal"
    else:
        base, plane = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]), "sagittal"
    return random_rotation(rng, max_tilt_deg) @ base, plane


def pvs_tubes(amap: AnatomyMap, region: str, centres: np.ndarray, rng: np.random.Generator) -> list[Tube]:
    """Tubes centred on ``centres`` with the region's shape and orientation."""
    shape = PVS_SHAPES[region]
    tubes = []
    for c in centres:
        if shape.orientation == "radial":
            d = perturb_direction(c - amap.ventricle_centre, shape.spread, rng)
        elif shape.orientation == "vertical":
            d = perturb_direction(amap.superior, shape.spread, rng)
        else:
            d = perturb_direction(rng.normal(size=3), 0.0, rng)
        diameter = float(np.exp(rng.uniform(*np.log(shape.diameter_mm))))
        length = max(float(rng.uniform(*shape.length_mm)), diameter)
        tubes.append(Tube(np.asarray(c, float), d, length, diameter))
    return tubes


def spaced_points(candidates: np.ndarray, n: int, min_distance_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` random rows of ``candidates`` (world mm) at least ``min_distance_mm`` apart."""
    chosen: list[np.ndarray] = []
    if n <= 0 or len(candidates) == 0:
        return np.zeros((0, 3))
    for i in rng.permutation(len(candidates))[: 20 * n]:
        p = candidates[i]
        if all(np.linalg.norm(p - q) >= min_distance_mm for q in chosen):
            chosen.append(p)
            if len(chosen) == n:
                break
    return np.array(chosen).reshape(-1, 3)


def density_map(centres_vox: np.ndarray, shape: tuple[int, ...], spacing_mm: np.ndarray,
                sigma_mm: float = DENSITY_SIGMA_MM) -> np.ndarray:
    """Sum of unit-mass Gaussians at (fractional) voxel positions; mass outside the grid is lost."""
    out = np.zeros(tuple(shape), np.float32)
    sigma = sigma_mm / np.asarray(spacing_mm, float)
    half = np.ceil(3 * sigma).astype(int)
    for c in centres_vox:
        lo = np.floor(c).astype(int) - half
        axes = [np.exp(-0.5 * ((np.arange(lo[a], lo[a] + 2 * half[a] + 2) - c[a]) / sigma[a]) ** 2) for a in range(3)]
        axes = [w / w.sum() for w in axes]
        kernel = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
        src = [slice(max(0, -lo[a]), kernel.shape[a] - max(0, lo[a] + kernel.shape[a] - shape[a])) for a in range(3)]
        dst = [slice(max(0, lo[a]), min(shape[a], lo[a] + kernel.shape[a])) for a in range(3)]
        if all(s.stop > s.start for s in dst):
            out[tuple(dst)] += kernel[tuple(src)]
    return out


def line_density(tubes: list[Tube], affine: np.ndarray, shape: tuple[int, ...],
                 sigma_mm: float = DENSITY_SIGMA_MM, step_mm: float = 0.25) -> np.ndarray:
    """Each PVS as a unit mass spread evenly along its axis, blurred by a Gaussian of ``sigma_mm``.

    The centre of a long tube cannot be found locally, its axis can: so the networks learn to
    light up every PVS along its length, and a region's count is the sum of the map in it
    (a PVS that leaves the region counts by the fraction of its length inside). Mass outside
    the grid is lost.
    """
    out = np.zeros(tuple(shape), np.float32)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    for tube in tubes:
        a, b = tube.ends
        k = max(int(np.ceil(np.linalg.norm(b - a) / step_mm)), 1)
        pts = a + (np.arange(k) + 0.5)[:, None] / k * (b - a)
        vox = voxel_indices(affine, pts)
        base = np.floor(vox).astype(int)
        frac = vox - base
        for corner in np.ndindex(2, 2, 2):
            idx = base + np.asarray(corner)
            w = np.prod(np.where(np.asarray(corner) == 1, frac, 1 - frac), axis=1) / k
            ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
            np.add.at(out, tuple(idx[ok].T), w[ok].astype(np.float32))
    return ndimage.gaussian_filter(out, sigma_mm / spacing, mode="constant", truncate=3.0)


def _negatives(amap: AnatomyMap, region: str, lo: np.ndarray, hi: np.ndarray, wm: float, csf: float,
               rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]]:
    """Lesions, lacunes and flow voids near the patch: (kind, centre, semi-axes, rotation, intensity)."""
    items = []
    inside = _region_points(amap, None, lo, hi, codes=WM_CODES)
    if len(inside) and rng.uniform() < (0.45 if region in ("centrum_semiovale", "basal_ganglia") else 0.2):
        for c in inside[rng.integers(0, len(inside), rng.integers(1, 5))]:
            axes = rng.uniform(1.5, 8.0, 3) * np.array([1.0, 1.0, rng.uniform(0.6, 1.6)])
            items.append(("lesion", c, axes, random_rotation(rng), wm + rng.uniform(0.35, 0.8) * (csf - wm)))
    if len(inside) and rng.uniform() < 0.15:
        for c in inside[rng.integers(0, len(inside), rng.integers(1, 3))]:
            axes = rng.uniform(2.0, 6.0) * rng.uniform(0.7, 1.0, 3)
            items.append(("lacune", c, axes, random_rotation(rng), csf * rng.uniform(0.85, 1.0)))
    return items


def _region_points(amap: AnatomyMap, region: str | None, lo: np.ndarray, hi: np.ndarray,
                   codes: tuple[int, ...] = ()) -> np.ndarray:
    """World points (1 mm grid, jittered) of a region, or of label codes, inside a world box."""
    if region is not None:
        vol, hit = amap.regions, amap.regions.array == REGION_CODES[region]
    else:
        vol, hit = amap.labels, np.isin(amap.labels.array, codes)
    a = voxel_indices(vol.affine, np.array([lo, hi]))
    start = np.maximum(np.floor(a.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(a.max(axis=0)).astype(int) + 1, vol.shape)
    idx = np.argwhere(hit[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]) + start
    pts = world_coordinates(vol.affine, idx + np.random.default_rng(len(idx)).uniform(-0.5, 0.5, idx.shape))
    keep = np.all((pts >= lo) & (pts <= hi), axis=1)
    return pts[keep]


def make_sample(amap: AnatomyMap, region: str, rng: np.random.Generator, settings: Settings = Settings(),
                patch_shape: tuple[int, int, int] = PATCH_SHAPE, density_per_ml: float | None = None,
                max_density_per_ml: float = 3.0, min_visibility: float = 0.0) -> Sample:
    """One synthetic training patch (see the module docstring). Without ``density_per_ml``, the PVS
    density is 0 (15% of patches) or log-uniform in [0.05, ``max_density_per_ml``] PVS per ml.
    With ``min_visibility``, a PVS is rendered as always but labelled (density, count) only when
    its peak partial-volume fraction in the simulated scan (:func:`peak_partial_volume`) reaches it:
    what a rater can see is what is counted."""
    spacing = np.asarray(settings.target_spacing_mm, float)
    region_idx = np.argwhere(amap.regions.array == REGION_CODES[region])
    if len(region_idx) == 0:
        raise ValueError(f"label map {amap.name} has no {region}")
    centre = world_coordinates(amap.regions.affine, region_idx[rng.integers(len(region_idx))][None])[0]
    centre = centre + rng.uniform(-8, 8, 3)
    half_patch = 0.5 * np.asarray(patch_shape) * spacing

    # 1. scanner frame and clinical sampling
    axes, plane = acquisition_frame(rng)
    pixel = float(rng.uniform(0.4, 0.7))
    thick = float(rng.uniform(3.0, 7.0))
    gap = float(rng.uniform(0.0, 1.0)) if rng.uniform() < 0.5 else 0.0
    half_fine = np.full(3, float(half_patch.max()) * 1.2 + 2.0)
    half_fine[2] += thick
    fine_shape = tuple(int(n) for n in np.ceil(2 * half_fine / FINE_MM))
    fine_affine = np.eye(4)
    fine_affine[:3, :3] = axes * FINE_MM
    fine_affine[:3, 3] = centre - axes @ ((np.asarray(fine_shape) - 1) / 2 * FINE_MM)

    # 2. T2 contrast
    labels = resample(amap.labels, fine_affine, fine_shape, order=0).array
    table = t2_intensities(np.unique(labels), rng)
    image = paint(labels, table, rng)
    wm = table.get(2, table.get(41, 0.3))
    csf = max(table.get(c, 0.0) for c in (*CSF_CODES, 0)) or 0.95

    # 3. PVS
    lo, hi = centre - half_patch - 4.0, centre + half_patch + 4.0
    candidates = _region_points(amap, region, lo, hi)
    if density_per_ml is None:
        density_per_ml = 0.0 if rng.uniform() < 0.15 else float(np.exp(rng.uniform(np.log(0.05),
                                                                                   np.log(max_density_per_ml))))
    n = int(rng.poisson(density_per_ml * len(candidates) / 1000.0))
    centres = spaced_points(candidates, min(n, 120), 2.5, rng)
    tubes = pvs_tubes(amap, region, centres, rng)
    occ = tube_occupancy(tubes, fine_affine, fine_shape)
    pvs_level = csf * rng.uniform(0.85, 1.0)
    image = image * (1 - occ) + pvs_level * occ

    # 4. look-alikes
    kinds = []
    for kind, c, semi, rot, level in _negatives(amap, region, lo, hi, wm, csf, rng):
        occ = blob_occupancy(c, semi, rot, fine_affine, fine_shape)
        image = image * (1 - occ) + level * occ
        kinds.append(kind)
    if rng.uniform() < 0.3:
        voids = [Tube(centre + rng.uniform(-12, 12, 3), perturb_direction(rng.normal(size=3), 0, rng),
                      float(rng.uniform(10, 30)), float(rng.uniform(1.0, 2.5))) for _ in range(rng.integers(1, 3))]
        occ = tube_occupancy(voids, fine_affine, fine_shape)
        image = image * (1 - occ) + rng.uniform(0.02, 0.15) * occ
        kinds += ["flow_void"] * len(voids)

    # 5. bias field, slice profile, in-plane blur, sampling, noise
    image *= bias_field(fine_shape, rng, strength=float(rng.uniform(0.05, 0.3)))
    sigma = np.array([pixel, pixel, thick]) / 2.355 / FINE_MM
    image = ndimage.gaussian_filter(image, sigma)
    step = np.array([pixel, pixel, thick + gap]) / FINE_MM
    clin_shape = tuple(int(n) for n in np.floor((np.asarray(fine_shape) - 1) / step) + 1)
    clin = ndimage.affine_transform(image, np.diag(step), output_shape=clin_shape, order=1, prefilter=False)
    noise = float(rng.uniform(0.01, 0.05)) * csf
    clin = np.sqrt((clin + rng.normal(0, noise, clin.shape)) ** 2 + rng.normal(0, noise, clin.shape) ** 2)
    clin_affine = np.array(fine_affine)
    clin_affine[:3, :3] = fine_affine[:3, :3] @ np.diag(step)
    clinical = Volume(clin.astype(np.float32), clin_affine)

    # 6. the pipeline's resampling and preprocessing
    grid_affine, _ = network_grid(clinical, settings.target_spacing_mm)
    box_affine, _ = box_grid(grid_affine, centre, patch_shape)
    patch = resample(clinical, box_affine, patch_shape, order=1).array
    region_vol = amap.regions.with_array((amap.regions.array == REGION_CODES[region]).astype(np.float32))
    region_mask = resample(region_vol, box_affine, patch_shape, order=1).array >= 0.5
    normalised = scale_to_region(patch, region_mask, settings)

    # labels: centres inside the patch and the region
    vox = voxel_indices(box_affine, centres) if len(centres) else np.zeros((0, 3))
    rounded = np.round(vox).astype(int)
    inside = np.all((rounded >= 0) & (rounded < np.asarray(patch_shape)), axis=1)
    inside[inside] = region_mask[tuple(rounded[inside].T)]
    seen = np.array([peak_partial_volume(tube, clin_affine, clin_shape) for tube in tubes], np.float32)
    countable = seen >= min_visibility
    labelled = [tube for tube, keep in zip(tubes, countable, strict=True) if keep]
    density = line_density(labelled, box_affine, patch_shape) * count_mask(region_mask, spacing)
    meta = {"map": amap.name, "region": region, "plane": plane, "pixel_mm": round(pixel, 3),
            "slice_mm": round(thick, 3), "gap_mm": round(gap, 3), "density_per_ml": round(density_per_ml, 4),
            "n_rendered": len(tubes), "negatives": kinds, "min_visibility": min_visibility}
    counted = inside & countable
    return Sample(normalised, region_mask, density.astype(np.float32), int(counted.sum()), vox[counted],
                  box_affine, meta, seen[inside])


def sample_rng(seed: int, region: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a region: the same sample whatever the worker or order."""
    return np.random.default_rng([seed, list(REGION_CODES).index(region), index])


def default_label_maps() -> list[Path]:
    """The SynthSeg training label maps (Apache-2.0) in ../shared/data, or $PVSQUANT_LABEL_MAPS."""
    root = Path(os.environ.get("PVSQUANT_LABEL_MAPS", Path(__file__).resolve().parents[4]
                               / "shared" / "data" / "SynthSeg" / "data" / "training_label_maps"))
    maps = sorted(root.glob("*.nii*"))
    if not maps:
        raise FileNotFoundError(f"no label maps (*.nii.gz) in {root}; set PVSQUANT_LABEL_MAPS to a folder of "
                                "aseg-coded label maps (e.g. SynthSeg's training_label_maps)")
    return maps


def prepared_map(map_file: Path, cache_dir: Path, settings: Settings) -> AnatomyMap:
    """:func:`prepare_map`, cached as a pickle in ``cache_dir/maps`` (made once per map)."""
    import pickle

    cached = cache_dir / "maps" / (Path(map_file).name.split(".")[0] + ".pkl")
    if cached.exists():
        with open(cached, "rb") as f:
            return pickle.load(f)
    amap = prepare_map(map_file, settings)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cached) as tmp, open(tmp, "wb") as f:
        pickle.dump(amap, f)
    return amap


def _write_shard(args: tuple) -> str:
    map_files, region, seed, indices, out_file, settings, max_density, min_visibility = args
    maps = [prepared_map(f, Path(out_file).parent, settings) for f in map_files]
    images, masks, densities, counts, visible, metas = [], [], [], [], [], []
    for i in indices:
        rng = sample_rng(seed, region, i)
        amap = maps[int(rng.integers(len(maps)))]
        s = make_sample(amap, region, rng, settings, max_density_per_ml=max_density, min_visibility=min_visibility)
        images.append(s.image.astype(np.float16))
        masks.append(s.region_mask)
        densities.append(s.density.astype(np.float16))
        counts.append(s.count)
        visible.append(s.visible_counts())
        metas.append(s.meta)
    with atomic_file(out_file) as tmp:  # a hidden name ending in .npz: never read as a shard
        np.savez_compressed(tmp, image=np.stack(images), mask=np.stack(masks), density=np.stack(densities),
                            count=np.array(counts), visible_count=np.stack(visible), index=np.array(indices))
    return str(out_file)


VALIDATION_SEED_OFFSET = 1000
"""The validation patches of a run with ``--seed S`` are drawn with seed S + this (other maps too)."""


def generate_validation_dataset(map_files: list[Path], region: str, n_samples: int, out_dir: str | Path,
                                seed: int = 0, val_maps: int = 2, workers: int = 1,
                                max_density_per_ml: float = 3.0, min_visibility: float = 0.0) -> list[Path]:
    """The held-out patches of ``pvsquant train``: the last ``val_maps`` label maps, seed
    ``seed + VALIDATION_SEED_OFFSET``, shards of 25 (the rest of the maps are for training)."""
    return generate_dataset(map_files[len(map_files) - val_maps:], region, n_samples, out_dir,
                            seed=seed + VALIDATION_SEED_OFFSET, workers=workers, shard_size=25,
                            max_density_per_ml=max_density_per_ml, min_visibility=min_visibility)


def generate_dataset(map_files: list[Path], region: str, n_samples: int, out_dir: str | Path, seed: int = 0,
                     workers: int = 1, shard_size: int = 50, settings: Settings = Settings(),
                     progress: bool = True, max_density_per_ml: float = 3.0,
                     min_visibility: float = 0.0) -> list[Path]:
    """Write ``n_samples`` samples of a region as shards ``<region>_<seed>_<k>.npz``; existing
    shards are kept (so an interrupted run resumes: keep one cache folder per ``max_density_per_ml`` and
    ``min_visibility``)."""
    from concurrent.futures import ProcessPoolExecutor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, files = [], []
    for k, start in enumerate(range(0, n_samples, shard_size)):
        f = out_dir / f"{region}_{seed}_{k:04d}.npz"
        files.append(f)
        if not f.exists():
            jobs.append((list(map_files), region, seed, list(range(start, min(start + shard_size, n_samples))), f,
                         settings, max_density_per_ml, min_visibility))
    if workers > 1 and jobs:  # prepare the maps once, in parallel, before the workers need them
        from concurrent.futures import ProcessPoolExecutor as Pool

        with Pool(workers) as pool:
            list(pool.map(prepared_map, map_files, [out_dir] * len(map_files), [settings] * len(map_files)))
    if workers <= 1:
        for i, job in enumerate(jobs):
            _write_shard(job)
            if progress:
                print(f"\r{region}: shard {i + 1}/{len(jobs)}", end="", flush=True)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for i, _ in enumerate(pool.map(_write_shard, jobs)):
                if progress:
                    print(f"\r{region}: shard {i + 1}/{len(jobs)}", end="", flush=True)
    if progress and jobs:
        print()
    return files
