"""A learned last pass over the deep grey nuclei and hippocampi of the atlas stage.

The atlas stage (:mod:`pvsquant.pipeline.anatomy`) carries the template's labels over and
refines them by intensity; what remains wrong lies on the borders of the small structures
(pallidum against white matter and putamen, hippocampus against CSF and amygdala). Here a
small voxel classifier (an MLP, :class:`SubcorticalRefiner`) relabels the voxels near those
structures from features that both earlier passes had: the T1's intensities at a few scales
(normalised by the subject's own white matter and ventricles), the warped atlas as smoothed
class maps and signed distances, and the intensity refinement's labels.

It is trained on painted SynthSeg label maps that the painted benchmark does not use
(``scripts/train_subcortical_refiner.py``), with the template labels of a leave-one-out
vote, so the atlas errors it sees in training are those of a map the atlas was not built
from. Weights: ``pvsquant/data/atlas/subcortical_refiner.pt`` (beside the template it refines).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..errors import DependencyError
from ..grids import bounding_box, dilate_ball, distance_sq_to_zero
from ..labels import CAUDATE, CORTEX, HIPPOCAMPUS, LATERAL_VENTRICLE, PALLIDUM, PUTAMEN, THALAMUS, WM
from ..types import Volume

CLASSES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("other", ()), ("white matter", WM), ("cortex", CORTEX), ("lateral ventricle", LATERAL_VENTRICLE),
    ("thalamus", THALAMUS), ("caudate", CAUDATE), ("putamen", PUTAMEN), ("pallidum", PALLIDUM),
    ("hippocampus", HIPPOCAMPUS),
)
"""Classes of the classifier, hemispheres merged ((left, right) codes; 'other' is code 0 of the
standardised map: amygdala, ventral diencephalon, extra-ventricular CSF)."""
DEEP = tuple(k for k, (name, _) in enumerate(CLASSES) if name in
             ("thalamus", "caudate", "putamen", "pallidum", "hippocampus"))
REACH_MM = 3.0
"""Voxels within this distance of a deep structure (in the atlas or the refined labels) are
relabelled; the rest keep their label."""
BOX_MARGIN_MM = 10.0
INTENSITY_SIGMAS_MM = (1.0, 2.0, 4.0)
ATLAS_SIGMAS_MM = (1.5, 4.0)
LABEL_SIGMA_MM = 0.75
DISTANCE_CLIP_MM = 8.0
N_FEATURES = 5 + 6 + len(ATLAS_SIGMAS_MM) * len(CLASSES) + len(CLASSES) + len(DEEP) + 2
WEIGHTS = {"t1": "subcortical_refiner.pt", "t2": "subcortical_refiner_t2.pt"}
"""Weights per contrast of the image the atlas was registered to (``Settings.subcortical_refiner``)."""


def distance_map_mm(array: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) of every True voxel to the nearest False one (0 on False voxels)."""
    return np.sqrt(distance_sq_to_zero(array, spacing)).astype(np.float32)


def class_map(labels: np.ndarray) -> np.ndarray:
    """Class index (:data:`CLASSES`) of each standardised code; 0 for every other code."""
    out = np.zeros(labels.shape, np.int64)
    for k, (_, codes) in enumerate(CLASSES):
        if codes:
            out[np.isin(labels, codes)] = k
    return out


