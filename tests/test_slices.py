"""Slice-thickness matching (pipeline/slices.py) on small synthetic volumes."""
from __future__ import annotations

import numpy as np
import pytest

from pvsquant.errors import InputSettingsError
from pvsquant.pipeline.slices import match_slice_thickness, slice_axis, thickening_kernel
from pvsquant.types import Settings, Volume


def volume(shape: tuple[int, int, int], spacing: tuple[float, float, float], fill: float = 0.0) -> Volume:
    return Volume(np.full(shape, fill, np.float32), np.diag([*spacing, 1.0]))


def test_kernel_averages_the_interpolated_profile_over_the_window():
    assert np.allclose(thickening_kernel(2.0), [0.25, 0.5, 0.25])
    assert np.allclose(thickening_kernel(1.0), [1.0])
    assert np.allclose(thickening_kernel(0.7), [1.0])
    for ratio in (1.2, 1.5, 2.7, 7.8):
        w = thickening_kernel(ratio)
        assert w.sum() == pytest.approx(1.0)
        assert np.allclose(w, w[::-1])
    for ratio in (2, 3, 5):  # a window of whole slices: the box's variance (ratio^2/12) plus the tent's (1/6)
        w = thickening_kernel(ratio)
        offsets = np.arange(len(w)) - len(w) // 2
        assert float((w * offsets**2).sum()) == pytest.approx(ratio**2 / 12 + 1 / 6, rel=1e-9)


def test_a_thin_bright_slice_spreads_and_dims_as_in_a_thicker_slice():
    t2 = volume((8, 8, 21), (0.5, 0.5, 2.0), fill=100.0)
    t2.array[:, :, 10] = 300.0  # a structure one 2 mm slice thick
    matched = match_slice_thickness(t2, 4.0)
    assert matched.applied and matched.axis == 2 and matched.native_mm == pytest.approx(2.0)
    out = matched.t2.array
    assert out.shape == t2.shape and np.array_equal(matched.t2.affine, t2.affine)  # same grid
    assert out[0, 0, 10] == pytest.approx(200.0)  # half the 4 mm window holds it
    assert out[0, 0, 9] == pytest.approx(150.0) and out[0, 0, 11] == pytest.approx(150.0)
    assert out[0, 0, 3] == pytest.approx(100.0)  # far from it: unchanged
    assert out[0, 0].sum() == pytest.approx(t2.array[0, 0].sum())  # the signal is moved, not lost
    assert matched.record() == {"target_mm": 4.0, "native_mm": 2.0, "slice_axis": 2, "applied": True}
    assert not matched.flags


def test_slices_already_thick_enough_are_left_and_thicker_ones_flagged():
    t2 = volume((6, 5, 4), (0.5, 5.0, 0.5), fill=1.0)
    t2.array[0, 2, 0] = 9.0
    same = match_slice_thickness(t2, 5.0)
    assert not same.applied and same.t2 is t2 and not same.flags and same.axis == 1
    thicker = match_slice_thickness(t2, 4.0)
    assert not thicker.applied and thicker.t2 is t2
    assert [f.code for f in thicker.flags] == ["slices_thicker_than_matched"]
    assert "5.00 mm" in thicker.flags[0].message and "4 mm" in thicker.flags[0].message
    off = match_slice_thickness(t2, None)
    assert off.t2 is t2 and not off.applied and off.record()["target_mm"] is None


def test_an_isotropic_volume_is_matched_along_its_superior_axis():
    # 1 mm isotropic, stored sagittally: array axis 0 points superior in the world
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    t2 = Volume(np.zeros((9, 6, 6), np.float32), affine)
    assert slice_axis(t2) == 0
    t2.array[4] = 10.0
    out = match_slice_thickness(t2, 3.0).t2.array
    assert out[4, 0, 0] < 10.0 and out[3, 0, 0] > 0 and out[4, 0, 0] == pytest.approx(out[4, 5, 5])
    assert np.allclose(out[:, 0, 0].sum(), 10.0)


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="match_slice_thickness_mm"):
        Settings(match_slice_thickness_mm=-1.0)
    with pytest.raises(InputSettingsError, match="match_slice_thickness_mm"):
        Settings.from_json({"match_slice_thickness_mm": 0})
    assert Settings.from_json({"match_slice_thickness_mm": 4}).match_slice_thickness_mm == 4.0
    with pytest.raises(InputSettingsError, match="match_slice_thickness_mm"):
        Settings.from_json({"match_slice_thickness_mm": "4"})
    with pytest.raises(ValueError, match="positive"):
        match_slice_thickness(volume((3, 3, 3), (1.0, 1.0, 3.0)), float("nan"))
