"""Paired CCTA/CSCT cases with their truth: make one, write one, write a cohort."""

from __future__ import annotations

import json
import os
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..scoring import CalciumScore, score_calcium
from ..segmentation_io import write_segmentation
from ..segments import AORTA_LABEL, CALCIUM_LABEL, SegmentSpec, VESSEL_LABEL, VESSELS
from ..volume import Volume, write_volume
from .anatomy import build_anatomy
from .calcium import EXTRA_REGION
from .coronary import DOMINANCES
from .layers import (AORTA, BLOOD_POOL, EXTRA_CALCIUM, MYOCARDIUM, PULMONARY_ARTERY, VEIN,
                     calcium_tag, lumen_tag)
from .materials import KVPS
from .scanner import SIZES, acquire, ccta_protocol, csct_protocol

#: The paper's tube-voltage mix (80, 100, 120 kVp).
KVP_SHARES = (0.25, 0.65, 0.10)
#: Extra truth masks on the CCTA grid, by the layer tag they come from.
EXTRA_MASK_TAGS = {
    "cardiac_veins": VEIN,
    "extra_coronary_calcium": EXTRA_CALCIUM,
    "pulmonary_artery": PULMONARY_ARTERY,
    "myocardium": MYOCARDIUM,
    "cardiac_blood_pool": BLOOD_POOL,
}
#: Segments of ``extra.seg.nrrd`` (label value = position + 1).
_EXTRA_SEGMENTS = tuple(
    SegmentSpec(name, i + 1, color, ("SCT", "123037004", "Anatomical Structure"), code)
    for i, (name, color, code) in enumerate([
        ("Cardiac veins", (0.25, 0.35, 0.85), ("SCT", "29092000", "Vein")),
        ("Extra-coronary calcium", (0.95, 0.95, 0.30), ("SCT", "18115005",
                                                        "Pathologic calcification")),
        ("Pulmonary artery", (0.55, 0.25, 0.85), ("SCT", "81040000", "Pulmonary artery")),
        ("Myocardium", (0.75, 0.45, 0.40), ("SCT", "74281007", "Myocardium")),
        ("Cardiac blood pool", (0.90, 0.55, 0.55), ("SCT", "87612001", "Blood")),
    ]))


@dataclass
class PhantomCase:
    """A synthetic patient scanned twice.

    Attributes
    ----------
    ccta : Volume
        Contrast-enhanced coronary CT angiography.
    csct : Volume
        Non-contrast calcium-scoring CT (120 kVp, 3 mm).
    ccta_labels : ndarray uint8 (CCTA grid)
        AutoCAC label map (:mod:`AutoCACLib.segments`): aortic lumen, coronary lumens,
        calcium per vessel (calcium wins where it overlaps a lumen).
    csct_calcium_labels : ndarray uint8 (CSCT grid)
        0 none, 1..4 the region around each true plaque of LM, LAD, LCx, RCA (dilated so
        that its blurred image above threshold lies inside; extra-coronary calcium excluded).
    extra_masks : dict of str to ndarray bool (CCTA grid)
        Other truth: cardiac veins, extra-coronary calcium, pulmonary artery, myocardium,
        cardiac blood pool.
    truth : dict
        JSON-ready facts (see :func:`make_case`).
    """

    ccta: Volume
    csct: Volume
    ccta_labels: np.ndarray
    csct_calcium_labels: np.ndarray
    extra_masks: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)


def _rounded(values: dict, nd: int = 3) -> dict:
    return {k: round(float(v), nd) for k, v in values.items()}


def _draw(seed: int, size: str, overrides: dict):
    """The patient and both protocols of case ``seed``: (kVp, anatomy, CCTA, CSCT protocol)."""
    if size not in SIZES:
        raise ValueError(f"unknown phantom size {size!r}; use one of {sorted(SIZES)}")
    unknown = set(overrides) - {"kvp", "burden", "lumen_hu", "dominance", "ccta_noise_hu",
                                "csct_noise_hu"}
    if unknown:
        raise TypeError(f"unknown overrides: {sorted(unknown)}")
    if overrides.get("dominance") not in (None, *DOMINANCES):
        raise ValueError(f"dominance must be one of {DOMINANCES}, got {overrides['dominance']!r}")
    rng = np.random.default_rng(seed)
    kvp = int(overrides.get("kvp") or rng.choice(KVPS, p=KVP_SHARES))
    if kvp not in KVPS:
        raise ValueError(f"kVp must be one of {KVPS}, got {kvp}")
    anatomy = build_anatomy(rng, kvp, overrides.get("burden"), overrides.get("lumen_hu"),
                            overrides.get("dominance"))
    ccta_p = ccta_protocol(rng, size, anatomy, kvp, overrides.get("ccta_noise_hu"))
    csct_p = csct_protocol(rng, size, anatomy, overrides.get("csct_noise_hu"))
    return kvp, anatomy, ccta_p, csct_p


