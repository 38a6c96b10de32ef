"""Stage 7: calcium by an adaptive threshold along the coronary centerlines.

Every voxel near the coronary mask (dilated to include the wall and eccentric plaque) belongs
to the cross-section of its nearest centerline point. The lumen attenuation at a centerline
point is the median of the image in a small ball of lumen voxels around it, smoothed along
the branch by a running median. A voxel is calcium when it exceeds ``lumen_ratio`` (1.25)
times that lumen attenuation. Where the centerline itself runs through calcium (its value
would itself pass the threshold set by its neighbourhood along the branch, or exceeds
``calibrated_ratio`` times the calibration factor) or through something darker than any lumen
(non-enhanced plaque, an occlusion), its value is unreliable and the threshold there is
``calibrated_ratio`` (1.45) times the calibration factor instead (the paper's rule).

Guards and refinements of ours:

* The decision is taken on the image smoothed by a Gaussian of ``smooth_mm`` (a matched filter
  for calcifications of a millimetre or more): it lowers the noise several-fold, so that small,
  faint calcifications stand out of a noisy lumen, while the scores are still computed on the
  original image.
* The threshold never exceeds ``calibrated_ratio`` x the calibration factor on a reliable
  lumen either: a long calcified plaque contaminates the lumen balls and the running medians
  along its whole length, and would otherwise lift the threshold above its own calcium.
* The threshold is at least the lumen plus ``noise_factor`` standard deviations of the
  (smoothed) image noise, measured in the core of the aorta (a large homogeneous region) when
  the aorta is given, else per branch from the lumen balls; and at least 130 HU and
  ``min_threshold_cf_ratio`` x the calibration factor.

A calcification must reach within ``wall_margin_mm`` of the vessel mask and may extend
``growth_margin_mm`` from it (calcified plaque is a few millimetres thick at most); a bright
region that goes on past that is a neighbouring structure (pulmonary artery, cardiac chamber,
vein) and does not count, unless it ends within ``protrusion_mm`` further (above its own
threshold): a compact calcification beside a stretch of vessel the mask misses or narrows, kept
whole; where a calcification touches such a structure, its voxels above
``calibrated_ratio`` x the calibration factor and ``lumen_ratio`` x the neighbour's own
attenuation seed it, and it keeps the largest part of the merged region that stays off the
neighbour at a level between the calibrated threshold and that seed level; unless the
neighbour reads above ``lumen_ratio`` x the aorta's attenuation (brighter than any contrast
blood: a rib, the sternum, a calcified valve), when the whole region goes. Calcium within
``aorta_margin_mm`` of the aorta never counts (aortic wall and root calcium, and the bright
aortic lumen at the ostia), nor does a calcification that touches that margin and stays
within ``aorta_reach_mm`` of the aorta: it lies in the aortic wall (whose outer part the
margin does not always cover, the aorta mask being uncertain by about a voxel), whereas an
ostial plaque runs on into the vessel and keeps its part beyond the margin. What was removed
that way is reported as a warning. Candidate regions smaller than ``min_volume_mm3`` are
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .centerlines import Centerline
from .segments import VESSEL_LABEL, VESSELS
from .structuring import ball, bounding_box, box_around, distance_mm, surface_voxels


@dataclass(frozen=True)
class CalciumParams:
    """Thresholds and sizes of the adaptive calcium detection (to be tuned).

    Attributes
    ----------
    lumen_ratio : float
        Calcium exceeds this times the lumen attenuation of its cross-section.
    calibrated_ratio : float
        ... or this times the calibration factor where the centerline value is unreliable;
        the threshold never exceeds it (see the module docstring).
    wall_margin_mm : float
        Calcium must reach within this distance of the vessel mask (wall calcium).
    growth_margin_mm : float
        A calcification that does may extend this far from the mask (eccentric plaque
        bulging outward), with the same per-cross-section thresholds.
    lumen_ball_mm : float
        Radius of the ball (limited to lumen voxels) whose median is the centerline value;
        at least one voxel step, so that the ball also gives a noise estimate.
    lumen_window_mm : float
        Length of the running median that smooths the lumen attenuation along a branch.
    reference_window_mm : float
        Length of the running median that gives the branch's robust lumen level against which
        a centerline value is judged.
    low_lumen_ratio : float
        A centerline value below this times the robust level is unreliable too.
    noise_factor : float
        The threshold is also at least the lumen plus this many standard deviations of the
        noise of the smoothed image, so that image noise in a dim lumen does not pass as
        calcium.
    smooth_mm : float
        Standard deviation of the Gaussian applied to the image before thresholding
        (0: none).
    min_threshold_hu : float
        No threshold is set below this (the standard 130 HU calcium floor).
    min_threshold_cf_ratio : float
        ... nor below this times the calibration factor (partial volume makes the centerline
        of a thin vessel read low, which would otherwise let its lumen edge pass as calcium).
    min_volume_mm3 : float
        Connected calcium regions (26-connected) smaller than this are dropped.
    aorta_margin_mm : float
        Calcium within this distance of the aorta mask is excluded.
    aorta_reach_mm : float
        A calcification that touches that margin and lies entirely within this distance of the
        aorta mask is aortic-wall calcium and is excluded whole.
    protrusion_mm : float
        A region that passes the growth margin but ends within this distance beyond it is a
        compact calcification protruding from the mask, not a neighbouring structure (0: none).
    """

    lumen_ratio: float = 1.25
    calibrated_ratio: float = 1.45
    wall_margin_mm: float = 1.0
    growth_margin_mm: float = 5.0
    lumen_ball_mm: float = 0.8
    lumen_window_mm: float = 4.0
    reference_window_mm: float = 20.0
    low_lumen_ratio: float = 0.5
    noise_factor: float = 3.5
    smooth_mm: float = 0.3
    min_threshold_hu: float = 130.0
    min_threshold_cf_ratio: float = 0.75
    min_volume_mm3: float = 0.5
    aorta_margin_mm: float = 2.0
    aorta_reach_mm: float = 4.0
    protrusion_mm: float = 3.0


@dataclass
class BranchProfile:
    """The adaptive threshold along one centerline branch.

    Attributes
    ----------
    vessel : str
        LM, LAD, LCx or RCA.
    branch : int
        Index of the branch in the vessel's centerline list.
    centerline_hu : ndarray
        Median attenuation in the lumen ball at each point.
    lumen_hu : ndarray
        Smoothed lumen attenuation (NaN where no reliable point is near).
    unreliable : ndarray of bool
        Points whose value was judged calcified or too dark.
    threshold_hu : ndarray
        The calcium threshold of each point's cross-section.
    noise_sd_hu : float
        Noise standard deviation used by the noise guard.
    """

    vessel: str
    branch: int
    centerline_hu: np.ndarray
    lumen_hu: np.ndarray
    unreliable: np.ndarray
    threshold_hu: np.ndarray
    noise_sd_hu: float


@dataclass
class CalciumDetection:
    """Result of :func:`detect_calcium`.

    Attributes
    ----------
    labels : ndarray of uint8
        0 = none, 1..4 = calcium of LM, LAD, LCx, RCA (the input of
        :func:`AutoCACLib.scoring.score_calcium`).
    profiles : list of BranchProfile
    excluded_near_aorta_mm3 : float
        Calcium-like volume removed as aortic (within the aorta's margin, or in a
        calcification that stays in the aortic wall).
    warnings : list of str
    """

    labels: np.ndarray
    profiles: list[BranchProfile] = field(default_factory=list)
    excluded_near_aorta_mm3: float = 0.0
    warnings: list[str] = field(default_factory=list)




def _running_nanmedian(values: np.ndarray, arc: np.ndarray, window_mm: float) -> np.ndarray:
    """Median of the non-NaN values within ``window_mm / 2`` along the branch."""
    near = np.abs(arc[:, None] - arc[None, :]) <= window_mm / 2
    table = np.where(near, values[None, :], np.nan)
    out = np.full(len(values), np.nan)
    has = (near & ~np.isnan(values)[None, :]).any(axis=1)
    if has.any():
        out[has] = np.nanmedian(table[has], axis=1)
    return out


def _branch_profile(image, lumen, points, arc, offsets, params, calibration_factor, vessel,
                    index, noise_sd=None):
    """Lumen attenuation and calcium threshold along one branch (module docstring).

    ``noise_sd`` is the image's noise; without it, it is estimated from the lumen balls.
    """
    pts = points[:, None, :] + offsets[None]
    inside = np.all((pts >= 0) & (pts < image.shape), axis=2)
    pts = np.clip(pts, 0, np.array(image.shape) - 1)
    at = tuple(np.moveaxis(pts, 2, 0))
    in_lumen = inside & lumen[at]
    # Ball voxels in the lumen mask; the whole ball where the mask misses the point.
    use = np.where(in_lumen.any(axis=1)[:, None], in_lumen, inside)
    samples = np.where(use, image[at].astype(float), np.nan)
    centerline = np.nanmedian(samples, axis=1)
    ceiling = params.calibrated_ratio * calibration_factor
    reference = _running_nanmedian(centerline, arc, params.reference_window_mm)
    unreliable = ((centerline > params.lumen_ratio * reference)
                  | (centerline < params.low_lumen_ratio * reference)
                  | (centerline > ceiling))
    lumen_hu = _running_nanmedian(np.where(unreliable, np.nan, centerline), arc,
                                  params.lumen_window_mm)
    if noise_sd is None:
        # Scaled median absolute deviation of the ball samples from their point's median.
        noise_sd = 1.4826 * float(np.nanmedian(np.abs(samples - centerline[:, None])))
    fallback = np.isnan(lumen_hu) | unreliable
    lumen_level = np.nan_to_num(lumen_hu)
    threshold = np.maximum(np.minimum(params.lumen_ratio * lumen_level, ceiling),
                           lumen_level + params.noise_factor * noise_sd)
    # Calcified points take the calibrated threshold even when neighbours give a lumen value.
    threshold = np.where(fallback, ceiling, threshold)
    threshold = np.maximum(threshold, max(params.min_threshold_hu,
                                          params.min_threshold_cf_ratio * calibration_factor))
    return BranchProfile(vessel, index, centerline, lumen_hu, fallback, threshold,
                         float(noise_sd))


#: Fewest aortic voxels from which the aorta's noise or level is measured.
_MIN_AORTA_VOXELS = 500


def _aorta_noise_sd(image: np.ndarray, aorta: np.ndarray, spacing: np.ndarray,
                    depth_mm: float = 3.0) -> float | None:
    """Robust standard deviation of the image in the aorta's core (None if too small or flat).

    The scaled median absolute deviation around the median of the voxels deeper than
    ``depth_mm`` inside the aorta: a large region of uniform attenuation, so its spread is the
    image noise.
    """
    if not aorta.any():
        return None
    box = bounding_box(aorta)
    core = distance_mm(np.pad(aorta[box], 1), spacing)[1:-1, 1:-1, 1:-1]
    values = image[box][core > depth_mm]
    if values.size < _MIN_AORTA_VOXELS:
        return None
    sd = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return sd if sd > 1.0 else None


def _region_medians(values: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Median of ``values`` in each labelled region of ``index`` (sorted, positive labels):
    what ``scipy.ndimage.median`` gives, sorting only the regions' voxels (many times faster
    where the regions are a small part of the array)."""
    inside = np.isin(labels, index)
    v, lab = values[inside], labels[inside]
    order = np.lexsort((v, lab))
    v, lab = v[order], lab[order]
    start = np.searchsorted(lab, index, "left")
    n = np.searchsorted(lab, index, "right") - start
    return ((v[start + (n - 1) // 2] + v[start + n // 2]) / 2).astype(np.float64)


def _separate_from_neighbours(candidate, parts, merged, img, beyond, calibrated_hu,
                              lumen_ratio, dense_hu=np.inf, steps=5) -> None:
    """Cut calcifications out of the candidate regions ``merged`` that run on past the growth
    margin (into a bright neighbour: a chamber, the aorta, the pulmonary artery), in place.

    A calcification touching such a neighbour merges with it. Its seeds are the voxels above
    ``lumen_ratio`` times the neighbour's own level (its median beyond the margin) and above
    ``calibrated_hu``; each seed keeps the largest part of its region that stays off the
    neighbour when the region is cut at one of ``steps`` levels from ``calibrated_hu`` up to
    the seed level (so a calcification is not cut down to its brightest voxels where the
    neighbour is brighter than the coronary lumen, as at 80 kVp). A neighbour whose level
    is above ``dense_hu`` (brighter than any contrast blood) is bone or a calcified valve or
    annulus, and nothing is cut out of it. What no seed keeps goes.
    """
    in_merged = np.isin(parts, merged)
    box = bounding_box(in_merged)  # the merged regions' voxels are all the work
    local = in_merged[box]
    shape = local.shape
    voxels = np.flatnonzero(local)
    value, region, past = (a[box].ravel()[voxels] for a in (img, parts, beyond))
    level = _region_medians(value[past], region[past], merged)
    high = np.full(parts.max() + 1, calibrated_hu)
    high[merged] = np.maximum(calibrated_hu, lumen_ratio * level)
    dense = np.zeros(parts.max() + 1, dtype=bool)
    dense[merged] = level > dense_hu
    region_high = high[region]
    seeds = (value > region_high) & ~dense[region]
    kept = np.zeros(voxels.size, dtype=bool)
    cut = np.zeros(shape, dtype=bool)
    for fraction in np.linspace(0.0, 1.0, steps + 1):
        cut.ravel()[voxels] = value > calibrated_hu + fraction * (region_high - calibrated_hu)
        pieces = ndi.label(cut, structure=np.ones((3, 3, 3)))[0].ravel()[voxels]
        free = np.ones(pieces.max() + 1, dtype=bool)
        free[pieces[past]] = False
        seeded = np.zeros_like(free)
        seeded[pieces[seeds & ~kept]] = True
        take = free & seeded
        take[0] = False
        kept |= take[pieces]
    candidate[box][np.unravel_index(voxels[~kept], shape)] = 0


def _bounded_protrusions(parts, regions, img, level, zone, rim, reach) -> np.ndarray:
    """Which of ``regions`` (labels in ``parts``) end inside ``zone``: the region grown through
    the voxels of ``zone`` above the region's ``level`` reaches neither ``rim`` (the zone's
    outer shell) nor ``reach`` voxels from the region's bounding box (a long structure)."""
    objects = ndi.find_objects(parts)
    bounded = np.zeros(len(regions), dtype=bool)
    for i, r in enumerate(regions):
        box = box_around([s.start - g for s, g in zip(objects[r - 1], reach)],
                         [s.stop + g for s, g in zip(objects[r - 1], reach)], parts.shape)
        region = parts[box] == r
        grown, _ = ndi.label(region | (zone[box] & (img[box] > level[i])),
                             structure=np.ones((3, 3, 3)))
        own = grown == grown[region][0]
        faces = [own.take(end, axis) for axis in range(3) for end in (0, -1)
                 if (box[axis].start > 0 if end == 0 else box[axis].stop < parts.shape[axis])]
        bounded[i] = not (own & rim[box]).any() and not any(f.any() for f in faces)
    return bounded


def _threshold_free(image, lumen, aorta, sp, params) -> dict:
    """What :func:`detect_calcium` computes in its box whatever the thresholds: the smoothed
    image, the aortic noise and level (the brightest contrast blood; infinite without enough
    aorta) and the voxels near the lumen (within the growth margin and a
    one-voxel shell), beyond the growth margin, within the wall margin, within the protrusion
    zone past the growth margin and on that zone's outer shell."""
    img = image.astype(np.float32)
    if params.smooth_mm > 0:
        img = ndi.gaussian_filter(img, params.smooth_mm / sp, truncate=3.0)
    depth = distance_mm(~lumen, sp)
    outer = params.growth_margin_mm + params.protrusion_mm
    blood = np.empty(0) if aorta is None else img[aorta]
    return {"img": img, "noise_sd": None if aorta is None else _aorta_noise_sd(img, aorta, sp),
            "blood_hu": float(np.median(blood)) if blood.size >= _MIN_AORTA_VOXELS else np.inf,
            "near": depth <= params.growth_margin_mm + float(sp.max()),
            "beyond": depth > params.growth_margin_mm,
            "at_wall": depth <= params.wall_margin_mm,
            "zone": depth <= outer, "rim": (depth <= outer) & (depth > outer - float(sp.max()))}


def detect_calcium(image: np.ndarray, spacing, vessel_labels: np.ndarray,
                   centerlines_by_vessel: Mapping[str, Sequence[Centerline]],
                   calibration_factor: float, aorta_mask: np.ndarray | None = None,
                   params: CalciumParams = CalciumParams(),
                   label_values: Mapping[str, int] = VESSEL_LABEL,
                   cache: dict | None = None) -> CalciumDetection:
    """Detect coronary calcium with the adaptive threshold along the centerlines.

    Parameters
    ----------
    image : ndarray, shape (z, y, x)
        CCTA in HU (not the normalized image).
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    vessel_labels : ndarray of int, shape (z, y, x)
        Coronary lumen labels; ``label_values`` gives each vessel's value (AutoCAC's label
        map values by default: LM 2, LAD 3, LCx 4, RCA 5).
    centerlines_by_vessel : mapping str -> list of Centerline
        Centerlines of each vessel (from :func:`~AutoCACLib.centerlines.vessel_centerlines`
        on that vessel's mask). Vessels without centerlines get no calcium.
    calibration_factor : float
        Representative coronary lumen attenuation in HU (stage 4).
    aorta_mask : ndarray of bool, optional
        The aorta; calcium within ``params.aorta_margin_mm`` of it is excluded.
    params : CalciumParams
    label_values : mapping str -> int
        Label value of each vessel in ``vessel_labels``.
    cache : dict, optional
        Give the same dict to repeated calls on the same image and masks (a parameter fit)
        to reuse the smoothed image, its noise and the distances to the lumen, which do not
        depend on the thresholds.

    Returns
    -------
    CalciumDetection
    """
    image = np.asarray(image)
    sp = np.asarray(spacing, dtype=float)
    labels_in = np.asarray(vessel_labels)
    out = np.zeros(image.shape, dtype=np.uint8)
    vessels = [v for v in VESSELS if centerlines_by_vessel.get(v)]
    lumen = np.isin(labels_in, [label_values[v] for v in vessels])
    if not vessels or not lumen.any():
        return CalciumDetection(out)

    # Work in the bounding box of the vessels, grown by the margins.
    grow = np.ceil((params.growth_margin_mm + max(params.aorta_margin_mm, params.protrusion_mm)
                    + 1.0) / sp).astype(int)
    box = bounding_box(lumen, grow)
    lo = np.array([s.start for s in box])
    lum = lumen[box]
    aorta = None if aorta_mask is None else np.asarray(aorta_mask, dtype=bool)[box]
    key = (box, params.smooth_mm, params.growth_margin_mm, params.wall_margin_mm,
           params.protrusion_mm)
    cache = {} if cache is None else cache
    if cache.get("key") != key:
        cache.clear()
        cache.update(key=key, **_threshold_free(image[box], lum, aorta, sp, params))
    img, noise_sd = cache["img"], cache["noise_sd"]

    element = ball(max(params.lumen_ball_mm, float(sp.max())), sp)
    offsets = np.argwhere(element) - np.array(element.shape) // 2
    profiles, point_mm, point_vessel, point_threshold = [], [], [], []
    for vessel in vessels:
        for index, line in enumerate(centerlines_by_vessel[vessel]):
            prof = _branch_profile(img, lum, line.points - lo, line.arc_length_mm, offsets,
                                   params, calibration_factor, vessel, index, noise_sd)
            profiles.append(prof)
            point_mm.append((line.points - lo) * sp)
            point_vessel.append(np.full(len(line), VESSELS.index(vessel) + 1, np.uint8))
            point_threshold.append(prof.threshold_hu)
    point_mm = np.concatenate(point_mm)
    point_vessel = np.concatenate(point_vessel)
    point_threshold = np.concatenate(point_threshold)

    # Each voxel near the vessels takes the threshold of its nearest centerline point.
    # Calcium regions count when they reach the wall margin. Calcifications are bounded:
    # bright regions that go on past the growth margin (a one-voxel shell beyond it is
    # checked) are neighbouring structures (pulmonary artery, cardiac chambers, veins, bone)
    # and are dropped whole, unless they end within the protrusion zone.
    voxels = np.argwhere((img > point_threshold.min()) & cache["near"])
    _, nearest = cKDTree(point_mm).query(voxels * sp)
    voxels, nearest = (a[img[tuple(voxels.T)] > point_threshold[nearest]]
                       for a in (voxels, nearest))
    candidate = np.zeros(img.shape, dtype=np.uint8)
    candidate[tuple(voxels.T)] = point_vessel[nearest]
    beyond = cache["beyond"]
    parts, n = ndi.label(candidate > 0, structure=np.ones((3, 3, 3)))
    merged = np.unique(parts[beyond & (parts > 0)])
    if merged.size and params.protrusion_mm > 0:
        level = _region_medians(point_threshold[nearest], parts[tuple(voxels.T)], merged)
        reach = np.ceil((params.growth_margin_mm + params.protrusion_mm) / sp).astype(int) + 1
        bounded = _bounded_protrusions(parts, merged, img, level, cache["zone"], cache["rim"],
                                       reach)
        beyond = beyond & ~np.isin(parts, merged[bounded])
        merged = merged[~bounded]
    if merged.size:
        _separate_from_neighbours(candidate, parts, merged, img, beyond,
                                  params.calibrated_ratio * calibration_factor,
                                  params.lumen_ratio, params.lumen_ratio * cache["blood_hu"])
        parts, n = ndi.label(candidate > 0, structure=np.ones((3, 3, 3)))
    keep = np.zeros(n + 1, dtype=bool)
    keep[parts[cache["at_wall"]]] = True
    keep[parts[beyond]] = False
    keep[0] = False
    candidate[~keep[parts]] = 0  # whole regions go: ``parts`` still labels those kept

    detection = CalciumDetection(out, profiles)
    voxel_mm3 = float(np.prod(sp))
    if aorta is not None:
        surface = surface_voxels(aorta)
        found = np.argwhere(candidate)
        if len(surface) and len(found):
            gap, _ = cKDTree(surface * sp).query(found * sp)
            gap[aorta[tuple(found.T)]] = 0.0
            near = gap <= params.aorta_margin_mm
            if near.any():
                # Whole calcifications that touch the margin but never leave the aortic wall.
                part = parts[tuple(found.T)]
                reach = np.zeros(n + 1)
                np.maximum.at(reach, part, gap)
                touching = np.zeros(n + 1, dtype=bool)
                touching[part[near]] = True
                near |= touching[part] & (reach[part] <= params.aorta_reach_mm)
                candidate[tuple(found[near].T)] = 0
                detection.excluded_near_aorta_mm3 = float(near.sum()) * voxel_mm3
                detection.warnings.append(
                    f"{detection.excluded_near_aorta_mm3:.1f} mm^3 of calcium-like voxels "
                    f"at the aortic wall (within {params.aorta_margin_mm:g} mm of the aorta, or "
                    f"in calcifications within {params.aorta_reach_mm:g} mm of it) excluded")
                # Cutting the margin out may split a region in two.
                parts, n = ndi.label(candidate > 0, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(parts[candidate > 0], minlength=n + 1)
    small = sizes * voxel_mm3 < params.min_volume_mm3
    small[0] = False
    candidate[small[parts]] = 0
    out[box] = candidate
    return detection
