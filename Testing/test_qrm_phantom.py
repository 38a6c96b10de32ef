"""Standard scoring on a real scanner's calcium phantom against published reference scores.

The QRM cardiac calcification insert (Canon Aquilion ONE, 120 kVp, 3 mm) holds 9
hydroxyapatite cylinders. The test locates them itself: the three large inserts are the
largest compact bright blobs; the medium and small inserts of each density lie on the line
from the large one to the insert's centre, at one and two thirds of the way (the QRM layout).
Each insert then gets a cylindrical calcium region (insert radius + 2.5 mm, 3 slices), and
its Agatston score must be within 2% (or 1 AU) of the published FQM value, its mass within
10% for the large and medium inserts.
"""

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from AutoCACLib.cli import main
from AutoCACLib.phantom.materials import HA_HU_PER_MG_CM3
from AutoCACLib.scoring import ScoringSettings, score_calcium
from AutoCACLib.volume import Volume, read_volume, write_volume

MASS_CALIBRATION = 0.722048  # mg HA/cm^3 per HU, from the scan's README
DENSITIES = ("HD", "MD", "LD")


@pytest.fixture(scope="module")
def scan(qrm_dir):
    return read_volume(qrm_dir / "dicom")


@pytest.fixture(scope="module")
def reference(qrm_dir):
    with open(qrm_dir / "reference.csv") as f:
        return {row["insert"]: row for row in csv.DictReader(f)}


def locate_inserts(volume: Volume) -> dict[str, np.ndarray]:
    """Centre (z, y, x voxel) of each of the 9 inserts."""
    a, sp = volume.array, volume.spacing
    smooth = ndimage.gaussian_filter(a, (0, 1.5, 1.5))
    blobs, _ = ndimage.label(smooth >= 120)
    compact = []
    for index, box in enumerate(ndimage.find_objects(blobs), start=1):
        extent_mm = [(s.stop - s.start) * d for s, d in zip(box, sp)]
        own = blobs[box] == index
        # Inserts are <= 5 mm long and wide: at most 3 slices, 12 mm in-plane with blur.
        if extent_mm[0] <= 9 and max(extent_mm[1:]) <= 12 and own.sum() >= 20:
            centre = np.array(ndimage.center_of_mass(own)) + [s.start for s in box]
            compact.append((int(own.sum()), float(a[box][own].max()), centre))
    large = sorted(sorted(compact, key=lambda c: -c[0])[:3], key=lambda c: -c[1])
    middle = np.mean([c[2] for c in large], axis=0)
    centres = {}
    for density, (_, _, c) in zip(DENSITIES, large):
        centres[f"Large_{density}"] = c
        centres[f"Medium_{density}"] = c + (middle - c) / 3
        centres[f"Small_{density}"] = c + 2 * (middle - c) / 3
    return centres


def insert_region(volume: Volume, centre, diameter_mm: float) -> np.ndarray:
    zz, yy, xx = np.indices(volume.shape, sparse=True)
    sp = volume.spacing
    radius = diameter_mm / 2 + 2.5
    disc = ((yy - centre[1]) * sp[1]) ** 2 + ((xx - centre[2]) * sp[2]) ** 2 <= radius ** 2
    return disc & (np.abs(zz - round(centre[0])) <= 1)


@pytest.fixture(scope="module")
def regions(scan, reference):
    centres = locate_inserts(scan)
    return {name: insert_region(scan, centres[name], float(reference[name]["diameter_mm"]))
            for name in reference}


def test_scan_geometry_and_kvp(scan):
    assert scan.shape == (47, 512, 512)
    assert scan.spacing == pytest.approx((3.0, 0.488, 0.488), abs=1e-3)
    assert scan.kvp == 120


def test_inserts_match_published_fqm_scores(scan, reference, regions):
    settings = ScoringSettings(mass_calibration=MASS_CALIBRATION)
    for name, region in regions.items():
        ref = reference[name]
        s = score_calcium(scan.array, region.astype(np.uint8), scan.spacing, settings)
        fqm = float(ref["fqm_agatston"])
        assert abs(s.agatston["total"] - fqm) <= max(1.0, 0.02 * fqm), name
        if name.startswith(("Large", "Medium")):
            fqm_mass = float(ref["fqm_mass_mg"])
            assert s.mass_mg["total"] == pytest.approx(fqm_mass, rel=0.10), name


def test_synthetic_calcium_scale_matches_the_real_inserts(scan, regions):
    # The generator's hydroxyapatite CT number per mg/cm^3 at 120 kVp (what makes synthetic
    # plaques as bright as real ones) against this scan: the slope between the 800 and
    # 200 mg/cm^3 large inserts' peaks, and the inverse of the scan's mass calibration.
    peak = {d: float(scan.array[regions[f"Large_{d}"]].max()) for d in ("HD", "LD")}
    measured = (peak["HD"] - peak["LD"]) / (800.0 - 200.0)
    assert HA_HU_PER_MG_CM3[120] == pytest.approx(measured, rel=0.1)
    assert HA_HU_PER_MG_CM3[120] == pytest.approx(1.0 / MASS_CALIBRATION, rel=0.1)


def test_undetectable_inserts_score_zero(scan, regions):
    for name in ("Small_MD", "Small_LD"):
        s = score_calcium(scan.array, regions[name].astype(np.uint8), scan.spacing)
        assert s.agatston["total"] == 0, name


def test_cli_score_on_dicom_with_label_map(scan, reference, regions, qrm_dir, tmp_path, capsys):
    # Four inserts as the four vessel labels of a calcium label map.
    as_vessel = {"Large_HD": 1, "Medium_HD": 2, "Large_MD": 3, "Large_LD": 4}
    labels = np.zeros(scan.shape, dtype=np.uint8)
    for name, value in as_vessel.items():
        labels[regions[name]] = value
    write_volume(scan.with_array(labels), tmp_path / "inserts.nrrd")
    out = tmp_path / "scores.json"
    assert main(["score", str(qrm_dir / "dicom"), str(tmp_path / "inserts.nrrd"),
                 "--out", str(out), "--mass-calibration", str(MASS_CALIBRATION)]) == 0
    doc = json.loads(out.read_text())
    assert doc["status"] == "ok"
    for (name, _), vessel in zip(as_vessel.items(), ("LM", "LAD", "LCx", "RCA")):
        fqm = float(reference[name]["fqm_agatston"])
        assert doc["agatston"][vessel] == pytest.approx(fqm, rel=0.02)
    assert doc["category"] == ">400"
    assert doc["input"]["kvp"] == 120