def _smooth(x: np.ndarray, sigma_mm: float, spacing: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(x.astype(np.float32), sigma_mm / spacing, truncate=3.0)


def features(image: Volume, atlas: np.ndarray, labels: np.ndarray, mask: np.ndarray
             ) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray]:
    """Per-voxel features of the voxels to relabel.

    ``atlas``: the warped template labels, ``labels``: the refined, standardised labels, both on
    ``image``'s grid. Returns (features [n, N_FEATURES] float32, the box, the voxels in the box
    to relabel; no rows where neither map has a deep structure, e.g. after a failed registration)."""
    spacing = np.asarray(image.spacing_mm, float)
    atlas_cls, label_cls = class_map(atlas), class_map(labels)
    deep_any = np.isin(atlas_cls, DEEP) | np.isin(label_cls, DEEP)
    if not deep_any.any():
        return np.empty((0, N_FEATURES), np.float32), tuple(slice(0, 0) for _ in labels.shape), \
            np.zeros((0,) * labels.ndim, bool)
    box = bounding_box(deep_any, np.ceil(BOX_MARGIN_MM / spacing).astype(int))
    a, lab, m = atlas_cls[box], label_cls[box], mask[box]
    img = image.array[box].astype(np.float32)
    todo = dilate_ball(np.isin(a, DEEP) | np.isin(lab, DEEP), REACH_MM, spacing) & m

    def median_of(k: int, fallback: float) -> float:
        values = img[(lab == k) & m]
        return float(np.median(values)) if values.size > 20 else fallback

    wm = median_of(1, float(np.median(img[m])))
    csf = median_of(3, float(np.percentile(img[m], 2)))
    scale = wm - csf if abs(wm - csf) > 1e-6 else 1.0
    norm = (img - csf) / scale
    columns = [norm]
    smoothed = [_smooth(norm, s, spacing) for s in INTENSITY_SIGMAS_MM]
    columns += smoothed
    gradient = np.sqrt(sum((np.gradient(smoothed[0], axis=i) / spacing[i]) ** 2 for i in range(3)))
    columns.append(gradient)
    constants = [(median_of(k, wm) - csf) / scale for k in (2, *DEEP)]
    for sigma in ATLAS_SIGMAS_MM:
        columns += [_smooth(a == k, sigma, spacing) for k in range(len(CLASSES))]
    columns += [_smooth(lab == k, LABEL_SIGMA_MM, spacing) for k in range(len(CLASSES))]
    for k in DEEP:
        inside = a == k
        if inside.any():
            signed = distance_map_mm(~inside, spacing) - distance_map_mm(inside, spacing)
        else:
            signed = np.full(a.shape, DISTANCE_CLIP_MM, np.float32)
        columns.append(np.clip(signed, -DISTANCE_CLIP_MM, DISTANCE_CLIP_MM) / DISTANCE_CLIP_MM)
    n = int(todo.sum())
    out = np.empty((n, N_FEATURES), np.float32)
    j = 0
    for c in columns[:5]:
        out[:, j] = c[todo]
        j += 1
    out[:, j:j + 6] = np.asarray(constants, np.float32)
    j += 6
    for c in columns[5:]:
        out[:, j] = c[todo]
        j += 1
    out[:, j] = min(spacing[0], spacing[1])
    out[:, j + 1] = spacing.max() / 5.0
    return out, box, todo


class SubcorticalRefiner(nn.Module):
    """Voxel classifier: features -> logits over :data:`CLASSES`."""

    def __init__(self, width: int = 96) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(N_FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                    nn.Linear(width, width), nn.ReLU(), nn.Linear(width, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def hemisphere_codes(labels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """0 where a voxel is nearer the left hemisphere's labels, 1 where nearer the right's."""
    left = np.isin(labels, [codes[0] for _, codes in CLASSES if codes])
    right = np.isin(labels, [codes[1] for _, codes in CLASSES if codes])
    return (distance_map_mm(~right, spacing) < distance_map_mm(~left, spacing)).astype(np.int64)


def refine(image: Volume, atlas: np.ndarray, labels: np.ndarray, mask: np.ndarray,
           model: SubcorticalRefiner) -> np.ndarray:
    """``labels`` (standardised) with the voxels near the deep structures relabelled by ``model``."""
    x, box, todo = features(image, atlas, labels, mask)
    if not len(x):
        return labels
    with torch.inference_mode():
        logits = torch.cat([model(torch.from_numpy(x[i:i + 65536])) for i in range(0, len(x), 65536)])
    chosen = logits.argmax(1).numpy()
    out = labels.copy()
    sub = out[box]
    side = hemisphere_codes(sub, np.asarray(image.spacing_mm, float))[todo]
    codes = np.zeros(len(chosen), np.int32)
    for k, (_, pair) in enumerate(CLASSES):
        if pair:
            here = chosen == k
            codes[here] = np.asarray(pair)[side[here]]
    old = sub[todo]
    # 'other' keeps a code that is already 'other' (brainstem, midbrain, lesion stay as they are).
    keep = (chosen == 0) & (class_map(old) == 0)
    codes[keep] = old[keep]
    sub[todo] = codes
    out[box] = sub
    return out


def weights_path(contrast: str = "t1") -> Path:
    """The shipped weights for images of ``contrast`` ('t1' or 't2')."""
    return Path(str(resources.files("pvsquant") / "data" / "atlas" / WEIGHTS[contrast]))


def load_refiner(contrast: str = "t1", path: Path | None = None) -> SubcorticalRefiner:
    """The shipped refiner for ``contrast`` (or the weights at ``path``)."""
    path = path or weights_path(contrast)
    if not path.is_file():
        raise DependencyError(f"{path}: weights of the subcortical refiner missing (a broken install?); "
                              "reinstall pvsquant, or run with subcortical_refiner 'none'")
    model = SubcorticalRefiner()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
