"""Centerlines: skeleton, pruning, ordering from the root, radius, tangents, length."""

import numpy as np
import pytest

from AutoCACLib.centerlines import vessel_centerlines
from AutoCACLib.structuring import surface_voxels


def _grid(shape, spacing):
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _segment_tube(shape, spacing, a, b, radius):
    """Voxels within ``radius`` mm of the segment a-b (mm, z y x)."""
    z, y, x = _grid(shape, spacing)
    p = [z - a[0], y - a[1], x - a[2]]
    d = np.subtract(b, a, dtype=float)
    t = np.clip((p[0] * d[0] + p[1] * d[1] + p[2] * d[2]) / d.dot(d), 0, 1)
    dist2 = sum((p[i] - t * d[i]) ** 2 for i in range(3))
    return dist2 <= radius ** 2


@pytest.mark.parametrize("radius", [1.0, 1.5, 2.5])
def test_straight_tube_length_radius_and_root(radius):
    spacing = (0.5, 0.4, 0.4)
    shape = (80, 40, 40)
    z, y, x = _grid(shape, spacing)
    mask = (np.sqrt((y - 8) ** 2 + (x - 8) ** 2) <= radius) & (z >= 5) & (z <= 35)
    aorta = np.zeros(shape, bool)
    aorta[75:, :, :] = True  # beyond the z = 35 mm end
    lines = vessel_centerlines(mask, spacing, root_hint=aorta)
    assert len(lines) == 1
    line = lines[0]
    # Thinning stops about a radius short of each flat end.
    assert 30 - 2 * radius - 1.0 <= line.length_mm <= 30
    assert np.median(line.radius_mm) == pytest.approx(radius, abs=0.25)
    assert line.points[0][0] > line.points[-1][0]  # runs from the aorta's end
    assert np.all(np.diff(line.arc_length_mm) > 0)
    np.testing.assert_allclose(np.abs(line.tangents[:, 0]), 1, atol=1e-6)
    assert np.all(line.tangents[:, 0] < 0)  # distal-pointing
    np.testing.assert_allclose(line.points_mm, line.points * np.array(spacing))
    # The aorta's surface voxels, computed once for several vessels, are the same hint.
    same = vessel_centerlines(mask, spacing, root_hint=surface_voxels(aorta))
    np.testing.assert_array_equal(same[0].points, line.points)


def test_curved_tube_length_and_root_point_hint():
    spacing = (0.5, 0.5, 0.5)
    shape = (60, 60, 30)
    z, y, x = _grid(shape, spacing)
    bend, radius = 20.0, 1.5
    d = np.sqrt((np.sqrt(z ** 2 + y ** 2) - bend) ** 2 + (x - 7.5) ** 2)
    mask = (d <= radius) & (z > 0.5) & (y > 0.5)
    lines = vessel_centerlines(mask, spacing, root_hint=(40, 0, 15))  # near the z = 20 mm end
    assert len(lines) == 1
    line = lines[0]
    quarter = np.pi / 2 * bend
    assert quarter - 2 * radius - 1.5 <= line.length_mm <= quarter
    assert np.median(line.radius_mm) == pytest.approx(radius, abs=0.2)
    assert line.points_mm[0][0] > 15 and line.points_mm[-1][1] > 15
    # Tangents follow the arc: perpendicular to the radius vector of the bend.
    radial = line.points_mm[:, :2] / np.linalg.norm(line.points_mm[:, :2], axis=1)[:, None]
    assert np.median(np.abs(np.sum(radial * line.tangents[:, :2], axis=1))) < 0.15


def test_tree_is_ordered_from_root_and_spurs_are_pruned():
    spacing = (0.5, 0.5, 0.5)
    shape = (40, 80, 40)
    root_mm, fork_mm = (10, 2, 10), (10, 20, 10)
    mask = _segment_tube(shape, spacing, root_mm, (10, 38, 10), 1.5)       # main vessel
    mask |= _segment_tube(shape, spacing, fork_mm, (18, 30, 10), 1.2)      # side branch
    mask |= _segment_tube(shape, spacing, (10, 28, 10), (11.8, 28, 10), 1.0)  # a bump
    lines = vessel_centerlines(mask, spacing, root_hint=np.array(root_mm) / 0.5)
    assert len(lines) == 2
    main, side = lines
    assert main.parent == -1 and side.parent == 0
    assert np.linalg.norm(main.points_mm[0] - root_mm) < 3
    assert main.length_mm > 30
    # The side branch starts at its branching point on the main branch.
    np.testing.assert_array_equal(side.points[0], main.points[side.parent_point])
    assert np.linalg.norm(main.points_mm[side.parent_point] - fork_mm) < 2.5
    assert side.length_mm == pytest.approx(np.hypot(8, 10) - 1.2, abs=2.0)
    assert side.points_mm[-1][0] > 15


def test_without_hint_the_widest_end_is_the_root_and_pieces_are_separate():
    spacing = (0.5, 0.5, 0.5)
    shape = (30, 80, 30)
    mask = _segment_tube(shape, spacing, (7, 30, 7), (7, 5, 7), 1.0)
    mask |= _segment_tube(shape, spacing, (7, 30, 7), (7, 10, 7), 2.2)  # widens at y = 30
    mask |= _segment_tube(shape, spacing, (7, 36, 7), (7, 38, 7), 1.0)  # a small fragment
    lines = vessel_centerlines(mask, spacing)
    assert len(lines) == 2
    assert lines[0].points_mm[0][1] > lines[0].points_mm[-1][1]
    assert lines[1].parent == -1
    assert vessel_centerlines(np.zeros(shape, bool), spacing) == []
