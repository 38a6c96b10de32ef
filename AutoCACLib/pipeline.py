"""The CCTA pipeline: from a contrast CT angiogram alone, the scores a CSCT would have given.

Stages (DESIGN.md): check the input, preprocess (histogram model and normalization),
segment the aorta and the coronary tree (networks), calibrate (aortic attenuation ->
coronary lumen attenuation), post-process the tree (remove veins and heart tissue, reconnect,
label LM/LAD/LCx/RCA), centerlines, adaptive-threshold calcium along the centerlines, and
scores with thresholds adapted to the calibration factor.

A case the method cannot handle ends as ``status: "failed"`` with a reason a radiologist
understands, not as a wrong number; only unusable input raises :class:`InputError`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .acquisition_qc import acquisition_warnings, field_of_view_cuts, slab_artefacts
from .errors import Cancelled, InputError
from .results import scores_document
from .scoring import ScoringSettings, score_volume, stored_slices
from .segments import AORTA_LABEL, CALCIUM_LABEL, VESSEL_LABEL, VESSELS
from .volume import Volume, check_is_ct, to_axial_lps

Progress = Callable[[str, float], None]

#: Stage names in order, with the share of a typical run's time (for progress bars).
STAGES = (("check", 0.01), ("preprocess", 0.05), ("networks", 0.5), ("postprocess", 0.15),
          ("calibration", 0.04), ("centerlines", 0.1), ("calcium", 0.1), ("scoring", 0.05))

#: Files beside the network weights in the models folder.
CALIBRATION_MODEL_FILE = "calibration.json"
SCORING_PARAMS_FILE = "ccta_scoring.json"
CALCIUM_PARAMS_FILE = "calcium.json"

_MIN_BLOOD_POOL_HU = 180.0   # an aorta below this is not contrast-enhanced
_LOW_CONTRAST_HU = 250.0     # below this, warn: weak enhancement
_MIN_AORTA_ML = 5.0          # less aorta than this: "no aorta found"


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns.

    Attributes
    ----------
    labels : ndarray (z, y, x) of uint8
        AutoCAC label map (Aorta, vessels, calcium per vessel) on the input grid.
    scores : dict
        The ``scores.json`` document.
    """

    labels: np.ndarray
    scores: dict
    details: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.scores["status"]


def _failed(volume, reason, timings, warnings, inputs, labels=None, details=None):
    labels = np.zeros(volume.shape, np.uint8) if labels is None else labels
    doc = scores_document(None, status="failed", failure_reason=reason, timings_s=timings,
                          warnings=warnings, inputs=inputs, method="ccta")
    return PipelineResult(labels, doc, details or {})


def read_params_file(path: str | Path, params_class):
    """The ``params_class`` dataclass held in a fitted parameters file (``calcium.json``,
    ``ccta_scoring.json``: ``{"params": {fields}, "training": ...}``)."""
    return params_class(**json.loads(Path(path).read_text())["params"])


def load_pipeline_models(models_dir: str | Path | None = None, device: str = "auto") -> dict:
    """Load everything the pipeline needs from the models folder (no download ever)."""
    from .calcium import CalciumParams
    from .calibration import CalibrationModel
    from .ccta_scoring import CctaScoringParams
    from .inference import AORTA_MODEL, CORONARY_MODEL, default_models_dir, load_model

    folder = Path(models_dir) if models_dir else default_models_dir()
    models = {name: load_model(name, folder, device) for name in (AORTA_MODEL, CORONARY_MODEL)}
    cal = folder / CALIBRATION_MODEL_FILE
    scoring = folder / SCORING_PARAMS_FILE
    calcium = folder / CALCIUM_PARAMS_FILE
    return {
        "networks": models,
        "calibration": CalibrationModel.load(cal) if cal.exists() else None,
        "scoring": read_params_file(scoring, CctaScoringParams)
        if scoring.exists() else CctaScoringParams(),
        "calcium": read_params_file(calcium, CalciumParams)
        if calcium.exists() else CalciumParams(),
    }