def _calcium_scan(noise_rng: np.random.Generator, anatomy, protocol):
    """A CSCT of ``anatomy``: (acquisition, per-vessel calcium regions, region margin mm)."""
    margin = 2.5 * protocol.psf_xy_mm + 0.5 * protocol.grid.spacing[1]
    csct = acquire(noise_rng, anatomy, protocol, region_margin_mm=margin)
    labels = np.where(csct.regions == EXTRA_REGION, 0, csct.regions).astype(np.uint8)
    return csct, labels, margin


def make_case(seed: int, size: str = "clinical", **overrides) -> PhantomCase:
    """Generate one paired case, deterministically from ``seed``.

    Parameters
    ----------
    seed : int
    size : {"clinical", "small"}
        "clinical": 512 x 512 CCTA at 0.35-0.45 mm, 0.5-0.75 mm slices, and a 512 x 512 CSCT
        at 0.40-0.50 mm; "small": about 128 x 128 at 1 mm for fast tests.
    **overrides
        ``kvp`` (80, 100, 120), ``burden`` (a category label such as ">400" or a target
        Agatston score), ``lumen_hu`` (aortic lumen CT number), ``dominance`` ("right" or
        "left": the artery that supplies the posterior groove), ``ccta_noise_hu``,
        ``csct_noise_hu``.

    Returns
    -------
    PhantomCase
        ``truth`` holds the seed, kVp, enhancement, both protocols, the reference scores of
        the CSCT (standard scorer) per vessel with their category, the true calcium volume
        and mass per vessel, every lesion, the pose and the coronary centerlines.
    """
    kvp, anatomy, ccta_p, csct_p = _draw(seed, size, overrides)
    noise_rng = np.random.default_rng([seed, 1])
    ccta = acquire(noise_rng, anatomy, ccta_p)
    csct, csct_labels, margin = _calcium_scan(noise_rng, anatomy, csct_p)

    tags = [layer.tag for layer in anatomy.layers]
    lut = np.zeros(256, dtype=np.uint8)
    for index, tag in enumerate(tags, start=1):
        if tag == AORTA:
            lut[index] = AORTA_LABEL
        for vessel in VESSELS:
            if tag == lumen_tag(vessel):
                lut[index] = VESSEL_LABEL[vessel]
            elif tag == calcium_tag(vessel):
                lut[index] = CALCIUM_LABEL[vessel]
    ccta_labels = lut[ccta.tissue]
    extra_masks = {}
    for name, wanted in EXTRA_MASK_TAGS.items():
        member = np.zeros(256, dtype=bool)
        member[[i for i, t in enumerate(tags, start=1) if t == wanted]] = True
        extra_masks[name] = member[ccta.tissue]
    reference = score_calcium(csct.image.array, csct_labels, csct.image.spacing)
    voxel_volume = ccta.image.voxel_volume_mm3
    plaques = [c for c in anatomy.calcifications if c.kind == "plaque"]
    true_volume = {v: float((ccta_labels == CALCIUM_LABEL[v]).sum()) * voxel_volume
                   for v in VESSELS}
    true_mass = {v: sum(c.mass_mg for c in plaques if c.vessel == v) for v in VESSELS}
    analytic_volume = {v: sum(c.volume_mm3 for c in plaques if c.vessel == v) for v in VESSELS}
    for d in (true_volume, true_mass, analytic_volume):
        d["total"] = sum(d[v] for v in VESSELS)
    lumen_mask = np.isin(ccta_labels, list(VESSEL_LABEL.values()))
    truth = {
        "seed": int(seed),
        "size": size,
        "kvp": kvp,
        "aortic_lumen_hu": round(anatomy.aortic_lumen_hu, 1),
        "measured_aortic_lumen_hu": round(float(ccta.image.array[ccta_labels == AORTA_LABEL]
                                                .mean()), 1),
        "measured_coronary_lumen_hu": (round(float(ccta.image.array[lumen_mask].mean()), 1)
                                       if lumen_mask.any() else None),
        "iodine_mg_ml": round(anatomy.enhancement.aorta_mg_ml, 3),
        "enhancement": _rounded(vars(anatomy.enhancement)),
        "ccta": ccta_p.summary(),
        "csct": csct_p.summary(),
        "csct_region_margin_mm": round(margin, 3),
        "target_agatston": round(anatomy.target_agatston, 2),
        "reference": {
            "agatston": _rounded(reference.agatston),
            "volume_mm3": _rounded(reference.volume_mm3),
            "lesion_count": dict(reference.lesion_count),
            "category": reference.category,
            "cac_drs": reference.cac_drs,
            "settings": reference.settings.to_dict(),
        },
        "category": reference.category,
        "true_calcium_volume_mm3": _rounded(true_volume),
        "true_calcium_analytic_volume_mm3": _rounded(analytic_volume),
        "true_calcium_mass_mg": _rounded(true_mass),
        "calcifications": [c.summary() for c in anatomy.calcifications],
        "dominance": anatomy.dominance,
        "pose": {k: (round(v, 3) if isinstance(v, float) else [round(x, 2) for x in v])
                 for k, v in anatomy.pose.items()},
        "centerlines_lps_mm": {a.name: {"vessel": a.vessel, "points": np.round(
            a.tube.points[::3], 2).tolist(), "radii_mm": np.round(a.tube.radii[::3], 3).tolist()}
            for a in anatomy.arteries},
    }
    return PhantomCase(ccta.image, csct.image, ccta_labels, csct_labels, extra_masks, truth)


