"""Fitting of the pipeline's classical stages against CSCT references (``autocac train``).

After the networks are trained, three small models are fitted on the training cases (folders
as the synthetic generator writes them: ``ccta.nrrd``, ``labels.seg.nrrd``, ``truth.json``
with the CSCT ``reference`` scores):

1. :func:`fit_calibration`: the XGBoost regressor of stage 4, from the aorta's attenuation
   features to the case's representative coronary lumen attenuation
   (:func:`coronary_lumen_hu`: the mean CCTA value over the truth coronary lumen voxels, which
   ``truth.json`` holds as ``measured_coronary_lumen_hu``).
2. :func:`fit_calcium_and_scoring`: the adaptive-threshold calcium parameters of stage 7
   (a small grid, coordinate search) and, for each candidate, the CCTA scoring parameters of
   stage 8 (:func:`~AutoCACLib.ccta_scoring.fit_ccta_scoring` plus a score scale), against the
   CSCT reference Agatston score; the objective is the mean absolute ``log(1 + Agatston)``
   error. Each case is read, cropped around its coronaries and skeletonized once
   (:func:`prepare_case`), so a search costs one calcium detection per case and candidate.
3. :func:`save_fitted`: the files :func:`AutoCACLib.pipeline.load_pipeline_models` reads.

Masks come from the truth (``masks_from="truth"``: the aorta and lumen segments of
``labels.seg.nrrd``, calcium left out as a network would) or from a callable
``segment(volume) -> label map`` (AutoCAC label values, e.g. the trained networks followed by
post-processing), so that the fit sees the masks the pipeline will see.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from .calcium import CalciumParams, detect_calcium
from .calibration import AortaFeatures, CalibrationModel, aorta_features, train_calibration
from .ccta_scoring import (CctaCase, CctaScoringParams, ccta_scoring_settings,
                           fit_ccta_scoring, log_score_error)
from .centerlines import Centerline, vessel_centerlines
from .errors import InputError
from .pipeline import (CALCIUM_PARAMS_FILE, CALIBRATION_MODEL_FILE, SCORING_PARAMS_FILE,
                       read_params_file)
from .scoring import ScoringSettings, score_calcium
from .segments import AORTA_LABEL, VESSEL_LABEL, VESSELS
from .structuring import bounding_box, surface_voxels
from .volume import Volume, read_volume

#: ``segment(volume) -> label map`` with AutoCAC label values (aorta and vessel lumens).
Segmenter = Callable[[Volume], np.ndarray]
MaskSource = Union[str, Segmenter]

#: Calcium parameters searched by :func:`fit_calcium_and_scoring` (coordinate search).
CALCIUM_GRID = {
    "lumen_ratio": (1.2, 1.25, 1.35, 1.45),
    "calibrated_ratio": (1.25, 1.35, 1.45, 1.6),
    "min_volume_mm3": (0.5, 2.0, 4.0),
}

#: Where each scoring search starts: the CSCT's conventions, with lesion weights read over
#: the CSCT's 3 mm slice (``weight_slab_mm``), which the search does not change.
SCORING_START = CctaScoringParams(weight_slab_mm=ScoringSettings().reference_slice_mm)

#: CCTA scoring parameters fitted for each calcium candidate.
SCORING_GRID = {
    "offset_fraction": tuple(np.round(np.linspace(-0.2, 1.4, 17), 3)),
    "weight_offset_fraction": tuple(np.round(np.linspace(-0.4, 1.2, 17), 3)),
    "kvp_exponent": tuple(np.round(np.linspace(0.0, 2.0, 9), 3)),
    "agatston_scale": tuple(np.round(np.geomspace(0.5, 3.0, 13), 3)),
    "cf_exponent": tuple(np.round(np.linspace(-1.0, 1.5, 11), 3)),
}

#: Score scales tried for the volume (after the Agatston fit).
VOLUME_SCALES = tuple(np.round(np.geomspace(0.5, 3.0, 33), 3))

_CROP_MARGIN_MM = 10.0


@dataclass
class TrainingCase:
    """One case prepared for fitting: cropped around its coronaries, centerlines computed.

    Attributes
    ----------
    name : str
        The case folder's name.
    kvp : float or None
    spacing : tuple of 3 float
    image : ndarray
        CCTA (HU) in the crop.
    vessel_labels : ndarray of uint8
        Coronary lumen labels (AutoCAC values) in the crop.
    aorta : ndarray of bool
        The aorta in the crop.
    centerlines : dict str -> list of Centerline
        Per vessel, in crop voxel coordinates.
    features : AortaFeatures
        Of the whole aorta mask (the calibration regressor's input).
    lumen_hu : float
        Calibration target (:func:`coronary_lumen_hu`).
    reference_agatston, reference_volume_mm3 : float
        Total CSCT reference scores.
    prepare_s : float
        Seconds spent reading and preparing the case.
    detect_cache : dict
        :func:`detect_calcium`'s threshold-free work, reused across fit candidates.
    """

    name: str
    kvp: float | None
    spacing: tuple
    image: np.ndarray
    vessel_labels: np.ndarray
    aorta: np.ndarray
    centerlines: dict[str, list[Centerline]]
    features: AortaFeatures
    lumen_hu: float
    reference_agatston: float
    reference_volume_mm3: float
    prepare_s: float = 0.0
    detect_cache: dict = field(default_factory=dict, repr=False, compare=False)


def complete_cases(root: str | Path) -> list[Path]:
    """Case folders under ``root`` that are complete (their ``truth.json`` is written last)."""
    return sorted(p.parent for p in Path(root).glob("*/truth.json"))


def coronary_lumen_hu(image: np.ndarray, vessel_labels: np.ndarray) -> float:
    """The calibration target: mean CCTA attenuation over the coronary lumen voxels.

    The lumen masks leave calcium out, so the mean is the contrast-filled lumen including the
    partial volume of its edge (the value the generator records as
    ``measured_coronary_lumen_hu``).
    """
    lumen = np.isin(vessel_labels, list(VESSEL_LABEL.values()))
    if not lumen.any():
        raise ValueError("no coronary lumen voxels to measure")
    return float(np.asarray(image)[lumen].mean())


def _truth_labels(case_dir: Path, shape) -> np.ndarray:
    from .segmentation_io import masks_to_labels, read_segment_masks

    masks, _ = read_segment_masks(case_dir / "labels.seg.nrrd")
    kept = {name: m for name, m in masks.items() if name == "Aorta" or name in VESSELS}
    return masks_to_labels(kept, shape)


def _crop_box(mask: np.ndarray, spacing, margin_mm: float) -> tuple[slice, ...]:
    return bounding_box(mask, np.ceil(margin_mm / np.asarray(spacing, float)).astype(int))


def prepare_case(case_dir: str | Path, masks_from: MaskSource = "truth") -> TrainingCase:
    """Read a case folder, take its masks, crop around the coronaries, skeletonize.

    Parameters
    ----------
    case_dir : path-like
        Folder with ``ccta.nrrd``, ``labels.seg.nrrd`` and ``truth.json``.
    masks_from : "truth" or callable(volume) -> label map
        Where the aorta and lumen masks come from.

    Returns
    -------
    TrainingCase
    """
    start = time.perf_counter()
    case_dir = Path(case_dir)
    truth = json.loads((case_dir / "truth.json").read_text())
    volume = read_volume(case_dir / "ccta.nrrd")
    image = volume.array
    truth_labels = _truth_labels(case_dir, volume.shape)
    labels = truth_labels if masks_from == "truth" else np.asarray(masks_from(volume))
    lumen_hu = truth.get("measured_coronary_lumen_hu")
    if lumen_hu is None:
        lumen_hu = coronary_lumen_hu(image, truth_labels)
    aorta = labels == AORTA_LABEL
    features = aorta_features(image, volume.spacing, aorta, volume.kvp or truth.get("kvp"))
    vessels = np.isin(labels, list(VESSEL_LABEL.values()))
    box = _crop_box(vessels if vessels.any() else aorta, volume.spacing, _CROP_MARGIN_MM)
    crop_labels = np.where(vessels[box], labels[box], 0).astype(np.uint8)
    crop_aorta = aorta[box]
    centerlines = {}
    aorta_surface = surface_voxels(crop_aorta)
    for vessel in VESSELS:
        mask = crop_labels == VESSEL_LABEL[vessel]
        if mask.any():
            centerlines[vessel] = vessel_centerlines(mask, volume.spacing,
                                                     root_hint=aorta_surface)
    reference = truth["reference"]
    return TrainingCase(
        name=case_dir.name, kvp=float(truth.get("kvp") or volume.kvp or 0) or None,
        spacing=tuple(float(s) for s in volume.spacing), image=np.ascontiguousarray(image[box]),
        vessel_labels=crop_labels, aorta=np.ascontiguousarray(crop_aorta),
        centerlines=centerlines, features=features, lumen_hu=float(lumen_hu),
        reference_agatston=float(reference["agatston"]["total"]),
        reference_volume_mm3=float(reference["volume_mm3"]["total"]),
        prepare_s=time.perf_counter() - start)


def _prepared(cases, masks_from: MaskSource = "truth") -> list[TrainingCase]:
    return [c if isinstance(c, TrainingCase) else prepare_case(c, masks_from) for c in cases]


def fit_calibration(cases: Sequence, segment: Segmenter | None = None, seed: int = 0
                    ) -> CalibrationModel:
    """Fit the calibration regressor (aorta features -> coronary lumen attenuation).

    Parameters
    ----------
    cases : sequence of path-like or TrainingCase
        Case folders (or cases already prepared).
    segment : callable(volume) -> label map, optional
        Takes the aorta from this segmenter instead of the truth.
    seed : int

    Returns
    -------
    CalibrationModel
        Its metadata also states the target's definition and the cases.
    """
    prepared = _prepared(cases, segment or "truth")
    model = train_calibration([c.features for c in prepared], [c.lumen_hu for c in prepared],
                              seed=seed)
    model.metadata.update(
        target="mean CCTA HU over the truth coronary lumen voxels (calcium excluded)",
        aorta_masks="truth" if segment is None else "segmenter",
        cases=[c.name for c in prepared])
    return model


def case_calibration_factor(case: TrainingCase, model: CalibrationModel | None) -> float:
    """The calibration factor the pipeline would use (fallback: aortic core mean)."""
    if model is None:
        return float(case.features.values["core_mean"])
    return float(model.predict(case.features)[0])


def detect_case(case: TrainingCase, params: CalciumParams, calibration_factor: float,
                keep_cache: bool = True) -> np.ndarray:
    """Calcium labels (1..4) of a prepared case under ``params``.

    ``keep_cache`` keeps the threshold-free work in ``case.detect_cache`` for the next
    candidate (several times the crop's memory per case; a single candidate needs none).
    """
    cache = case.detect_cache if keep_cache else None
    return detect_calcium(case.image, case.spacing, case.vessel_labels, case.centerlines,
                          calibration_factor, aorta_mask=case.aorta, params=params,
                          cache=cache).labels


def case_scores(case: TrainingCase, calcium: np.ndarray, calibration_factor: float,
                scoring: CctaScoringParams, base: ScoringSettings = ScoringSettings()
                ) -> tuple[float, float]:
    """Total CCTA Agatston score and volume of a case's detected calcium."""
    settings = ccta_scoring_settings(calibration_factor, scoring, case.kvp, base)
    score = score_calcium(case.image, calcium, case.spacing, settings)
    return float(score.agatston["total"]), float(score.volume_mm3["total"])


def _fit_volume_scale(cases, detections, factors, scoring) -> CctaScoringParams:
    unit = dataclasses.replace(scoring, volume_scale=1.0)
    raw = np.array([case_scores(c, d, f, unit)[1] for c, d, f in zip(cases, detections, factors)])
    ref = [c.reference_volume_mm3 for c in cases]
    errors = [log_score_error(raw * s, ref) for s in VOLUME_SCALES]
    return dataclasses.replace(scoring, volume_scale=float(VOLUME_SCALES[int(np.argmin(errors))]))


@dataclass
class FitReport:
    """What :func:`fit_calcium_and_scoring` tried: (calcium params dict, loss) per candidate."""

    trials: list[tuple[dict, float]] = field(default_factory=list)
    loss: float = float("nan")
    seconds: float = 0.0


def fit_calcium_and_scoring(cases: Sequence, masks_from: MaskSource = "truth",
                            calibration_model: CalibrationModel | None = None,
                            calcium_grid: dict | None = None, scoring_grid: dict | None = None,
                            start: CalciumParams = CalciumParams(), rounds: int = 2,
                            scoring_start: CctaScoringParams = SCORING_START,
                            base: ScoringSettings = ScoringSettings(),
                            report: FitReport | None = None,
                            progress: Callable[[str], None] | None = None
                            ) -> tuple[CalciumParams, CctaScoringParams]:
    """Fit the calcium detection and CCTA scoring parameters against CSCT references.

    A coordinate search over ``calcium_grid`` (each value of one parameter with the others
    fixed, ``rounds`` passes); each candidate's detections are scored with CCTA scoring
    parameters fitted for it, and the candidate with the lowest mean absolute
    ``log(1 + Agatston)`` error wins. The volume scale is fitted last, against the reference
    volumes.

    Parameters
    ----------
    cases : sequence of path-like or TrainingCase
    masks_from : "truth" or callable(volume) -> label map
        Used for cases given as folders.
    calibration_model : CalibrationModel, optional
        Gives each case's calibration factor (without one: the aortic core mean).
    calcium_grid, scoring_grid : dict, optional
        Parameter -> values (defaults :data:`CALCIUM_GRID`, :data:`SCORING_GRID`).
    start : CalciumParams
        Starting point of the search; parameters not in the grid keep its values (an empty
        grid fits the scoring for ``start`` alone).
    rounds : int
    scoring_start : CctaScoringParams
        Starting point of each candidate's scoring search.
    base : ScoringSettings
        The CSCT conventions of the reference scores.
    report : FitReport, optional
        Filled with every candidate tried and the final loss.
    progress : callable(str), optional

    Returns
    -------
    (CalciumParams, CctaScoringParams)
    """
    t0 = time.perf_counter()
    prepared = _prepared(cases, masks_from)
    calcium_grid = CALCIUM_GRID if calcium_grid is None else calcium_grid
    scoring_grid = SCORING_GRID if scoring_grid is None else scoring_grid
    factors = [case_calibration_factor(c, calibration_model) for c in prepared]
    report = report if report is not None else FitReport()
    searching = any(len(values) for values in calcium_grid.values())
    tried: dict[CalciumParams, tuple[float, CctaScoringParams]] = {}

    def evaluate(params: CalciumParams) -> tuple[float, list | None]:
        """The candidate's loss, and its detections when it was not tried before (only the
        best candidate's detections are kept: they take the crops' size per case)."""
        if params in tried:
            return tried[params][0], None
        detections = [detect_case(c, params, f, keep_cache=searching)
                      for c, f in zip(prepared, factors)]
        ccta_cases = [CctaCase(c.image, d, c.spacing, f, c.kvp, c.reference_agatston)
                      for c, d, f in zip(prepared, detections, factors)]
        scoring, loss = fit_ccta_scoring(ccta_cases, start=scoring_start, grid=scoring_grid,
                                         rounds=3, base=base)
        tried[params] = (loss, scoring)
        report.trials.append((dataclasses.asdict(params), loss))
        if progress is not None:
            progress(f"calcium {_changed(params, start)}: loss {loss:.4f}")
        return loss, detections

    best = start
    best_loss, detections = evaluate(best)
    for _ in range(rounds):
        changed = False
        for name, values in calcium_grid.items():
            for value in values:
                trial = dataclasses.replace(best, **{name: float(value)})
                loss, trial_detections = evaluate(trial)
                if loss < best_loss - 1e-9:  # a candidate tried before never is
                    best, best_loss, detections, changed = trial, loss, trial_detections, True
        if not changed:
            break
    scoring = tried[best][1]
    scoring = _fit_volume_scale(prepared, detections, factors, scoring)
    report.loss = best_loss
    report.seconds = time.perf_counter() - t0
    return best, scoring


def _changed(params: CalciumParams, start: CalciumParams) -> str:
    diff = {k: v for k, v in dataclasses.asdict(params).items()
            if v != getattr(start, k)}
    return ", ".join(f"{k}={v:g}" for k, v in diff.items()) or "start"


def evaluate_cases(cases: Sequence, calibration_model: CalibrationModel | None,
                   calcium: CalciumParams, scoring: CctaScoringParams,
                   masks_from: MaskSource = "truth",
                   base: ScoringSettings = ScoringSettings()) -> tuple[list[dict], dict]:
    """Per-case CCTA estimates against the CSCT reference, and their agreement.

    Returns
    -------
    rows : list of dict
        case, kvp, reference and estimated Agatston and volume, lumen target and calibration
        factor, detection seconds.
    agreement : dict
        :func:`AutoCACLib.agreement.agreement` of the Agatston scores (empty for < 2 cases).
    """
    from .agreement import agreement

    rows = []
    for case in _prepared(cases, masks_from):
        factor = case_calibration_factor(case, calibration_model)
        t0 = time.perf_counter()
        # Reuses the threshold-free work a calcium search left in the case, if any.
        detection = detect_case(case, calcium, factor, keep_cache=bool(case.detect_cache))
        seconds = time.perf_counter() - t0
        agatston, volume = case_scores(case, detection, factor, scoring, base)
        rows.append({"case": case.name, "kvp": case.kvp,
                     "reference_agatston": case.reference_agatston,
                     "ccta_agatston": round(agatston, 2),
                     "reference_volume_mm3": case.reference_volume_mm3,
                     "ccta_volume_mm3": round(volume, 2),
                     "lumen_hu": case.lumen_hu, "calibration_factor": round(factor, 1),
                     "calcium_s": round(seconds, 2)})
    stats = (agreement([r["reference_agatston"] for r in rows], [r["ccta_agatston"] for r in rows])
             if len(rows) >= 2 else {})
    return rows, stats


def _params_document(params, training: dict) -> dict:
    values = {k: (list(v) if isinstance(v, tuple) else v)
              for k, v in dataclasses.asdict(params).items()}
    return {"params": values, "training": training}


def save_fitted(out_dir: str | Path, calibration_model: CalibrationModel,
                calcium_params: CalciumParams, scoring_params: CctaScoringParams,
                meta: dict | None = None) -> dict[str, Path]:
    """Write the files :func:`AutoCACLib.pipeline.load_pipeline_models` reads.

    ``calibration.json`` (:meth:`CalibrationModel.save`), and ``calcium.json`` and
    ``ccta_scoring.json`` as ``{"params": {dataclass fields}, "training": meta}``.

    Returns
    -------
    dict
        File role -> path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {"calibration": out / CALIBRATION_MODEL_FILE, "calcium": out / CALCIUM_PARAMS_FILE,
             "scoring": out / SCORING_PARAMS_FILE}
    calibration_model.save(paths["calibration"])
    paths["calcium"].write_text(json.dumps(_params_document(calcium_params, meta), indent=1))
    paths["scoring"].write_text(json.dumps(_params_document(scoring_params, meta), indent=1))
    return paths


def load_fitted(folder: str | Path) -> tuple[CalibrationModel, CalciumParams, CctaScoringParams]:
    """Read the three files written by :func:`save_fitted` (the loader's format)."""
    folder = Path(folder)
    return (CalibrationModel.load(folder / CALIBRATION_MODEL_FILE),
            read_params_file(folder / CALCIUM_PARAMS_FILE, CalciumParams),
            read_params_file(folder / SCORING_PARAMS_FILE, CctaScoringParams))


def case_folders(sources) -> list[Path]:
    """Case folders with a CSCT reference (``truth.json``) among ``sources``."""
    folders = []
    for source in sources:
        source = Path(source)
        if (source / "truth.json").is_file():
            folders.append(source)
        elif source.is_dir():
            folders += complete_cases(source)
    return folders


def network_segmenter(models: dict, device: str = "auto") -> Segmenter:
    """``segment(volume)``: the pipeline's networks and post-processing, as the fit sees them."""
    from .inference import histogram_normalized
    from .pipeline import segment_coronary_tree

    def segment(volume: Volume) -> np.ndarray:
        return segment_coronary_tree(volume, histogram_normalized(volume.array), models,
                                     device).labels
    return segment


def fit_pipeline(sources, out_dir: str | Path, device: str = "auto", seed: int = 0,
                 progress: Callable[[str, float], None] | None = None,
                 calcium_grid: dict | None = None, rounds: int = 1,
                 keep_detection: bool = False) -> dict:
    """``autocac train``'s fitting step: calibration, calcium and scoring on network masks.

    The networks already in ``out_dir`` segment each training case (so the fit sees the
    masks the pipeline will see); the three fitted files are written beside them by
    :func:`fit_prepared`.

    Returns
    -------
    dict
        Cases used, the fitted parameters and the training-set agreement, or ``skipped``.
    """
    from .pipeline import load_pipeline_models

    progress = progress or (lambda message, fraction: None)
    folders = case_folders(sources)
    if not folders:
        return {"skipped": "no training case has a CSCT reference (truth.json): calibration "
                           "and scoring keep their defaults"}
    t0 = time.perf_counter()
    segment = network_segmenter(load_pipeline_models(out_dir, device), device)
    cases = []
    for i, folder in enumerate(folders):
        progress(f"fit: segmenting {folder.name}", 0.6 * i / len(folders))
        cases.append(prepare_case(folder, segment))
    if len({c.name for c in cases}) < len(cases):  # cohorts with the same case names
        for case, folder in zip(cases, folders):
            case.name = f"{folder.parent.name}/{folder.name}"
    return fit_prepared(cases, out_dir, seed=seed, progress=progress,
                        calcium_grid=calcium_grid, rounds=rounds,
                        keep_detection=keep_detection, started=t0)


def check_kept_parameters(out_dir: str | Path) -> None:
    """Raise :class:`InputError` unless ``out_dir`` holds the calcium and scoring parameters
    that a fit keeping the detection parameters starts from."""
    missing = [f for f in (CALCIUM_PARAMS_FILE, SCORING_PARAMS_FILE)
               if not (Path(out_dir) / f).is_file()]
    if missing:
        raise InputError(f"keeping the detection parameters needs {' and '.join(missing)} in "
                         f"{out_dir} (copy a models folder there first)")


def fit_prepared(cases: Sequence[TrainingCase], out_dir: str | Path, seed: int = 0,
                 progress: Callable[[str, float], None] | None = None,
                 calcium_grid: dict | None = None, rounds: int = 1,
                 keep_detection: bool = False, started: float | None = None) -> dict:
    """Fit calibration, calcium and scoring on prepared cases; write them into ``out_dir``.

    Parameters
    ----------
    cases : sequence of TrainingCase
        Prepared with the masks of the networks in ``out_dir`` (:func:`fit_pipeline`).
    keep_detection : bool
        Keep the calcium-detection parameters already in ``out_dir`` and start the scoring
        search from its scoring parameters: only calibration and scoring are refitted (no
        detection grid: several times faster on a large cohort).
    started : float, optional
        ``time.perf_counter()`` when the work began (for the recorded runtime).

    Returns
    -------
    dict
        As :func:`fit_pipeline`.
    """
    progress = progress or (lambda message, fraction: None)
    t0 = time.perf_counter() if started is None else started
    progress("fit: calibration", 0.6)
    calibration = fit_calibration(cases, seed=seed)
    start, scoring_start = CalciumParams(), SCORING_START
    if keep_detection:
        check_kept_parameters(out_dir)
        start = read_params_file(Path(out_dir) / CALCIUM_PARAMS_FILE, CalciumParams)
        scoring_start = read_params_file(Path(out_dir) / SCORING_PARAMS_FILE,
                                         CctaScoringParams)
        calcium_grid = {}
    calcium, scoring = fit_calcium_and_scoring(
        cases, calibration_model=calibration, calcium_grid=calcium_grid, rounds=rounds,
        start=start, scoring_start=scoring_start,
        progress=lambda message: progress(f"fit {message}", 0.7))
    rows, stats = evaluate_cases(cases, calibration, calcium, scoring)
    meta = {"cases": [c.name for c in cases], "masks": "trained networks + post-processing",
            "seed": seed, "runtime_s": round(time.perf_counter() - t0, 1),
            "detection": "kept, scoring search started from the previous fit" if keep_detection
            else "fitted",
            "training_agreement": {k: stats.get(k) for k in ("n", "ccc", "kappa_linear",
                                                             "accuracy")}}
    save_fitted(out_dir, calibration, calcium, scoring, meta)
    progress("fit: done", 1.0)
    return {**meta, "calcium": dataclasses.asdict(calcium),
            "scoring": dataclasses.asdict(scoring), "rows": rows}
