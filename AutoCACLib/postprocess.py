"""Stage 5: post-processing of the network's coronary tree.

The coronary network labels voxels background, LM, LAD, LCx or RCA, and its mask is
imperfect: vessels break into pieces (stenoses, calcium blooming, motion), pieces of veins,
of the myocardium or of a chamber's blood pool are labelled coronary, and the vessel label of
a piece may be wrong. :func:`postprocess_coronaries` repairs it in four steps, as the paper
describes (reconnection by location, distance and vessel type; removal of false positives by
angle, location and attenuation; anatomical labelling):

1. **Blobs.** No coronary is thicker than ``max_radius_mm``: wherever a ball of that radius
   fits in the mask (a leak into a chamber or the aortic root), the balls are carved away
   (a morphological opening, computed only where a ~1 mm grid finds something thick).
2. **False positives.** The tree starts at the aorta: the connected pieces that touch it
   (within ``ostium_margin_mm``) are its roots. Every other piece, and every root too short
   to be sure of, is tested: a round piece (short compared with its thickness) is a blob; a
   piece whose lumen attenuation is well below the aortic blood pool is a vein (veins enhance
   less in the arterial phase; long roots get this test only); a piece surrounded by enhanced
   blood lies inside a chamber.
3. **Reconnection.** Each remaining piece is joined to the nearest end of the tree when the
   gap is short (``max_gap_mm``), the piece points at the tree and the tree end points at the
   piece (``max_angle_deg``; a piece running across the gap line is a crossing vein), and
   the vessel labels are compatible (same vessel, or LM with LAD/LCx). The gap is filled with
   a tube of the local radius along a minimal-cost path that follows contrast (through
   calcium too). A piece that fails these tests still joins the nearest tree voxel of a
   compatible vessel across a longer gap (``contrast_gap_mm``) when a minimal-cost path
   there stays contrast-filled (as bright as the dimmer of the lumens it joins) nearly all
   the way and does not run through a chamber: the network often misses a stretch of a
   patent vessel, and such a path is the vessel itself. Joining repeats until nothing
   changes, so chains of pieces reconnect; then pieces may join any vessel by the same
   tests, again until nothing changes: the network's votes on a detached distal piece are
   its least reliable (a left-dominant heart's distal LCx or obtuse marginal voted RCA or
   LAD), and step 4 names a piece by where it hangs. Pieces that never join are removed. A
   part of the tree that then touches the aorta but spans less than ``min_root_mm`` is a
   bump on the aortic wall (the network takes the blooming of aortic-wall calcium for an
   ostium), not a vessel, and is removed.
4. **Labelling.** Geodesic distance from the ostia along the tree cuts it into bands of
   ``band_mm``; the connected parts of each band are the nodes of a tree graph (a
   skeleton-free branch structure). Each ostium's territory is the RCA or the left tree by
   majority vote of the network labels. A dynamic program assigns LM, LAD, LCx or RCA to
   every node, minimising the number of network votes overruled subject to anatomy: a left
   tree starts as LM (or LAD and LCx from separate ostia), a right tree as the RCA; below an
   LM node come LM, LAD or LCx, below any other vessel only that vessel (side branches
   belong to their parent vessel). One exception, at a price of ``meeting_mm3`` in votes:
   the RCA and the LCx meet near the crux, and where the tree runs from the RCA on into the
   distal LCx of a left-dominant heart, the stretch beyond the meeting may be LCx, to its
   ends.

Arrays are indexed ``[z, y, x]`` with ``spacing`` ``(z, y, x)`` in mm (see
:mod:`AutoCACLib.volume`); every parameter is in mm or degrees. The work is done on the
bounding box of the coronary mask (plus the reconnection reach), with sparse voxel graphs and
small local boxes, so a clinical-size case takes a few seconds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree
from skimage.draw import line_nd
from skimage.graph import MCP_Geometric

from .segments import VESSELS
from .structuring import ball, bounding_box, box_around, surface_voxels

#: Vessel indices of the output label map (not the segment label values of ``segments``).
LM, LAD, LCX, RCA = 1, 2, 3, 4
#: States of the labelling program: the four vessels from their own ostium, then the LCx
#: reached from the RCA (the tree joined them where they meet, near the crux of a
#: left-dominant heart); and the vessel each state labels.
_LM_STATE, _LAD_STATE, _LCX_STATE, _RCA_STATE, _MET_LCX = range(5)
_STATE_VESSEL = np.array([LM, LAD, LCX, RCA, LCX])
#: States allowed on a node below a node in each state: anatomy (side branches belong to
#: their parent vessel) ...
_CHILDREN = {_LM_STATE: (_LM_STATE, _LAD_STATE, _LCX_STATE), _LAD_STATE: (_LAD_STATE,),
             _LCX_STATE: (_LCX_STATE,), _RCA_STATE: (_RCA_STATE,), _MET_LCX: (_MET_LCX,)}
#: ... and, at a cost, where the RCA runs on into the LCx. Not the other way: the network
#: calls the posterior groove RCA whatever the dominance, so its RCA votes on a distal LCx
#: prove nothing (on seed 37000 they would have relabelled 2 left-dominant LCx correctly
#: labelled by the tree), while its LCx votes there go against that habit.
_MEETINGS = {_RCA_STATE: (_MET_LCX,)}
#: States allowed at the ostium of a left and of a right tree.
_LEFT_ROOTS, _RIGHT_ROOTS = (_LM_STATE, _LAD_STATE, _LCX_STATE), (_RCA_STATE,)
_FULL_NAMES = {
    "LM": "left main coronary artery",
    "LAD": "left anterior descending artery",
    "LCx": "left circumflex artery",
    "RCA": "right coronary artery",
}
#: Size of the coarse grid cells on which blobs are found, mm.
_COARSE_MM = 1.0
#: The 13 neighbour offsets of a 26-neighbourhood that are lexicographically positive.
_HALF_OFFSETS = np.array([o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)])
#: Principal-axis anisotropy (sqrt of the eigenvalue ratio) above which a direction is trusted.
_MIN_ANISOTROPY = 1.5
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
#: Percentile of a piece's HU taken as its lumen attenuation (above the partial-volume rim).
_CORE_PERCENTILE = 75
#: Share of a contrast path's voxels allowed below the lumen test (noise, partial volume).
_PATH_DARK_SHARE = 0.1
#: Margin (mm) around a contrast path in which its depth in enhanced blood is measured.
_POOL_MARGIN_MM = 7.0
#: Blood at least this fraction of a piece's lumen attenuation counts as a chamber's blood ...
_POOL_LUMEN_RATIO = 0.75
#: ... on the image smoothed by a Gaussian of this standard deviation (mm).
_POOL_SMOOTH_MM = 0.5


@dataclass(frozen=True)
class PostprocessParams:
    """Parameters of :func:`postprocess_coronaries`, in mm and degrees.

    Attributes
    ----------
    ostium_margin_mm : float
        A coronary voxel this close to the aorta touches it: the tree's roots (ostia). The
        aorta network's boundary is uncertain by about a voxel of its 1.2 mm grid.
    ostium_merge_mm : float
        Contacts with the aorta closer to each other than this are one ostium.
    min_piece_mm3 : float
        Detached pieces smaller than this are noise and dropped.
    max_radius_mm : float
        No coronary lumen is thicker: wherever a ball of this radius fits in the mask, the
        region and its rim are carved away as a blob (chamber or aortic-root leak).
    min_elongation : float
        A detached piece of at least ``blob_test_mm3`` must be this many times longer (extent
        along its principal axis) than thick (twice its largest inscribed radius).
    blob_test_mm3 : float
        Smallest detached piece whose elongation is tested (short vessel fragments are round).
    min_lumen_ratio : float
        A piece whose lumen attenuation (upper quartile of its HU) is below this fraction of
        the aortic blood pool's is a vein; also the fraction above which a voxel counts as
        enhanced blood.
    max_pool_fraction : float
        A piece whose surroundings (a shell 1-2 mm outside it, coronary and aortic voxels
        excepted) are enhanced blood for more than this fraction lies inside a chamber.
    pool_depth_mm : float
        ... where a surrounding voxel counts as a chamber's blood when it lies deeper than
        this in enhanced voxels (a calcified plaque's bright rim and halo around a vessel
        are enhanced too, but thin).
    max_blood_ratio : float
        Voxels brighter than this times the aortic blood pool are calcium: left out of a
        piece's lumen attenuation.
    max_gap_mm : float
        Longest gap bridged between a piece and the tree (voxel centre to voxel centre).
    contrast_gap_mm : float
        Longest gap bridged, whatever the directions, along a path that is contrast-filled
        all the way (the network often misses a stretch of a patent vessel; 0: never).
    min_path_lumen_ratio : float
        Such a path must keep at least this fraction of the piece's lumen attenuation on
        all but ``_PATH_DARK_SHARE`` of its voxels.
    max_path_pool_fraction : float
        ... and may run through a chamber (enhanced blood deeper than ``max_radius_mm`` from
        anything darker) for at most this share of its voxels.
    max_angle_deg : float
        Largest angle between the gap and the piece's axis, and between the gap and the
        outward direction of the tree end, for a reconnection.
    direction_radius_mm : float
        Radius of the neighbourhood in which local directions, radii and labels are measured.
    path_cost_weight : float
        Extra cost of a gap-filling path through a voxel darker than the lumen (0: straight).
    max_path_ratio : float
        A gap-filling path longer than this times the straight gap is replaced by a line.
    any_vessel_reconnection : bool
        Pieces that cannot join a vessel their network votes may continue join any vessel
        (same gap, direction and contrast tests) once nothing more joins the typed way.
    min_root_mm : float
        A connected part of the reconnected tree that touches the aorta and fits in a box
        with a shorter diagonal is a stub on the aortic wall and is removed (no vessel worth
        scoring is that short: see ``min_vessel_length_mm``).
    band_mm : float
        Width of the geodesic bands that cut the tree into nodes for labelling.
    min_vessel_length_mm : float
        LAD, LCx or RCA shorter than this counts as missing (LM only when absent).
    max_removed_fraction : float
        Above this fraction of discarded coronary voxels, the QC calls the tree fragmented.
    unusable_removed_fraction : float
        Above this fraction, the QC calls the tree unusable: most of what the network called
        coronary is not a connected tree, so what remains cannot be trusted either.
    max_ostia : int
        More major ostia than this and the QC calls the tree unusable: a coronary tree has
        two ostia, rarely three or four (separate conus branch, LAD and LCx); many mean the
        network followed the aortic wall or other vessels.
    min_ostium_mm3 : float
        A contact with the aorta of at least this volume is a major ostium (a vessel of 1 mm
        radius crossing the ostium margin gives about 6 mm^3); smaller contacts are specks.
    meeting_mm3 : float
        Where the tree runs from the RCA on into the LCx (joined near the crux, where they
        meet in a left-dominant heart), the stretch beyond the meeting is LCx when the
        network's votes there favour the LCx by at least this volume (about 10 mm of a
        vessel 1 mm in radius: its votes on the distal vessels are mixed).
    """

    ostium_margin_mm: float = 2.0
    ostium_merge_mm: float = 4.0
    min_piece_mm3: float = 1.0
    max_radius_mm: float = 3.5
    min_elongation: float = 1.5
    blob_test_mm3: float = 60.0
    min_lumen_ratio: float = 0.6
    max_pool_fraction: float = 0.5
    pool_depth_mm: float = 2.5
    max_blood_ratio: float = 1.6
    max_gap_mm: float = 6.0
    contrast_gap_mm: float = 20.0
    min_path_lumen_ratio: float = 0.6
    max_path_pool_fraction: float = 0.2
    max_angle_deg: float = 70.0
    direction_radius_mm: float = 4.0
    path_cost_weight: float = 10.0
    max_path_ratio: float = 1.5
    any_vessel_reconnection: bool = True
    min_root_mm: float = 8.0
    band_mm: float = 2.0
    min_vessel_length_mm: float = 10.0
    max_removed_fraction: float = 0.3
    unusable_removed_fraction: float = 0.5
    max_ostia: int = 4
    min_ostium_mm3: float = 5.0
    meeting_mm3: float = 30.0


@dataclass
class PostprocessQC:
    """Facts about the post-processed tree, for failure detection.

    Attributes
    ----------
    n_ostia : int
        Separate places where the tree touches the aorta.
    n_major_ostia : int
        Those with a contact of at least ``min_ostium_mm3`` (see :class:`PostprocessParams`).
    left_ostium, right_ostium : bool
        Whether a left (LM/LAD/LCx) and a right (RCA) tree start at the aorta.
    n_fragments_before, n_fragments_after : int
        Connected pieces (26-connectivity) of the network's mask and of the result.
    n_reconnected : int
        Pieces joined to the tree by a bridge.
    removed_pieces : dict of str to int
        Pieces discarded, by reason: ``blob``, ``low attenuation``, ``blood pool``,
        ``direction``, ``vessel type``, ``unconnected``, ``speck``.
    removed_fraction : float
        Fraction of the network's coronary voxels (outside the aorta) not in the result.
    length_mm : dict of str to float
        Tree length per vessel (``LM``, ``LAD``, ``LCx``, ``RCA``), side branches included.
    missing : tuple of str
        Vessels not found (LAD, LCx, RCA shorter than ``min_vessel_length_mm``; LM absent).
    params : PostprocessParams
        The parameters the tree was post-processed with; their thresholds decide
        :attr:`fragmented` and :attr:`unusable`.
    """

    n_ostia: int
    left_ostium: bool
    right_ostium: bool
    n_fragments_before: int
    n_fragments_after: int
    n_reconnected: int
    removed_pieces: dict[str, int]
    removed_fraction: float
    length_mm: dict[str, float]
    missing: tuple[str, ...]
    n_major_ostia: int = 0
    params: PostprocessParams = PostprocessParams()

    @property
    def tree_missing(self) -> bool:
        """True when no ostium was found or none of LAD, LCx and RCA is present."""
        return self.n_ostia == 0 or all(v in self.missing for v in ("LAD", "LCx", "RCA"))

    @property
    def incomplete(self) -> bool:
        """True when the LAD, LCx or RCA was not found (every heart has them; the LM may be
        absent, the LAD and LCx then leaving the aorta separately)."""
        return any(v in self.missing for v in ("LAD", "LCx", "RCA"))

    @property
    def fragmented(self) -> bool:
        """True when more than ``max_removed_fraction`` of the network's mask was discarded."""
        return self.removed_fraction > self.params.max_removed_fraction

    @property
    def too_many_ostia(self) -> bool:
        """True when the tree has more than ``max_ostia`` major ostia."""
        return self.n_major_ostia > self.params.max_ostia

    @property
    def unusable(self) -> bool:
        """True when the tree is not a plausible coronary tree: most of the network's mask
        was discarded, or it touches the aorta in too many places."""
        return (self.too_many_ostia
                or self.removed_fraction > self.params.unusable_removed_fraction)

    def findings(self) -> list[str]:
        """The problems found, in words a radiologist understands (empty when none)."""
        out = []
        if self.n_ostia == 0:
            out.append("No coronary ostium found: the segmented coronary arteries do not "
                       "reach the aorta.")
        if self.too_many_ostia:
            out.append(f"The segmented arteries join the aorta in {self.n_major_ostia} separate "
                       f"places (a coronary tree starts at 2, rarely up to {self.params.max_ostia}): "
                       "the segmentation has likely followed the aortic wall or other vessels.")
        for vessel in self.missing:
            out.append(f"The {_FULL_NAMES[vessel]} ({vessel}) was not found.")
        if self.fragmented:
            out.append(f"The coronary tree is fragmented: {100 * self.removed_fraction:.0f}% "
                       "of the segmented coronary voxels could not be connected to the tree "
                       "or looked like veins or heart chambers.")
        return out