def _as_int16(volume: Volume) -> Volume:
    return volume.with_array(np.round(volume.array).astype(np.int16))


def write_case(case: PhantomCase, folder: str | os.PathLike) -> Path:
    """Write a case's files into ``folder``.

    Files: ``ccta.nrrd``, ``csct.nrrd`` (int16 HU, kVp in the header), ``labels.seg.nrrd``
    (AutoCAC segments on the CCTA grid), ``extra.seg.nrrd`` (veins, extra-coronary calcium,
    pulmonary artery, myocardium, blood pool; CCTA grid), ``csct_calcium_labels.nrrd`` (label
    map 1..4 on the CSCT grid, as ``autocac score`` reads it) and ``truth.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(_as_int16(case.ccta), folder / "ccta.nrrd")
    write_volume(_as_int16(case.csct), folder / "csct.nrrd")
    write_segmentation(folder / "labels.seg.nrrd", case.ccta_labels, case.ccta)
    extra = np.zeros(case.ccta.shape, dtype=np.uint8)
    for spec, mask in zip(_EXTRA_SEGMENTS, case.extra_masks.values()):
        extra[mask] = spec.label
    write_segmentation(folder / "extra.seg.nrrd", extra, case.ccta, segments=_EXTRA_SEGMENTS)
    labels = case.csct.with_array(case.csct_calcium_labels.astype(np.uint8))
    labels.kvp = None
    write_volume(labels, folder / "csct_calcium_labels.nrrd")
    (folder / "truth.json").write_text(json.dumps(case.truth, indent=1))
    return folder


def rescan_reference(truth: dict, repeat: int = 1) -> CalciumScore:
    """Standard score of another CSCT of a written case's patient: the scan-rescan spread of
    the reference, which bounds how well any CCTA estimate can agree with it.

    The patient is rebuilt from ``truth`` (its seed and size) and scanned with a new draw of
    the CSCT protocol (pixel size, blur, table position and so slice phase, noise level) and
    new noise; ``repeat`` numbers the draws.

    Parameters
    ----------
    truth : dict
        The case's ``truth.json`` (see :func:`make_case`).
    repeat : int
        Which rescan (1, 2, ...); each is deterministic.

    Returns
    -------
    CalciumScore

    Raises
    ------
    InputError
        When the rebuilt patient is not the case's (a case made with overrides).
    """
    if repeat < 1:
        raise InputError(f"rescan number must be at least 1, got {repeat}")
    seed, size = int(truth["seed"]), truth["size"]
    # The case's dominance is forced too: for a case that drew it, that changes nothing.
    _, anatomy, _, _ = _draw(seed, size, {"dominance": truth.get("dominance")})
    if round(anatomy.target_agatston, 2) != truth["target_agatston"]:
        raise InputError(f"case with seed {seed} was not made from its seed alone (overrides?); "
                         "its patient cannot be rebuilt for a rescan")
    protocol = csct_protocol(np.random.default_rng([seed, 2, repeat]), size, anatomy)
    csct, labels, _ = _calcium_scan(np.random.default_rng([seed, 3, repeat]), anatomy, protocol)
    return score_calcium(csct.image.array, labels, csct.image.spacing)


def _rescan_row(folder: Path, repeat: int) -> dict:
    truth = json.loads((folder / "truth.json").read_text())
    score = rescan_reference(truth, repeat)
    return {"case": folder.name, "kvp": truth["kvp"],
            "reference_agatston": truth["reference"]["agatston"]["total"],
            "rescan_agatston": round(score.agatston["total"], 3),
            "reference_category": truth["category"], "rescan_category": score.category}


def rescan_cohort(cohort: str | os.PathLike, repeat: int = 1, jobs: int = 1,
                  progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """:func:`rescan_reference` for every complete case folder of ``cohort``.

    Returns one row per case, in folder order: case, kVp, reference and rescan Agatston
    scores and categories. ``jobs`` cases are rescanned in parallel (processes).
    """
    cohort = Path(cohort)
    folders = sorted(f for f in cohort.iterdir() if (f / "truth.json").is_file()) \
        if cohort.is_dir() else []
    if not folders:
        raise InputError(f"no synthetic cases (folders with truth.json) in {cohort}")
    rows: list[dict | None] = [None] * len(folders)
    calls = [(folder, repeat) for folder in folders]
    for done, (k, row) in enumerate(_completed(_rescan_row, calls, jobs), start=1):
        rows[k] = row
        if progress is not None:
            progress(done, len(folders), row["case"])
    return rows


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a cohort drawn with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _index_entry(name: str, truth: dict) -> dict:
    return {"case": name, "seed": truth["seed"], "kvp": truth["kvp"],
            "category": truth["category"], "agatston": truth["reference"]["agatston"]["total"]}


def _written_truth(folder: Path, seed: int, dominance: str | None) -> dict | None:
    """``truth.json`` of a complete case folder drawn with ``seed`` (written last) and, when
    forced, ``dominance``; else None."""
    try:
        truth = json.loads((folder / "truth.json").read_text())
    except (OSError, ValueError):
        return None
    if truth.get("seed") != seed or dominance not in (None, truth.get("dominance")):
        return None
    return truth


def _write_indexed(outdir: Path, index: int, seed: int, size: str, dominance: str | None) -> dict:
    case = make_case(case_seed(seed, index), size, dominance=dominance)
    folder = write_case(case, outdir / f"case_{index:03d}")
    return _index_entry(folder.name, case.truth)


def _completed(function: Callable, calls: list[tuple], jobs: int):
    """Yield ``(k, function(*calls[k]))`` as each call finishes: in ``jobs`` processes when
    more than one (completion order), else one after the other."""
    if jobs > 1 and len(calls) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(jobs, len(calls))) as pool:
            futures = {pool.submit(function, *args): k for k, args in enumerate(calls)}
            for future in as_completed(futures):
                yield futures[future], future.result()
    else:
        for k, args in enumerate(calls):
            yield k, function(*args)


def _made(outdir: Path, todo: list[int], seed: int, size: str, dominance: str | None,
          jobs: int):
    """Make and write the cases ``todo``; yield ``(index, cohort entry)`` as each is done."""
    calls = [(outdir, i, seed, size, dominance) for i in todo]
    for k, entry in _completed(_write_indexed, calls, jobs):
        yield todo[k], entry


def write_cohort(outdir: str | os.PathLike, n: int, seed: int, size: str = "clinical",
                 progress: Callable[[int, int, Path], None] | None = None,
                 jobs: int = 1, dominance: str | None = None) -> list[Path]:
    """Write ``n`` cases into ``outdir/case_000`` ...; case i uses :func:`case_seed`.

    ``dominance`` ("right" or "left") forces every heart's dominance, e.g. for a cohort of
    left-dominant hearts; by default each case draws its own. Case folders already complete
    with the right seed (and forced dominance) are kept, so an interrupted cohort resumes and
    a cohort grows by asking for a larger ``n``. ``jobs`` cases are made in
    parallel (processes; a clinical case needs about 2 GB). ``progress(i, n, folder)`` is
    called after each case. Also writes ``cohort.json`` (seed, size and per-case seed, kVp
    and reference category).
    """
    outdir = Path(outdir)
    folders = [outdir / f"case_{i:03d}" for i in range(n)]
    kept = {}
    for i, folder in enumerate(folders):
        truth = _written_truth(folder, case_seed(seed, i), dominance)
        if truth is not None:
            kept[i] = _index_entry(folder.name, truth)
    todo = [i for i in range(n) if i not in kept]
    index: list[dict | None] = [None] * n
    made = _made(outdir, todo, seed, size, dominance, jobs)
    for done, (i, entry) in enumerate(chain(kept.items(), made), start=1):
        index[i] = entry
        if progress is not None:
            progress(done, n, folders[i])
    (outdir / "cohort.json").write_text(json.dumps({"seed": seed, "size": size, "n": n,
                                                    "dominance": dominance or "drawn",
                                                    "cases": index}, indent=1))
    return folders
