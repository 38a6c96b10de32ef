"""Geometric primitives of the phantom, as approximate signed distance functions.

Every shape lives in the scanner's LPS frame (mm) and is cut into *pieces*: a world bounding
box plus a function that returns, for the voxels of an index box of a grid, the signed
distance to the surface (negative inside, accurate near the surface, which is all the partial
volume ramp needs) and, for tubes, the relative iodine concentration of the nearest
centerline point. A rigid ``moved(rotation, translation)`` places a shape in the scanner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

#: Tubes report exact distances up to this far beyond their radius, mm (partial-volume ramp
#: and the dilated truth regions need no more); farther voxels get a large distance.
_TUBE_REACH_MM = 3.0
_FAR_MM = 1e4

#: One piece of a shape: world bounds (lo, hi) and an evaluator (grid, box) -> (sdf, scale).
Piece = tuple[np.ndarray, np.ndarray, Callable]


def _ellipse_distance(q: list[np.ndarray], semi: np.ndarray) -> np.ndarray:
    """First-order signed distance to the ellipse/ellipsoid with semi-axes ``semi``.

    ``(k - 1) / |grad k|`` with ``k = |q / semi|``; the ratio ``k / |grad k|`` is bounded by
    the smallest and largest semi-axis, which also makes the centre well defined. Works in
    place on float32 temporaries (the large shapes cover whole volumes).
    """
    k2 = np.zeros_like(q[0])
    g2 = np.zeros_like(q[0])
    tmp = np.empty_like(q[0])
    for qi, a in zip(q, semi):
        np.multiply(qi, np.float32(1.0 / a), out=tmp)
        tmp *= tmp
        k2 += tmp
        tmp *= np.float32(1.0 / (a * a))
        g2 += tmp
    np.sqrt(k2, out=k2)
    np.sqrt(g2, out=g2)
    g2 += np.float32(1e-9)
    np.divide(k2, g2, out=g2)
    np.clip(g2, semi.min(), semi.max(), out=g2)
    k2 -= np.float32(1.0)
    k2 *= g2
    return k2


def _rotated_bounds(center, rotation, half_extent) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box of a box with local half extents, rotated and centred."""
    reach = np.abs(np.asarray(rotation)) @ np.asarray(half_extent, dtype=float)
    return np.asarray(center) - reach, np.asarray(center) + reach


@dataclass
class Ellipsoid:
    """Solid ellipsoid.

    Attributes
    ----------
    center : ndarray (3,)
        LPS position, mm.
    rotation : ndarray (3, 3)
        Columns: the local axes in LPS.
    semi : ndarray (3,)
        Semi-axis lengths along the local axes, mm.
    """

    center: np.ndarray
    rotation: np.ndarray
    semi: np.ndarray

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=float)
        self.rotation = np.asarray(self.rotation, dtype=float)
        self.semi = np.asarray(self.semi, dtype=float)

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> "Ellipsoid":
        return Ellipsoid(rotation @ self.center + translation, rotation @ self.rotation, self.semi)

    def grown(self, margin: float) -> "Ellipsoid":
        """The ellipsoid with every semi-axis longer by ``margin`` mm (negative: shrunk)."""
        return Ellipsoid(self.center, self.rotation, np.maximum(self.semi + margin, 0.1))

    def pieces(self) -> list[Piece]:
        lo, hi = _rotated_bounds(self.center, self.rotation, self.semi)

        def evaluate(grid, box):
            q = grid.local_coords(box, self.center, self.rotation)
            return _ellipse_distance(q, self.semi), None

        return [(lo, hi, evaluate)]


@dataclass
class Cylinder:
    """Solid elliptic cylinder with flat ends.

    Attributes
    ----------
    center : ndarray (3,)
    rotation : ndarray (3, 3)
        Columns: the two cross-section axes, then the cylinder axis.
    semi : ndarray (2,)
        Cross-section semi-axes, mm.
    half_length : float
        Half the length along the axis, mm.
    """

    center: np.ndarray
    rotation: np.ndarray
    semi: np.ndarray
    half_length: float

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=float)
        self.rotation = np.asarray(self.rotation, dtype=float)
        self.semi = np.asarray(self.semi, dtype=float)

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> "Cylinder":
        return Cylinder(rotation @ self.center + translation, rotation @ self.rotation,
                        self.semi, self.half_length)

    def grown(self, margin: float) -> "Cylinder":
        return Cylinder(self.center, self.rotation, np.maximum(self.semi + margin, 0.1),
                        self.half_length + margin)

    def pieces(self) -> list[Piece]:
        lo, hi = _rotated_bounds(self.center, self.rotation, [*self.semi, self.half_length])

        def evaluate(grid, box):
            q = grid.local_coords(box, self.center, self.rotation)
            side = _ellipse_distance(q[:2], self.semi)
            return np.maximum(side, np.abs(q[2]) - self.half_length), None

        return [(lo, hi, evaluate)]


