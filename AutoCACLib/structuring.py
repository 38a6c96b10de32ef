"""Structuring elements in millimetres on anisotropic voxel grids."""

from __future__ import annotations

import numpy as np


def ball(radius_mm: float, spacing) -> np.ndarray:
    """Boolean ball: the voxels whose centre lies within ``radius_mm`` of the centre voxel.

    Parameters
    ----------
    radius_mm : float
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.

    Returns
    -------
    ndarray of bool
        Odd size along each axis, centred; a voxel exactly on the sphere is inside (a small
        tolerance absorbs floating-point rounding of the squared distances).
    """
    spacing = np.asarray(spacing, dtype=float)
    half = np.floor(radius_mm / spacing + 1e-9).astype(int)
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in half)]
    return sum((g * s) ** 2 for g, s in zip(grids, spacing)) <= radius_mm ** 2 + 1e-9
