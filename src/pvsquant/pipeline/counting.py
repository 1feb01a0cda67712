"""PVS counts per region: GP-Unet and CNN (shipped weights), the Frangi baseline, and the
PVS detected on the GP-Unet attention map.

The networks run on the region's crop cut to the smoothed mask's bounding box; the count
is the sum over the counting mask (:func:`pvsquant.pipeline.roi.count_mask`). Detection: connected
components of the attention map (see :func:`detect_pvs`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputFileNotFoundError, InputImageError
from ..grids import bounding_box, world_coordinates
from ..io import DeferredWrites
from ..labels import METHODS, NETWORKS
from ..models import Weights, load_weights
from ..types import FrangiSettings, RegionCrop, Settings, Volume
from .frangi import count_frangi
from .roi import count_mask

log = logging.getLogger(__name__)

"""Model names in counts.tsv (stable)."""

PRIMARY_MODEL: dict[str, str] = {
    "centrum_semiovale": "gpunet",
    "basal_ganglia": "gpunet",
    "hippocampi": "gpunet",
    "midbrain": "gpunet",
}
"""The count reported as *the* result of each region (the others are secondary): of the methods
whose count increase follows injected PVS with Pearson r >= 0.9 on the counting benchmark
(``benchmarks/results_counting.md``, 3 real clinical T2s, weights 0.3, basal-ganglia GP-Unet 0.5,
hippocampal GP-Unet 0.6, midbrain GP-Unet 0.8), the one with the smallest mean absolute error against
the number injected (``tests/test_counting.py`` checks the choice against the committed results).
Measured (MAE; r): centrum semiovale GP-Unet 4.4 (0.97), CNN 4.9 (0.95), Frangi 7.9 (0.94); basal ganglia
GP-Unet 1.5 (0.99), Frangi 3.0 (0.99), CNN 6.0 (0.98); hippocampi GP-Unet 8.7 (0.92), CNN 16.1 (0.92),
Frangi r < 0.9 (14.4 at 0.79); midbrain GP-Unet 5.9 (0.96; version 0.3: 11.1), Frangi 9.9 (0.92), CNN 12.3 (0.93).
The detected PVS (pvs.tsv) are always the GP-Unet's."""


