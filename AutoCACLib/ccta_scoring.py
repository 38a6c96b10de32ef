"""Stage 8 on CCTA: Agatston weights adapted to the calibration factor.

On a contrast CCTA, calcium looks brighter than on the 120 kVp calcium-scoring CT (CSCT):
calcium's attenuation grows at low tube voltage, and partial volume with the iodinated lumen
adds part of the lumen's attenuation. So that the CCTA's Agatston score estimates the CSCT's,
the standard scorer (:func:`AutoCACLib.scoring.score_calcium`) is run with its calcium
threshold and weight bins moved to where CSCT values would land on this CCTA::

    threshold_ccta = threshold_csct x gain + offset_fraction x CF
    gain = kvp_calcium_factor(kVp) ** kvp_exponent x (CF / reference_cf_hu) ** cf_exponent

with CF the calibration factor (representative coronary lumen attenuation, HU) and
``kvp_calcium_factor`` the hydroxyapatite factor of :mod:`AutoCACLib.scoring` (1 when the kVp
is unknown; the CF term then carries the tube voltage, as in the paper). The weight bins may
take their own part of CF (``weight_offset_fraction``), and each lesion's weight may be read
from the CCTA averaged over a 3 mm slab (``weight_slab_mm``): a calcification thinner than
the CSCT's slice then weighs what the CSCT gives it, where the thin slice shows its full peak.
Each lesion's Agatston score and volume are then multiplied by ``agatston_scale`` and
``volume_scale``: thin
(0.5-0.75 mm) contrast slices show calcium sharper than the 3 mm CSCT, whose blur and partial
volume spread each calcification over a larger area at 130 HU. The parameters are fitted
against CSCT reference scores by :func:`fit_ccta_scoring`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from .scoring import ScoringSettings, kvp_calcium_factor, score_calcium, slab_reach


@dataclass(frozen=True)
class CctaScoringParams:
    """How CSCT thresholds move on a CCTA (see the module docstring).

    Attributes
    ----------
    offset_fraction : float
        Part of the calibration factor added to every threshold (iodine partial volume).
    weight_offset_fraction : float or None
        Part of the calibration factor added to the weight bins (None: ``offset_fraction``).
    weight_slab_mm : float or None
        Read lesion weights from the image averaged over a slab this thick
        (:attr:`AutoCACLib.scoring.ScoringSettings.weight_slab_mm`; None: the thin slices).
    cf_exponent : float
        Power of ``CF / reference_cf_hu`` in the gain.
    kvp_exponent : float
        Power of the hydroxyapatite kVp factor in the gain (1: the physical factor).
    reference_cf_hu : float
        Calibration factor at which the CF term of the gain is 1.
    agatston_scale, volume_scale : float
        Multiply the CCTA lesions' Agatston scores / volumes (and masses), on top of the
        base settings' own scales.
    """

    offset_fraction: float = 0.0
    weight_offset_fraction: float | None = None
    weight_slab_mm: float | None = None
    cf_exponent: float = 0.0
    kvp_exponent: float = 1.0
    reference_cf_hu: float = 350.0
    agatston_scale: float = 1.0
    volume_scale: float = 1.0

    def gain(self, calibration_factor: float, kvp: float | None = None) -> float:
        kvp_term = 1.0 if kvp is None else kvp_calcium_factor(kvp) ** self.kvp_exponent
        return kvp_term * (calibration_factor / self.reference_cf_hu) ** self.cf_exponent


def ccta_scoring_settings(calibration_factor: float,
                          params: CctaScoringParams = CctaScoringParams(),
                          kvp: float | None = None,
                          base: ScoringSettings = ScoringSettings()) -> ScoringSettings:
    """Scoring settings for a CCTA whose Agatston score estimates the CSCT 120 kVp score.

    Parameters
    ----------
    calibration_factor : float
        Representative coronary lumen attenuation, HU (must be positive).
    params : CctaScoringParams
    kvp : float, optional
        Tube voltage of the CCTA.
    base : ScoringSettings
        The CSCT conventions to adapt (connectivity, lesion dimension, minimum area... are
        kept; the threshold and weight bins are moved; the score scales are multiplied by
        ``params``'; ``kvp_specific`` is switched off since the tube voltage is accounted for
        here).

    Returns
    -------
    ScoringSettings
    """
    if not calibration_factor > 0:
        raise ValueError(f"calibration factor must be positive, got {calibration_factor}")
    gain = params.gain(calibration_factor, kvp)
    offset = params.offset_fraction * calibration_factor
    weight_offset = (offset if params.weight_offset_fraction is None
                     else params.weight_offset_fraction * calibration_factor)
    return dataclasses.replace(
        base, threshold_hu=base.threshold_hu * gain + offset,
        weight_thresholds_hu=tuple(t * gain + weight_offset for t in base.weight_thresholds_hu),
        weight_slab_mm=params.weight_slab_mm, kvp_specific=False,
        agatston_scale=base.agatston_scale * params.agatston_scale,
        volume_scale=base.volume_scale * params.volume_scale)


@dataclass
class CctaCase:
    """One training case for :func:`fit_ccta_scoring`.

    Attributes
    ----------
    image : ndarray
        CCTA in HU.
    calcium_labels : ndarray
        1..4 calcium regions (LM, LAD, LCx, RCA) detected on the CCTA.
    spacing : sequence of 3 float
    calibration_factor : float
    kvp : float or None
    reference_agatston : float
        Total Agatston score of the CSCT reference.
    """

    image: np.ndarray
    calcium_labels: np.ndarray
    spacing: tuple
    calibration_factor: float
    kvp: float | None
    reference_agatston: float


#: Factors on the grid search's Agatston scale tried last (1% apart, up to 12% either way).
SCALE_REFINEMENT = tuple(np.exp(np.linspace(-0.12, 0.12, 25)))

#: Values tried for each parameter by :func:`fit_ccta_scoring`.
DEFAULT_GRID = {
    "offset_fraction": tuple(np.round(np.linspace(0.0, 0.6, 13), 3)),
    "cf_exponent": tuple(np.round(np.linspace(-1.0, 1.5, 11), 3)),
    "kvp_exponent": tuple(np.round(np.linspace(0.0, 2.0, 9), 3)),
}


def _compact(case: CctaCase, slab_mm: float | None = None) -> CctaCase:
    """The case reduced to its calcium: each connected calcium region (26-neighbourhood)
    cropped to its box, the crops stacked along z with an empty slice between them. Only
    voxels inside the regions are scored and no lesion can join two regions, so every score
    is unchanged; a fit scores each case hundreds of times, and the stack is a small
    fraction of the image. With ``slab_mm`` (weights read over a slab, see
    :attr:`AutoCACLib.scoring.ScoringSettings.weight_slab_mm`) each crop also keeps the
    slices the slab reaches beyond its region (the image's end slices repeated past its
    ends, as the slab averaging does), so that the weights are unchanged too."""
    regions, n = ndimage.label(case.calcium_labels > 0, np.ones((3, 3, 3), bool))
    if n == 0:
        return case
    reach = slab_reach(case.spacing[0], slab_mm) if slab_mm else 0
    crops = []
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        z0, z1 = box[0].start - reach, box[0].stop + reach
        clipped = (slice(max(z0, 0), min(z1, case.image.shape[0])),) + tuple(box[1:])
        ends = ((max(z0, 0) - z0, z1 - min(z1, case.image.shape[0])), (0, 0), (0, 0))
        image = np.pad(case.image[clipped], ends, mode="edge")
        label = np.pad(np.where(regions[clipped] == index, case.calcium_labels[clipped], 0),
                       ends)
        crops.append((image, label))
    rows = max(image.shape[1] for image, _ in crops)
    cols = max(image.shape[2] for image, _ in crops)
    images, labels = [], []
    for image, label in crops:
        pad = ((0, 1), (0, rows - image.shape[1]), (0, cols - image.shape[2]))
        images.append(np.pad(image, pad))
        labels.append(np.pad(label, pad))
    return dataclasses.replace(case, image=np.concatenate(images),
                               calcium_labels=np.concatenate(labels))


def ccta_agatston(case: CctaCase, params: CctaScoringParams,
                  base: ScoringSettings = ScoringSettings()) -> float:
    """Total Agatston score of a CCTA case under ``params``."""
    settings = ccta_scoring_settings(case.calibration_factor, params, case.kvp, base)
    return score_calcium(case.image, case.calcium_labels, case.spacing, settings
                         ).agatston["total"]


def scoring_loss(cases: Sequence[CctaCase], params: CctaScoringParams,
                 base: ScoringSettings = ScoringSettings()) -> float:
    """Mean absolute difference of ``log(1 + Agatston)`` between CCTA and CSCT reference.

    The log keeps large scores from dominating; the absolute value keeps outliers (a failed
    segmentation) from pulling the fit.
    """
    return log_score_error([ccta_agatston(c, params, base) for c in cases],
                           [c.reference_agatston for c in cases])


def log_score_error(scores, references) -> float:
    """Mean absolute difference of ``log(1 + score)`` between scores and their references
    (the loss of every score fit: :func:`scoring_loss`, the scales)."""
    return float(np.mean(np.abs(np.log1p(np.asarray(scores, float))
                                - np.log1p(np.asarray(references, float)))))


def fit_ccta_scoring(cases: Sequence[CctaCase], start: CctaScoringParams = CctaScoringParams(),
                     grid: dict | None = None, rounds: int = 3,
                     base: ScoringSettings = ScoringSettings(),
                     progress: Callable[[int, float], None] | None = None
                     ) -> tuple[CctaScoringParams, float]:
    """Fit :class:`CctaScoringParams` to CSCT reference scores by coordinate search.

    Each round tries, for one parameter at a time, every value of its grid with the others
    fixed, and keeps the best (ties keep the current value); rounds stop when nothing changes.
    The Agatston scale is then refined in 1% steps (the grid's are coarse).

    Parameters
    ----------
    cases : sequence of CctaCase
    start : CctaScoringParams
        Starting point (``reference_cf_hu`` is kept).
    grid : dict, optional
        Parameter name -> values to try (default :data:`DEFAULT_GRID`).
    rounds : int
        Maximum number of passes over the parameters.
    base : ScoringSettings
        The CSCT conventions the reference scores were made with.
    progress : callable(round, loss), optional
        Called after each round.

    Returns
    -------
    (CctaScoringParams, float)
        The fitted parameters and their :func:`scoring_loss`.
    """
    grid = DEFAULT_GRID if grid is None else grid
    slabs = [start.weight_slab_mm, *grid.get("weight_slab_mm", ())]
    slab = max((s for s in slabs if s), default=None)
    compact = [_compact(c, slab) for c in cases]
    best, best_loss = start, scoring_loss(compact, start, base)
    for r in range(rounds):
        changed = False
        for name, values in grid.items():
            for value in values:
                trial = dataclasses.replace(best, **{name: float(value)})
                if trial == best:
                    continue
                loss = scoring_loss(compact, trial, base)
                if loss < best_loss - 1e-12:
                    best, best_loss, changed = trial, loss, True
        if progress is not None:
            progress(r, best_loss)
        if not changed:
            break
    return _refined_scale(compact, best, best_loss, base)


def _refined_scale(cases: Sequence[CctaCase], params: CctaScoringParams, loss: float,
                   base: ScoringSettings) -> tuple[CctaScoringParams, float]:
    """``params`` with the Agatston scale refined in 1% steps (:data:`SCALE_REFINEMENT`)
    around the grid search's, where that lowers the loss: the grid's steps are too coarse
    for an unbiased score, and the score is proportional to the scale, so one scoring of
    the cases serves every step."""
    raw = np.array([ccta_agatston(c, dataclasses.replace(params, agatston_scale=1.0), base)
                    for c in cases])
    ref = [c.reference_agatston for c in cases]
    scales = params.agatston_scale * np.asarray(SCALE_REFINEMENT)
    losses = [log_score_error(raw * s, ref) for s in scales]
    best = int(np.argmin(losses))
    if losses[best] >= loss - 1e-12:
        return params, loss
    return dataclasses.replace(params, agatston_scale=float(scales[best])), losses[best]
