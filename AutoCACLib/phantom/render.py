"""Rasterize phantom shapes onto a scanner grid with analytic partial volume.

Layers are painted in order (later ones cover earlier ones, as anatomy nests). A voxel's
covered fraction comes from the signed distance ``d`` of its centre to the surface,
``clip(0.5 - d / w, 0, 1)`` with ``w`` the voxel size: the linear partial-volume ramp of a
plane crossing a voxel. Each layer's work is limited to the bounding boxes of its pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..volume import Volume
from .shapes import iter_pieces

#: Largest number of voxels evaluated at once (bounds temporary memory).
_MAX_BLOCK_VOXELS = 3_000_000


@dataclass
class Grid:
    """A scanner voxel grid, with the axis conventions of :class:`AutoCACLib.volume.Volume`.

    Attributes
    ----------
    shape : tuple of int
        (z, y, x) voxel counts.
    spacing : tuple of float
        (z, y, x) mm.
    origin : ndarray (3,)
        LPS position of voxel [0, 0, 0].
    direction : ndarray (3, 3)
        Columns: directions of the image x, y, z axes.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = np.asarray(self.origin, dtype=float)
        self.direction = np.asarray(self.direction, dtype=float)

    @property
    def index_to_world(self) -> np.ndarray:
        """3x3 matrix from continuous (i, j, k) = (x, y, z) index offsets to LPS mm."""
        return self.direction @ np.diag(self.spacing[::-1])

    @property
    def voxel_size(self) -> float:
        """Geometric mean voxel edge, mm (the partial-volume ramp width)."""
        return float(np.prod(self.spacing) ** (1.0 / 3.0))

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of LPS points (n, 3)."""
        return (np.asarray(points) - self.origin) @ np.linalg.inv(self.index_to_world).T

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """(z, y, x) slices of the voxels inside the world box [lo, hi]; None if outside."""
        corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi)
                            for c in (lo, hi)])
        ijk = self.world_to_index(corners)
        start = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
        stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, self.shape[::-1])
        if np.any(stop <= start):
            return None
        return tuple(slice(int(start[a]), int(stop[a])) for a in (2, 1, 0))

    def local_coords(self, box, center: np.ndarray, rotation: np.ndarray) -> list[np.ndarray]:
        """Coordinates ``rotation.T @ (p - center)`` of the voxel centres of a box.

        Returns three float32 arrays of the box's shape (local axes 0, 1, 2).
        """
        a = rotation.T @ self.index_to_world
        offset = rotation.T @ (self.origin - center)
        k, j, i = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
        k, j, i = k[:, None, None], j[None, :, None], i[None, None, :]
        return [np.float32(offset[m]) + np.float32(a[m, 0]) * i + np.float32(a[m, 1]) * j
                + np.float32(a[m, 2]) * k for m in range(3)]

    def volume(self, array: np.ndarray, kvp: float | None = None,
               metadata: dict | None = None) -> Volume:
        return Volume(array, self.spacing, tuple(self.origin), self.direction.copy(), kvp,
                      dict(metadata or {}))


def _z_blocks(box, max_voxels: int = _MAX_BLOCK_VOXELS):
    """Split a (z, y, x) box into slabs along z of at most ``max_voxels`` voxels."""
    plane = (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    step = max(1, max_voxels // max(plane, 1))
    for z0 in range(box[0].start, box[0].stop, step):
        yield (slice(z0, min(z0 + step, box[0].stop)), box[1], box[2])


class Canvas:
    """An image being painted, with the map of which layer shows at each voxel centre.

    Attributes
    ----------
    image : ndarray float32
        HU.
    tissue : ndarray uint8
        Index of the last layer whose surface encloses the voxel centre (0: background).
    regions : ndarray uint8
        Values of layers painted with a region value, where the voxel lies within the
        layer's region margin (for dilated truth regions); where the margins of several
        layers meet, the voxel takes the value of the nearest one (a plaque's blooming is
        scored with its own vessel, whatever the painting order).
    """

    def __init__(self, grid: Grid, background_hu: float):
        self.grid = grid
        self.image = np.full(grid.shape, background_hu, dtype=np.float32)
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)
        self.regions = np.zeros(grid.shape, dtype=np.uint8)
        self.ramp = grid.voxel_size
        self._sdf = np.full(grid.shape, np.inf, dtype=np.float32)
        self._scale = np.ones(grid.shape, dtype=np.float32)
        self._region_sdf = None  # distance to the nearest region layer (made on first use)

    def release(self) -> None:
        """Free the work buffers (painting is finished)."""
        self._sdf = self._scale = self._region_sdf = None

    def paint(self, shapes, hu: float, iodine_hu: float = 0.0, tissue_id: int = 0,
              region_value: int = 0, region_margin: float = 0.0) -> None:
        """Paint the union of ``shapes`` with a CT number.

        Parameters
        ----------
        shapes : list of shapes
        hu : float
            CT number where the relative iodine concentration is 1.
        iodine_hu : float
            HU of the layer's iodine; a tube's ``iodine_scale`` s gives
            ``hu + iodine_hu * (s - 1)``.
        tissue_id : int
            Written to :attr:`tissue` inside the surface.
        region_value, region_margin : int, float
            When ``region_value`` is set, written to :attr:`regions` within
            ``region_margin`` mm of the shapes.
        """
        reach = max(self.ramp, region_margin if region_value else 0.0)
        pieces = []
        for lo, hi, evaluate in iter_pieces(shapes):
            box = self.grid.index_box(lo - reach, hi + reach)
            if box is not None:
                pieces.append((box, evaluate))
        if not pieces:
            return
        if len(pieces) == 1:
            box, evaluate = pieces[0]
            for block in _z_blocks(box):
                sdf, scale = evaluate(self.grid, block)
                self._apply(block, sdf, scale, hu, iodine_hu, tissue_id, region_value,
                            region_margin)
            return
        # Union of overlapping pieces: accumulate the minimum distance in full-grid buffers,
        # then paint box by box, clearing each box after painting it so that a voxel shared
        # by two boxes is painted once.
        for box, evaluate in pieces:
            for block in _z_blocks(box):
                sdf, scale = evaluate(self.grid, block)
                view = self._sdf[block]
                if scale is not None:
                    np.copyto(self._scale[block], scale, where=sdf < view)
                np.minimum(view, sdf, out=view)
        for box, _ in pieces:
            self._apply(box, self._sdf[box], self._scale[box] if iodine_hu else None, hu,
                        iodine_hu, tissue_id, region_value, region_margin)
            self._sdf[box] = np.inf
            self._scale[box] = 1.0

    def _apply(self, box, sdf, scale, hu, iodine_hu, tissue_id, region_value, region_margin):
        if not np.any(sdf < max(self.ramp * 0.5, region_margin if region_value else 0.0)):
            return
        alpha = np.clip(0.5 - sdf / np.float32(self.ramp), 0.0, 1.0)
        value = np.float32(hu) if scale is None else hu + np.float32(iodine_hu) * (scale - 1.0)
        target = self.image[box]
        target += alpha * (value - target)
        self.tissue[box][sdf <= 0] = tissue_id
        if region_value:
            if self._region_sdf is None:
                self._region_sdf = np.full(self.grid.shape, np.inf, dtype=np.float32)
            nearest = self._region_sdf[box]
            closer = (sdf <= region_margin) & (sdf < nearest)
            self.regions[box][closer] = region_value
            nearest[closer] = sdf[closer]
