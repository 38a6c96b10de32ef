"""``autocac run``: one case or many, each to its own folder, failures never stop a batch."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import AutoCACError, InputError
from .segments import VESSELS
from .volume import IMAGE_SUFFIXES

#: In a case folder (as ``autocac phantom`` writes them), the image to run on.
CASE_IMAGE_NAMES = ("ccta.nrrd", "ccta.nii.gz", "ccta.mha")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES) \
        and not path.name.lower().endswith((".seg.nrrd", ".seg.nhdr"))


def _has_dicom(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _case_image(folder: Path) -> Path | None:
    """What to run in a folder: its ``ccta.*`` image, itself when it is a DICOM series."""
    own = [folder / n for n in CASE_IMAGE_NAMES if (folder / n).exists()]
    if own:
        return own[0]
    return folder if _has_dicom(folder) else None


def collect_cases(inputs: list[Path]) -> list[tuple[str, Path]]:
    """(case name, image path or DICOM folder) for each input.

    An input is an image file, a DICOM series folder, a case folder holding ``ccta.nrrd``,
    or a folder of such cases (one level deep).
    """
    cases = []
    for path in inputs:
        path = Path(path)
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if path.is_file():
            cases.append((path.name.split(".")[0], path))
            continue
        image = _case_image(path)
        if image is not None:
            cases.append((path.name, image))
        else:
            found = []
            for child in sorted(path.iterdir()):
                if child.is_dir():
                    image = _case_image(child)
                    if image is not None:
                        found.append((child.name, image))
                elif _is_image(child):
                    found.append((child.name.split(".")[0], child))
            if not found:
                raise InputError(f"no image, DICOM series or case folder found in {path}")
            cases += found
    names = [n for n, _ in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        cases = [(f"{n}_{i}" if n in duplicates else n, p) for i, (n, p) in enumerate(cases)]
    return cases


class TerminalProgress:
    """A one-line progress display on stderr (plain lines when not a terminal)."""

    def __init__(self, prefix: str = "", stream=None):
        self.prefix, self.stream = prefix, stream or sys.stderr
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last = None

    def __call__(self, stage: str, fraction: float) -> None:
        if self.tty:
            filled = int(round(24 * fraction))
            self.stream.write(f"\r{self.prefix}[{'#' * filled}{'.' * (24 - filled)}] "
                              f"{100 * fraction:3.0f}% {stage[:40]:<40}")
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
        elif (stage.split(":")[0], int(10 * fraction)) != self._last:
            # Not a terminal (a log file): one line per stage and per tenth of the run.
            self._last = (stage.split(":")[0], int(10 * fraction))
            print(f"{self.prefix}{100 * fraction:3.0f}% {stage}", file=self.stream, flush=True)


def write_outputs(out_dir: Path, volume, result, title: str) -> None:
    """Write a pipeline result: ``segmentation.seg.nrrd``, ``scores.json``, ``report.png``."""
    from .report import render_report
    from .results import write_json
    from .segmentation_io import write_segmentation

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_segmentation(out_dir / "segmentation.seg.nrrd", result.labels, volume)
    write_json(result.scores, out_dir / "scores.json")
    render_report(volume, result.labels, result.scores, out_dir / "report.png", title=title)


def run_one(image_path: Path, out_dir: Path, device: str, settings, models,
            progress=None) -> dict:
    """Run the pipeline on one input and write ``scores.json``, ``segmentation.seg.nrrd``
    and ``report.png`` into ``out_dir``. Returns the scores document."""
    from .pipeline import run_pipeline
    from .volume import read_volume

    t0 = time.perf_counter()
    volume = read_volume(image_path)
    read_s = time.perf_counter() - t0
    result = run_pipeline(volume, device=device, settings=settings, progress=progress,
                          models=models, inputs={"image": str(image_path)})
    result.scores["timings_s"]["read"] = round(read_s, 3)
    result.scores["timings_s"]["total"] = round(result.scores["timings_s"]["total"] + read_s, 3)
    write_outputs(out_dir, volume, result, f"AutoCAC: {Path(image_path).name}")
    return result.scores


def summary_row(name: str, scores: dict) -> dict:
    row = {"case": name, "status": scores.get("status"),
           "failure_reason": scores.get("failure_reason") or ""}
    for key in ("agatston", "volume_mm3"):
        values = scores.get(key) or {}
        for v in (*VESSELS, "total"):
            row[f"{key}_{v}"] = values.get(v, "")
    row["category"] = scores.get("category") or ""
    row["cac_drs"] = scores.get("cac_drs") or ""
    row["calibration_factor"] = scores.get("calibration_factor") or ""
    row["warnings"] = " | ".join(scores.get("warnings") or [])
    row["seconds"] = (scores.get("timings_s") or {}).get("total", "")
    return row


def run_batch(inputs: list[Path], out: Path, device: str = "auto", settings=None,
              models_dir=None) -> int:
    """``autocac run``: returns the number of failed cases (unusable inputs included)."""
    from .pipeline import load_pipeline_models

    cases = collect_cases(inputs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    models = load_pipeline_models(models_dir, device)
    single = len(cases) == 1
    rows, failures = [], 0
    for k, (name, path) in enumerate(cases, start=1):
        prefix = "" if single else f"[{k}/{len(cases)} {name}] "
        case_dir = out if single else out / name
        try:
            scores = run_one(path, case_dir, device, settings, models,
                             TerminalProgress(prefix))
        except AutoCACError as exc:
            if single:
                raise
            scores = {"status": "failed", "failure_reason": f"unusable input: {exc}"}
            print(f"{prefix}error: {exc}", file=sys.stderr)
        failures += scores["status"] != "ok"
        rows.append(summary_row(name, scores))
        if scores["status"] != "ok":
            print(f"{prefix}failed: {scores['failure_reason']}", file=sys.stderr)
        else:
            print(f"{prefix}Agatston {scores['agatston']['total']:.1f} "
                  f"({scores['category']}) -> {case_dir}", file=sys.stderr)
    if not single:
        from .results import write_csv

        write_csv(rows, out / "summary.csv")
    return failures
