"""Pictures for people: the regions on the T2, the network inputs, the attention maps, the
detected PVS and the registration check (each a PNG in the output folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D

from ..types import REGION_CODES, Volume

REGION_COLOURS = {
    "centrum_semiovale": "#00e5ff",
    "basal_ganglia": "#ffd400",
    "hippocampi": "#ff3d7f",
    "midbrain": "#7CFC00",
}
TITLE_Y = 1.0
"""Panel titles just above their image, placed explicitly: left to itself matplotlib places each
title by measuring the hidden axes' tick labels, which took ~2.5 of the ~4.5 s of a run's figures."""



def save_figure(fig: Any, path: str | Path, dpi: int = 80, dark: bool = False) -> Path:
    """Write a matplotlib figure as PNG (black background for image panels) and close it."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="black" if dark else "white")
    plt.close(fig)
    return path

def to_ras(volume: Volume) -> np.ndarray:
    """The array reoriented to the closest RAS+ axes (for display only)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    return nib.orientations.apply_orientation(volume.array, ornt)


def axial_aspect(volume: Volume) -> float:
    """Display aspect (row spacing / column spacing) of axial slices of the RAS-reoriented array."""
    ornt = nib.orientations.io_orientation(volume.affine)
    spacing = volume.spacing_mm[np.argsort(ornt[:, 0])]
    return float(spacing[1] / spacing[0])


def plot_regions_mosaic(t2: Volume, regions: Volume, path: str | Path, title: str = "", n_slices: int = 16) -> Path:
    """Save an axial mosaic of the T2 with each region's contour; ``regions`` is on the T2 grid."""
    image = to_ras(t2).astype(np.float32)
    labels = to_ras(regions)
    nz = image.shape[2]
    with_regions = np.flatnonzero(labels.reshape(-1, nz).any(axis=0))
    if with_regions.size:
        lo, hi = max(0, with_regions.min() - 2), min(nz - 1, with_regions.max() + 2)
    else:
        lo, hi = 0, nz - 1
    slices = np.unique(np.linspace(lo, hi, min(n_slices, hi - lo + 1)).round().astype(int))
    cols = 4
    rows = int(np.ceil(len(slices) / cols))
    vmax = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
    aspect = axial_aspect(t2)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.4), facecolor="black")
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, k in zip(np.atleast_1d(axes).ravel(), slices, strict=False):
        ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspect)
        for name, code in REGION_CODES.items():
            m = labels[:, :, k] == code
            if m.any():
                ax.contour(m.T.astype(float), levels=[0.5], colors=REGION_COLOURS[name], linewidths=0.8)
        ax.set_title(f"slice {k}", color="white", fontsize=8, y=TITLE_Y)
    handles = [Line2D([0], [0], color=c, lw=2, label=n.replace("_", " ")) for n, c in REGION_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, facecolor="black", labelcolor="white", frameon=False)
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    return save_figure(fig, path, dpi=90, dark=True)


def plot_roi_crops(crops: dict, path: str | Path, n_slices: int = 5) -> Path:
    """One row per region: axial slices of the network input (RAS layout) with the mask contour."""
    rows = len(crops)
    fig, axes = plt.subplots(max(rows, 1), n_slices, figsize=(n_slices * 2.6, max(rows, 1) * 2.8),
                             facecolor="black", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (name, crop) in enumerate(crops.items()):
        image, mask = crop.image.array, crop.mask.array
        zs = np.flatnonzero((mask > 0.5).any(axis=(0, 1)))
        if zs.size == 0:
            continue
        spacing = crop.image.spacing_mm
        for col, k in enumerate(np.linspace(zs.min(), zs.max(), n_slices + 2)[1:-1].round().astype(int)):
            ax = axes[row, col]
            ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=1,
                      aspect=spacing[1] / spacing[0])
            ax.contour((mask[:, :, k] > 0.5).T.astype(float), levels=[0.5], colors=REGION_COLOURS[name],
                       linewidths=0.6)
            ax.set_title(f"{name.replace('_', ' ')} z={k}", color="white", fontsize=7, y=TITLE_Y)
    fig.tight_layout()
    path = Path(path)
    return save_figure(fig, path, dpi=80, dark=True)


def display_box(region: np.ndarray, margin: int = 6) -> tuple[slice, slice]:
    """In-plane bounding box (x, y) of a region over all its slices, with a margin: the part of a
    crop worth showing."""
    idx = np.argwhere(region.any(axis=2))
    if idx.size == 0:
        return slice(None), slice(None)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, region.shape[:2])
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def attention_vmax(attention: np.ndarray, region: np.ndarray) -> float:
    """Upper display level of an attention map: its 99.5th percentile of positive values in the
    region (a few hot spots would otherwise leave the rest of the map black)."""
    positive = attention[region & (attention > 0)]
    return max(float(np.percentile(positive, 99.5)) if positive.size else float(attention.max()), 1e-6)


def region_view(crop, res) -> tuple[np.ndarray, ...]:
    """A region's T2 (the networks' unmasked channel, or the masked input of older runs), attention,
    detection labels and region mask cut to :func:`display_box`, and the number of detected PVS
    on each axial slice."""
    region = crop.inside
    bx, by = display_box(region)
    labels = res.detection_labels.array[bx, by]
    per_slice = np.array([len(np.unique(labels[:, :, k])) - 1 for k in range(labels.shape[2])])
    image = crop.t2.array if crop.t2 is not None else crop.image.array
    return image[bx, by], res.attention.array[bx, by], labels, region[bx, by], per_slice


def _circle_detections(ax, labels2d: np.ndarray) -> int:
    ids = [i for i in np.unique(labels2d) if i > 0]
    for i in ids:
        xs, ys = np.nonzero(labels2d == i)
        ax.plot(xs.mean(), ys.mean(), "o", mfc="none", mec="cyan", ms=8, mew=0.9)
    return len(ids)