@dataclass
class PostprocessResult:
    """Output of :func:`postprocess_coronaries`.

    Attributes
    ----------
    labels : ndarray of uint8, shape (z, y, x)
        0 background, 1 LM, 2 LAD, 3 LCx, 4 RCA (vessel indices, not segment label values).
    qc : PostprocessQC
    """

    labels: np.ndarray
    qc: PostprocessQC


@dataclass
class _Piece:
    """A detached piece of the mask and what was measured on it (crop voxel coordinates)."""

    coords: np.ndarray
    depth_mm: np.ndarray
    label: int
    core_hu: float
    lo: np.ndarray = field(init=False)
    hi: np.ndarray = field(init=False)

    def __post_init__(self):
        self.lo = self.coords.min(axis=0)
        self.hi = self.coords.max(axis=0) + 1


def postprocess_coronaries(vessel_labels, image, spacing, aorta_mask,
                           params: PostprocessParams = PostprocessParams()) -> PostprocessResult:
    """Clean, reconnect and label the network's coronary tree.

    Parameters
    ----------
    vessel_labels : ndarray of int, shape (z, y, x)
        Network output: 0 background, 1 LM, 2 LAD, 3 LCx, 4 RCA.
    image : ndarray, shape (z, y, x)
        The CCTA in HU (not preprocessed: attenuation is compared with the aorta's).
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    aorta_mask : ndarray of bool, shape (z, y, x)
        The aorta; coronary voxels inside it are ignored.
    params : PostprocessParams

    Returns
    -------
    PostprocessResult
        The labelled tree (vessel indices 1..4) and its QC facts.
    """
    vessel_labels = np.asarray(vessel_labels)
    image = np.asarray(image)
    aorta_mask = np.asarray(aorta_mask, dtype=bool)
    spacing = np.asarray(spacing, dtype=float)
    if not (vessel_labels.shape == image.shape == aorta_mask.shape) or vessel_labels.ndim != 3:
        raise ValueError(f"labels {vessel_labels.shape}, image {image.shape} and aorta "
                         f"{aorta_mask.shape} must be 3D arrays of the same shape")
    if vessel_labels.size and (vessel_labels.min() < 0 or vessel_labels.max() > RCA):
        raise ValueError("vessel labels must be 0 (background) or 1..4 (LM, LAD, LCx, RCA)")

    out = np.zeros(vessel_labels.shape, dtype=np.uint8)
    coronary = (vessel_labels > 0) & ~aorta_mask
    n_input = int(np.count_nonzero(coronary))
    if n_input == 0:
        return PostprocessResult(out, _qc(params, _TreeFacts(), 0, 0, Counter(), 1.0))

    reach = params.max_gap_mm + params.direction_radius_mm + params.max_radius_mm
    box = bounding_box(coronary, np.ceil(reach / spacing).astype(int) + 1)
    net = np.where(coronary[box], vessel_labels[box], 0).astype(np.int8)
    img = image[box]
    aorta = aorta_mask[box]
    if aorta.any():
        aorta_hu = float(np.median(img[aorta]))
    else:
        aorta_hu = float(np.median(image[aorta_mask])) if aorta_mask.any() else None
    removed = Counter()

    components, n_before = ndi.label(net > 0, _STRUCTURE_26)
    carved, n_blobs = _carve_blobs(net > 0, spacing, params)
    if n_blobs:
        removed["blob"] += n_blobs
        components, _ = ndi.label((net > 0) & ~carved, _STRUCTURE_26)

    tree, pieces = _split_pieces(components, net, img, aorta, aorta_hu, spacing, params,
                                 removed)
    n_reconnected = _reconnect(tree, pieces, net, img, aorta, spacing, params, removed)
    n_stubs = _drop_stubs(tree, aorta, spacing, params)
    if n_stubs:
        removed["stub"] += n_stubs
    labels, facts = _label_tree(tree, net, aorta, spacing, params)
    out[box] = labels
    kept = np.count_nonzero((labels > 0) & (net > 0))
    return PostprocessResult(out, _qc(params, facts, n_before, n_reconnected, removed,
                                      1.0 - kept / n_input))


