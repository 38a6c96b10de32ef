"""Stage 6: vessel centerlines by skeletonization.

The mask is thinned to a one-voxel-wide skeleton with scikit-image's 3D thinning
(:func:`skimage.morphology.skeletonize`, Lee, Kashyap & Chu 1994: a topology-preserving
thinning that peels border voxels in sub-iterations over the 6 directions). The paper used a
distance-ordered homotopic thinning; both preserve topology and end points, Lee's method
may leave the skeleton off-center by up to a voxel where the cross-section is elongated.

The skeleton becomes a graph (26-neighbours, edges weighted by their length in mm); per
connected piece a root end is chosen (the end nearest the aorta when a hint is given, the
ostium end), the shortest-path tree from it orders every voxel from proximal to distal,
short side spurs (thinning artefacts at bumps of the surface) are pruned, and the tree is
cut into branches: each branch follows, at every bifurcation, the child with the longest
distal path, and the other children start new branches.

Positions are array-frame mm (``index * spacing``, axes z, y, x), not patient LPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph

from .structuring import bounding_box, distance_mm, surface_voxels


@dataclass
class Centerline:
    """One branch of a vessel centerline, ordered from proximal to distal.

    Attributes
    ----------
    points : ndarray of int, shape (N, 3)
        Voxel indices (z, y, x) of the skeleton points.
    points_mm : ndarray of float, shape (N, 3)
        The same points in array-frame mm (``points * spacing``).
    radius_mm : ndarray, shape (N,)
        Lumen radius estimated from the distance transform of the mask.
    tangents : ndarray, shape (N, 3)
        Unit direction of the branch (distal-pointing), in mm space, axes (z, y, x).
    arc_length_mm : ndarray, shape (N,)
        Distance along the (lightly smoothed) branch from its first point.
    parent : int
        Index of the parent branch in the list returned by :func:`vessel_centerlines`,
        -1 for a root branch. A child's first point is its parent's branching point.
    parent_point : int
        Index, in the parent's points, where this branch leaves it (-1 for a root branch).
    """

    points: np.ndarray
    points_mm: np.ndarray
    radius_mm: np.ndarray
    tangents: np.ndarray
    arc_length_mm: np.ndarray
    parent: int = -1
    parent_point: int = -1

    @property
    def length_mm(self) -> float:
        """Length of the branch in mm."""
        return float(self.arc_length_mm[-1]) if len(self.arc_length_mm) else 0.0

    def __len__(self) -> int:
        return len(self.points)


# Half of the 26-neighbourhood: each undirected edge is found once.
_HALF_OFFSETS = np.array([o for o in np.ndindex(3, 3, 3)
                          if (np.array(o) - 1).tolist() > [0, 0, 0]]) - 1


def _skeleton_graph(skeleton: np.ndarray, spacing: np.ndarray):
    """Nodes (voxel coordinates) and the sparse symmetric adjacency (mm weights)."""
    coords = np.argwhere(skeleton)
    ids = np.full(skeleton.shape, -1, dtype=np.int64)
    ids[tuple(coords.T)] = np.arange(len(coords))
    rows, cols, weights = [], [], []
    for off in _HALF_OFFSETS:
        nb = coords + off
        inside = np.all((nb >= 0) & (nb < skeleton.shape), axis=1)
        j = np.full(len(coords), -1)
        j[inside] = ids[tuple(nb[inside].T)]
        hit = j >= 0
        rows.append(np.flatnonzero(hit))
        cols.append(j[hit])
        weights.append(np.full(hit.sum(), float(np.linalg.norm(off * spacing))))
    r, c, w = (np.concatenate(a) for a in (rows, cols, weights))
    graph = sparse.coo_matrix((np.r_[w, w], (np.r_[r, c], np.r_[c, r])),
                              shape=(len(coords), len(coords))).tocsr()
    return coords, graph


def _radius_mm(mask: np.ndarray, spacing: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Lumen radius at skeleton voxels from the Euclidean distance transform (mm).

    Thinning may leave the skeleton a voxel off the medial axis, so the largest distance to
    the background within each skeleton voxel's 3x3x3 neighbourhood is taken. On digital
    tubes of 0.9-2.5 mm radius at 0.4-0.625 mm voxels this is within about 0.1 mm of the
    true radius for oblique tubes and up to half a voxel above it for axis-aligned ones.
    """
    dist = distance_mm(mask, spacing)
    deepest = ndi.maximum_filter(dist, size=3, mode="constant")
    return np.maximum(deepest[tuple(coords.T)], 0.5 * float(spacing.min()))


def _hint_distance(hint, offset: np.ndarray, spacing: np.ndarray, coords: np.ndarray):
    """Distance (mm) from each skeleton voxel (crop coordinates) to the root hint (None when
    the hint is an empty mask or an empty set of points)."""
    from scipy.spatial import cKDTree

    hint_arr = np.asarray(hint)
    if hint_arr.ndim == 1 and hint_arr.size == 3:
        targets = hint_arr[None, :]
    elif hint_arr.ndim == 2 and hint_arr.shape[1] == 3:
        targets = hint_arr
    else:
        targets = surface_voxels(hint_arr.astype(bool))
    if not len(targets):
        return None
    tree = cKDTree(targets.astype(float) * spacing)
    return tree.query((coords + offset) * spacing)[0]


