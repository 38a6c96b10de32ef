"""Fitting of the classical stages (calibration, calcium, CCTA scoring) and its files."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from AutoCACLib.calcium import CalciumParams
from AutoCACLib.calibration import FEATURE_NAMES, AortaFeatures, train_calibration
from AutoCACLib.ccta_scoring import CctaScoringParams
from AutoCACLib.centerlines import vessel_centerlines
from AutoCACLib.pipeline import (CALCIUM_PARAMS_FILE, CALIBRATION_MODEL_FILE,
                                 SCORING_PARAMS_FILE)
from AutoCACLib.pipeline_training import (FitReport, TrainingCase, case_scores, detect_case,
                                          evaluate_cases, fit_calcium_and_scoring, fit_prepared,
                                          load_fitted, save_fitted)
from AutoCACLib.errors import InputError
from AutoCACLib.segments import VESSEL_LABEL

SPACING = (0.5, 0.4, 0.4)
SHAPE = (30, 36, 80)


def _features(core_mean):
    values = {name: 0.0 for name in FEATURE_NAMES}
    values.update(core_mean=core_mean, kvp=100.0)
    return AortaFeatures(values)


def _training_case(seed, scale):
    """A noisy contrast vessel with wall calcifications; the reference is ``scale`` x the
    Agatston score of the truth calcium under standard settings at the case's kVp."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij",
                          sparse=True)
    lumen_hu = float(rng.uniform(300, 450))
    lumen = (np.sqrt((z - 7.5) ** 2 + (y - 7.2) ** 2) <= 1.6) + 0 * x > 0
    sharp = np.where(lumen, lumen_hu, 40.0)
    truth = np.zeros(SHAPE, bool)
    for bx in rng.uniform(5, 27, rng.integers(1, 4)):
        r = rng.uniform(0.8, 1.4)
        blob = (z - 7.5 - 1.6) ** 2 + (y - 7.2) ** 2 + (x - bx) ** 2 <= r ** 2
        sharp = np.where(blob, rng.uniform(800, 1200), sharp)
        truth |= blob
    image = ndi.gaussian_filter(sharp, 0.4 / np.array(SPACING)) + rng.normal(0, 15, SHAPE)
    labels = np.where(lumen & ~truth, VESSEL_LABEL["LAD"], 0).astype(np.uint8)
    case = TrainingCase(
        name=f"case_{seed}", kvp=100.0, spacing=SPACING, image=image.astype(np.float32),
        vessel_labels=labels, aorta=np.zeros(SHAPE, bool),
        centerlines={"LAD": vessel_centerlines(labels > 0, SPACING)},
        features=_features(lumen_hu), lumen_hu=lumen_hu, reference_agatston=0.0,
        reference_volume_mm3=0.0)
    raw_agatston, raw_volume = case_scores(case, detect_case(case, CalciumParams(), lumen_hu),
                                           lumen_hu, CctaScoringParams())
    return dataclasses.replace(case, reference_agatston=scale * raw_agatston,
                               reference_volume_mm3=scale * raw_volume)


def test_fit_recovers_a_known_score_scale():
    cases = [_training_case(seed, scale=1.8) for seed in range(4)]
    assert all(c.reference_agatston > 0 for c in cases)
    report = FitReport()
    calcium, scoring = fit_calcium_and_scoring(
        cases, calcium_grid={"lumen_ratio": (1.2, 1.25)},
        scoring_grid={"agatston_scale": (1.0, 1.4, 1.8, 2.2)}, report=report)
    assert isinstance(calcium, CalciumParams)
    assert scoring.agatston_scale == pytest.approx(1.8)
    assert scoring.volume_scale == pytest.approx(1.8, rel=0.05)
    assert report.loss < 0.05 and len(report.trials) == 2
    rows, stats = evaluate_cases(cases, None, calcium, scoring)
    for row in rows:
        assert row["ccta_agatston"] == pytest.approx(row["reference_agatston"], rel=0.2)
    assert stats["ccc"] > 0.9


def test_refit_keeping_the_detection_parameters(tmp_path, capsys):
    """``autocac train --fit-only --keep-detection``: the calcium parameters in the models
    folder stay, the calibration and scoring are refitted from its scoring parameters."""
    cases = [_training_case(seed, scale=1.8) for seed in range(4)]
    with pytest.raises(InputError, match="calcium.json and ccta_scoring.json"):
        fit_prepared(cases, tmp_path, keep_detection=True)
    rng = np.random.default_rng(0)
    features = rng.normal(300, 50, (12, len(FEATURE_NAMES)))
    kept = CalciumParams(min_volume_mm3=0.25)
    save_fitted(tmp_path, train_calibration(features, features[:, 0], n_estimators=5), kept,
                CctaScoringParams(agatston_scale=1.0), {"cases": ["old"]})
    result = fit_prepared(cases, tmp_path, keep_detection=True)
    _, calcium, scoring = load_fitted(tmp_path)
    assert calcium == kept and result["detection"].startswith("kept")
    assert scoring.agatston_scale == pytest.approx(1.8, rel=0.1)
    assert result["training_agreement"]["ccc"] > 0.9
    assert json.loads((tmp_path / SCORING_PARAMS_FILE).read_text())["training"]["cases"] == [
        c.name for c in cases]
    from AutoCACLib.cli import main

    assert main(["train", str(tmp_path), "--out", str(tmp_path / "x"), "--networks-only",
                 "--keep-detection"]) != 0
    assert "cannot go with --networks-only" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "new"),
                 "--keep-detection"]) != 0
    assert "needs calcium.json and ccta_scoring.json" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # refused before training anything


def test_fitted_files_round_trip_in_the_loaders_format(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(300, 50, (12, len(FEATURE_NAMES)))
    model = train_calibration(features, features[:, 0] * 0.8, n_estimators=5)
    calcium = CalciumParams(lumen_ratio=1.2, smooth_mm=0.4)
    scoring = CctaScoringParams(offset_fraction=0.1, agatston_scale=1.5, volume_scale=1.3)
    paths = save_fitted(tmp_path, model, calcium, scoring, {"cases": ["a", "b"], "seed": 0})
    assert {p.name for p in paths.values()} == {CALIBRATION_MODEL_FILE, CALCIUM_PARAMS_FILE,
                                                SCORING_PARAMS_FILE}
    # What load_pipeline_models does with each file.
    document = json.loads((tmp_path / CALCIUM_PARAMS_FILE).read_text())
    assert CalciumParams(**document["params"]) == calcium
    assert document["training"]["cases"] == ["a", "b"]
    scoring_doc = json.loads((tmp_path / SCORING_PARAMS_FILE).read_text())
    assert CctaScoringParams(**scoring_doc["params"]) == scoring
    loaded_model, loaded_calcium, loaded_scoring = load_fitted(tmp_path)
    assert (loaded_calcium, loaded_scoring) == (calcium, scoring)
    np.testing.assert_allclose(loaded_model.predict(features[:3]), model.predict(features[:3]),
                               rtol=1e-6)