def ccta_score(volume: Volume, labels: np.ndarray, settings: ScoringSettings,
               calibration_factor: float, scoring_params=None):
    """Score the calcium segments of a CCTA label map with calibration-adapted thresholds.

    This is the pipeline's scoring stage alone: Recompute after an edit calls it with the
    calibration factor of the run, so that unedited segments score exactly as in the run.
    """
    from .scoring import calcium_labels_from_labelmap

    effective = ccta_settings(volume, settings, calibration_factor, scoring_params)
    return score_volume(volume, calcium_labels_from_labelmap(labels), effective, kvp=volume.kvp)


def ccta_settings(volume: Volume, settings: ScoringSettings, calibration_factor: float,
                  scoring_params=None) -> ScoringSettings:
    """The scoring conventions with the calibration-adapted thresholds of a CCTA (an unknown
    tube voltage taken as 100 kVp)."""
    from .ccta_scoring import CctaScoringParams, ccta_scoring_settings

    return ccta_scoring_settings(calibration_factor, scoring_params or CctaScoringParams(),
                                 kvp=volume.kvp or 100.0, base=settings)


@dataclass
class CoronaryTree:
    """The segmentation stages' output (networks + post-processing) on the image grid.

    Attributes
    ----------
    labels : ndarray of uint8
        AutoCAC label map with the aorta and the vessel lumens (no calcium yet).
    aorta : ndarray of bool
    vessel_index : ndarray of uint8
        0 none, 1..4 = LM, LAD, LCx, RCA (post-processed).
    qc : PostprocessQC
    network : NetworkSegmentation
    """

    labels: np.ndarray
    aorta: np.ndarray
    vessel_index: np.ndarray
    qc: object
    network: object


def segment_coronary_tree(volume: Volume, normalized: np.ndarray, models: dict,
                          device: str = "auto", progress: Progress | None = None,
                          lap: Callable[[str], None] | None = None,
                          stage: Callable[[str], None] | None = None) -> CoronaryTree:
    """Aorta and coronary networks, then post-processing (remove, reconnect, label).

    ``stage``/``lap`` are the pipeline's stage bookkeeping (None outside the pipeline).
    """
    from .inference import segment_networks
    from .postprocess import postprocess_coronaries

    stage, lap = stage or (lambda name: None), lap or (lambda name: None)
    seg = segment_networks(volume, normalized=normalized, device=device,
                           models=models["networks"], progress=progress)
    lap("networks")
    labels = np.zeros(volume.shape, np.uint8)
    labels[seg.aorta] = AORTA_LABEL
    if seg.coronary_classes != ("background", *VESSELS):
        raise InputError("the coronary model has no vessel names (trained on binary labels): "
                         "retrain it on labelled vessels to score per vessel")
    stage("postprocess")
    post = postprocess_coronaries(seg.coronary, volume.array, volume.spacing, seg.aorta)
    lap("postprocess")
    for i, vessel in enumerate(VESSELS, start=1):
        labels[post.labels == i] = VESSEL_LABEL[vessel]
    return CoronaryTree(labels, seg.aorta, post.labels, post.qc, seg)


