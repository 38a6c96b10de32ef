"""The ``scores.json`` document: scores plus status, settings, provenance and timings."""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path

from . import __version__
from .scoring import CalciumScore


def scores_document(score: CalciumScore | None, *, status: str = "ok",
                    failure_reason: str | None = None, calibration_factor: float | None = None,
                    timings_s: dict[str, float] | None = None, warnings: list[str] | None = None,
                    inputs: dict | None = None, method: str = "standard") -> dict:
    """Assemble the JSON document of DESIGN.md's contract.

    Parameters
    ----------
    score : CalciumScore or None
        None for a failed case (scores are then null).
    status : {"ok", "failed"}
    failure_reason : str or None
        Why the case failed, in words a radiologist understands.
    calibration_factor : float or None
        Representative coronary lumen attenuation (HU) used by the CCTA method.
    timings_s : dict
        Seconds per stage; ``total`` is added when missing.
    warnings : list of str
        Extra warnings (the score's own warnings are appended).
    inputs : dict
        What was scored (paths, shape, spacing, kVp).
    method : str
        "standard" (CSCT scoring of given calcium) or "ccta" (the AutoCAC pipeline).
    """
    if status not in ("ok", "failed"):
        raise ValueError(f"status must be 'ok' or 'failed', got {status!r}")
    timings = {k: round(float(v), 3) for k, v in (timings_s or {}).items()}
    timings.setdefault("total", round(sum(timings.values()), 3))
    doc = {
        "status": status,
        "failure_reason": failure_reason,
        "method": method,
        "agatston": None,
        "volume_mm3": None,
        "mass_mg": None,
        "lesion_count": None,
        "category": None,
        "cac_drs": None,
        "calibration_factor": None if calibration_factor is None else round(float(calibration_factor), 2),
        "settings": None,
        "warnings": list(warnings or []),
        "timings_s": timings,
        "lesions": [],
        "input": inputs or {},
        "software": {"name": "AutoCAC", "version": __version__, "python": platform.python_version()},
    }
    if score is not None:
        d = score.to_dict()
        doc["warnings"] += d.pop("warnings")
        doc.update(d)
    return doc


def write_json(doc: dict, path: str | os.PathLike | None) -> None:
    """Write a JSON document to ``path``, or to stdout when ``path`` is None or "-"."""
    text = json.dumps(doc, indent=2)
    if path is None or str(path) == "-":
        print(text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n")


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write ``rows`` (dicts with the same keys, at least one) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
