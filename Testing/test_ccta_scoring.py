"""CCTA scoring settings adapted to the calibration factor, and their fit to CSCT scores."""

import numpy as np
import pytest

from AutoCACLib.ccta_scoring import (CctaCase, CctaScoringParams, ccta_agatston,
                                     ccta_scoring_settings, fit_ccta_scoring, scoring_loss)
from AutoCACLib.scoring import ScoringSettings, score_calcium

SPACING = (0.5, 0.5, 0.5)


def test_settings_move_threshold_and_weight_bins():
    base = ScoringSettings(connectivity=4, min_area_mm2=0.5)
    same = ccta_scoring_settings(350.0, CctaScoringParams(), kvp=120, base=base)
    assert same.weight_thresholds_hu == base.weight_thresholds_hu
    assert same.threshold_hu == base.threshold_hu
    assert same.connectivity == 4 and same.min_area_mm2 == 0.5  # other conventions kept

    params = CctaScoringParams(offset_fraction=0.2, cf_exponent=0.5, kvp_exponent=1.0)
    s = ccta_scoring_settings(560.0, params, kvp=80)
    gain = 1.36 * np.sqrt(560 / 350)
    np.testing.assert_allclose(s.weight_thresholds_hu,
                               [t * gain + 0.2 * 560 for t in (130, 200, 300, 400)])
    assert s.threshold_hu == pytest.approx(130 * gain + 112)
    assert not s.kvp_specific
    # The weight bins may take their own part of CF; the slab goes to the settings.
    own = ccta_scoring_settings(560.0, CctaScoringParams(
        offset_fraction=0.2, weight_offset_fraction=0.5, weight_slab_mm=3.0), kvp=120)
    assert own.threshold_hu == pytest.approx(130 + 112)
    np.testing.assert_allclose(own.weight_thresholds_hu, [t + 280 for t in (130, 200, 300, 400)])
    assert own.weight_slab_mm == 3.0 and s.weight_slab_mm is None
    # Unknown kVp: only the calibration factor moves the bins.
    unknown = ccta_scoring_settings(560.0, params)
    assert unknown.weight_thresholds_hu[3] == pytest.approx(400 * np.sqrt(1.6) + 112)
    with pytest.raises(ValueError):
        ccta_scoring_settings(0.0)


def _synthetic_cases(n, truth, seed):
    """CCTA cases whose calcium is the CSCT calcium seen through ``truth``'s linear map."""
    rng = np.random.default_rng(seed)
    shape = (16, 40, 40)
    z, y, x = np.meshgrid(*[np.arange(s) * 0.5 for s in shape], indexing="ij", sparse=True)
    cases = []
    for _ in range(n):
        csct = np.full(shape, 40.0)
        labels = np.zeros(shape, np.uint8)
        for k in range(rng.integers(1, 4)):
            c = rng.uniform([3, 4, 4], [5, 16, 16])
            r = rng.uniform(0.8, 2.0)
            d2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
            peak = rng.uniform(150, 800)
            csct = np.maximum(csct, 40 + (peak - 40) * np.exp(-d2 / (2 * r ** 2)))
            labels[d2 <= (1.8 * r) ** 2] = k + 1
        cf = float(rng.uniform(250, 600))
        kvp = [80.0, 100.0, 120.0, None][rng.integers(4)]
        gain = truth.gain(cf, kvp)
        ccta = csct * gain + truth.offset_fraction * cf
        reference = score_calcium(csct, labels, SPACING).agatston["total"]
        cases.append(CctaCase(ccta, labels, SPACING, cf, kvp, reference))
    return cases


def test_fit_recovers_a_known_scaling():
    truth = CctaScoringParams(offset_fraction=0.2, cf_exponent=0.5, kvp_exponent=1.0)
    cases = _synthetic_cases(16, truth, seed=7)
    assert scoring_loss(cases, truth) == pytest.approx(0, abs=1e-9)
    start = CctaScoringParams()
    initial = scoring_loss(cases, start)
    assert initial > 0.3
    fitted, loss = fit_ccta_scoring(cases, start=start, rounds=3)
    assert loss < 0.1 * initial
    assert fitted.offset_fraction == pytest.approx(0.2, abs=0.05)
    assert fitted.cf_exponent == pytest.approx(0.5, abs=0.25)
    # Held-out cases: the fitted scaling generalizes.
    held_out = _synthetic_cases(8, truth, seed=8)
    assert scoring_loss(held_out, fitted) < 0.25 * scoring_loss(held_out, start)
    assert ccta_agatston(held_out[0], fitted) == pytest.approx(held_out[0].reference_agatston,
                                                               rel=0.25)


def test_fit_scores_each_case_as_the_full_image_does():
    """The fit works on the calcium regions only (:func:`_compact`); every score it sees,
    under any parameters, is the full image's."""
    from AutoCACLib.ccta_scoring import _compact

    cases = _synthetic_cases(12, CctaScoringParams(offset_fraction=0.2), seed=3)
    # Two regions of different vessels touching diagonally, and one far away.
    touching = cases[0]
    touching.calcium_labels[10, 30, 30] = 4
    touching.calcium_labels[11, 31, 31] = 2
    touching.image[10:12, 30:32, 30:32] = 900.0
    slab = CctaScoringParams(weight_slab_mm=3.0, weight_offset_fraction=0.1)
    for case in cases:
        for compact, all_params in (
                (_compact(case), (CctaScoringParams(), CctaScoringParams(offset_fraction=0.4),
                                  CctaScoringParams(kvp_exponent=2.0, agatston_scale=1.7))),
                (_compact(case, 3.0), (CctaScoringParams(), slab))):
            assert compact.image.size < case.image.size
            for params in all_params:
                assert ccta_agatston(compact, params) == pytest.approx(
                    ccta_agatston(case, params), abs=1e-9)


def test_fit_finds_a_scale_between_the_grid_steps():
    # References 5% above what the true map gives: the grid (offsets, exponents) cannot
    # absorb that; the refined Agatston scale must, or every score stays 5% low.
    import dataclasses

    truth = CctaScoringParams(offset_fraction=0.2, cf_exponent=0.5, kvp_exponent=1.0)
    cases = [dataclasses.replace(c, reference_agatston=1.05 * c.reference_agatston)
             for c in _synthetic_cases(16, truth, seed=11)]
    fitted, loss = fit_ccta_scoring(cases, start=truth, rounds=2)
    assert fitted.agatston_scale == pytest.approx(1.05, rel=0.006)
    assert loss == pytest.approx(scoring_loss(cases, fitted), abs=1e-5)   # scores rounded
    assert loss < 0.01