def run_pipeline(volume: Volume, device: str = "auto", settings: ScoringSettings | None = None,
                 progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                 models: dict | None = None, models_dir: str | Path | None = None,
                 inputs: dict | None = None) -> PipelineResult:
    """Run the whole CCTA pipeline on one volume.

    Parameters
    ----------
    volume : Volume
        Contrast CCTA in HU.
    device : {"auto", "cpu", "cuda"}
    settings : ScoringSettings, optional
        Scoring conventions (connectivity, lesion dimension, minimum area...); the threshold
        and weight bins are adapted to the calibration factor.
    progress : callable(stage, fraction), optional
        Called at the start of each stage with the fraction of the run done.
    cancel : callable() -> bool, optional
        Polled between stages; when it returns True, :class:`Cancelled` is raised.
    models : dict, optional
        Already loaded models (:func:`load_pipeline_models`), e.g. for a batch.
    models_dir : path-like, optional
        Where to load them from (default ``Resources/Models``).
    inputs : dict, optional
        Provenance written into ``scores["input"]``.

    Returns
    -------
    PipelineResult
        Labels on ``volume``'s grid. An image stored in another axis order (right-to-left,
        feet-first, coronal or sagittal stacks) is processed as axial LPS slices
        (:func:`AutoCACLib.volume.to_axial_lps`) and its labels are mapped back.
    """
    inputs = dict(inputs or {})
    inputs.update(shape=list(volume.shape), spacing_mm=[round(s, 4) for s in volume.spacing],
                  kvp=volume.kvp)
    axial, orientation = to_axial_lps(volume)
    result = _run_axial(axial, device, settings, progress, cancel, models, models_dir, inputs)
    if orientation.identity:
        return result
    stored_slices(result.scores.get("lesions") or [], result.scores["warnings"], orientation,
                  volume.shape[0])
    return PipelineResult(orientation.undo(result.labels), result.scores, result.details)


