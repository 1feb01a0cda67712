from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pvsquant.pipeline.registration import (
    register_t1_to_t2,
    registration_threads,
    rigid_from_parameters,
    sitk_threads,
    transform_error,
)
from pvsquant.types import Settings, Volume

BOX = np.array([[x, y, z] for x in (-50, 50) for y in (-60, 60) for z in (-40, 40)], dtype=float)


def test_rigid_from_parameters_is_rigid_and_centred():
    m = rigid_from_parameters((10, -5, 3), (1, 2, 3), (10, 0, 0))
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(m[:3, :3] @ [10, 0, 0] + m[:3, 3], [11, 2, 3], atol=1e-12)


def test_transform_error_measures_translation_and_angle():
    d, a = transform_error(rigid_from_parameters((0, 0, 4), (3, 0, 0)), np.eye(4), BOX)
    assert a == pytest.approx(4.0, abs=1e-6)
    assert d > 3.0


@pytest.mark.parametrize("angles, shift", [((8.0, -4.0, 5.0), (10.0, -6.0, 4.0))])
def test_recovers_known_header_perturbation_on_phantom(phantom_volumes, angles, shift):
    t1, t2 = phantom_volumes
    settings = Settings()
    reference = register_t1_to_t2(t1, t2, settings)
    assert transform_error(reference.t2_to_t1, np.eye(4), BOX)[0] < 1.0
    perturb = rigid_from_parameters(angles, shift, (0.0, 0.0, 0.0))
    moved = Volume(t1.array, perturb @ t1.affine)
    result = register_t1_to_t2(moved, t2, settings)
    dist, angle = transform_error(result.t2_to_t1, perturb @ reference.t2_to_t1, BOX)
    assert dist < 1.0 and angle < 1.0
    assert result.score < result.initial_score  # mutual information improved (more negative)


def test_registration_is_reproducible(phantom_volumes):
    """The same inputs give the same transform, bit for bit: a fixed sampling seed (SimpleITK's seed 0
    means 'wall clock': it moved ~0.02 mm) and one thread (the threads' sums came in a varying order,
    ~1e-12). SimpleITK's global thread count is left as it was."""
    t1, t2 = phantom_volumes
    perturbed = Volume(t1.array, rigid_from_parameters((3.0, -2.0, 4.0), (4.0, -3.0, 2.0), (0.0, 0.0, 0.0)) @ t1.affine)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    first, second = (register_t1_to_t2(perturbed, t2, Settings()) for _ in range(2))
    np.testing.assert_array_equal(first.t2_to_t1, second.t2_to_t1)
    assert first.score == second.score and first.initial_score == second.initial_score
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_registration_threads_follow_the_deterministic_setting():
    assert registration_threads(Settings(threads=4)) == 1
    assert registration_threads(Settings(threads=4, deterministic=False)) == 4
    assert registration_threads(Settings(threads=0, deterministic=False)) == 1


def test_sitk_threads_sets_and_restores_the_global_default():
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    target = 1 if before != 1 else 2
    with sitk_threads(target):
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == target
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with pytest.raises(RuntimeError, match="inside"), sitk_threads(target):
        raise RuntimeError("inside")
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
