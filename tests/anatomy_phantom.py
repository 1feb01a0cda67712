"""A synthetic FreeSurfer-coded label map with the structures pvsquant uses (1 mm grid)."""
from __future__ import annotations

import numpy as np

from pvsquant.types import Anatomy, Volume

SHAPE = (110, 130, 120)


def world_grid(affine: np.ndarray, shape=SHAPE) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    return (idx @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def label_phantom(affine: np.ndarray | None = None, world_to_phantom: np.ndarray | None = None) -> Volume:
    """Labels on a grid; ``world_to_phantom`` (4x4) places the head in world space.

    Landmarks in phantom coordinates (mm): top of the caudate at z = 15.
    """
    if affine is None:
        affine = np.eye(4)
        affine[:3, 3] = -(np.asarray(SHAPE) - 1) / 2
    p = world_grid(affine)
    if world_to_phantom is not None:
        p = p @ world_to_phantom[:3, :3].T + world_to_phantom[:3, 3]
    x, y, z = p[..., 0], p[..., 1], p[..., 2]

    def ell(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1

    lab = np.zeros(SHAPE, np.int32)
    wm = ell((0, 0, 5), (48, 58, 50))
    lab[wm & (x < 0)] = 2
    lab[wm & (x >= 0)] = 41
    for sign, (caud, put, pal, tha, hip, ven) in ((-1, (11, 12, 13, 10, 17, 4)), (1, (50, 51, 52, 49, 53, 43))):
        lab[ell((sign * 6, 5, 15), (3, 8, 5))] = ven
        lab[ell((sign * 13, 15, 10), (4, 6, 5))] = caud
        lab[ell((sign * 26, 5, 0), (4, 12, 8))] = put
        lab[ell((sign * 19, 2, -2), (3, 6, 5))] = pal
        lab[ell((sign * 9, -14, 2), (6, 11, 7))] = tha
        lab[ell((sign * 28, -20, -25), (5, 14, 5))] = hip
    stem = ((x ** 2 + (y + 22) ** 2) <= 8 ** 2) & (z > -52) & (z < -6)
    lab[stem] = 16
    return Volume(lab, affine)


def anatomy_phantom(superior=(0.0, 0.0, 1.0), **kwargs) -> Anatomy:
    from pvsquant.pipeline.anatomy import split_midbrain, standardise_labels

    vol = label_phantom(**kwargs)
    vol = vol.with_array(standardise_labels(vol.array))
    vol = split_midbrain(vol, np.asarray(superior), 20.0)
    return Anatomy(labels=vol, method="labels", superior_axis=np.asarray(superior, dtype=float))