def _run_axial(volume: Volume, device, settings, progress, cancel, models, models_dir,
               inputs) -> PipelineResult:
    """:func:`run_pipeline` on a volume whose array axes run along S, P and L."""
    from .calcium import detect_calcium
    from .calibration import calibration_factor as estimate_calibration
    from .centerlines import vessel_centerlines
    from .preprocess import fit_attenuation_normalization
    from .structuring import surface_voxels

    settings = settings or ScoringSettings()
    progress = progress or (lambda stage, fraction: None)
    timings: dict[str, float] = {}
    done = [0.0]
    clock = [time.perf_counter()]
    share = dict(STAGES)

    def stage(name):
        if cancel is not None and cancel():
            raise Cancelled("cancelled by the user")
        progress(name, min(done[0], 1.0))
        done[0] += share[name]

    def lap(name):
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock[0]
        clock[0] = now

    stage("check")
    check_is_ct(volume, inputs.get("image", "image"))
    if min(volume.shape) < 16:
        raise InputError(f"image of {volume.shape} voxels is too small for a CCTA")
    warnings = acquisition_warnings(volume)
    image = volume.array.astype(np.float32, copy=False)
    lap("check")

    stage("preprocess")
    _, normalization = fit_attenuation_normalization(image)
    blood_pool = float(normalization.blood_pool_hu)
    lap("preprocess")
    if not normalization.contrast_found:
        return _failed(volume, "not contrast-enhanced: the attenuation histogram has no "
                       "contrast blood pool; score a non-contrast scan with 'autocac score'",
                       timings, warnings, inputs)
    normalized = normalization.apply(image)

    stage("networks")
    if models is None:
        models = load_pipeline_models(models_dir, device)
    tree = segment_coronary_tree(
        volume, normalized, models, device,
        progress=lambda message, f: progress(f"networks: {message}",
                                             done[0] - share["networks"]
                                             + f * share["networks"]),
        lap=lap, stage=stage)
    aorta, labels = tree.aorta, tree.labels
    details = {"network_timings_s": tree.network.timings_s, "blood_pool_hu": blood_pool,
               "postprocess_qc": tree.qc}
    if aorta.sum() * volume.voxel_volume_mm3 / 1000 < _MIN_AORTA_ML:
        return _failed(volume, "no contrast-enhanced aorta found: the image may not be a "
                       "contrast CCTA, or may not cover the aortic root", timings, warnings,
                       inputs, labels, details)
    aorta_hu = float(np.median(image[aorta]))
    details["aorta_median_hu"] = aorta_hu
    if aorta_hu < _MIN_BLOOD_POOL_HU:
        return _failed(volume, f"not contrast-enhanced: the aorta measures {aorta_hu:.0f} HU "
                       f"(a CCTA's is usually above 250 HU); score a non-contrast scan with "
                       f"'autocac score'", timings, warnings, inputs, labels, details)
    if aorta_hu < _LOW_CONTRAST_HU:
        warnings.append(f"low contrast enhancement: the aorta measures {aorta_hu:.0f} HU")
    if tree.qc.tree_missing:
        return _failed(volume, "coronary tree missing: " + " ".join(tree.qc.findings()),
                       timings, warnings, inputs, labels, details)
    steps, jumps = slab_artefacts(volume, tree.vessel_index > 0)
    cuts = field_of_view_cuts(tree.vessel_index, volume.spacing, VESSELS)
    details.update(steps=steps, slice_jumps=jumps, field_of_view_cuts=cuts)
    lap("acquisition_qc")
    if steps and steps[0].severe:
        return _failed(volume, "motion artefacts: " + "; ".join(s.describe() for s in steps)
                       + " (slabs from different heartbeats): vessels and plaques at a step "
                       "are torn apart or doubled", timings, warnings, inputs, labels, details)
    warnings += [f"step artefact: {s.describe()}: calcium near it is less reliable"
                 for s in steps]
    warnings += [f"slab artefact: {j.describe()}: calcium near it may be missed or doubled"
                 for j in jumps]
    if tree.qc.unusable:
        return _failed(volume, "coronary tree not usable: " + " ".join(tree.qc.findings()),
                       timings, warnings, inputs, labels, details)
    if cuts and cuts[0].wide:
        return _failed(volume, "field of view cuts through the heart: "
                       + "; ".join(c.describe() for c in cuts if c.wide)
                       + ": the calcium beyond the image would be missing from the scores",
                       timings, warnings, inputs, labels, details)
    warnings += [f"field of view: {c.describe()}; calcium beyond the image is not counted"
                 for c in cuts]
    if tree.qc.incomplete:
        return _failed(volume, "coronary tree incomplete: " + " ".join(tree.qc.findings())
                       + " Its calcium would be missing from the scores.", timings, warnings,
                       inputs, labels, details)
    if tree.qc.fragmented:
        warnings.append("coronary tree fragmented: " + " ".join(tree.qc.findings()))
    elif tree.qc.missing:
        warnings += tree.qc.findings()

    stage("calibration")
    cal = estimate_calibration(image, volume.spacing, aorta, models["calibration"],
                               kvp=volume.kvp)
    warnings += cal.warnings
    lap("calibration")

    stage("centerlines")
    centerlines = {}
    aorta_surface = surface_voxels(aorta)
    for i, vessel in enumerate(VESSELS, start=1):
        mask = tree.vessel_index == i
        if mask.any():
            centerlines[vessel] = vessel_centerlines(mask, volume.spacing,
                                                     root_hint=aorta_surface)
    lap("centerlines")

    stage("calcium")
    detection = detect_calcium(image, volume.spacing, labels, centerlines, cal.value,
                               aorta_mask=aorta, params=models["calcium"])
    warnings += detection.warnings
    # The Calcium segments hold what the score counts: detected voxels below the scoring
    # threshold (partial volume at a plaque's rim, bright lumen) stay in their vessel.
    counted = ccta_settings(volume, settings, cal.value, models["scoring"]).for_kvp(
        volume.kvp)[0].threshold_hu
    for i, vessel in enumerate(VESSELS, start=1):
        labels[(detection.labels == i) & (image >= counted)] = CALCIUM_LABEL[vessel]
    lap("calcium")

    stage("scoring")
    score = ccta_score(volume, labels, settings, cal.value, models["scoring"])
    lap("scoring")
    progress("done", 1.0)
    doc = scores_document(score, calibration_factor=cal.value, timings_s=timings,
                          warnings=warnings, inputs=inputs, method="ccta")
    doc["calibration_method"] = cal.method
    doc["base_settings"] = settings.to_dict()
    doc["ccta_scoring_params"] = dataclasses.asdict(models["scoring"])
    return PipelineResult(labels, doc, details)
