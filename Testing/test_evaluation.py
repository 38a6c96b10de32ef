"""autocac evaluate: Dice, agreement tables and figures from per-case rows, and a real run."""

import csv
import json

import numpy as np
import pytest

from AutoCACLib.cli import main
from AutoCACLib.evaluation import dice, segmentation_dice, summarize, tables_markdown
from AutoCACLib.phantom import write_cohort
from AutoCACLib.segments import AORTA_LABEL, CALCIUM_LABEL, VESSEL_LABEL


def test_dice_definitions():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) is None
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    pred = np.zeros((3, 3, 3), np.uint8)
    truth = np.zeros((3, 3, 3), np.uint8)
    pred[0, 0, 0] = truth[0, 0, 0] = AORTA_LABEL
    pred[1, 1, 1] = VESSEL_LABEL["LAD"]
    truth[1, 1, 1] = CALCIUM_LABEL["LAD"]      # calcium counts as its vessel
    d = segmentation_dice(pred, truth)
    assert d["aorta"] == 1.0 and d["LAD"] == 1.0 and d["coronary"] == 1.0
    assert d["RCA"] is None


def rows():
    out = []
    for i, (ref, test, kvp) in enumerate([(0, 0, 100), (5, 4, 80), (50, 60, 100),
                                         (250, 200, 100), (800, 700, 120), (30, 0, 80)]):
        out.append({"case": f"c{i}", "kvp": kvp, "status": "ok", "failure_reason": "",
                    "seconds": 10.0, "calibration_factor": 400.0,
                    "ref_total": ref, "ref_LCA": ref, "ref_RCA": 0,
                    "test_total": test, "test_LCA": test, "test_RCA": 0,
                    "ref_volume": ref, "test_volume": test, "dice_aorta": 0.9,
                    "dice_coronary": 0.7})
    out.append({**out[0], "case": "failed", "status": "failed", "failure_reason": "x"})
    return out


def test_summary_counts_failures_and_splits_by_kvp():
    s = summarize(rows())
    assert s["n_cases"] == 7 and s["n_failed"] == 1
    assert s["agreement_total"]["n"] == 6
    assert s["kvp_100"]["n"] == 3 and s["kvp_80"]["n"] == 2
    assert s["kvp_120"] == {"n": 1}
    assert s["dice_mean"]["aorta"] == pytest.approx(0.9)
    md = tables_markdown(s)
    assert "| total | 6 |" in md and "CSCT \\ CCTA" in md


def test_evaluate_command_on_a_small_cohort(tmp_path):
    write_cohort(tmp_path / "cohort", 1, seed=8, size="small")
    assert main(["evaluate", str(tmp_path / "cohort"), "--out", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0
    for name in ("cases.csv", "summary.json", "tables.md", "agreement.png"):
        assert (tmp_path / "ev" / name).is_file(), name
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_cases"] == 1
    with open(tmp_path / "ev" / "cases.csv") as f:
        row = next(csv.DictReader(f))
    # a researcher sorting a cohort by what the pipeline warned about finds it per case
    assert "in-plane pixels are" in row["warnings"]   # small cases have 1 mm pixels
