"""The command line as a user runs it: JSON out, one-line errors, exit codes."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from AutoCACLib.segmentation_io import write_segmentation
from AutoCACLib.segments import CALCIUM_LABEL
from AutoCACLib.volume import Volume, write_volume


def autocac(*args):
    return subprocess.run([sys.executable, "-m", "AutoCACLib.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def case(tmp_path):
    a = np.full((4, 24, 24), 30.0, dtype=np.float32)
    a[:, :, :3] = -1000
    a[2, 10:14, 10:14] = 420.0          # 16 px x 0.25 mm^2 = 4 mm^2, weight 4
    v = Volume(a, (3.0, 0.5, 0.5), kvp=120)
    write_volume(v, tmp_path / "ct.nrrd")
    labels = np.zeros(a.shape, dtype=np.uint8)
    labels[2, 8:16, 8:16] = CALCIUM_LABEL["RCA"]
    write_segmentation(tmp_path / "calc.seg.nrrd", labels, v)
    return tmp_path


def test_score_prints_contract_json(case):
    r = autocac("score", case / "ct.nrrd", case / "calc.seg.nrrd")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key in ("status", "failure_reason", "agatston", "volume_mm3", "category",
                "calibration_factor", "settings", "timings_s"):
        assert key in doc
    assert doc["status"] == "ok" and doc["failure_reason"] is None
    assert set(doc["agatston"]) == {"LM", "LAD", "LCx", "RCA", "total"}
    assert doc["agatston"]["RCA"] == pytest.approx(16.0)
    assert doc["volume_mm3"]["RCA"] == pytest.approx(12.0)
    assert doc["category"] == "11-100"
    assert doc["cac_drs"] == "A1/N1"
    assert "total" in doc["timings_s"]
    assert doc["lesions"][0]["vessel"] == "RCA"


def test_score_options_reach_the_result(case):
    out = case / "s.json"
    r = autocac("score", case / "ct.nrrd", case / "calc.seg.nrrd", "--connectivity", "4",
                "--lesions", "3d", "--min-area", "2", "--out", out)
    assert r.returncode == 0 and r.stdout == ""
    s = json.loads(out.read_text())["settings"]
    assert (s["connectivity"], s["lesion_dim"], s["min_area_mm2"]) == (4, "3d", 2.0)


@pytest.mark.parametrize("args,message", [
    (("score", "MISSING.nrrd", "calc.seg.nrrd"), "input not found"),
    (("score", "ct.nrrd", "MISSING.seg.nrrd"), "segmentation not found"),
    (("score", "ct.nrrd", "calc.seg.nrrd", "--threshold", "250"), "--threshold"),
    (("agreement", "MISSING.csv", "--ref", "a", "--test", "b"), "no such file"),
])
def test_bad_input_gives_one_line_error(case, args, message):
    r = autocac(*[case / a if a.endswith((".nrrd", ".csv")) else a for a in args])
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autocac: error:")
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_agreement_command(tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("case,csct,ccta\n1,0,0\n2,5,4\n3,50,45\n4,250,230\n5,800,700\n")
    r = autocac("agreement", csv, "--ref", "csct", "--test", "ccta")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["n"] == 5 and doc["accuracy"] == 1.0
    assert doc["mean_diff"] == pytest.approx(-25.2)
    assert doc["ccc"] > 0.95


def test_phantom_and_rescan_commands(tmp_path):
    r = autocac("phantom", tmp_path / "cohort", "--n", "2", "--seed", "3", "--size", "small",
                "--dominance", "left")
    assert r.returncode == 0, r.stderr
    case = tmp_path / "cohort" / "case_000"
    for name in ("ccta.nrrd", "csct.nrrd", "labels.seg.nrrd", "truth.json"):
        assert (case / name).is_file(), name
    assert "[2/2]" in r.stderr
    for k in range(2):
        truth = json.loads((tmp_path / "cohort" / f"case_00{k}" / "truth.json").read_text())
        assert truth["dominance"] == "left"
    r = autocac("phantom", tmp_path / "c2", "--n", "0")
    assert r.returncode == 2 and "--n" in r.stderr

    r = autocac("rescan", tmp_path / "cohort", "--out", tmp_path / "rescan")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "rescan" / "rescan.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["case"] for row in rows] == ["case_000", "case_001"]
    for row in rows:
        truth = json.loads((tmp_path / "cohort" / row["case"] / "truth.json").read_text())
        assert float(row["reference_agatston"]) == truth["reference"]["agatston"]["total"]
    doc = json.loads((tmp_path / "rescan" / "agreement.json").read_text())
    assert doc["n"] == 2 and "category accuracy" in r.stdout
    r = autocac("rescan", tmp_path / "c2", "--out", tmp_path / "r2")
    assert r.returncode == 2 and "no synthetic cases" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
