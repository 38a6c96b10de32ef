"""``autocac benchmark``: per-stage time and peak memory on a clinical-size case.

The case is a synthetic CCTA resampled to 512 x 512 x 280 voxels of 0.4 x 0.4 x 0.5 mm. The
pipeline runs in a child process so that its peak resident memory is its own (not the
generator's).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .volume import Volume

BENCHMARK_SHAPE = (280, 512, 512)
BENCHMARK_SPACING = (0.5, 0.4, 0.4)
BENCHMARK_SEED = 777


def make_benchmark_volume(seed: int = BENCHMARK_SEED) -> Volume:
    """A synthetic CCTA on the benchmark grid, centred on the generated case."""
    import SimpleITK as sitk

    from .phantom import make_case

    case = make_case(seed, "clinical", kvp=100)
    image = case.ccta.to_sitk()
    size_xyz = tuple(reversed(BENCHMARK_SHAPE))
    spacing_xyz = tuple(reversed(BENCHMARK_SPACING))
    centre = image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in image.GetSize()])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    half = direction @ (np.array(spacing_xyz) * (np.array(size_xyz) - 1) / 2)
    resampled = sitk.Resample(image, size_xyz, sitk.Transform(), sitk.sitkLinear,
                              tuple(np.array(centre) - half), spacing_xyz,
                              image.GetDirection(), -1000.0, sitk.sitkFloat32)
    return Volume.from_sitk(resampled, kvp=case.ccta.kvp)


def _child(path: str, device: str, models_dir: str | None) -> None:
    """Run the pipeline once on ``path`` and print timings and peak memory as JSON."""
    from .pipeline import load_pipeline_models, run_pipeline
    from .volume import read_volume

    t0 = time.perf_counter()
    volume = read_volume(path)
    t1 = time.perf_counter()
    models = load_pipeline_models(models_dir, device)
    t2 = time.perf_counter()
    result = run_pipeline(volume, device=device, models=models)
    t3 = time.perf_counter()
    timings = dict(result.scores["timings_s"])
    timings.pop("total", None)
    timings = {"read": t1 - t0, "load_models": t2 - t1, **timings}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"timings_s": timings, "pipeline_s": t3 - t2, "total_s": t3 - t0,
                      "peak_rss_gb": peak_kb / 1024 ** 2, "status": result.status,
                      "failure_reason": result.scores["failure_reason"],
                      "network_timings_s": result.details.get("network_timings_s")}))


def run_benchmark(device: str = "auto", models_dir=None) -> dict:
    """Generate the benchmark case, run the pipeline in a child process, return the figures."""
    import torch

    from .inference import resolve_device
    from .volume import write_volume

    resolved = str(resolve_device(device))
    volume = make_benchmark_volume()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "benchmark_ccta.nrrd"
        write_volume(volume, path, compress=False)
        cmd = [sys.executable, "-m", "AutoCACLib.benchmark", str(path), device]
        if models_dir:
            cmd.append(str(models_dir))
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed:\n{proc.stderr[-2000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures.update({
        "case": {"shape_zyx": list(BENCHMARK_SHAPE), "spacing_mm_zyx": list(BENCHMARK_SPACING),
                 "kvp": volume.kvp},
        "machine": {"device": resolved, "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "processor": platform.processor()
                    or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if resolved == "cuda" else None},
    })
    return figures


def format_benchmark(figures: dict) -> str:
    """A Markdown table of the benchmark figures."""
    lines = [f"Case {figures['case']['shape_zyx']} voxels (z, y, x) at "
             f"{figures['case']['spacing_mm_zyx']} mm on {figures['machine']['device']} "
             f"({figures['machine']['cpu_count']} cores"
             + (f", {figures['machine']['gpu']}" if figures['machine']['gpu'] else "") + ")",
             "", "| stage | seconds |", "|---|---|"]
    for stage, seconds in figures["timings_s"].items():
        lines.append(f"| {stage} | {seconds:.2f} |")
    lines += [f"| **total (read + models + pipeline)** | **{figures['total_s']:.2f}** |", "",
              f"Peak resident memory: {figures['peak_rss_gb']:.2f} GB; status: "
              f"{figures['status']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