@dataclass
class Tube:
    """A tube of varying radius around a polyline (vessel, rib, airway).

    Attributes
    ----------
    points : ndarray (n, 3)
        Centerline, LPS mm, finely sampled.
    radii : ndarray (n,)
        Radius at each centerline point, mm.
    iodine_scale : ndarray (n,)
        Relative iodine concentration along the centerline (1 = the material's).
    chunk_mm : float
        Length of the pieces the renderer handles one at a time.

    The centerline must be sampled finer than the smallest radius (see :meth:`pieces`).
    """

    points: np.ndarray
    radii: np.ndarray
    iodine_scale: np.ndarray = None
    chunk_mm: float = field(default=4.0)

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=float)
        self.radii = np.broadcast_to(np.asarray(self.radii, dtype=float),
                                     (len(self.points),)).copy()
        if self.iodine_scale is None:
            self.iodine_scale = np.ones(len(self.points))
        self.iodine_scale = np.asarray(self.iodine_scale, dtype=float)

    @classmethod
    def through(cls, control_points, radii, step_mm: float = 0.5,
                iodine_scale=None) -> "Tube":
        """A smooth tube through control points (cubic spline on chord length).

        ``radii`` and ``iodine_scale`` are given at the control points and interpolated
        linearly along the arc length.
        """
        arc, points = smooth_path(control_points, step_mm)
        knots = _chord_lengths(np.asarray(control_points, dtype=float))
        knots = knots * (arc[-1] / knots[-1])
        r = np.interp(arc, knots, np.broadcast_to(radii, knots.shape))
        scale = None if iodine_scale is None else np.interp(
            arc, knots, np.broadcast_to(iodine_scale, knots.shape))
        return cls(points, r, scale)

    @property
    def arc_length(self) -> np.ndarray:
        """Cumulative length along the centerline at each point, mm."""
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.points, axis=0),
                                                               axis=1))])

    def moved(self, rotation: np.ndarray, translation: np.ndarray) -> "Tube":
        return Tube(self.points @ rotation.T + translation, self.radii, self.iodine_scale,
                    self.chunk_mm)

    def grown(self, margin: float) -> "Tube":
        return Tube(self.points, self.radii + margin, self.iodine_scale, self.chunk_mm)

    def pieces(self) -> list[Piece]:
        """Chunks of a few mm along the centerline.

        A voxel's distance is that to its nearest centerline sample (a k-d tree query) minus
        the radius there: with samples closer than the radius, within a few hundredths of a
        millimetre of the distance to the curve.
        """
        n = len(self.points)
        seg_len = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        step = max(1, int(round(max(self.chunk_mm, self.radii.max()) / max(seg_len.mean(), 1e-3))))
        tree = cKDTree(self.points)
        reach = float(self.radii.max()) + _TUBE_REACH_MM
        pieces = []
        for a in range(0, n - 1, step):
            chunk = self.points[a:min(a + step, n - 1) + 1]
            radius = self.radii[a:min(a + step, n - 1) + 1].max()
            pieces.append((chunk.min(axis=0) - radius, chunk.max(axis=0) + radius,
                           partial(self._evaluate, tree, reach)))
        return pieces

    def _evaluate(self, tree, reach, grid, box):
        x, y, z = grid.local_coords(box, np.zeros(3), np.eye(3))
        voxels = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
        distance, nearest = tree.query(voxels, distance_upper_bound=reach)
        near = nearest < len(self.points)
        sdf = np.full(len(voxels), np.float32(_FAR_MM))
        sdf[near] = distance[near] - self.radii[nearest[near]]
        scale = np.ones(len(voxels), dtype=np.float32)
        scale[near] = self.iodine_scale[nearest[near]]
        return sdf.reshape(x.shape), scale.reshape(x.shape)


def _chord_lengths(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def smooth_path(control_points, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a smooth curve through control points every ``step_mm``.

    Returns
    -------
    arc : ndarray (n,)
        Approximate arc length of each sample.
    points : ndarray (n, 3)
    """
    control = np.asarray(control_points, dtype=float)
    knots = _chord_lengths(control)
    if len(control) > 2:
        curve = CubicSpline(knots, control, bc_type="natural")
    else:
        def curve(s):
            return control[0] + np.outer(s / knots[-1], control[1] - control[0])
    dense = curve(np.linspace(0.0, knots[-1], max(8, int(knots[-1] / (step_mm / 4)))))
    dense_arc = _chord_lengths(dense)
    arc = np.linspace(0.0, dense_arc[-1], max(2, int(np.ceil(dense_arc[-1] / step_mm)) + 1))
    points = np.stack([np.interp(arc, dense_arc, dense[:, i]) for i in range(3)], axis=1)
    return arc, points


def frame_at(points: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit tangent and two normals of a polyline at a point (for placing plaques)."""
    i0, i1 = max(index - 1, 0), min(index + 1, len(points) - 1)
    tangent = points[i1] - points[i0]
    tangent /= np.linalg.norm(tangent)
    helper = np.array([0.0, 0.0, 1.0]) if abs(tangent[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    normal = np.cross(tangent, helper)
    normal /= np.linalg.norm(normal)
    return tangent, normal, np.cross(tangent, normal)


def iter_pieces(shapes) -> Iterator[Piece]:
    for shape in shapes:
        yield from shape.pieces()