@dataclass
class _TreeFacts:
    """What labelling found: ostia, sides, pieces and length per vessel index."""

    n_ostia: int = 0
    n_major_ostia: int = 0
    left_ostium: bool = False
    right_ostium: bool = False
    n_fragments: int = 0
    lengths: dict[int, float] = field(default_factory=dict)


def _qc(params, facts, n_before, n_reconnected, removed, removed_fraction) -> PostprocessQC:
    """Assemble the QC facts; a vessel is missing when shorter than the minimum length."""
    length_mm = {v: float(facts.lengths.get(i + 1, 0.0)) for i, v in enumerate(VESSELS)}
    missing = tuple(v for v in VESSELS if length_mm[v] <= 0.0
                    or (v != "LM" and length_mm[v] < params.min_vessel_length_mm))
    return PostprocessQC(
        n_ostia=facts.n_ostia, n_major_ostia=facts.n_major_ostia,
        left_ostium=facts.left_ostium, right_ostium=facts.right_ostium,
        n_fragments_before=n_before, n_fragments_after=facts.n_fragments,
        n_reconnected=n_reconnected, removed_pieces=dict(removed),
        removed_fraction=float(removed_fraction), length_mm=length_mm, missing=missing,
        params=params)


# --- geometry helpers ---------------------------------------------------------------------