def _smooth_path(points_mm: np.ndarray, spacing_mm: float, smooth_mm: float) -> np.ndarray:
    if len(points_mm) < 3:
        return points_mm
    sigma = smooth_mm / max(spacing_mm, 1e-6)
    return ndi.gaussian_filter1d(points_mm, sigma, axis=0, mode="nearest")


def _branch(nodes, coords, offset, spacing, radius, smooth_mm, parent, parent_point):
    pts = coords[nodes] + offset
    pts_mm = pts * spacing
    steps = np.linalg.norm(np.diff(pts_mm, axis=0), axis=1)
    smooth = _smooth_path(pts_mm, float(steps.mean()) if len(steps) else 1.0, smooth_mm)
    seg = np.linalg.norm(np.diff(smooth, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if len(nodes) > 1:
        tangents = np.gradient(smooth, axis=0)
        tangents /= np.maximum(np.linalg.norm(tangents, axis=1), 1e-9)[:, None]
    else:
        tangents = np.zeros((1, 3))
    return Centerline(pts, pts_mm, radius[nodes], tangents, arc, parent, parent_point)


def _tree_branches(root, graph, coords, radius, min_spur_mm, spur_radius_factor):
    """Shortest-path tree from ``root``, spurs pruned, cut into node paths.

    Returns a list of (nodes, parent_branch, parent_point), parents before children.
    """
    dist, pred = csgraph.dijkstra(graph, indices=root, return_predecessors=True)
    reached = np.flatnonzero(np.isfinite(dist))
    order = reached[np.argsort(dist[reached])]
    children = {int(n): [] for n in reached}
    for n in order[1:]:
        children[int(pred[n])].append(int(n))
    # Length of the longest path from each node to a distal end.
    height = np.zeros(len(dist))
    for n in order[::-1]:
        p = pred[n]
        if p >= 0:
            height[p] = max(height[p], height[n] + dist[n] - dist[p])
    reach = {n: height[n] + dist[n] - dist[pred[n]] for n in map(int, order[1:])}

    branches = []
    queue = [(int(root), -1, -1)]
    while queue:
        start, parent, parent_point = queue.pop(0)
        nodes = [start] if parent < 0 else [int(pred[start]), start]
        index = len(branches)
        branches.append(None)
        node = start
        while children[node]:
            kids = sorted(children[node], key=lambda c: -reach[c])
            limit = max(min_spur_mm, spur_radius_factor * radius[node])
            for side in kids[1:]:
                if reach[side] >= limit:
                    queue.append((side, index, len(nodes) - 1))
            node = kids[0]
            nodes.append(node)
        branches[index] = (np.array(nodes), parent, parent_point)
    return branches


def vessel_centerlines(vessel_mask: np.ndarray, spacing, root_hint=None,
                       min_spur_mm: float = 2.0, spur_radius_factor: float = 2.0,
                       smooth_mm: float = 1.0) -> list[Centerline]:
    """Centerlines of a (binary) vessel mask, as branches ordered from the root outward.

    Parameters
    ----------
    vessel_mask : ndarray of bool, shape (z, y, x)
        One vessel or tree (e.g. one coronary label).
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    root_hint : ndarray of bool (same shape), ndarray (k, 3) or sequence of 3 float, optional
        The aorta mask, its surface voxels (:func:`~AutoCACLib.structuring.surface_voxels`,
        to compute once for several vessels), or a voxel position (z, y, x) of the ostium.
        In each connected piece of the skeleton the end nearest to it is the root. Without
        it the root is the end with the widest lumen (the ostium is the widest end of a
        coronary tree).
    min_spur_mm : float
        Side branches whose longest distal path is shorter than this are pruned.
    spur_radius_factor : float
        ... and so are those shorter than this many lumen radii at their branching point
        (a bump of the surface of a thick vessel makes a spur about one radius long).
    smooth_mm : float
        Gaussian smoothing (in mm of path) of the positions used for tangents and lengths.

    Returns
    -------
    list of Centerline
        Per connected piece (largest first), its branches with parents before children.
        Every branch but a root branch starts at its parent's branching point.
    """
    from skimage.morphology import skeletonize

    mask = np.asarray(vessel_mask, dtype=bool)
    sp = np.asarray(spacing, dtype=float)
    if not mask.any():
        return []
    box = bounding_box(mask, 1)
    lo = np.array([s.start for s in box])
    crop = mask[box]
    skeleton = skeletonize(crop).astype(bool)
    coords, graph = _skeleton_graph(skeleton, sp)
    radius = _radius_mm(crop, sp, coords)
    hint_dist = None if root_hint is None else _hint_distance(root_hint, lo, sp, coords)
    degree = np.diff(graph.indptr)

    n_pieces, piece = csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(piece, minlength=n_pieces)
    result: list[Centerline] = []
    for p in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(piece == p)
        ends = members[degree[members] <= 1]
        if not len(ends):  # a closed loop: any voxel may be the root
            ends = members
        if hint_dist is not None:
            root = ends[np.argmin(hint_dist[ends])]
        else:
            root = ends[np.argmax(radius[ends])]
        first = len(result)
        for nodes, parent, parent_point in _tree_branches(root, graph, coords, radius,
                                                          min_spur_mm, spur_radius_factor):
            result.append(_branch(nodes, coords, lo, sp, radius, smooth_mm,
                                  parent + first if parent >= 0 else -1, parent_point))
    return result
