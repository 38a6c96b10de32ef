"""Acquisition checks: a field of view that cuts the coronaries, steps between heartbeats."""

import numpy as np
import pytest
from scipy import ndimage

from AutoCACLib.acquisition_qc import (JUMP_WARN_RATIO, STEP_FAIL_MM, field_of_view_cuts,
                                       slab_artefacts)
from AutoCACLib.volume import Volume

SPACING = (0.5, 0.4, 0.4)


def _tube(shape, spacing, start, end, radius):
    """Mask of a straight tube from ``start`` to ``end`` (mm, z y x) of ``radius`` mm."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)],
                                indexing="ij"), axis=-1)
    a, b = np.asarray(start, float), np.asarray(end, float)
    t = np.clip(((grid - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(grid - (a + t[..., None] * (b - a)), axis=-1) <= radius


def test_wide_vessel_off_the_bottom_and_thin_one_off_the_side_are_told_apart():
    shape = (40, 60, 60)
    index = np.zeros(shape, np.uint8)
    index[_tube(shape, SPACING, (-5, 12, 12), (15, 12, 12), 2.0)] = 2       # LAD, 4 mm
    index[_tube(shape, SPACING, (10, 6, 12), (10, 6, 30), 0.8)] = 3         # LCx, 1.6 mm
    index[_tube(shape, SPACING, (8, 18, 8), (14, 18, 16), 1.5)] = 4        # RCA, inside
    cuts = field_of_view_cuts(index, SPACING, ("LM", "LAD", "LCx", "RCA"))
    assert [(c.vessel, c.edge) for c in cuts] == [("LAD", "bottom (feet)"), ("LCx", "left")]
    lad, lcx = cuts
    assert lad.diameter_mm == pytest.approx(4.0, abs=0.6) and lad.wide
    assert lcx.diameter_mm == pytest.approx(1.6, abs=0.6) and not lcx.wide
    assert "LAD leaves the image at its bottom (feet) edge (4" in lad.describe()


def test_no_cut_when_the_tree_stays_inside():
    index = np.zeros((20, 30, 30), np.uint8)
    index[5:15, 10:20, 10:20] = 1
    assert field_of_view_cuts(index, SPACING, ("LM", "LAD", "LCx", "RCA")) == []


def _grid(shape):
    return np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")


def _scan(rng, shape, pools):
    """Fat; for each pool (distance map, wall limit, blood limit) a wall and contrast blood
    where the distance is below each limit; CT noise."""
    image = np.full(shape, -60.0, np.float32)
    for d, wall, blood in pools:
        image[d < wall] = 110.0
        image[d < blood] = 380.0
    return image + ndimage.gaussian_filter(rng.normal(0, 40, shape), 0.7).astype(np.float32)


def _heart_box(shape):
    """The box a coronary tree spans in the synthetic hearts below (the checks search it)."""
    tree = np.zeros(shape, bool)
    tree[10:90, 30:120, 30:120] = True
    return tree


def _heart_like(rng, shape=(100, 150, 150)):
    """Blood pools and walls whose outline drifts slowly along z (blood narrowing), fat
    around, CT noise."""
    z, y, x = _grid(shape)
    return _scan(rng, shape, [(np.hypot(y - cy - drift * z, x - cx + drift * z), r + 4,
                               r - 0.05 * z / 10)
                              for cy, cx, r, drift in ((60, 60, 22, 0.10), (85, 95, 15, -0.08),
                                                       (50, 105, 9, 0.05))])


def test_step_between_slabs_is_found_where_it_is_and_measured():
    rng = np.random.default_rng(3)
    image = _heart_like(rng)
    tree = _heart_box(image.shape)
    assert slab_artefacts(Volume(image, SPACING), tree) == ([], [])
    for shift_mm, severe in ((1.6, False), (3.5, True)):
        stepped = image.copy()
        stepped[55:] = ndimage.shift(image[55:], (0, shift_mm / 0.4, 0), order=1,
                                     mode="nearest")
        steps, jumps = slab_artefacts(Volume(stepped, SPACING, origin=(0.0, 0.0, -100.0)), tree)
        assert [s.slice for s in steps] == [55]
        assert steps[0].height_mm == pytest.approx(-100.0 + 54.5 * SPACING[0])
        assert steps[0].shift_mm == pytest.approx(shift_mm, abs=0.7)
        assert steps[0].severe == severe == (steps[0].shift_mm >= STEP_FAIL_MM)
        assert jumps == []                  # the slices do not join there: told as the step


def test_anatomy_that_changes_is_not_a_step():
    # The heart's floor giving way to the liver: the slabs differ, but no move explains it.
    rng = np.random.default_rng(4)
    image = _heart_like(rng)
    image[:50] = 60.0 + ndimage.gaussian_filter(rng.normal(0, 40, image[:50].shape), 0.7)
    image[:50, 100:110, 20:40] = 300.0                # a hepatic vessel
    tree = _heart_box(image.shape)
    assert slab_artefacts(Volume(image, SPACING), tree)[0] == []


def test_steady_drift_of_tilted_anatomy_is_not_a_step():
    # Thick slices through a tilted heart: each slice lies 0.5 mm beside the one below it.
    rng = np.random.default_rng(5)
    image = _heart_like(rng)
    for z in range(len(image)):
        image[z] = ndimage.shift(image[z], (0, 0.5 * (z - 50) / 0.4), order=1, mode="nearest")
    tree = _heart_box(image.shape)
    assert slab_artefacts(Volume(image, SPACING), tree)[0] == []


def _chambers(rng, shape=(100, 150, 150)):
    """Rounded blood pools whose cross-sections grow and shrink along z, fat, CT noise."""
    grid = _grid(shape)
    return _scan(rng, shape, [(np.sqrt(sum(((g - ci) / ri) ** 2 for g, ci, ri in
                                           zip(grid, c, r))), 1.15, 1.0)
                              for c, r in (((50, 60, 60), (45, 30, 28)),
                                           ((40, 90, 95), (35, 20, 22)),
                                           ((65, 50, 105), (25, 12, 12)))])


def test_slices_that_do_not_join_are_found_where_they_are():
    rng = np.random.default_rng(6)
    image = _chambers(rng)
    tree = _heart_box(image.shape)
    assert slab_artefacts(Volume(image, SPACING), tree) == ([], [])
    skipped = np.concatenate([image[:50], image[56:]])           # 3 mm of the heart missing
    misplaced = np.concatenate([image[:50], image[44:]])         # a slab 3 mm too low
    for moved in (skipped, misplaced):
        steps, jumps = slab_artefacts(Volume(moved, SPACING, origin=(0.0, 0.0, -100.0)),
                                      tree[:len(moved)])
        assert steps == []
        assert [j.slice for j in jumps] == [50]
        assert jumps[0].height_mm == pytest.approx(-100.0 + 49.5 * SPACING[0])
        assert jumps[0].ratio >= JUMP_WARN_RATIO
        assert "S = -75.2 mm" in jumps[0].describe()
