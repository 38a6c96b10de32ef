"""Calibration factor: aortic features, XGBoost regressor, JSON model, fallback."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from AutoCACLib.calibration import (FEATURE_NAMES, CalibrationModel, aorta_features,
                                    calibration_factor, train_calibration)

SPACING = (0.5, 0.5, 0.5)


def _aorta(lumen_hu, seed=0, calcified_wall=True):
    """A cylinder of 10 mm radius along z, blurred edge, a calcified arc in its wall."""
    shape = (40, 56, 56)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)],
                          indexing="ij", sparse=True)
    r = np.sqrt((y - 14) ** 2 + (x - 14) ** 2) + 0 * z
    sharp = np.where(r <= 10, lumen_hu, 40.0)
    if calcified_wall:
        sharp = np.where((r > 8.8) & (r <= 10) & (x + 0 * z > 19), 1100.0, sharp)
    image = ndi.gaussian_filter(sharp, 1.0) + np.random.default_rng(seed).normal(0, 20, shape)
    return image.astype(np.float32), r <= 10


def test_features_are_robust_to_wall_calcium_and_partial_volume():
    image, mask = _aorta(380)
    f = aorta_features(image, SPACING, mask, kvp=100).values
    assert f["core_mean"] == pytest.approx(380, abs=4)
    assert f["gmm_mean"] == pytest.approx(380, abs=8)
    assert abs(f["mean"] - 380) > 3 * abs(f["core_mean"] - 380)  # the plain mean is biased
    assert f["p95"] > 450 and f["std"] > 50
    assert f["kvp"] == 100
    assert f["volume_ml"] == pytest.approx(np.pi * 10 ** 2 * 20 / 1000, rel=0.03)
    assert np.isnan(aorta_features(image, SPACING, mask).values["kvp"])
    with pytest.raises(ValueError, match="empty"):
        aorta_features(image, SPACING, np.zeros_like(mask))


def _synthetic_cohort(n, seed):
    """Feature rows and a known target: coronary lumen = 0.9 x aortic core + kVp effect."""
    rng = np.random.default_rng(seed)
    core = rng.uniform(200, 650, n)
    kvp = rng.choice([80.0, 100.0, 120.0], n)
    x = np.empty((n, len(FEATURE_NAMES)))
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for name, spread in (("p05", -120), ("p25", -40), ("p50", 0), ("p75", 40), ("p95", 150)):
        x[:, col[name]] = core + spread + rng.normal(0, 10, n)
    x[:, col["mean"]] = core + rng.normal(20, 15, n)
    x[:, col["std"]] = rng.uniform(30, 90, n)
    x[:, col["core_mean"]] = core
    x[:, col["gmm_mean"]] = core + rng.normal(0, 5, n)
    x[:, col["gmm_sigma"]] = rng.uniform(20, 40, n)
    x[:, col["gmm_weight"]] = rng.uniform(0.6, 0.9, n)
    x[:, col["volume_ml"]] = rng.uniform(20, 60, n)
    target = 0.9 * core - 0.3 * (kvp - 100)
    x[:, col["kvp"]] = np.where(rng.random(n) < 0.2, np.nan, kvp)  # kVp sometimes unknown
    return x, target


def test_regressor_learns_a_known_function_and_round_trips_through_json(tmp_path):
    x, y = _synthetic_cohort(500, seed=1)
    model = train_calibration(x[:400], y[:400], seed=3)
    pred = model.predict(x[400:])
    rmse = np.sqrt(np.mean((pred - y[400:]) ** 2))
    assert rmse < 0.1 * np.std(y[400:]), rmse
    assert model.metadata["seed"] == 3 and model.metadata["n_train"] == 400

    path = tmp_path / "calibration.json"
    model.save(path)
    doc = json.loads(path.read_text())  # plain JSON, xgboost's own model format
    assert "learner" in doc
    assert path.stat().st_size < 500_000
    loaded = CalibrationModel.load(path)
    np.testing.assert_allclose(loaded.predict(x[400:]), pred, rtol=1e-6)
    assert loaded.metadata["feature_names"] == list(FEATURE_NAMES)
    # Same seed, same model.
    again = train_calibration(x[:400], y[:400], seed=3)
    np.testing.assert_allclose(again.predict(x[400:]), pred, rtol=1e-6)


def test_load_rejects_foreign_models(tmp_path):
    import xgboost as xgb

    path = tmp_path / "other.json"
    booster = xgb.train({"nthread": 1}, xgb.DMatrix(np.random.rand(20, 2),
                                                    label=np.random.rand(20)), 2)
    booster.save_model(str(path))
    with pytest.raises(ValueError, match="not an AutoCAC calibration model"):
        CalibrationModel.load(path)
    with pytest.raises(ValueError, match=r"\.json"):
        train_calibration(*_synthetic_cohort(20, 0)).save(tmp_path / "model.ubj")


def test_calibration_factor_with_model_and_fallback():
    image, mask = _aorta(420, seed=2)
    fallback = calibration_factor(image, SPACING, mask, kvp=100)
    assert fallback.method == "fallback"
    assert fallback.value == pytest.approx(420, abs=5)
    assert any("no calibration model" in w for w in fallback.warnings)

    # A model trained on "coronary lumen = 0.9 x core" predicts about 0.9 x 420.
    x, y = _synthetic_cohort(400, seed=4)
    y = 0.9 * x[:, FEATURE_NAMES.index("core_mean")]
    model = train_calibration(x, y, seed=0)
    result = calibration_factor(image, SPACING, mask, model=model, kvp=100)
    assert result.method == "xgboost" and not result.warnings
    assert result.value == pytest.approx(0.9 * 420, abs=12)
