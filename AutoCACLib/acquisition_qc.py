"""Checks of how a CCTA was acquired: resolution, gating, tube voltage, field of view, steps.

Each check tells the radiologist why the scores of an image may not be trusted. The pipeline
turns the mild findings into ``warnings`` and the severe ones into a failure: a field of view
that cuts a coronary artery where it is still wide (the heart itself is cut, and the calcium
beyond the image is missing) and a step between heartbeats that moves the heart by more than
a coronary's width (vessels and plaques at the step are torn apart or doubled). Slices that
do not join along the patient's axis (a slab skipped or misplaced) are a warning only.

All functions take arrays in the pipeline's axial order (``[z, y, x]``: z towards the head,
y posterior, x to the patient's left; :func:`AutoCACLib.volume.to_axial_lps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .segmentation_io import ijk_to_lps
from .structuring import bounding_box
from .volume import Volume

#: A coronary cut by the field of view this wide (mm) or wider is a proximal or mid segment.
WIDE_CUT_MM = 3.0
#: A step moving the heart this far (mm) between adjacent slabs is reported.
STEP_WARN_MM = 1.0
#: ... and this far (mm) makes the case fail (about a proximal coronary's width).
STEP_FAIL_MM = 2.5

#: Image edges in the axial array's order: (axis, side 0 = first index, name).
_EDGES = ((0, 0, "bottom (feet)"), (0, 1, "top (head)"), (1, 0, "front"), (1, 1, "back"),
          (2, 0, "right"), (2, 1, "left"))
_EDGE_LAYER_MM = 1.0     # a vessel within this of an edge leaves the image there
_STEP_SLAB = 3           # slices averaged on each side of a possible step
_STEP_SIGMA_MM = 1.0     # in-plane smoothing before registration (noise)
_STEP_PIXEL_MM = 1.0     # registration grid (speed; sub-pixel accuracy is kept)
_STEP_MARGIN_MM = 5.0    # in-plane margin of the coronary tree's box
_STEP_HU_RANGE = (-100.0, 600.0)   # fat to contrast blood; calcium and bone clipped
_STEP_DRIFT_WINDOW = 12  # boundaries on each side whose median move is the local drift
#: Offsets of the boundaries a boundary is compared with (its slabs' own left out).
_AROUND = np.r_[-_STEP_DRIFT_WINDOW:-_STEP_SLAB, _STEP_SLAB + 1:_STEP_DRIFT_WINDOW + 1]
_STEP_EXPLAINED = 0.7    # a step's shift leaves at most this much of the slabs' difference
#: Slices that change this many times as much as their neighbours do do not join (a warning).
JUMP_WARN_RATIO = 2.0


def acquisition_warnings(volume: Volume) -> list[str]:
    """Warnings about how the image was acquired (resolution, gating, tube voltage)."""
    warnings = []
    md = volume.metadata
    thickness = float(md.get("slice_thickness_mm") or volume.spacing[0])
    if thickness > 1.0 or volume.spacing[0] > 1.0:
        warnings.append(f"slices are {max(thickness, volume.spacing[0]):.2g} mm thick (CCTA is "
                        f"usually <= 0.75 mm): small plaques are missed and scores are less "
                        f"reliable")
    if max(volume.spacing[1:]) > 0.6:
        warnings.append(f"in-plane pixels are {max(volume.spacing[1:]):.2g} mm (CCTA is usually "
                        f"0.3-0.5 mm): small vessels may be missed")
    if md.get("source_format") == "dicom" and not md.get("cardiac_synchronization"):
        warnings.append("no ECG gating information in the DICOM header: motion may blur "
                        "the coronaries")
    if volume.kvp is None:
        warnings.append("tube voltage unknown: assumed 100 kVp for calcium attenuation")
    return warnings


@dataclass(frozen=True)
class EdgeCut:
    """A coronary artery leaving the image through one of its edges.

    Attributes
    ----------
    vessel : str
    edge : str
        "bottom (feet)", "top (head)", "front", "back", "right" or "left".
    diameter_mm : float
        The vessel's width where it meets the edge (twice its largest inscribed radius
        within 1 mm of the edge).
    """

    vessel: str
    edge: str
    diameter_mm: float

    @property
    def wide(self) -> bool:
        """A proximal or mid segment is cut: the field of view cuts through the heart."""
        return self.diameter_mm >= WIDE_CUT_MM

    def describe(self) -> str:
        return (f"the {self.vessel} leaves the image at its {self.edge} edge "
                f"({self.diameter_mm:.1f} mm wide there)")


def field_of_view_cuts(vessel_index: np.ndarray, spacing, vessels) -> list[EdgeCut]:
    """The coronary arteries that run off the image, one entry per vessel and edge.

    Parameters
    ----------
    vessel_index : ndarray (z, y, x) of int
        0 background, i = ``vessels[i - 1]``.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    vessels : sequence of str
        Vessel names by index.

    Returns
    -------
    list of EdgeCut
        Widest cut first.
    """
    spacing = np.asarray(spacing, float)
    reach = np.ceil(2 * WIDE_CUT_MM / spacing).astype(int)
    cuts = []
    for axis, side, name in _EDGES:
        depth = max(1, int(round(_EDGE_LAYER_MM / spacing[axis])))
        n = vessel_index.shape[axis]
        near = min(n, depth + reach[axis])    # the slab along this edge that a width needs
        slab = [slice(None)] * 3
        slab[axis] = slice(0, near) if side == 0 else slice(n - near, n)
        region = vessel_index[tuple(slab)]
        layer = [slice(None)] * 3
        layer[axis] = slice(0, depth) if side == 0 else slice(near - depth, near)
        at_edge = region[tuple(layer)]
        for i in np.unique(at_edge[at_edge > 0]):
            cuts.append(EdgeCut(vessels[int(i) - 1], name,
                                _width_at_edge(region == i, tuple(layer), spacing, reach)))
    return sorted(cuts, key=lambda c: -c.diameter_mm)


def _width_at_edge(mask: np.ndarray, layer: tuple, spacing: np.ndarray,
                   reach: np.ndarray) -> float:
    """Twice the largest distance to the vessel's wall among its voxels in ``layer``, the
    walls being sought within ``reach`` voxels of them."""
    touching = np.zeros(mask.shape, bool)
    touching[layer] = mask[layer]
    box = bounding_box(touching, margin=reach)
    inside = ndimage.distance_transform_edt(mask[box], sampling=spacing)
    return float(2 * inside[touching[box]].max())


@dataclass(frozen=True)
class StepArtefact:
    """A step between the slabs of two heartbeats (or a table or breathing shift).

    Attributes
    ----------
    slice : int
        First axial slice above the step (in the axial array's order).
    height_mm : float
        Where the step lies along the patient's axis (S, as a viewer shows it).
    shift_mm : float
        How far the heart moves in-plane across the step, beyond the anatomy's own drift.
    """

    slice: int
    height_mm: float
    shift_mm: float

    @property
    def severe(self) -> bool:
        return self.shift_mm >= STEP_FAIL_MM

    def describe(self) -> str:
        return f"the heart shifts by {self.shift_mm:.1f} mm at S = {self.height_mm:.1f} mm"


@dataclass(frozen=True)
class SliceJump:
    """Adjacent slices that do not join: the anatomy jumps along the patient's axis, as
    where a slab between two heartbeats is skipped or placed at the wrong height.

    Attributes
    ----------
    slice : int
        First axial slice above the jump (in the axial array's order).
    height_mm : float
        Where the jump lies along the patient's axis (S, as a viewer shows it).
    ratio : float
        How many times the heart changes across this boundary as much as between its
        neighbouring slices.
    """

    slice: int
    height_mm: float
    ratio: float

    def describe(self) -> str:
        return (f"the slices do not join at S = {self.height_mm:.1f} mm (the heart changes "
                f"{self.ratio:.1f} times as much there as between neighbouring slices: slabs "
                f"of two heartbeats that do not match, as where one is skipped or misplaced)")


def _heart_slices(volume: Volume, tree: np.ndarray):
    """The axial slices within the coronary tree's box (grown in-plane), clipped to
    soft-tissue and contrast values, averaged onto a 1 mm grid and smoothed in-plane (noise).

    Returns
    -------
    sub : ndarray (z, y, x) of float32
    box : tuple of slice
        Where ``sub`` lies in the volume.
    pixel : ndarray (2,)
        ``sub``'s in-plane pixel size (mm).
    """
    spacing = np.asarray(volume.spacing, float)
    margin = np.r_[0, np.round(_STEP_MARGIN_MM / spacing[1:])].astype(int)
    box = bounding_box(tree, margin=margin)
    step = np.maximum(1, np.round(_STEP_PIXEL_MM / spacing[1:])).astype(int)
    sub = np.clip(volume.array[box], *_STEP_HU_RANGE).astype(np.float32)
    ny, nx = (np.array(sub.shape[1:]) // step) * step
    sub = sub[:, :ny, :nx].reshape(len(sub), ny // step[0], step[0], nx // step[1], step[1])
    sub = sub.mean(axis=(2, 4))              # block means on the registration grid
    pixel = spacing[1:] * step
    return ndimage.gaussian_filter(sub, (0, *(_STEP_SIGMA_MM / pixel))), box, pixel


def _boundary_height(volume: Volume, k: int) -> float:
    """S (mm) of the boundary below axial slice ``k``, mid-image."""
    centre = (np.array(volume.shape[:0:-1]) - 1) / 2
    return float((ijk_to_lps(volume) @ np.r_[centre, k - 0.5, 1.0])[2])


def _local_peaks(values: np.ndarray, threshold: float, reach: int) -> np.ndarray:
    """Indices where ``values`` reach ``threshold`` and are the largest within ``reach``
    (a flat top counts once)."""
    peaks = ((values >= threshold) & (values == ndimage.maximum_filter1d(values, 2 * reach + 1))
             & np.r_[True, values[1:] > values[:-1]])
    return np.flatnonzero(peaks)


def slab_artefacts(volume: Volume, tree: np.ndarray
                   ) -> tuple[list[StepArtefact], list[SliceJump]]:
    """Where slabs of different heartbeats meet badly: steps in-plane and slices that do
    not join along the patient's axis, each largest first.

    Parameters
    ----------
    volume : Volume
        The CT in HU, axial (:func:`AutoCACLib.volume.to_axial_lps`).
    tree : ndarray of bool
        The coronary tree; its bounding box, grown in-plane, is searched.

    Returns
    -------
    steps : list of StepArtefact
        See :func:`_steps`.
    jumps : list of SliceJump
        See :func:`_jumps`; a jump at a step is told as the step only.
    """
    if not tree.any():
        return [], []
    sub, box, pixel = _heart_slices(volume, tree)
    steps = [StepArtefact(k, _boundary_height(volume, k), shift) for k, shift in
             _steps(sub, pixel, box[0].start)]
    jumps = [SliceJump(k, _boundary_height(volume, k), ratio) for k, ratio in
             _jumps(sub, box[0].start) if all(abs(k - s.slice) > 1 for s in steps)]
    return steps, jumps


def _steps(sub: np.ndarray, pixel: np.ndarray, first: int) -> list[tuple[int, float]]:
    """(slice, shift in mm) of each step in the heart's slices (:func:`_heart_slices`,
    starting at axial slice ``first``), largest first.

    The mean of a few slices below each slice boundary is registered to the mean of a few
    slices above it (phase correlation). Smooth anatomy moves little, and steadily,
    across boundaries; a slab from another heartbeat moves at one boundary. A step is a
    boundary whose move exceeds the local drift (the median move of the boundaries around
    it) by at least :data:`STEP_WARN_MM`, most there, and which that move explains (the
    slabs then differ much less: anatomy that changes, such as the heart's floor giving way
    to the liver, is not explained by a move).
    """
    from skimage.registration import phase_cross_correlation

    cum = np.concatenate([np.zeros((1,) + sub.shape[1:], np.float32), np.cumsum(sub, axis=0)])
    h = _STEP_SLAB

    def slabs(z):                             # boundary between sub[z - 1] and sub[z]
        return cum[z] - cum[z - h], cum[z + h] - cum[z]

    moves = np.zeros((len(sub) + 1, 2))      # pixels
    for z in range(h, len(sub) - h + 1):
        for upsample in (1, 10):             # sub-pixel only where the slabs moved at all
            moves[z], _, _ = phase_cross_correlation(*slabs(z), upsample_factor=upsample,
                                                     normalization=None)
            if not moves[z].any():
                break
    excess = np.zeros(len(moves))
    for z in range(h, len(sub) - h + 1):
        around = np.clip(z + _AROUND, h, len(sub) - h)
        excess[z] = np.hypot(*((moves[z] - np.median(moves[around], axis=0)) * pixel))
    found = [(first + int(z), float(excess[z])) for z in _local_peaks(excess, STEP_WARN_MM, h)
             if _explained_by(moves[z], *slabs(z))]
    return sorted(found, key=lambda f: -f[1])


def _explained_by(moved, below: np.ndarray, above: np.ndarray) -> bool:
    """Whether moving ``above`` by ``moved`` pixels removes most of its difference from
    ``below`` (a misregistered slab), rather than little (anatomy that changes, such as the
    heart's floor giving way to the liver)."""
    before = np.abs(below - above).mean()
    after = np.abs(below - ndimage.shift(above, moved, order=1, mode="nearest")).mean()
    return bool(after <= _STEP_EXPLAINED * before)


def _jumps(sub: np.ndarray, first: int) -> list[tuple[int, float]]:
    """(slice, ratio) of each boundary where the heart's slices (:func:`_heart_slices`,
    starting at axial slice ``first``) do not join, largest first.

    Smooth anatomy changes by about as much between any two adjacent slices; where slices
    are missing (or a slab is placed at the wrong height) the change across that one
    boundary is that of several slices. A jump is a boundary whose mean absolute
    difference is at least :data:`JUMP_WARN_RATIO` times the median of the boundaries
    around it, and the largest there.
    """
    change = np.r_[0.0, np.abs(np.diff(sub, axis=0)).mean(axis=(1, 2))]   # below slice z
    h = _STEP_SLAB
    ratio = np.zeros(len(change))
    for z in range(1, len(change)):
        around = z + _AROUND
        around = around[(around >= 1) & (around < len(change))]
        if len(around) >= h:
            ratio[z] = change[z] / max(float(np.median(change[around])), 1e-6)
    found = [(first + int(z), float(ratio[z])) for z in _local_peaks(ratio, JUMP_WARN_RATIO, h)]
    return sorted(found, key=lambda f: -f[1])
