"""Stage 4: the calibration factor, a representative coronary lumen attenuation.

The paper turns the attenuation values of the segmented ascending aorta (not a plain mean)
into the coronary lumen attenuation with an XGBoost regressor. :func:`aorta_features`
describes the aorta's attenuation by percentiles, mean and spread, a robust mean of the
lumen core (the mask eroded, so partial volume and wall calcium are left out), the main
component of a Gaussian mixture, the tube voltage when known and the volume.
:func:`train_calibration` fits the regressor; :class:`CalibrationModel` saves it in
xgboost's own JSON model format with AutoCAC's metadata in the model's attributes.
:func:`calibration_factor` applies it, or, without a model, falls back to the robust core
mean (stated in its warnings).

xgboost is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .preprocess import fit_gmm_histogram
from .structuring import bounding_box, distance_mm

#: Feature order of the regressor's input.
FEATURE_NAMES = ("p05", "p25", "p50", "p75", "p95", "mean", "std", "core_mean", "gmm_mean",
                 "gmm_sigma", "gmm_weight", "kvp", "volume_ml")

#: Ratio of coronary lumen to aortic core attenuation assumed by the fallback estimate
#: (the proximal coronary lumen is enhanced about as much as the aortic root it is fed by).
FALLBACK_RATIO = 1.0

_FORMAT = "autocac-calibration/1"


@dataclass
class AortaFeatures:
    """Attenuation features of an aorta mask (see :data:`FEATURE_NAMES`).

    Percentiles, mean and std are over the whole mask; ``core_mean`` is the 10%-trimmed mean
    of the mask eroded by ``core_erosion_mm`` (the whole mask when erosion leaves nothing);
    ``gmm_*`` describe the heaviest component of a 3-component mixture of the mask's values;
    ``kvp`` is NaN when unknown; ``volume_ml`` is the mask volume.
    """

    values: dict[str, float]

    def as_array(self) -> np.ndarray:
        return np.array([self.values[n] for n in FEATURE_NAMES], dtype=float)


def aorta_features(image: np.ndarray, spacing, aorta_mask: np.ndarray, kvp: float | None = None,
                   core_erosion_mm: float = 2.0) -> AortaFeatures:
    """Describe the attenuation of the aorta.

    Parameters
    ----------
    image : ndarray, shape (z, y, x)
        CCTA in HU.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    aorta_mask : ndarray of bool
        The segmented (ascending) aorta.
    kvp : float, optional
        Tube voltage.
    core_erosion_mm : float
        Depth of the lumen core below the mask's surface.

    Returns
    -------
    AortaFeatures

    Raises
    ------
    ValueError
        When the mask is empty.
    """
    mask = np.asarray(aorta_mask, dtype=bool)
    if not mask.any():
        raise ValueError("the aorta mask is empty")
    sp = np.asarray(spacing, dtype=float)
    box = bounding_box(mask, 1)
    sub, img = mask[box], np.asarray(image)[box]
    values = img[sub].astype(float)
    depth = distance_mm(sub, sp)
    core = img[depth > core_erosion_mm].astype(float)
    if core.size < 10:
        core = values
    lo, hi = np.percentile(core, [10, 90])
    trimmed = core[(core >= lo) & (core <= hi)]
    gmm = fit_gmm_histogram(values, n_components=3, bin_width=4.0)
    main = int(np.argmax(gmm.weights))
    p = np.percentile(values, [5, 25, 50, 75, 95])
    return AortaFeatures({
        "p05": float(p[0]), "p25": float(p[1]), "p50": float(p[2]), "p75": float(p[3]),
        "p95": float(p[4]),
        "mean": float(values.mean()), "std": float(values.std()),
        "core_mean": float(trimmed.mean() if trimmed.size else core.mean()),
        "gmm_mean": float(gmm.means[main]), "gmm_sigma": float(gmm.sigmas[main]),
        "gmm_weight": float(gmm.weights[main]),
        "kvp": float("nan") if kvp is None else float(kvp),
        "volume_ml": float(values.size * np.prod(sp) / 1000.0),
    })


def _feature_matrix(features) -> np.ndarray:
    if isinstance(features, AortaFeatures):
        features = [features]
    if len(features) and isinstance(features[0], AortaFeatures):
        return np.stack([f.as_array() for f in features])
    x = np.asarray(features, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    if x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"expected {len(FEATURE_NAMES)} features ({', '.join(FEATURE_NAMES)}), "
                         f"got {x.shape[1]}")
    return x


@dataclass
class CalibrationModel:
    """A trained calibration regressor.

    Attributes
    ----------
    booster : xgboost.Booster
    metadata : dict
        Seed, number of training cases, training RMSE, xgboost parameters and version,
        feature names; saved with the model.
    """

    booster: object
    metadata: dict = field(default_factory=dict)

    def predict(self, features) -> np.ndarray:
        """Calibration factors (HU) for features: AortaFeatures, a list of them, or an array
        of shape (n, len(FEATURE_NAMES))."""
        import xgboost as xgb

        x = _feature_matrix(features)
        return self.booster.predict(xgb.DMatrix(x, feature_names=list(FEATURE_NAMES),
                                                missing=np.nan))

    def save(self, path: str | os.PathLike) -> None:
        """Write xgboost's JSON model; AutoCAC's metadata go into its attributes."""
        if not str(path).endswith(".json"):
            raise ValueError(f"calibration models are saved as .json, not {path}")
        self.booster.set_attr(autocac_format=_FORMAT,
                              autocac_metadata=json.dumps(self.metadata, sort_keys=True))
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationModel":
        """Read a model written by :meth:`save`."""
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(path))
        if booster.attr("autocac_format") != _FORMAT:
            raise ValueError(f"{path} is not an AutoCAC calibration model")
        metadata = json.loads(booster.attr("autocac_metadata") or "{}")
        if tuple(metadata.get("feature_names", ())) != FEATURE_NAMES:
            raise ValueError(f"{path} was trained on other features: "
                             f"{metadata.get('feature_names')}")
        return cls(booster, metadata)


def train_calibration(features, targets: Sequence[float], seed: int = 0,
                      n_estimators: int = 300, max_depth: int = 3,
                      learning_rate: float = 0.05, subsample: float = 0.8) -> CalibrationModel:
    """Fit the XGBoost regressor from aortic features to coronary lumen attenuation.

    Parameters
    ----------
    features : sequence of AortaFeatures or ndarray, shape (n, len(FEATURE_NAMES))
        NaN marks a missing value (e.g. kVp unknown); xgboost learns where to send it.
    targets : sequence of float
        Reference coronary lumen attenuation (HU) of each case.
    seed : int
        Random seed (row subsampling); training is deterministic for a given seed.
    n_estimators, max_depth, learning_rate, subsample
        Boosting parameters (small trees: the relation is smooth and data are few).

    Returns
    -------
    CalibrationModel
    """
    import xgboost as xgb

    x = _feature_matrix(features)
    y = np.asarray(targets, dtype=float)
    if len(y) != len(x) or len(y) < 2:
        raise ValueError(f"need as many targets as feature rows (at least 2), got "
                         f"{len(y)} and {len(x)}")
    params = {"objective": "reg:squarederror", "max_depth": max_depth, "eta": learning_rate,
              "subsample": subsample, "seed": seed, "nthread": 1,
              "base_score": float(np.mean(y))}
    data = xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES), missing=np.nan)
    booster = xgb.train(params, data, num_boost_round=n_estimators)
    rmse = float(np.sqrt(np.mean((booster.predict(data) - y) ** 2)))
    metadata = {"feature_names": list(FEATURE_NAMES), "seed": seed, "n_train": int(len(y)),
                "train_rmse_hu": rmse, "target_range_hu": [float(y.min()), float(y.max())],
                "params": {k: v for k, v in params.items() if k != "base_score"},
                "n_estimators": n_estimators, "xgboost_version": xgb.__version__}
    return CalibrationModel(booster, metadata)


@dataclass
class CalibrationResult:
    """The calibration factor of one image.

    Attributes
    ----------
    value : float
        Representative coronary lumen attenuation, HU.
    method : str
        "xgboost" or "fallback" (robust aortic core mean x :data:`FALLBACK_RATIO`).
    features : AortaFeatures
    warnings : list of str
    """

    value: float
    method: str
    features: AortaFeatures
    warnings: list[str] = field(default_factory=list)


def calibration_factor(image: np.ndarray, spacing, aorta_mask: np.ndarray,
                       model: CalibrationModel | None = None, kvp: float | None = None
                       ) -> CalibrationResult:
    """The calibration factor of a CCTA from its aorta.

    Parameters
    ----------
    image : ndarray, shape (z, y, x)
        CCTA in HU.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    aorta_mask : ndarray of bool
    model : CalibrationModel, optional
        Without one, the fallback is the 10%-trimmed mean of the aorta's lumen core (mask
        eroded by 2 mm) times :data:`FALLBACK_RATIO`, and a warning says so.
    kvp : float, optional

    Returns
    -------
    CalibrationResult
    """
    features = aorta_features(image, spacing, aorta_mask, kvp)
    robust = features.values["core_mean"] * FALLBACK_RATIO
    if model is None:
        return CalibrationResult(robust, "fallback", features, [
            f"no calibration model: calibration factor is the robust mean of the aortic lumen "
            f"core ({robust:.0f} HU)"])
    value = float(model.predict(features)[0])
    warnings = []
    if not 0.6 * robust <= value <= 1.4 * robust:
        warnings.append(f"calibration factor {value:.0f} HU is far from the aortic lumen "
                        f"attenuation ({robust:.0f} HU): check the aorta segmentation")
    return CalibrationResult(value, "xgboost", features, warnings)
