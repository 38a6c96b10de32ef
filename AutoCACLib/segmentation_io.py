"""Read and write Slicer segmentations (``.seg.nrrd``) and plain label maps.

In memory a segmentation is a label map on the image grid (``[z, y, x]``, values of
:data:`AutoCACLib.segments.SEGMENTS`) or, when read from a file that may hold overlapping
layers, a dict ``segment name -> boolean mask``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .segments import SEGMENT_BY_NAME, SEGMENTS, SegmentSpec
from .volume import Volume, read_volume


def ijk_to_lps(volume: Volume) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) = (x, y, z) to LPS mm."""
    m = np.eye(4)
    m[:3, :3] = volume.direction @ np.diag(list(reversed(volume.spacing)))
    m[:3, 3] = volume.origin
    return m


def _geometry_from_ijk_to_lps(matrix: np.ndarray, shape_zyx) -> Volume:
    matrix = np.asarray(matrix, dtype=float)
    spacing_xyz = np.linalg.norm(matrix[:3, :3], axis=0)
    direction = matrix[:3, :3] / spacing_xyz
    return Volume(np.zeros(shape_zyx, dtype=np.uint8), tuple(reversed(spacing_xyz)),
                  tuple(matrix[:3, 3]), direction)


def write_segmentation(path: str | os.PathLike, labels: np.ndarray, reference: Volume,
                       segments: tuple[SegmentSpec, ...] = SEGMENTS,
                       include_empty: bool = True) -> None:
    """Write a label map as a Slicer ``.seg.nrrd`` with names, colours and terminology.

    Parameters
    ----------
    path : path-like
        Output file, conventionally ending in ``.seg.nrrd``.
    labels : ndarray (z, y, x) of int
        Label map with the values of ``segments``.
    reference : Volume
        The image whose grid ``labels`` lies on.
    segments : tuple of SegmentSpec
        Segments to write.
    include_empty : bool
        Also write segments with no voxel (so a user can paint into them in Slicer).
    """
    import slicerio
    import slicerio.segmentation

    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise ValueError(f"label map shape {labels.shape} differs from image {reference.shape}")
    seg = {
        "voxels": np.ascontiguousarray(labels.transpose(2, 1, 0).astype(np.uint8)),
        "ijkToLPS": ijk_to_lps(reference),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [],
    }
    for spec in segments:
        mask = labels == spec.label
        if not include_empty and not mask.any():
            continue
        if mask.any():
            idx = np.nonzero(mask)  # z, y, x
            extent = [int(v) for axis in reversed(idx) for v in (axis.min(), axis.max())]
        else:
            extent = [0, -1, 0, -1, 0, -1]
        seg["segments"].append({
            "id": spec.name,
            "name": spec.name,
            "labelValue": spec.label,
            "layer": 0,
            "color": list(spec.color),
            "extent": extent,
            "terminology": slicerio.segmentation.terminology_entry_from_string(spec.terminology()),
            "status": "completed",
        })
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    slicerio.write_segmentation(str(path), seg)


def read_segment_masks(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Volume]:
    """Read a ``.seg.nrrd`` into boolean masks by segment name.

    Returns
    -------
    masks : dict of str to ndarray (z, y, x) of bool
    geometry : Volume
        The segmentation's grid (its array is a placeholder of zeros).
    """
    import slicerio
    import slicerio.segmentation

    path = Path(path)
    if not path.exists():
        raise InputError(f"segmentation not found: {path}")
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises plain exceptions for malformed headers
        raise InputError(f"cannot read segmentation {path}: {str(exc).splitlines()[0][:200]}") from None
    voxels = seg["voxels"]
    if voxels.ndim == 3:
        voxels = voxels[np.newaxis]
    elif voxels.ndim != 4:
        raise InputError(f"segmentation {path} has {voxels.ndim} dimensions, expected 3 or 4")
    # slicerio returns [layer,] i, j, k; AutoCAC works in z, y, x.
    layers = voxels.transpose(0, 3, 2, 1)
    geometry = _geometry_from_ijk_to_lps(seg["ijkToLPS"], layers.shape[1:])
    masks = {}
    for segment in seg.get("segments", []):
        layer = layers[int(segment.get("layer", 0))]
        masks[segment.get("name", segment["id"])] = layer == int(segment["labelValue"])
    return masks, geometry


def masks_to_labels(masks: dict[str, np.ndarray], shape) -> np.ndarray:
    """AutoCAC's label map from named masks; unknown names are ignored.

    Calcium segments are written last, so where a calcium mask overlaps a vessel or the
    aorta, the voxel is calcium.
    """
    labels = np.zeros(shape, dtype=np.uint8)
    for spec in sorted((SEGMENT_BY_NAME[n] for n in masks if n in SEGMENT_BY_NAME),
                       key=lambda s: s.is_calcium):
        labels[masks[spec.name]] = spec.label
    return labels


def is_segmentation_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".seg.nrrd", ".seg.nhdr"))


def read_labelmap(path: str | os.PathLike) -> Volume:
    """Read a plain label map image (NRRD, NIfTI, MetaImage) as an integer Volume."""
    vol = read_volume(path, require_ct=False)
    a = vol.array
    if not np.all(np.equal(np.mod(a, 1), 0)) or a.min() < 0:
        raise InputError(f"{path} is not a label map (values must be non-negative integers)")
    vol.array = a.astype(np.int32)
    return vol
