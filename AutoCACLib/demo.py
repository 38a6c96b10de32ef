"""``autocac demo``: the whole pipeline on a built-in synthetic CCTA, with its CSCT reference."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .segments import VESSELS

#: The built-in case: a 100 kVp synthetic patient with a moderate calcium burden.
DEMO_SEED = 20231
DEMO_OVERRIDES = {"kvp": 100, "burden": "101-400"}


def run_demo(out: str | Path, device: str = "auto", size: str = "clinical") -> dict:
    """Make the built-in case, run the pipeline, write results and a report; return scores.

    Writes ``ccta.nrrd`` (the input), ``scores.json``, ``segmentation.seg.nrrd``,
    ``report.png`` and ``reference.json`` (the paired CSCT's standard scores, the truth the
    pipeline estimates) into ``out``.
    """
    from .batch import TerminalProgress, write_outputs
    from .phantom import make_case
    from .pipeline import run_pipeline
    from .results import write_json
    from .volume import write_volume

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"making the built-in synthetic CCTA (seed {DEMO_SEED}, {size})...", file=sys.stderr)
    t0 = time.perf_counter()
    case = make_case(DEMO_SEED, size, **DEMO_OVERRIDES)
    write_volume(case.ccta, out / "ccta.nrrd")
    print(f"  {case.ccta.shape[2]}x{case.ccta.shape[1]}x{case.ccta.shape[0]} voxels, "
          f"{case.ccta.kvp:g} kVp, made in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    result = run_pipeline(case.ccta, device=device, progress=TerminalProgress("  "),
                          inputs={"image": "built-in synthetic CCTA", "seed": DEMO_SEED})
    write_outputs(out, case.ccta, result, "AutoCAC demo: synthetic CCTA (100 kVp)")
    write_json(case.truth["reference"], out / "reference.json")
    s, ref = result.scores, case.truth["reference"]
    if s["status"] != "ok":
        print(f"case failed: {s['failure_reason']}", file=sys.stderr)
    else:
        print(f"\n{'vessel':<8}{'CCTA (AutoCAC)':>16}{'CSCT reference':>16}")
        for v in (*VESSELS, "total"):
            print(f"{v:<8}{s['agatston'][v]:>16.1f}{ref['agatston'][v]:>16.1f}")
        print(f"category: {s['category']} (reference {ref['category']}), "
              f"CAC-DRS {s['cac_drs']}, {s['timings_s']['total']:.1f} s")
        for w in s["warnings"]:
            print(f"warning: {w}")
    print(f"results in {out}/ (scores.json, segmentation.seg.nrrd, report.png)")
    return s