def plot_attention(crops: dict, counted: dict, path: str | Path) -> Path:
    """Per region, as the paper's Fig. 2: the T2 crop, the GP-Unet attention map with the region's
    contour, and their overlay with the detected PVS circled, on the axial slice with most detections."""
    rows = [name for name in crops if name in counted]
    fig, axes = plt.subplots(max(len(rows), 1), 3, figsize=(10.5, 3.4 * max(len(rows), 1)),
                             facecolor="black", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, name in enumerate(rows):
        crop, res = crops[name], counted[name]
        image, att, labels, region, per_slice = region_view(crop, res)
        k = int(per_slice.argmax()) if per_slice.max() > 0 else int(np.argmax(region.sum(axis=(0, 1))))
        spacing = crop.image.spacing_mm
        aspect = spacing[1] / spacing[0]
        vmax = attention_vmax(att, region)
        title = (f"{name.replace('_', ' ')} z={k}: GP-Unet {res.counts['gpunet']:.1f}, "
                 f"CNN {res.counts['cnn']:.1f}, Frangi {res.counts['frangi']:.0f}")
        axes[row, 0].imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspect)
        axes[row, 0].set_title(title, color="white", fontsize=8, loc="left", y=TITLE_Y)
        axes[row, 1].imshow(att[:, :, k].T, cmap="inferno", origin="lower", vmin=0, vmax=vmax, aspect=aspect)
        axes[row, 1].contour(region[:, :, k].T.astype(float), levels=[0.5], colors=REGION_COLOURS[name],
                             linewidths=0.6)
        axes[row, 1].set_title("attention (GP-Unet)", color="white", fontsize=8, y=TITLE_Y)
        axes[row, 2].imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspect)
        axes[row, 2].imshow(np.ma.masked_less(att[:, :, k].T, 0.1 * vmax), cmap="inferno", origin="lower",
                            vmin=0, vmax=vmax, alpha=0.6, aspect=aspect)
        n = _circle_detections(axes[row, 2], labels[:, :, k])
        axes[row, 2].set_title(f"overlay, {n} detected PVS on this slice", color="white", fontsize=8, y=TITLE_Y)
    fig.tight_layout()
    path = Path(path)
    return save_figure(fig, path, dpi=80, dark=True)


def plot_detections(crops: dict, counted: dict, path: str | Path, n_slices: int = 4) -> Path:
    """Per region, the axial slices of the network input with the most detected PVS, each
    detection circled (cyan) where its component lies on that slice, with the region's contour."""
    rows = [name for name in crops if name in counted]
    fig, axes = plt.subplots(max(len(rows), 1), n_slices, figsize=(2.9 * n_slices, 3.1 * max(len(rows), 1)),
                             facecolor="black", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, name in enumerate(rows):
        crop, res = crops[name], counted[name]
        image, _, labels, region, per_slice = region_view(crop, res)
        with_region = np.flatnonzero(region.any(axis=(0, 1)))
        if per_slice.max() > 0:
            chosen = sorted(np.argsort(-per_slice, kind="stable")[:n_slices])
        elif with_region.size:
            chosen = list(np.linspace(with_region.min(), with_region.max(), n_slices + 2)[1:-1].round().astype(int))
        else:
            continue
        spacing = crop.image.spacing_mm
        for col, k in enumerate(chosen):
            ax = axes[row, col]
            ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=spacing[1] / spacing[0])
            ax.contour(region[:, :, k].T.astype(float), levels=[0.5], colors=REGION_COLOURS[name], linewidths=0.5)
            n = _circle_detections(ax, labels[:, :, k])
            ax.set_title(f"{name.replace('_', ' ')} z={k}: {n} PVS", color="white", fontsize=8, y=TITLE_Y)
    fig.tight_layout()
    path = Path(path)
    return save_figure(fig, path, dpi=80, dark=True)


def plot_registration(t1: Volume, t2: Volume, t2_to_t1: np.ndarray, path: str | Path, n_slices: int = 4) -> Path:
    """Registration check: edges of the registered T1 (red) over axial slices of the T2."""
    from skimage.feature import canny

    from ..grids import resample

    t1_on_t2 = resample(t1, t2.affine, t2.shape, order=1, target_to_source_world=t2_to_t1)
    image, moving = to_ras(t2).astype(np.float32), to_ras(t1_on_t2).astype(np.float32)
    aspect = axial_aspect(t2)
    nz = image.shape[2]
    inside = np.flatnonzero((moving > 0).reshape(-1, nz).mean(axis=0) > 0.05)
    lo, hi = (inside.min(), inside.max()) if inside.size else (0, nz - 1)
    slices = np.linspace(lo, hi, n_slices + 2)[1:-1].round().astype(int)
    vmax = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
    fig, axes = plt.subplots(1, n_slices, figsize=(3.2 * n_slices, 3.6), facecolor="black", squeeze=False)
    for ax, k in zip(axes[0], slices, strict=False):
        ax.axis("off")
        ax.imshow(image[:, :, k].T, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspect)
        sl = moving[:, :, k]
        if np.ptp(sl) > 0:
            edges = canny(sl / np.ptp(sl), sigma=2.0, low_threshold=0.05, high_threshold=0.12)
            ax.imshow(np.ma.masked_where(~edges.T, edges.T), cmap=ListedColormap(["#ff3030"]), origin="lower",
                      aspect=aspect, interpolation="nearest")
        ax.set_title(f"T2 slice {k}, T1 edges in red", color="white", fontsize=8, y=TITLE_Y)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    return save_figure(fig, path, dpi=90, dark=True)