def primary_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{region: {"model", "count"}}``: the primary count of each region from counts rows."""
    counts = {(r["region"], r["model"]): r["count"] for r in rows}
    return {region: {"model": model, "count": counts.get((region, model))} for region, model in PRIMARY_MODEL.items()
            if (region, model) in counts}


@dataclass(frozen=True)
class Detection:
    """One detected PVS: world RAS+ mm of its attention peak."""

    region: str
    xyz: tuple[float, float, float]
    peak: float
    size_vox: int


@dataclass
class RegionCounts:
    """What the counting stage produced for one region (maps on the crop's box grid)."""

    region: str
    counts: dict[str, float]
    attention: Volume
    detections: list[Detection]
    detection_labels: Volume
    frangi_labels: Volume
    seconds: dict[str, float] = field(default_factory=dict)
    vesselness: Volume | None = None
    """The networks' vesselness channel on the crop grid (three-channel networks only)."""
    counting_mask: np.ndarray | None = None
    """Where the counts were summed (:func:`pvsquant.pipeline.roi.count_mask`), on the crop grid."""


def shipped_models_dir() -> Path:
    return Path(str(resources.files("pvsquant") / "data" / "models"))


def load_models(models_dir: str | Path | None = None, threads: int = 2) -> dict[tuple[str, str], Weights]:
    """All ``<region>_<model>.pt`` weights of a folder (the shipped ones by default), ready to run.

    A user's folder (fine-tuned models) may hold only some: the shipped ones fill the rest.
    """
    import torch

    torch.set_num_threads(threads)
    found: dict[tuple[str, str], Weights] = {}
    folders = [shipped_models_dir()] + ([Path(models_dir)] if models_dir else [])
    for folder in folders:
        if not folder.is_dir():
            raise InputFileNotFoundError(f"models folder {folder} does not exist")
        for f in sorted(folder.glob("*.pt")):
            weights = load_weights(f)
            # channels-last 3D convolutions: ~1.5x faster on CPU, the same numbers (tests/test_counting.py)
            weights.network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            found[(weights.region, weights.model)] = weights
    return found


DETECTION_FLOOR = 2.5e-4
"""The map's faint rim over which a detection's core is grown (PVS per voxel): a tenth of a 20 mm
PVS's mean per-voxel mass, so a detection's mass is its PVS's whole mass."""


def peak_cores(attention: np.ndarray, level: float, prominence: float) -> tuple[np.ndarray, int]:
    """Labelled peaks of the map above ``level`` whose dynamic is at least ``prominence``: the map
    must fall that much below the peak on every path to a higher peak (h-maxima). Neighbouring
    PVS whose maps touch above ``level`` get a peak each; a PVS's small ripples, and a faint bump
    beside a brighter PVS, none (the watershed gives its voxels to the brighter peak).

    Computed per connected component of the map above ``level - prominence`` (no path between
    two peaks above ``level`` that dips below it decides either's dome), the rest of its box held
    at that value: the same peaks as over the whole map, at a fraction of the time. The highest
    peak of each component always counts, whatever the prominence (the map's 0 between PVS is no
    saddle: a prominence above the map's height leaves one peak per component, none is lost)."""
    from skimage.morphology import local_maxima, reconstruction

    if prominence < 0:
        raise ValueError(f"prominence must be 0 or more, got {prominence}")
    full = np.ones((3, 3, 3), bool)
    peaks = np.zeros(attention.shape, bool)
    # Held below every peak above ``level`` by at least ``prominence``, so each component's top is a dome.
    floor = level - prominence
    components, _ = ndimage.label(attention > max(floor, 0.0), structure=full)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == index
        values = attention[box]
        above = inside & (values > level)
        if not above.any():
            continue
        # Padded by one voxel at ``floor``: a dome that fills its whole box still has a lower rim.
        held = np.pad(np.where(inside, values, floor).astype(np.float64), 1, constant_values=floor)
        # The h-maxima transform; its regional maxima are the domes that rise ``prominence`` above
        # their surroundings, each one connected plateau (a long PVS's ripples stay one dome).
        domes = reconstruction(held - prominence, held, method="dilation", footprint=full)
        peaks[box] |= local_maxima(domes, footprint=full)[1:-1, 1:-1, 1:-1] & above
    return ndimage.label(peaks, structure=full)


def detect_pvs(attention: np.ndarray, region: np.ndarray, level: float = Settings.detection_level,
               min_mass: float = Settings.detection_min_mass, prominence: float | None = None
               ) -> tuple[np.ndarray, list[tuple[tuple[int, int, int], float, int, float]]]:
    """PVS as connected components (26-connected) of the attention map above ``level`` (grown by
    watershed over the map above :data:`DETECTION_FLOOR`, or ``level`` where that is lower), whose
    peak lies in the region and whose mass (sum of the map, i.e. PVS) is at least
    ``min_mass``. Returns (label array, [(peak voxel, peak value, size in voxels, mass)]).

    With a ``prominence`` (PVS per voxel), the cores are the map's peaks above ``level`` that rise
    that much above the saddle towards any higher peak (:func:`peak_cores`; per region in
    ``Settings.detection_prominence``, chosen in ``benchmarks/results_detection.md``): one
    detection per PVS where neighbouring PVS's maps touch above ``level``.

    A component peaking in the counting mask's 1 mm rim outside the region still adds to the
    count (the map's sum there) but is no detection of the region: a PVS is listed in the
    region that holds its centre.

    The map lights a PVS along its axis with a unit mass: ~0.0025 per voxel along a 20 mm PVS on
    average (more at its centre), ~0.025 at a 2 mm one. A core needs only the PVS's brightest
    voxels above ``level``; growing it down to the floor collects the PVS's whole mass, while a
    low ``level`` would merge neighbouring PVS into one component (``benchmarks/results_detection.md``).
    """
    from skimage.segmentation import watershed

    labels = np.zeros(attention.shape, np.int32)
    grown = attention > min(DETECTION_FLOOR, level)
    if not grown.any():
        return labels, []
    # Everything below happens in the bounding box of the grown map (the same result,
    # in C order too; the map is 0 over most of a crop).
    box = bounding_box(grown)
    offset = np.array([b.start for b in box])
    full_attention, attention, grown, region = attention, attention[box], grown[box], region[box]
    if prominence is None:
        cores, n = ndimage.label(attention > level, structure=np.ones((3, 3, 3), bool))
    else:
        cores, n = peak_cores(attention, level, prominence)
    if n == 0:
        return labels, []
    # Each core grown over the map's fainter rim (down to the floor), so its mass is the PVS's whole mass.
    components = watershed(-attention, cores, mask=grown)
    # Per component: mass, size and peak (the first voxel in C order among equal maxima), from the
    # few voxels in components: no sort or pass over the whole crop per PVS.
    flat = np.flatnonzero(components)
    ids = components.ravel()[flat]
    values = attention.ravel()[flat]
    masses = np.bincount(ids, weights=values, minlength=n + 1)[1:]
    sizes = np.bincount(ids, minlength=n + 1)[1:]
    order = np.lexsort((-values, ids))  # stable: ties keep the lower flat index first
    starts = np.r_[0, np.flatnonzero(np.diff(ids[order])) + 1]
    peak_flat = np.zeros(n, np.int64)
    peak_flat[ids[order[starts]] - 1] = flat[order[starts]]
    new_id = np.zeros(n + 1, np.int32)
    found = []
    for i in range(n):
        peak = np.unravel_index(peak_flat[i], attention.shape)
        if masses[i] < min_mass or not region[peak]:
            continue
        centre = (int(peak[0] + offset[0]), int(peak[1] + offset[1]), int(peak[2] + offset[2]))
        found.append((centre, float(full_attention[centre]), int(sizes[i]), float(masses[i])))
        new_id[i + 1] = len(found)
    labels[box] = new_id[components]
    return labels, found


# Voxels of context around the counting mask that the networks see (2 mm in-plane, 3.2 mm across
# slices on the 0.5 x 0.5 x 0.8 mm grid). Training crops cut through regions anywhere, so a box
# edge this close is what the networks were trained on; a wider box only costs time (the
# smoothed mask's support + 6 voxels, used up to pvsquant 0.2: the count stage 29% slower).
BOX_MARGIN_VOXELS = 4


def network_box(counting: np.ndarray, margin: int = BOX_MARGIN_VOXELS, multiple: int = 4) -> tuple[slice, ...]:
    """Bounding box of the counting mask with a margin, sized to a multiple of ``multiple`` (the
    networks' pooling) and kept inside the crop."""
    support = bounding_box(counting, np.full(counting.ndim, margin))
    lo = np.array([b.start for b in support])
    size = np.array([b.stop for b in support]) - lo
    size = np.minimum(size + (-size) % multiple, counting.shape)
    lo = np.maximum(np.minimum(lo, np.asarray(counting.shape) - size), 0)
    return tuple(slice(int(a), int(a + s)) for a, s in zip(lo, size, strict=False))


@dataclass
class NetworkInput:
    """What the networks of a region see, cut to ``box`` (:func:`network_box`), and the counting mask there.

    Three channels (the default networks): the unmasked T2 scaled to the region
    (:func:`pvsquant.pipeline.roi.scale_to_region`), its Frangi vesselness, and the region itself.
    Two channels (weights of pvsquant <= 0.1, the paper's input): the masked, min-max
    normalised T2 and the vesselness of that."""

    x: Any  # torch tensor (1, C, X, Y, Z)
    mask: Any  # torch tensor (1, 1, X, Y, Z)
    box: tuple[slice, ...]
    frangi: Any  # FrangiResult of the box; None when the crop's saved vesselness was reused
    counting: np.ndarray  # the counting mask on the whole crop (``mask`` is its box)


def network_input(crop: RegionCrop, spacing_mm: tuple[float, float, float], channels: int = 3,
                  frangi_settings: FrangiSettings | None = None, reuse_vesselness: bool = False,
                  workers: int = 1) -> NetworkInput:
    """The networks' input of one region crop (shared by counting and fine-tuning); the vesselness
    channel and the Frangi baseline by ``frangi_settings`` (``Settings().frangi`` by default).
    With ``reuse_vesselness`` a crop read back from a run (``crop.vesselness``) gives its saved
    vesselness channel instead (no Frangi count then)."""
    import dataclasses

    import torch

    frangi_settings = frangi_settings or Settings().frangi

    region_mask = crop.inside
    counting = count_mask(region_mask, spacing_mm)
    box = network_box(counting)
    region = np.where(region_mask[box], 1.0, 0.0).astype(np.float32)
    if channels == 3:
        if crop.t2 is None:
            where = crop.image.source.parent if crop.image.source is not None else "this run"
            raise InputImageError(f"{where}: the {crop.region} crop has no unmasked T2 ({crop.region}_t2.nii.gz; "
                                  "runs of pvsquant 0.1 lack it); re-run pvsquant run for this subject")
        image = crop.t2.array[box]
        if reuse_vesselness and crop.vesselness is not None and crop.vesselness.shape == crop.t2.shape:
            frangi, vesselness = None, crop.vesselness.array[box]
        else:
            frangi = count_frangi(image, region, spacing_mm, frangi_settings, workers)
            vesselness = frangi.vesselness
        stacked = np.stack([image, vesselness, region])
    elif channels == 2:
        image = crop.image.array[box]
        frangi = count_frangi(image, region, spacing_mm, dataclasses.replace(frangi_settings, fill_outside=True),
                              workers)
        stacked = np.stack([image, frangi.vesselness])
    else:
        raise ValueError(f"networks take 2 or 3 input channels, not {channels}")
    x = torch.from_numpy(np.ascontiguousarray(stacked.astype(np.float32)))[None].contiguous(
        memory_format=torch.channels_last_3d)
    m = torch.from_numpy(np.ascontiguousarray(counting[box], dtype=np.float32))[None, None]
    return NetworkInput(x, m, box, frangi, counting)


def model_channels(models: dict[tuple[str, str], Weights], region: str) -> int:
    """Input channels of a region's networks (they must agree)."""
    found = {w.in_channels for (r, _), w in models.items() if r == region}
    if len(found) > 1:
        raise InputImageError(f"the {region} networks take different inputs ({sorted(found)} channels); "
                              "use weights of one pvsquant version")
    return found.pop() if found else 3


def count_region(crop: RegionCrop, models: dict[tuple[str, str], Weights], spacing_mm: tuple[float, float, float],
                 level: float = Settings.detection_level, min_mass: float = Settings.detection_min_mass,
                 frangi_settings: FrangiSettings | None = None, workers: int = 1,
                 prominence: float | None = None) -> RegionCounts:
    """Counts of one region by every model, the attention map and the detected PVS (Frangi on
    ``workers`` threads; the networks on torch's).

    A network's count is the sum of its output over the counting mask; where that sum is below 0
    (the GP-Unet's mass read-out can be slightly negative on a gated voxel, the CNN's regression
    on an empty region), the count is 0."""
    import torch

    start = time.perf_counter()
    net_input = network_input(crop, spacing_mm, model_channels(models, crop.region), frangi_settings,
                              workers=workers)
    image, box, frangi, x, m = crop.image.array, net_input.box, net_input.frangi, net_input.x, net_input.mask
    frangi_labels = np.zeros(image.shape, np.int32)
    frangi_labels[box] = frangi.labels
    counts: dict[str, float] = {"frangi": float(frangi.count)}
    seconds: dict[str, float] = {"frangi": round(time.perf_counter() - start, 3)}
    attention = np.zeros(image.shape, np.float32)
    for name in NETWORKS:
        weights = models.get((crop.region, name))
        if weights is None:
            raise KeyError(f"no {name} weights for region {crop.region}")
        start = time.perf_counter()
        with torch.inference_mode():
            value, amap = weights.network(x, m)
        seconds[name] = round(time.perf_counter() - start, 3)
        counts[name] = max(0.0, float(value[0]))  # a count is not negative (see the docstring)
        if name == "gpunet":
            attention[box] = amap[0, 0].numpy()
    labels, found = detect_pvs(attention, crop.inside, level, min_mass, prominence)
    affine = crop.image.affine
    centres = [world_coordinates(affine, np.array([p]))[0] for p, *_ in found]
    detections = [Detection(crop.region, (float(c[0]), float(c[1]), float(c[2])), peak, size)
                  for c, (_, peak, size, _) in zip(centres, found, strict=True)]
    vesselness = None
    if x.shape[1] == 3:  # the vesselness channel on the whole crop grid, for fine-tuning to reuse
        full = np.zeros(image.shape, np.float32)
        full[box] = x[0, 1].numpy()
        vesselness = Volume(full, affine)
    return RegionCounts(crop.region, counts, Volume(attention, affine), detections, Volume(labels, affine),
                        Volume(frangi_labels, affine), seconds, vesselness, net_input.counting)


def counts_rows(results: dict[str, RegionCounts], regions: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of counts.tsv: every region x model; ``None`` (written n/a) where a region is empty."""
    rows = []
    for region in regions:
        for model in METHODS:
            value = results[region].counts.get(model) if region in results else None
            rows.append({"region": region, "model": model, "count": None if value is None else round(value, 2)})
    return rows


def save_count_outputs(results: dict[str, RegionCounts], regions: tuple[str, ...], t2: Volume,
                       out_dir: Path, writes: DeferredWrites | None = None) -> list[dict[str, Any]]:
    """counts.tsv/json, attention_<region>.nii.gz, pvs.nii.gz and pvs.tsv (T2 grid, world RAS+ mm);
    the images through ``writes`` when given (written later, on its thread), else at once."""
    from ..io import write_json, write_tsv

    rows = counts_rows(results, regions)
    write_tsv([{**r, "count": "n/a" if r["count"] is None else str(r["count"])} for r in rows],
              ("region", "model", "count"), out_dir / "counts.tsv")
    write_json(rows, out_dir / "counts.json")
    table: list[dict[str, Any]] = []
    for region, res in results.items():
        for det in res.detections:
            table.append({"id": len(table) + 1, "region": region, "x": f"{det.xyz[0]:.2f}", "y": f"{det.xyz[1]:.2f}",
                          "z": f"{det.xyz[2]:.2f}", "peak": f"{det.peak:.5f}", "size_vox": det.size_vox})
    write_tsv(table, ("id", "region", "x", "y", "z", "peak", "size_vox"), out_dir / "pvs.tsv")
    if writes is None:
        _write_count_images(results, t2, out_dir)
    else:
        writes.add(_write_count_images, results, t2, out_dir)
    return rows


def _write_count_images(results: dict[str, RegionCounts], t2: Volume, out_dir: Path) -> None:
    """attention_<region>.nii.gz, roi/<region>_vesselness.nii.gz and pvs.nii.gz (ids as in pvs.tsv:
    region by region, in detection order)."""
    from ..io import save_volume
    from .roi import paste_back

    pvs = np.zeros(t2.shape, np.int32)
    next_id = 1
    inv = np.linalg.inv(t2.affine)
    for region, res in results.items():
        save_volume(paste_back(res.attention, t2), out_dir / f"attention_{region}.nii.gz", dtype=np.float32)
        if res.vesselness is not None:
            save_volume(res.vesselness, out_dir / "roi" / f"{region}_vesselness.nii.gz", dtype=np.float32)
        if not res.detections:
            continue
        on_t2 = paste_back(res.detection_labels, t2, order=0).array.astype(np.int32)
        free = (on_t2 > 0) & (pvs == 0)  # a voxel already taken by another region's PVS stays with it
        pvs[free] = on_t2[free] + (next_id - 1)
        for det in res.detections:
            vox = np.round(inv[:3, :3] @ np.asarray(det.xyz) + inv[:3, 3]).astype(int)
            if np.all((vox >= 0) & (vox < np.asarray(t2.shape))):
                pvs[tuple(vox)] = next_id  # a PVS thinner than a slice still marks its peak
            next_id += 1
    save_volume(t2.with_array(pvs), out_dir / "pvs.nii.gz", dtype=np.int32)