def _near(points: np.ndarray, mask: np.ndarray, radius_mm: float,
          spacing: np.ndarray) -> np.ndarray:
    """For each voxel of ``points`` (k, 3), whether ``mask`` has a voxel within ``radius_mm``
    (centre to centre, as :func:`~AutoCACLib.structuring.ball` counts it).

    Outside the mask, the nearest mask voxel is on the mask's surface (a voxel with a
    6-neighbour outside it: any other has a neighbour nearer), so only the surface near the
    points is searched.
    """
    if not len(points) or not mask.any():
        return np.zeros(len(points), dtype=bool)
    reach = np.ceil(radius_mm / spacing).astype(int) + 1
    box = box_around(points.min(axis=0) - reach, points.max(axis=0) + reach + 1, mask.shape)
    local = mask[box]
    surface = surface_voxels(local) + [s.start for s in box]
    hit = mask[tuple(points.T)]
    if len(surface) and not hit.all():
        limit = radius_mm ** 2 + 1e-9
        dist, _ = cKDTree(surface * spacing).query(points[~hit] * spacing,
                                                   distance_upper_bound=np.sqrt(limit) + 1e-6)
        hit[~hit] = dist ** 2 <= limit
    return hit


def _principal_axis(points_mm: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Unit principal axis of a point cloud and its anisotropy (sqrt of the top two
    eigenvalues' ratio; 0 when undefined)."""
    if len(points_mm) < 3:
        return None, 0.0
    centered = points_mm - points_mm.mean(axis=0)
    values, vectors = np.linalg.eigh(centered.T @ centered / len(points_mm))
    return vectors[:, 2], float(np.sqrt(values[2] / max(values[1], 1e-12)))


def _angle_deg(u: np.ndarray, v: np.ndarray, undirected: bool = False) -> float:
    """Angle between two vectors in degrees; in 0..90 when ``undirected``."""
    c = float(u @ v) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)
    if undirected:
        c = abs(c)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _neighbourhood(mask: np.ndarray, center: np.ndarray, radius_mm: float,
                   spacing: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` within ``radius_mm`` of ``center`` (k, 3)."""
    reach = np.ceil(radius_mm / spacing).astype(int)
    box = box_around(center - reach, center + reach + 1, mask.shape)
    points = np.argwhere(mask[box]) + [s.start for s in box]
    return points[np.linalg.norm((points - center) * spacing, axis=1) <= radius_mm]


def _local_radius(mask: np.ndarray, center: np.ndarray, radius_mm: float,
                  spacing: np.ndarray, max_radius_mm: float) -> float:
    """Largest inscribed radius (mm) of ``mask`` within ``radius_mm`` of ``center``."""
    reach = np.ceil((radius_mm + max_radius_mm) / spacing).astype(int) + 1
    box = box_around(center - reach, center + reach + 1, mask.shape)
    depth = ndi.distance_transform_edt(mask[box], sampling=spacing)
    points = _neighbourhood(mask[box], center - [s.start for s in box], radius_mm, spacing)
    return float(depth[tuple(points.T)].max()) if len(points) else 0.0


# --- step 1: blobs ------------------------------------------------------------------------

def _carve_blobs(mask: np.ndarray, spacing: np.ndarray,
                 params: PostprocessParams) -> tuple[np.ndarray | None, int]:
    """Find the regions thicker than any coronary and the mask voxels to carve with them.

    The carved voxels are the morphological opening of the mask by a ball of
    ``max_radius_mm``: every voxel within that radius of a voxel deeper than it. A screen on
    a grid of ~1 mm cells (a cell is in when half its voxels are) finds where to look.
    Returns the voxels to carve (None when there is no blob) and the number of blobs.
    """
    factor = np.maximum(1, np.round(_COARSE_MM / spacing)).astype(int)
    cell = factor * spacing
    cells = np.argwhere(mask) // factor
    coarse_shape = tuple(-(-np.array(mask.shape) // factor))
    counts = np.bincount(np.ravel_multi_index(cells.T, coarse_shape),
                         minlength=int(np.prod(coarse_shape)))
    coarse = (counts >= 0.5 * np.prod(factor)).reshape(coarse_shape)
    # A depth above R survives R // cell erosions by the 6-neighbourhood.
    steps = int(params.max_radius_mm // cell.max())
    screen = ndi.binary_erosion(coarse, iterations=steps) if steps else coarse
    if not screen.any():
        return None, 0
    pad = np.ceil(2.0 * params.max_radius_mm / spacing).astype(int) + 2
    rim = params.max_radius_mm + 0.5 * float(spacing.max())
    carved = np.zeros(mask.shape, dtype=bool)
    n_blobs = 0
    for found in ndi.find_objects(ndi.label(screen, _STRUCTURE_26)[0]):
        box = box_around([s.start * f - p for s, f, p in zip(found, factor, pad)],
                         [s.stop * f + p for s, f, p in zip(found, factor, pad)], mask.shape)
        core = ndi.distance_transform_edt(mask[box], sampling=spacing) > params.max_radius_mm
        if core.any():
            carved[box] |= mask[box] & (ndi.distance_transform_edt(~core, sampling=spacing)
                                        <= rim)
            n_blobs += 1
    return (carved, n_blobs) if n_blobs else (None, 0)


# --- step 2: detached pieces --------------------------------------------------------------

def _split_pieces(components, net, img, aorta, aorta_hu, spacing, params, removed):
    """The tree's roots (pieces touching the aorta) and the detached pieces worth joining.

    Detached pieces, and roots too short to be sure of (bounding-box diagonal under
    ``min_elongation`` times the thickest coronary), are measured and tested. Returns the root
    mask and the plausible detached pieces; implausible pieces are counted in ``removed`` by
    reason.
    """
    coords = np.argwhere(components > 0)
    touching = _near(coords, aorta, params.ostium_margin_mm, spacing)
    is_root = np.zeros(int(components.max()) + 1, dtype=bool)
    is_root[np.unique(components[tuple(coords[touching].T)])] = True
    voxel_mm3 = float(np.prod(spacing))
    sure_root_mm = params.min_elongation * 2.0 * params.max_radius_mm
    pieces = []
    for index, piece_box in enumerate(ndi.find_objects(components), start=1):
        if piece_box is None:
            continue
        size_mm = np.array([s.stop - s.start - 1 for s in piece_box]) * spacing
        if is_root[index] and np.linalg.norm(size_mm) >= sure_root_mm:
            hu = img[piece_box][components[piece_box] == index]
            piece, reason = None, _attenuation_reason(_lumen_hu(hu, aorta_hu, params),
                                                      aorta_hu, params)
        else:
            piece, reason = _measure_piece(index, piece_box, components, net, img, aorta,
                                           aorta_hu, spacing, voxel_mm3, params)
        if reason is not None:
            removed[reason] += 1
            is_root[index] = False
        elif not is_root[index]:
            pieces.append(piece)
    return is_root[components], pieces


def _measure_piece(index, piece_box, components, net, img, aorta, aorta_hu, spacing,
                   voxel_mm3, params) -> tuple[_Piece | None, str | None]:
    """Measure a piece and say why it is not a coronary (None when plausible).

    The reasons, in order: ``speck`` (too small), ``blob`` (round), ``low attenuation``
    (vein), ``blood pool`` (inside an enhanced chamber).
    """
    if np.count_nonzero(components[piece_box] == index) * voxel_mm3 < params.min_piece_mm3:
        return None, "speck"
    pad = np.ceil((2.0 + params.pool_depth_mm) / spacing).astype(int) + 2
    box = box_around([s.start - p for s, p in zip(piece_box, pad)],
                     [s.stop + p for s, p in zip(piece_box, pad)], components.shape)
    inside = components[box] == index
    depth = ndi.distance_transform_edt(inside, sampling=spacing)
    coords = np.argwhere(inside) + [s.start for s in box]
    depth_mm = depth[inside]
    hu = img[box][inside]
    core_hu = _lumen_hu(hu, aorta_hu, params)
    votes = np.bincount(net[box][inside], minlength=RCA + 1)[1:]
    piece = _Piece(coords, depth_mm, int(np.argmax(votes)) + 1, core_hu)

    if len(coords) * voxel_mm3 >= params.blob_test_mm3:
        axis, _ = _principal_axis(coords * spacing)
        extent = np.ptp(coords * spacing @ axis)
        if extent < params.min_elongation * 2.0 * depth_mm.max():
            return piece, "blob"
    if aorta_hu is not None:
        enhanced = params.min_lumen_ratio * aorta_hu
        if _attenuation_reason(core_hu, aorta_hu, params):
            return piece, "low attenuation"
        outside = ndi.distance_transform_edt(~inside, sampling=spacing)
        shell = (outside > 1.0) & (outside <= 2.0) & (components[box] == 0) & ~aorta[box]
        pool = _enhanced_depth(img[box], enhanced, spacing) > params.pool_depth_mm
        if shell.any() and np.mean(pool[shell]) > params.max_pool_fraction:
            return piece, "blood pool"
    return piece, None


def _lumen_hu(hu: np.ndarray, aorta_hu: float | None, params) -> float:
    """A piece's lumen attenuation: the upper quartile of its HU (which partial volume at the
    wall does not reach), calcium (above ``max_blood_ratio`` of the aorta) left out, and
    no brighter than the aorta whose blood fills it (a plaque's halo can make it look so)."""
    if aorta_hu is None:
        return float(np.percentile(hu, _CORE_PERCENTILE))
    blood = hu[hu < params.max_blood_ratio * aorta_hu]
    return min(float(np.percentile(blood if blood.size else hu, _CORE_PERCENTILE)), aorta_hu)


def _enhanced_depth(img: np.ndarray, threshold_hu: float, spacing: np.ndarray) -> np.ndarray:
    """Per voxel, how deep (mm) it lies in blood at least ``threshold_hu`` bright (on the
    lightly smoothed image): deeper than a coronary's radius only inside a chamber."""
    smooth = ndi.gaussian_filter(img.astype(np.float32), _POOL_SMOOTH_MM / spacing)
    return ndi.distance_transform_edt(smooth >= threshold_hu, sampling=spacing)


def _attenuation_reason(lumen_hu: float, aorta_hu: float | None, params) -> str | None:
    """``low attenuation`` when a piece's lumen attenuation (:func:`_lumen_hu`) is darker
    than ``min_lumen_ratio`` of the aorta's."""
    if aorta_hu is not None and lumen_hu < params.min_lumen_ratio * aorta_hu:
        return "low attenuation"
    return None


# --- step 3: reconnection -----------------------------------------------------------------

def _reconnect(tree, pieces, net, img, aorta, spacing, params, removed) -> int:
    """Join detached pieces to the tree (in place) until none joins; count the joined.

    A piece joins across a short gap whose directions agree (:func:`_find_link`) or, failing
    that, across a longer gap along a contrast-filled path (:func:`_find_contrast_link`).
    First only to a vessel the piece's network votes may continue; when nothing more joins
    that way (and ``any_vessel_reconnection``), to any vessel (see the module docstring).
    The pieces that never join are counted in ``removed`` by their last reason.
    """
    pending = list(range(len(pieces)))
    reasons = {}
    for typed in (True, False) if params.any_vessel_reconnection else (True,):
        progress = True
        while progress and pending:
            progress = False
            for k in list(pending):
                reasons[k] = _join(pieces[k], tree, net, img, aorta, spacing, params, typed)
                if reasons[k] is None:
                    pending.remove(k)
                    progress = True
    for k in pending:
        removed[reasons[k]] += 1
    return len(pieces) - len(pending)


def _join(piece, tree, net, img, aorta, spacing, params, typed: bool) -> str | None:
    """Join one piece to the tree (in place) by a short link or a contrast-filled path;
    return None when it joined, else why not (:func:`_find_link`'s reason)."""
    link, reason = _find_link(piece, tree, net, aorta, spacing, params, typed)
    if link is not None:
        _bridge(piece, *link, tree, img, aorta, spacing, params)
    else:
        path = _find_contrast_link(piece, tree, net, img, spacing, params, typed)
        if path is None:
            return reason
        _bridge(piece, path[-1], path[0], False, tree, img, aorta, spacing, params, path)
    tree[tuple(piece.coords.T)] = True
    return None


def _drop_stubs(tree, aorta, spacing, params) -> int:
    """Remove (in place) the connected parts of the tree that touch the aorta and fit in a box
    whose diagonal is shorter than ``min_root_mm``; return how many."""
    parts, _ = ndi.label(tree, _STRUCTURE_26)
    dropped = 0
    for index, part_box in enumerate(ndi.find_objects(parts), start=1):
        extent = np.array([s.stop - s.start - 1 for s in part_box]) * spacing
        if np.linalg.norm(extent) >= params.min_root_mm:
            continue
        coords = np.argwhere(parts[part_box] == index) + [s.start for s in part_box]
        if _near(coords, aorta, params.ostium_margin_mm, spacing).any():
            tree[tuple(coords.T)] = False
            dropped += 1
    return dropped


def _compatible(a: int, b: int) -> bool:
    """Whether two vessels can continue each other: the same, or LM with LAD or LCx."""
    return a == b or (LM in (a, b) and RCA not in (a, b))


def _find_link(piece, tree, net, aorta, spacing, params, typed: bool = True):
    """The nearest tree (or aorta) voxel a piece may be joined to (when ``typed``, only if
    the piece's vessel may continue the one the network votes for there).

    Returns ``((p, q, to_aorta), None)`` with ``p`` the piece's voxel and ``q`` the target
    voxel, or ``(None, reason)`` with reason ``unconnected``, ``direction`` or
    ``vessel type``.
    """
    surface, dist, _ = _surface_near(piece, params.max_gap_mm, spacing, tree, aorta)
    if dist is None:
        return None, "unconnected"
    i = int(np.argmin(dist))
    if not np.isfinite(dist[i]):
        return None, "unconnected"
    # The two faces across the gap, and their centres: where the bridge starts and ends.
    tolerance = dist[i] + float(spacing.max())
    p = _face_centre(piece.coords[dist <= tolerance], spacing)
    face, _ = cKDTree(piece.coords * spacing).query(surface * spacing,
                                                     distance_upper_bound=tolerance)
    q = _face_centre(surface[np.isfinite(face)], spacing)
    gap = (p - q) * spacing
    to_aorta = bool(aorta[tuple(q)])
    radius = params.direction_radius_mm
    tree_points = np.empty((0, 3), dtype=int) if to_aorta else _neighbourhood(tree, q, radius,
                                                                              spacing)
    if np.linalg.norm(gap) > 2.05 * spacing.max():
        near_p = piece.coords[np.linalg.norm((piece.coords - p) * spacing, axis=1) <= radius]
        axis, anisotropy = _principal_axis(near_p * spacing)
        if anisotropy >= _MIN_ANISOTROPY and _angle_deg(axis, gap, undirected=True) > \
                params.max_angle_deg:
            return None, "direction"
        axis, anisotropy = _principal_axis(tree_points * spacing)
        if anisotropy >= _MIN_ANISOTROPY:
            if ((tree_points - q) * spacing @ axis).mean() > 0:
                axis = -axis
            if _angle_deg(axis, gap) > params.max_angle_deg:
                return None, "direction"
    if typed and not _fits_vessel(piece, net, tree_points):
        return None, "vessel type"
    return (p, q, to_aorta), None


def _surface_near(piece, reach_mm: float, spacing: np.ndarray, *masks, fits=None):
    """Surface voxels (k, 3) of the union of ``masks`` near a piece, and for each piece
    voxel the distance (mm; inf beyond ``reach_mm``) to the nearest of them and its index.

    ``fits``, when given, keeps only the surface voxels (k, 3) for which it returns True.
    Distances and indices are None when there is no surface within the piece's box.
    """
    reach = np.ceil(reach_mm / spacing).astype(int) + 1
    box = box_around(piece.lo - reach, piece.hi + reach, masks[0].shape)
    local = np.logical_or.reduce([m[box] for m in masks])
    surface = surface_voxels(local) + [s.start for s in box]
    if fits is not None and len(surface):
        surface = surface[fits(surface)]
    if not len(surface):
        return surface, None, None
    dist, nearest = cKDTree(surface * spacing).query(piece.coords * spacing,
                                                     distance_upper_bound=reach_mm)
    return surface, dist, nearest


def _fits_label(piece, labels: np.ndarray) -> np.ndarray:
    """Per network label, whether the piece's vessel may continue it (False for 0, a voxel
    the network did not label, such as a bridge)."""
    return np.isin(labels, [v for v in range(1, RCA + 1) if _compatible(piece.label, v)])


def _fits_vessel(piece, net, points: np.ndarray) -> bool:
    """Whether the piece's vessel may continue the one the network votes for at ``points``."""
    votes = np.bincount(net[tuple(points.T)], minlength=RCA + 1)[1:]
    return not votes.any() or _compatible(piece.label, int(np.argmax(votes)) + 1)


def _find_contrast_link(piece, tree, net, img, spacing, params, typed: bool = True):
    """A contrast-filled path (k x 3 voxels, tree end first) from the tree to a piece.

    The nearest tree voxel within ``contrast_gap_mm`` (when ``typed``, whose network label
    may continue the piece's vessel) is joined by a minimal-cost path that follows contrast;
    the path counts when it is not much longer than the gap, keeps nearly all the way at
    least ``min_path_lumen_ratio`` of the dimmer of the two lumens it joins (a distal vessel
    is dimmer than a plaque's halo makes a piece look), does not run through a chamber
    (``max_path_pool_fraction``), and (when ``typed``) the network's votes around the tree
    end agree. Returns the path, or None.
    """
    if params.contrast_gap_mm <= 0 or piece.core_hu <= 0:
        return None
    fits = (lambda s: _fits_label(piece, net[tuple(s.T)])) if typed else None
    surface, dist, nearest = _surface_near(piece, params.contrast_gap_mm, spacing, tree,
                                           fits=fits)
    if dist is None:
        return None
    i = int(np.argmin(dist))
    if not np.isfinite(dist[i]):
        return None
    p, q = piece.coords[i], surface[nearest[i]]
    tree_end = _neighbourhood(tree, q, params.direction_radius_mm, spacing)
    if typed and not _fits_vessel(piece, net, tree_end):
        return None
    lumen_hu = min(piece.core_hu, _lumen_hu(img[tuple(tree_end.T)], None, params))
    pad = np.ceil(_POOL_MARGIN_MM / spacing).astype(int) + 1
    box = box_around(np.minimum(p, q) - pad, np.maximum(p, q) + pad + 1, tree.shape)
    lo = np.array([s.start for s in box])
    local = img[box].astype(np.float32)
    path = _lumen_path(local, q - lo, p - lo, lumen_hu, spacing, params)
    if path is None:
        return None
    hu = local[tuple(path.T)]
    if np.mean(hu < params.min_path_lumen_ratio * lumen_hu) > _PATH_DARK_SHARE:
        return None
    depth = _enhanced_depth(local, _POOL_LUMEN_RATIO * piece.core_hu, spacing)[tuple(path.T)]
    if np.mean(depth > params.max_radius_mm) > params.max_path_pool_fraction:
        return None
    return path + lo


def _face_centre(face: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The voxel of a face (k, 3) nearest to its centroid."""
    centroid = face.mean(axis=0)
    return face[np.argmin(np.linalg.norm((face - centroid) * spacing, axis=1))]


def _bridge(piece, p, q, to_aorta, tree, img, aorta, spacing, params, path=None) -> None:
    """Fill the gap between ``q`` (tree or aorta) and ``p`` (piece) with a tube, in place.

    The tube has the smaller of the two ends' local radii and follows ``path`` (voxels, k x
    3, from ``q`` to ``p``) or else a minimal-cost path that prefers voxels at least as
    bright as the piece's lumen.
    """
    radius = params.direction_radius_mm
    near_p = np.linalg.norm((piece.coords - p) * spacing, axis=1) <= radius
    r = float(piece.depth_mm[near_p].max())
    if not to_aorta:
        r = min(r, _local_radius(tree, q, radius, spacing, params.max_radius_mm))
    r = max(r, float(spacing.min()))
    pad = np.ceil((r + 1.0) / spacing).astype(int) + 1
    ends = np.stack([p, q]) if path is None else path
    box = box_around(ends.min(axis=0) - pad, ends.max(axis=0) + pad + 1, tree.shape)
    lo = np.array([s.start for s in box])
    if path is None:
        path = _gap_path(img[box], q - lo, p - lo, piece.core_hu, spacing, params)
    else:
        path = path - lo
    line = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    line[tuple(path.T)] = True
    tube = ndi.distance_transform_edt(~line, sampling=spacing) <= r
    tree[box] |= tube & ~aorta[box]


def _lumen_path(img, start, end, lumen_hu, spacing, params) -> np.ndarray | None:
    """Voxels (k, 3) of the minimal-cost path from ``start`` to ``end`` through the lumen,
    or None when it is longer than ``max_path_ratio`` times the straight gap.

    The cost of a voxel is ``1 + w * clip((lumen - HU) / lumen, 0, 1)``: contrast and
    calcium are cheap, fat and myocardium dear.
    """
    cost = 1.0 + params.path_cost_weight * np.clip((lumen_hu - img) / lumen_hu, 0.0, 1.0)
    mcp = MCP_Geometric(cost, fully_connected=True, sampling=tuple(spacing))
    mcp.find_costs([tuple(start)], [tuple(end)])
    path = np.array(mcp.traceback(tuple(end)))
    length = np.linalg.norm(np.diff(path, axis=0) * spacing, axis=1).sum()
    straight = np.linalg.norm((end - start) * spacing)
    return path if length <= params.max_path_ratio * straight + spacing.max() else None


def _gap_path(img, start, end, lumen_hu, spacing, params) -> np.ndarray:
    """Voxels (k, 3) of a path from ``start`` to ``end`` through the lumen
    (:func:`_lumen_path`), or the straight line where there is none."""
    if params.path_cost_weight > 0 and lumen_hu > 0:
        path = _lumen_path(img, start, end, lumen_hu, spacing, params)
        if path is not None:
            return path
    return np.stack(line_nd(start, end, endpoint=True), axis=1)


# --- step 4: labelling --------------------------------------------------------------------

def _voxel_edges(coords: np.ndarray, shape, spacing: np.ndarray):
    """26-neighbour edges between voxels ``coords`` (sorted as ``np.argwhere`` gives them).

    Returns row and column indices into ``coords`` and edge lengths in mm.
    """
    flat = np.ravel_multi_index(coords.T, shape)
    rows, cols, lengths = [], [], []
    for offset in _HALF_OFFSETS:
        neighbours = coords + offset
        ok = np.flatnonzero(np.all((neighbours >= 0) & (neighbours < shape), axis=1))
        target = np.ravel_multi_index(neighbours[ok].T, shape)
        pos = np.minimum(np.searchsorted(flat, target), len(flat) - 1)
        hit = flat[pos] == target
        rows.append(ok[hit])
        cols.append(pos[hit])
        lengths.append(np.full(int(hit.sum()), np.linalg.norm(offset * spacing)))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(lengths)


def _ostium_clusters(points: np.ndarray, spacing: np.ndarray, merge_mm: float):
    """Group aortic contact voxels into ostia: contacts closer than ``merge_mm`` join."""
    element = ball(merge_mm / 2.0, spacing)
    pad = np.array(element.shape) // 2 + 1
    local = points - points.min(axis=0) + pad
    grid = np.zeros(tuple(local.max(axis=0) + pad + 1), dtype=bool)
    grid[tuple(local.T)] = True
    clusters, n = ndi.label(ndi.binary_dilation(grid, structure=element), _STRUCTURE_26)
    return clusters[tuple(local.T)] - 1, n


def _label_tree(tree, net, aorta, spacing, params) -> tuple[np.ndarray, _TreeFacts]:
    """Label the reconnected tree LM/LAD/LCx/RCA from its ostia; measure it.

    Voxels not reached from an ostium along the tree stay 0.
    """
    labels = np.zeros(tree.shape, dtype=np.uint8)
    coords = np.argwhere(tree)
    if not len(coords):
        return labels, _TreeFacts()
    n = len(coords)
    rows, cols, lengths = _voxel_edges(coords, tree.shape, spacing)
    graph = coo_matrix((lengths, (rows, cols)), shape=(n, n)).tocsr()
    contact = _near(coords, aorta, params.ostium_margin_mm, spacing)
    if not contact.any():
        return labels, _TreeFacts()
    cluster, n_ostia = _ostium_clusters(coords[contact], spacing, params.ostium_merge_mm)
    sources = np.flatnonzero(contact)
    dist, _, nearest = dijkstra(graph, directed=False, indices=sources, min_only=True,
                                return_predecessors=True)
    reached = np.isfinite(dist)
    origin = np.full(n, -1)
    origin[sources] = cluster
    territory = np.where(reached, origin[np.maximum(nearest, 0)], -1)
    votes = net[tuple(coords.T)].astype(int)

    side_votes = np.zeros((n_ostia, RCA + 1))
    np.add.at(side_votes, (territory[reached], votes[reached]), 1)
    right = side_votes[:, RCA] > side_votes[:, 1:RCA].sum(axis=1)

    band_mm = max(params.band_mm, 1.01 * float(lengths.max(initial=0.0)))
    band = np.where(reached, np.floor(np.where(reached, dist, 0.0) / band_mm), -1).astype(int)
    same_territory = (territory[rows] == territory[cols]) & reached[rows] & reached[cols]
    same_band = same_territory & (band[rows] == band[cols])
    n_nodes, node = connected_components(
        coo_matrix((np.ones(int(same_band.sum())), (rows[same_band], cols[same_band])),
                   shape=(n, n)), directed=False)
    parent = _node_parents(node, band, rows, cols, same_territory, n_nodes)

    node_band = np.full(n_nodes, -1)
    node_band[node] = band
    node_territory = np.full(n_nodes, -1)
    node_territory[node] = territory
    node_votes = np.zeros((n_nodes, RCA + 1))
    np.add.at(node_votes, (node, votes), 1)
    node_state = np.full(n_nodes, -1)
    is_node = node_band >= 0
    node_right = is_node & right[np.maximum(node_territory, 0)]
    nodes = np.flatnonzero(is_node)
    meeting_votes = params.meeting_mm3 / float(np.prod(spacing))
    node_state[nodes] = _assign_states(nodes, node_right[nodes], parent, node_band,
                                       node_votes, meeting_votes)
    node_label = np.where(is_node, _STATE_VESSEL[node_state], 0).astype(np.uint8)
    labels[tree] = _voxel_labels(coords, node_state[node], votes, spacing, 2.0 * band_mm)

    vessel_length = np.bincount(
        node_label[is_node], weights=_node_lengths(coords, node, dist, parent, spacing)[is_node],
        minlength=RCA + 1)
    pieces = connected_components(graph[reached][:, reached], directed=False)[0]
    contact_mm3 = np.bincount(cluster, minlength=n_ostia) * float(np.prod(spacing))
    return labels, _TreeFacts(
        n_ostia=n_ostia,
        n_major_ostia=int(np.count_nonzero(contact_mm3 >= params.min_ostium_mm3)),
        left_ostium=bool(np.any(is_node & ~node_right)),
        right_ostium=bool(np.any(node_right)),
        n_fragments=int(pieces),
        lengths={v: float(vessel_length[v]) for v in range(1, RCA + 1)})


def _voxel_labels(coords, state, votes, spacing, reach_mm) -> np.ndarray:
    """Per voxel: the vessel of its node's ``state``, except near two borders that the band
    nodes draw too coarsely, where the network's border is kept and the tree decides the
    vessel. A voxel of an LM node that the network calls LAD or LCx (the first voxels of
    the branches, where the bands still join them) takes the label of the nearest LAD or LCx
    voxel within ``reach_mm``. A voxel beyond a meeting of the RCA and the LCx that the
    network calls RCA stays RCA within ``reach_mm`` of the RCA.
    """
    labels = np.where(state >= 0, _STATE_VESSEL[state], 0).astype(np.uint8)
    borders = (((labels == LM) & np.isin(votes, (LAD, LCX)), np.isin(labels, (LAD, LCX))),
               ((state == _MET_LCX) & (votes == RCA), state == _RCA_STATE))
    for near, far in borders:
        near, far = np.flatnonzero(near), np.flatnonzero(far)
        if len(near) and len(far):
            dist, nearest = cKDTree(coords[far] * spacing).query(
                coords[near] * spacing, distance_upper_bound=reach_mm)
            found = np.isfinite(dist)
            labels[near[found]] = labels[far[nearest[found]]]
    return labels


def _node_lengths(coords, node, dist, parent, spacing) -> np.ndarray:
    """Centerline length (mm) each node adds: from its parent's centroid to its own (the
    centroids of band slices lie on the centerline), from the ostium for a root (geodesic
    mean), and on to its farthest voxel for a leaf (geodesic)."""
    n_nodes = len(parent)
    reached = np.isfinite(dist)
    dist = np.where(reached, dist, 0.0)
    count = np.maximum(np.bincount(node, minlength=n_nodes), 1)
    mean = np.bincount(node, weights=dist, minlength=n_nodes) / count
    centroid = np.stack([np.bincount(node, weights=coords[:, a] * spacing[a],
                                     minlength=n_nodes) for a in range(3)], axis=1) / count[:, None]
    far = np.zeros(n_nodes)
    np.maximum.at(far, node, dist)
    has_parent = parent >= 0
    has_child = np.zeros(n_nodes, dtype=bool)
    has_child[parent[has_parent]] = True
    length = np.where(has_parent, np.linalg.norm(centroid - centroid[np.maximum(parent, 0)],
                                                 axis=1), mean)
    return length + np.where(has_child, 0.0, far - mean)


def _node_parents(node, band, rows, cols, same_territory, n_nodes) -> np.ndarray:
    """Parent of each node: the adjacent node nearer the ostium it shares most edges with."""
    cross = same_territory & (band[rows] != band[cols])
    deeper = band[rows[cross]] > band[cols[cross]]
    child = np.where(deeper, node[rows[cross]], node[cols[cross]])
    above = np.where(deeper, node[cols[cross]], node[rows[cross]])
    pairs, counts = np.unique(child.astype(np.int64) * n_nodes + above, return_counts=True)
    child, above = np.divmod(pairs, n_nodes)
    order = np.lexsort((-counts, child))
    first = order[np.r_[True, child[order][1:] != child[order][:-1]]] if len(order) else order
    parent = np.full(n_nodes, -1)
    parent[child[first]] = above[first]
    return parent


def _assign_states(nodes, right, parent, node_band, node_votes, meeting_votes) -> np.ndarray:
    """The state (:data:`_STATE_VESSEL`) of each node: its vessel, overruling the fewest
    network votes.

    Dynamic programming on the node forest over the states of :data:`_STATE_VESSEL`: a
    node's cost for a state is the votes it overrules plus, for each child, the cheapest
    state allowed below it (:data:`_CHILDREN`; a switch of :data:`_MEETINGS`, where the
    RCA runs on into the LCx, costs ``meeting_votes`` more). A root starts
    in LM, LAD or LCx on a left tree (``right`` False) and in the RCA on a right one. On
    ties a node keeps its parent's state (a left root prefers LM).
    """
    n_states = len(_STATE_VESSEL)
    step = np.full((n_states, n_states), np.inf)
    for state, below in _CHILDREN.items():
        step[state, list(below)] = 0.0
    for state, below in _MEETINGS.items():
        step[state, list(below)] = meeting_votes
    votes = node_votes[nodes]
    cost = votes[:, 1:].sum(axis=1)[:, None] - votes[:, _STATE_VESSEL]
    position = {int(v): i for i, v in enumerate(nodes)}
    above = np.array([position.get(int(parent[v]), -1) for v in nodes], dtype=int)
    order = np.argsort(-node_band[nodes], kind="stable")
    for i in order:
        if above[i] >= 0:
            cost[above[i]] += (cost[i][None, :] + step).min(axis=1)
    state = np.zeros(len(nodes), dtype=int)
    for i in order[::-1]:
        if above[i] >= 0:
            inherited = state[above[i]]
            total = cost[i] + step[inherited]
        else:
            inherited = _RIGHT_ROOTS[0] if right[i] else _LEFT_ROOTS[0]
            total = np.full(n_states, np.inf)
            roots = list(_RIGHT_ROOTS if right[i] else _LEFT_ROOTS)
            total[roots] = cost[i][roots]
        state[i] = inherited if total[inherited] <= total.min() else int(np.argmin(total))
    return state
