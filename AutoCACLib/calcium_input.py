"""Read a user's calcium segmentation onto an image's grid.

Accepted: a Slicer ``.seg.nrrd`` whose segments are named ``Calcium LM``, ``Calcium LAD``,
``Calcium LCx``, ``Calcium RCA`` (other segments are ignored), or a plain label map whose
values 1, 2, 3, 4 mean calcium in LM, LAD, LCx, RCA. A segmentation may cover only part of
the image (Slicer crops to the segments' extent) as long as it lies on the same voxel grid.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError
from .segmentation_io import is_segmentation_file, read_labelmap, read_segment_masks
from .segments import VESSELS
from .volume import Volume


def _grid_offset(image: Volume, seg: Volume, name: str) -> tuple[int, int, int]:
    """Integer (z, y, x) offset of ``seg``'s first voxel in ``image``; error if off-grid."""
    if not np.allclose(image.spacing, seg.spacing, rtol=1e-3, atol=1e-4):
        raise InputError(f"{name} does not match the image geometry: voxel spacing "
                         f"{_fmt(seg.spacing)} mm vs image {_fmt(image.spacing)} mm")
    if not np.allclose(image.direction, seg.direction, atol=1e-3):
        raise InputError(f"{name} does not match the image geometry: different axis directions")
    # Physical offset expressed in image voxel units along each image axis.
    delta = np.asarray(seg.origin) - np.asarray(image.origin)
    ijk = np.linalg.solve(image.direction @ np.diag(list(reversed(image.spacing))), delta)
    offset = np.round(ijk[::-1]).astype(int)
    if np.abs(ijk[::-1] - offset).max() > 0.05:
        raise InputError(f"{name} does not match the image geometry: origin is off the image's "
                         f"voxel grid by {np.abs(ijk - np.round(ijk)).max():.2f} voxel")
    end = offset + np.array(seg.shape)
    if (offset < 0).any() or (end > np.array(image.shape)).any():
        raise InputError(f"{name} does not match the image geometry: it extends outside the "
                         f"image ({tuple(seg.shape)} voxels at offset {tuple(offset)} in "
                         f"{tuple(image.shape)})")
    return tuple(int(o) for o in offset)


def _fmt(t):
    return "x".join(f"{v:g}" for v in t)


def _embed(image: Volume, seg_geometry: Volume, array: np.ndarray, name: str) -> np.ndarray:
    if seg_geometry.same_geometry(image):
        return array
    oz, oy, ox = _grid_offset(image, seg_geometry, name)
    out = np.zeros(image.shape, dtype=array.dtype)
    sz, sy, sx = array.shape
    out[oz:oz + sz, oy:oy + sy, ox:ox + sx] = array
    return out


def read_calcium_labels(path: str | os.PathLike, image: Volume) -> np.ndarray:
    """Calcium regions as an int array on ``image``'s grid: 0 none, 1..4 = LM, LAD, LCx, RCA.

    Raises
    ------
    InputError
        Unreadable file, no calcium segment, geometry that does not match the image, or an
        empty segmentation.
    """
    name = f"segmentation {os.fspath(path)}"
    if not os.path.exists(path):
        raise InputError(f"segmentation not found: {os.fspath(path)}")
    if is_segmentation_file(path):
        masks, geometry = read_segment_masks(path)
        if not masks or not any(m.any() for m in masks.values()):
            raise InputError(f"{name} is empty: no segment holds any voxel")
        wanted = [f"Calcium {v}" for v in VESSELS]
        if not any(w in masks for w in wanted):
            raise InputError(f"{name} has no calcium segment (expected names "
                             f"{', '.join(wanted)}; found {', '.join(sorted(masks))})")
        labels = np.zeros(geometry.shape, dtype=np.uint8)
        for i, w in enumerate(wanted, start=1):
            if w in masks:
                labels[masks[w]] = i
        return _embed(image, geometry, labels, name)
    label_volume = read_labelmap(path)
    values = np.unique(label_volume.array)
    if values.max() == 0:
        raise InputError(f"{name} is empty: no voxel is labelled 1-4")
    if values.max() > len(VESSELS):
        raise InputError(f"{name} has label values {values[values > 4].tolist()[:5]}: a calcium "
                         f"label map uses 1=LM, 2=LAD, 3=LCx, 4=RCA")
    return _embed(image, label_volume, label_volume.array.astype(np.uint8), name)
