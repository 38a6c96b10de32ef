"""Mask geometry in millimetres on anisotropic voxel grids: structuring elements, distance
maps, bounding boxes and surfaces."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


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


def distance_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it; 0 outside.

    What ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)`` gives (to float32
    rounding), from SimpleITK's exact Maurer transform, which runs on all the cores
    :func:`AutoCACLib.inference.available_cores` allows and is several times faster on one.
    A mask without any voxel outside it has no finite distance: then every voxel gets
    ``inf``.

    Parameters
    ----------
    mask : ndarray (z, y, x) of bool
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.

    Returns
    -------
    ndarray of float32
    """
    import SimpleITK as sitk

    from .inference import available_cores

    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    outside = sitk.GetImageFromArray((~mask).view(np.uint8))
    outside.SetSpacing(tuple(float(s) for s in np.asarray(spacing, dtype=float)[::-1]))
    transform = sitk.SignedMaurerDistanceMapImageFilter()
    transform.SetInsideIsPositive(False)
    transform.SetSquaredDistance(False)
    transform.SetUseImageSpacing(True)
    transform.SetNumberOfThreads(available_cores())
    distance = sitk.GetArrayFromImage(transform.Execute(outside))
    return np.maximum(distance, 0.0, out=distance)


def box_around(lo, hi, shape) -> tuple[slice, ...]:
    """Slices ``lo:hi`` (one bound per axis) clipped to an array shape."""
    lo = np.maximum(np.asarray(lo), 0)
    hi = np.minimum(np.asarray(hi), shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def bounding_box(mask: np.ndarray, margin=0) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty mask grown by ``margin`` voxels per axis
    (an int or one per axis), clipped to the array."""
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    boxes = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        boxes.append(slice(max(int(idx[0]) - int(margin[axis]), 0),
                           min(int(idx[-1]) + 1 + int(margin[axis]), mask.shape[axis])))
    return tuple(boxes)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels (k, 3) of a mask with a 6-neighbour outside it (the array's border counts as
    outside); empty (0, 3) for an empty mask."""
    if not mask.any():
        return np.empty((0, mask.ndim), dtype=int)
    box = bounding_box(mask, 1)
    local = mask[box]
    return np.argwhere(local & ~ndi.binary_erosion(local)) + [b.start for b in box]
