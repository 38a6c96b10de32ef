"""Mask geometry helpers: balls, distance maps and bounding boxes on anisotropic grids."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from AutoCACLib.structuring import ball, bounding_box, distance_mm, surface_voxels


@pytest.mark.parametrize("spacing", [(0.5, 0.4, 0.4), (1.5, 0.7, 0.7), (0.3, 0.3, 0.3)])
def test_distance_matches_the_exact_euclidean_transform(spacing):
    rng = np.random.default_rng(3)
    mask = ndi.gaussian_filter(rng.random((30, 40, 50)), 2) > 0.5
    expected = ndi.distance_transform_edt(mask, sampling=spacing)
    got = distance_mm(mask, spacing)
    assert got.shape == mask.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.all(got[~mask] == 0)


def test_distance_of_a_mask_with_nothing_outside_is_infinite():
    assert np.all(np.isinf(distance_mm(np.ones((3, 4, 5), bool), (1, 1, 1))))


def test_bounding_box_grows_by_the_margin_and_stops_at_the_array():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:3, 4, 2:5] = True
    assert bounding_box(mask) == (slice(1, 3), slice(4, 5), slice(2, 5))
    assert bounding_box(mask, 2) == (slice(0, 5), slice(2, 7), slice(0, 7))
    assert bounding_box(mask, [0, 1, 4]) == (slice(1, 3), slice(3, 6), slice(0, 8))


def test_ball_radius_follows_the_spacing():
    element = ball(1.0, (1.0, 0.5, 0.5))
    assert element.shape == (3, 5, 5)
    assert element[1, 2, 2] and element[0, 2, 2] and element[1, 0, 2] and not element[0, 0, 2]


def test_surface_voxels_are_the_mask_voxels_with_a_face_outside():
    mask = np.zeros((6, 7, 8), dtype=bool)
    mask[1:5, 1:6, 2:8] = True  # touches the array's last x face
    outside_face = np.zeros_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            shifted = np.roll(np.pad(mask, 1), step, axis=axis)[1:-1, 1:-1, 1:-1]
            outside_face |= mask & ~shifted
    got = np.zeros_like(mask)
    got[tuple(surface_voxels(mask).T)] = True
    assert np.array_equal(got, outside_face)
    assert surface_voxels(np.zeros((3, 3, 3), dtype=bool)).shape == (0, 3)
