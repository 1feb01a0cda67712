"""scripts/fuse_atlas_labels.py: the vote, the growth back to the maps' mean volume, the fused map."""
from __future__ import annotations

import numpy as np

from .script_module import load_script


def _fuse_module():
    return load_script("fuse_atlas_labels")


def test_majority_vote_takes_the_most_frequent_code():
    fuse = _fuse_module()
    maps = [np.array([2, 13, 13, 0]), np.array([2, 13, 12, 0]), np.array([41, 2, 12, 17])]
    assert fuse.majority_vote(maps).tolist() == [2, 13, 12, 0]


def test_small_structure_eroded_by_the_vote_gets_its_mean_volume_back():
    fuse = _fuse_module()
    # Three maps of a 1-D pallidum (13) in white matter (2), each of 4 voxels but shifted.
    maps = []
    for start in (3, 4, 5):
        m = np.full(14, 2)
        m[start:start + 4] = 13
        maps.append(m)
    assert np.flatnonzero(fuse.majority_vote(maps) == 13).tolist() == [4, 5, 6, 7]
    eroded = np.full(14, 2)
    eroded[5:7] = 13  # an eroded pallidum of 2 voxels
    grown = fuse.grow_to_mean_volume(eroded, maps, np.ones(14, bool))
    assert (grown == 13).sum() == 4  # the maps' mean volume
    assert set(np.flatnonzero(grown == 13)) == {4, 5, 6, 7}  # the voxels most maps call pallidum
    assert (grown[grown != 13] == 2).all()


def test_growth_never_takes_another_deep_structure_or_leaves_the_brain():
    fuse = _fuse_module()
    maps = [np.array([0, 13, 13, 13, 12, 2])] * 2
    fused = np.array([0, 2, 13, 2, 12, 2])
    brain = np.array([False, True, True, True, True, True])
    grown = fuse.grow_to_mean_volume(fused, maps, brain)
    assert grown.tolist() == [0, 13, 13, 13, 12, 2]


def test_fuse_keeps_cortex_and_white_matter_and_relabels_subcortical_structures():
    fuse = _fuse_module()
    samseg = np.zeros((4, 4, 30), np.int32)
    samseg[1:3, 1:3, :] = 2  # white matter column
    samseg[1:3, 1:3, 10:14] = 17  # SAMSEG's hippocampus, 4 slices
    samseg[0, :, :] = 3  # cortex
    samseg[:, :, 20:] = 16  # brainstem above
    vote = samseg.copy()
    vote[1:3, 1:3, 10:14] = 2
    vote[1:3, 1:3, 11:13] = 17  # the maps' hippocampus: 2 slices
    vote[0, :, :] = 42  # the maps disagree on cortex: SAMSEG's cortex is kept
    fused = fuse.fuse(samseg, [vote, vote, vote], np.eye(4))
    assert (fused == 17).sum() == 2 * 2 * 2
    assert (fused[0, :, :20] == 3).all()
    assert set(np.unique(fused[:, :, 20:]).tolist()) <= {16, 173}  # midbrain split off the brainstem again
