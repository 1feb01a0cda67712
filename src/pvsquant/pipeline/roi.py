"""Network inputs, exactly as Dubost et al.: per region, the T2 resampled to 0.5 x 0.5 x 0.8 mm,
multiplied by the dilated and Gaussian-smoothed region mask, cropped to a fixed box centred
on the region (zero-padded where the box leaves the scan) and min-max normalised to [0, 1]
inside the mask.

The 0.5 x 0.5 x 0.8 mm grid follows the T2's own (possibly oblique) axes, reordered and
flipped to the closest RAS+ so that every crop has the same layout (x: right, y: anterior,
z: superior, 0.8 mm through-plane) whatever the acquisition orientation. Only the box is
resampled, never the whole grid; the box's own affine places it in T2 world space, so a map
computed on it pastes back with :func:`paste_back`.
"""
from __future__ import annotations

from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..grids import dilate_ball, resample, voxel_indices, world_coordinates
from ..io import DeferredWrites
from ..types import REGION_CODES, RegionCrop, Settings, Volume
from .regions import Regions


def network_grid(t2: Volume, spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The network-input grid: the T2's axes in closest-RAS+ order, ``spacing_mm`` voxels,
    covering the T2's field of view."""
    ornt = nib.orientations.io_orientation(t2.affine)
    directions = np.zeros((3, 3))
    for axis in range(3):
        column = t2.affine[:3, axis] / np.linalg.norm(t2.affine[:3, axis])
        directions[:, int(ornt[axis, 0])] = column * ornt[axis, 1]
    spacing = np.asarray(spacing_mm, dtype=float)
    shape = np.asarray(t2.shape, dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    along = world_coordinates(t2.affine, corners) @ directions  # corner coordinates on the new axes
    lo, hi = along.min(axis=0), along.max(axis=0)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = directions @ (lo + spacing / 2)
    grid_shape = tuple(int(n) for n in np.maximum(1, np.round((hi - lo) / spacing - 1e-6)))
    return affine, grid_shape  # type: ignore[return-value]


def box_grid(grid_affine: np.ndarray, centre_mm: np.ndarray, box_shape: tuple[int, int, int]
             ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and start index of a box of ``box_shape`` voxels of the grid, centred on a world point."""
    centre_vox = voxel_indices(grid_affine, centre_mm[None])[0]
    start = tuple(int(v) for v in np.round(centre_vox - (np.asarray(box_shape) - 1) / 2.0))
    affine = np.array(grid_affine, dtype=float)
    affine[:3, 3] = world_coordinates(grid_affine, np.asarray(start)[None])[0]
    return affine, start  # type: ignore[return-value]


def crop_region(t2: Volume, regions: Regions, region: str, settings: Settings = Settings()) -> RegionCrop | None:
    """The network input of one region, or None when the region is empty."""
    code = REGION_CODES[region]
    work = regions.work
    idx = np.argwhere(work.array == code)
    if idx.size == 0:
        return None
    spacing = np.asarray(settings.target_spacing_mm, dtype=float)
    grid_affine, _ = network_grid(t2, settings.target_spacing_mm)
    box_shape = tuple(round(m / s) for m, s in zip(settings.roi_box_mm[region], spacing, strict=False))

    world = world_coordinates(work.affine, idx)
    centre = (world.min(axis=0) + world.max(axis=0)) / 2.0  # bounding-box centre
    box_affine, start = box_grid(grid_affine, centre, box_shape)
    in_box = voxel_indices(box_affine, world)
    clipped = bool(np.any(in_box < -0.5) or np.any(in_box > np.asarray(box_shape) - 0.5))

    image = resample(t2, box_affine, box_shape, order=1).array
    region_mask = work.with_array((work.array == code).astype(np.float32))
    inside = resample(region_mask, box_affine, box_shape, order=1).array >= 0.5
    normalised, soft = normalise_in_mask(image, inside, spacing, settings)
    scaled = scale_to_region(image, inside, settings)
    return RegionCrop(region=region, image=Volume(normalised, box_affine), mask=Volume(soft, box_affine),
                      grid_affine=grid_affine, box_start=start, box_shape=box_shape,
                      clipped=clipped, region_mask=Volume(inside, box_affine), t2=Volume(scaled, box_affine))


def scale_to_region(image: np.ndarray, region_mask: np.ndarray, settings: Settings = Settings()) -> np.ndarray:
    """The networks' T2 channel: the resampled T2 box, *not* masked, divided by the region's median
    and multiplied by ``settings.region_reference_level``, clipped to [0, ``region_clip_level``].

    The paper's input (:func:`normalise_in_mask`) multiplies the T2 with a smoothed mask, which
    draws a bright-to-black edge around every region: the first networks learned to count it.
    Here the anatomy around the region stays as it is (cortex, sulci, ventricles, cisterns are
    seen for what they are) and the region enters the networks as a separate channel. Shared by
    the pipeline and the synthetic training data."""
    inside = region_mask.astype(bool)
    values = image[inside & (image > 0)]
    if values.size == 0:  # an empty region: scale by the whole box
        values = image[image > 0] if np.any(image > 0) else np.ones(1, np.float32)
    median = float(np.median(values))
    scaled = image * (settings.region_reference_level / max(median, 1e-6))
    return np.clip(scaled, 0.0, settings.region_clip_level).astype(np.float32)


def count_mask(region_mask: np.ndarray, spacing_mm: np.ndarray | tuple[float, ...], margin_mm: float = 1.0
               ) -> np.ndarray:
    """Where a region's PVS density is summed: the region grown by ``margin_mm``, so that the
    density blob of a PVS on the region's edge is counted whole."""
    return dilate_ball(region_mask.astype(bool), margin_mm, spacing_mm)


def normalise_in_mask(image: np.ndarray, region_mask: np.ndarray, spacing_mm: np.ndarray | tuple[float, ...],
                      settings: Settings = Settings()) -> tuple[np.ndarray, np.ndarray]:
    """The paper's preprocessing of a resampled T2 box: region mask dilated and Gaussian-smoothed,
    multiplied with the T2, min-max normalised to [0, 1] inside it.

    Returns (normalised image, smoothed mask). Shared by the pipeline and the synthetic
    training data, so both see exactly the same transformation.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    mask = region_mask.astype(bool)
    if settings.roi_dilation_mm > 0:
        mask = dilate_ball(mask, settings.roi_dilation_mm, spacing)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma=settings.roi_smoothing_sigma_mm / spacing)
    masked = image * soft
    support = soft > 1e-2
    lo, hi = (float(masked[support].min()), float(masked[support].max())) if support.any() else (0.0, 1.0)
    normalised = np.where(support, (masked - lo) / max(hi - lo, 1e-6), 0.0).clip(0, 1).astype(np.float32)
    return normalised, soft


def crop_regions(t2: Volume, regions: Regions, settings: Settings = Settings()) -> dict[str, RegionCrop]:
    """Network inputs of every non-empty region."""
    crops = {}
    for region in REGION_CODES:
        crop = crop_region(t2, regions, region, settings)
        if crop is not None:
            crops[region] = crop
    return crops


def paste_back(box_map: Volume, t2: Volume, order: int = 1) -> Volume:
    """A map computed on a crop (e.g. an attention map), put back on the T2 grid."""
    return resample(box_map, t2.affine, t2.shape, order=order)


def save_crop(crop: RegionCrop, roi_dir: Path, writes: DeferredWrites | None = None) -> None:
    """``<region>.nii.gz`` (the paper's masked input), ``<region>_mask.nii.gz`` (smoothed mask),
    ``<region>_region.nii.gz`` (the region itself) and ``<region>_t2.nii.gz`` (the unmasked,
    region-scaled T2 the networks see) in ``roi_dir``; through ``writes`` when given."""
    from ..io import save_volume

    def save(volume: Volume, name: str, dtype: type) -> None:
        if writes is None:
            save_volume(volume, roi_dir / name, dtype=dtype)
        else:
            writes.add(save_volume, volume, roi_dir / name, dtype)

    save(crop.image, f"{crop.region}.nii.gz", np.float32)
    save(crop.mask, f"{crop.region}_mask.nii.gz", np.float32)
    if crop.region_mask is not None:
        save(crop.region_mask.with_array(crop.region_mask.array.astype(np.uint8)), f"{crop.region}_region.nii.gz",
             np.uint8)
    if crop.t2 is not None:
        save(crop.t2, f"{crop.region}_t2.nii.gz", np.float32)


def _read_map(path: Path, what: str) -> Volume:
    """A map pvsquant wrote itself (no brain-size checks: crops are small)."""
    from ..errors import InputImageError

    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        return Volume(np.asarray(img.dataobj, dtype=np.float32), img.affine, path)
    except Exception as exc:
        raise InputImageError(f"{what} {path} is unreadable ({type(exc).__name__}: {exc}); "
                              "re-run pvsquant run for this subject") from exc


def load_crop(roi_dir: Path, region: str) -> RegionCrop | None:
    """A crop written by :func:`save_crop` (None when the region was empty). Outputs written
    before the ``_region`` file existed have none: the smoothed mask above 0.5 stands in for it."""
    path = Path(roi_dir) / f"{region}.nii.gz"
    if not path.is_file():
        return None
    image = _read_map(path, f"{region} network input")
    mask = _read_map(Path(roi_dir) / f"{region}_mask.nii.gz", f"{region} mask")
    region_file = Path(roi_dir) / f"{region}_region.nii.gz"
    inside = _read_map(region_file, f"{region} region").array > 0 if region_file.is_file() else mask.array >= 0.5
    t2_file = Path(roi_dir) / f"{region}_t2.nii.gz"
    t2 = _read_map(t2_file, f"{region} T2 network input") if t2_file.is_file() else None
    vesselness_file = Path(roi_dir) / f"{region}_vesselness.nii.gz"
    vesselness = _read_map(vesselness_file, f"{region} vesselness") if vesselness_file.is_file() else None
    return RegionCrop(region=region, image=image, mask=mask, grid_affine=image.affine, box_start=(0, 0, 0),
                      box_shape=image.shape, clipped=False, region_mask=image.with_array(inside), t2=t2,
                      vesselness=vesselness)
