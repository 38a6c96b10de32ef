"""The synthetic paired CCTA/CSCT generator (small cases only)."""

import copy
import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from AutoCACLib.errors import InputError
from AutoCACLib.phantom import (case_seed, make_case, rescan_reference, write_case,
                                 write_cohort)
from AutoCACLib.phantom import case as case_module
from AutoCACLib.phantom.anatomy import build_anatomy
from AutoCACLib.phantom.layers import AORTA
from AutoCACLib.scoring import score_calcium
from AutoCACLib.segmentation_io import read_segment_masks
from AutoCACLib.segments import AORTA_LABEL, CALCIUM_LABEL, VESSEL_LABEL, VESSELS
from AutoCACLib.volume import read_volume


@pytest.fixture(scope="module")
def typical():
    return make_case(11, "small")


@pytest.fixture(scope="module")
def zero():
    return make_case(12, "small", burden="0", kvp=80)


@pytest.fixture(scope="module")
def heavy():
    return make_case(13, "small", burden=">400", kvp=120)


def test_same_seed_same_case(typical):
    again = make_case(11, "small")
    np.testing.assert_array_equal(again.ccta.array, typical.ccta.array)
    np.testing.assert_array_equal(again.csct.array, typical.csct.array)
    np.testing.assert_array_equal(again.ccta_labels, typical.ccta_labels)
    np.testing.assert_array_equal(again.csct_calcium_labels, typical.csct_calcium_labels)
    assert json.dumps(again.truth) == json.dumps(typical.truth)


def test_seeds_vary_the_case(typical, zero):
    assert typical.ccta.shape != zero.ccta.shape or not np.array_equal(typical.ccta.array,
                                                                       zero.ccta.array)
    assert typical.truth["pose"] != zero.truth["pose"]
    assert case_seed(5, 0) == case_seed(5, 0) != case_seed(5, 1) != case_seed(6, 1)


def test_geometry_and_kvp(typical, zero, heavy):
    for case in (typical, zero, heavy):
        assert case.ccta.kvp == case.truth["kvp"] and case.csct.kvp == 120
        assert case.ccta_labels.shape == case.ccta.shape
        assert case.csct_calcium_labels.shape == case.csct.shape
        assert case.csct.spacing[0] == pytest.approx(3.0)
        assert case.ccta.spacing[0] <= 1.0
        for mask in case.extra_masks.values():
            assert mask.shape == case.ccta.shape
    assert zero.ccta.kvp == 80 and heavy.ccta.kvp == 120
    assert typical.ccta.array.min() < -900  # air and lung are in the field of view


def test_labels_lie_on_the_anatomy(typical, zero, heavy):
    for case in (typical, zero, heavy):
        image, labels = case.ccta.array, case.ccta_labels
        aorta = image[labels == AORTA_LABEL].mean()
        assert aorta == pytest.approx(case.truth["aortic_lumen_hu"], rel=0.12)
        lumen = image[np.isin(labels, list(VESSEL_LABEL.values()))].mean()
        assert 0.45 * aorta < lumen < 1.05 * aorta  # small vessels lose contrast to partial volume
        for vessel, value in VESSEL_LABEL.items():
            assert (labels == value).sum() > 0, vessel
        veins = case.extra_masks["cardiac_veins"]
        assert veins.any() and not np.isin(labels[veins], list(VESSEL_LABEL.values())).any()
        # The myocardium enhances far less than the blood pool.
        assert image[case.extra_masks["myocardium"]].mean() < aorta


def test_coronaries_run_in_fat_outside_blood_pools(typical, zero, heavy):
    # Epicardial arteries never run inside an atrium, its appendage or the pulmonary trunk:
    # there they would be invisible in the CCTA, yet part of the truth.
    for case in (typical, zero, heavy):
        lumen = np.isin(case.ccta_labels, list(VESSEL_LABEL.values()))
        pools = case.extra_masks["cardiac_blood_pool"] | case.extra_masks["pulmonary_artery"]
        assert pools.any() and not (lumen & ndi.binary_dilation(pools)).any()


@pytest.mark.parametrize("seed", range(16))
def test_coronaries_never_run_through_the_aorta(seed):
    # Past its ostium a coronary artery runs outside the aortic wall: inside the aorta it
    # would be invisible in the CCTA (the circumflex once crossed the descending aorta behind
    # the heart in most cases), yet part of the truth and its calcium part of the reference.
    anatomy = build_anatomy(np.random.default_rng(seed), 100)
    aorta = next(layer for layer in anatomy.layers if layer.tag == AORTA).shapes[0]
    wall = next(layer for layer in anatomy.layers if layer.tag == "aortic wall").shapes[0]
    tree = cKDTree(aorta.points)
    for artery in anatomy.arteries:
        gap, nearest = tree.query(artery.tube.points)
        clearance = gap - wall.radii[nearest] - artery.tube.radii
        past_ostium = artery.tube.arc_length > (15.0 if artery.name in ("LM", "RCA") else 0.0)
        assert clearance[past_ostium].min() > 0, artery.name


def _inside_cylinders(points, margins, cylinders):
    """Whether each point lies within ``margins`` mm of any of the cylinders."""
    hit = np.zeros(len(points), dtype=bool)
    for c in cylinders:
        q = (points - c.center) @ c.rotation
        side = (q[:, 0] / (c.semi[0] + margins)) ** 2 + (q[:, 1] / (c.semi[1] + margins)) ** 2
        hit |= (side <= 1) & (np.abs(q[:, 2]) <= c.half_length + margins)
    return hit


@pytest.mark.parametrize("seed", range(24))
def test_coronaries_and_heart_stay_clear_of_the_spine(seed):
    # The left atrium lies in front of the oesophagus and the spine. When the heart reached
    # into the vertebral bodies (most cases once), bone was painted over the atrium and the
    # circumflex or the distal RCA, and the bone inside a plaque's reference region was scored
    # as coronary calcium (an LCx reference of 737 AU for 18 mm^3 of plaque).
    anatomy = build_anatomy(np.random.default_rng(seed), 100)
    bones = [shape for layer in anatomy.layers
             if layer.tag in ("cortical bone", "intervertebral disc")
             for shape in layer.shapes if hasattr(shape, "half_length")]
    assert bones
    for artery in anatomy.arteries:
        inside = _inside_cylinders(artery.tube.points, artery.tube.radii + 2.0, bones)
        assert not inside.any(), artery.name
    atria = [layer for layer in anatomy.layers if layer.tag == "atrial wall"][0].shapes
    u = np.random.default_rng(1).standard_normal((2000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    surface = np.concatenate([a.center + (u * a.semi) @ a.rotation.T for a in atria])
    assert not _inside_cylinders(surface, 0.0, bones).any()


def test_calcium_free_case_scores_zero(zero):
    assert zero.truth["reference"]["agatston"]["total"] == 0
    assert zero.truth["category"] == "0"
    assert not np.isin(zero.ccta_labels, list(CALCIUM_LABEL.values())).any()
    assert not zero.csct_calcium_labels.any()


def test_heavy_case_reference_matches_the_scorer(heavy):
    assert heavy.truth["category"] == ">400"
    score = score_calcium(heavy.csct.array, heavy.csct_calcium_labels, heavy.csct.spacing)
    assert score.agatston["total"] > 400
    assert score.agatston["total"] == pytest.approx(heavy.truth["reference"]["agatston"]["total"],
                                                    abs=1e-2)
    assert np.isin(heavy.ccta_labels, list(CALCIUM_LABEL.values())).any()
    assert heavy.truth["true_calcium_mass_mg"]["total"] > 0
    # Calcium is brighter than the contrast lumen on the CCTA.
    calcium = heavy.ccta.array[np.isin(heavy.ccta_labels, list(CALCIUM_LABEL.values()))]
    assert calcium.max() > heavy.truth["measured_aortic_lumen_hu"]


def test_extra_coronary_calcium_never_counts(heavy):
    extra = heavy.extra_masks["extra_coronary_calcium"]
    assert extra.any(), "seed 13 should carry extra-coronary calcium"
    assert not np.isin(heavy.ccta_labels[extra], list(CALCIUM_LABEL.values())).any()
    csct = heavy.csct
    for lesion in heavy.truth["calcifications"]:
        if lesion["kind"] == "plaque":
            continue
        i, j, k = np.round((np.array(lesion["center_lps_mm"]) - csct.origin)
                           / np.array(csct.spacing[::-1])).astype(int)
        if 0 <= k < csct.shape[0] and 0 <= j < csct.shape[1] and 0 <= i < csct.shape[2]:
            assert heavy.csct_calcium_labels[k, j, i] == 0


def test_write_case_reads_back(typical, tmp_path):
    folder = write_case(typical, tmp_path / "case")
    ccta, csct = read_volume(folder / "ccta.nrrd"), read_volume(folder / "csct.nrrd")
    assert ccta.kvp == typical.truth["kvp"] and csct.kvp == 120
    np.testing.assert_array_equal(ccta.array, typical.ccta.array)
    assert ccta.same_geometry(typical.ccta) and csct.same_geometry(typical.csct)
    masks, geometry = read_segment_masks(folder / "labels.seg.nrrd")
    assert geometry.same_geometry(typical.ccta)
    np.testing.assert_array_equal(masks["Aorta"], typical.ccta_labels == AORTA_LABEL)
    np.testing.assert_array_equal(masks["LAD"], typical.ccta_labels == VESSEL_LABEL["LAD"])
    extra, _ = read_segment_masks(folder / "extra.seg.nrrd")
    np.testing.assert_array_equal(extra["Cardiac veins"], typical.extra_masks["cardiac_veins"])
    labels = read_volume(folder / "csct_calcium_labels.nrrd", require_ct=False)
    np.testing.assert_array_equal(labels.array, typical.csct_calcium_labels)
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["seed"] == 11 and truth["kvp"] == typical.truth["kvp"]


def test_write_cohort_uses_derived_seeds(typical, tmp_path, monkeypatch):
    seeds = []

    def fake_make_case(seed, size, dominance=None):
        seeds.append((seed, size))
        return typical

    monkeypatch.setattr(case_module, "make_case", fake_make_case)
    calls = []
    folders = write_cohort(tmp_path, 2, 7, "small", progress=lambda i, n, f: calls.append(i))
    assert [f.name for f in folders] == ["case_000", "case_001"]
    assert seeds == [(case_seed(7, 0), "small"), (case_seed(7, 1), "small")]
    assert calls == [1, 2]
    assert (folders[1] / "truth.json").exists() and (tmp_path / "cohort.json").exists()


def test_write_cohort_resumes_and_grows(typical, tmp_path, monkeypatch):
    made = []

    def fake_make_case(seed, size, dominance=None):
        made.append(seed)
        case = copy.deepcopy(typical)
        case.truth["seed"] = seed
        case.truth["dominance"] = dominance or "right"
        return case

    monkeypatch.setattr(case_module, "make_case", fake_make_case)
    write_cohort(tmp_path, 2, 7, "small")
    (tmp_path / "case_001" / "truth.json").unlink()  # interrupted while writing case 1
    folders = write_cohort(tmp_path, 3, 7, "small")
    # Case 0 is kept; case 1 (incomplete) and the new case 2 are made.
    assert made == [case_seed(7, 0), case_seed(7, 1), case_seed(7, 1), case_seed(7, 2)]
    cohort = json.loads((tmp_path / "cohort.json").read_text())
    assert [c["case"] for c in cohort["cases"]] == [f.name for f in folders]
    assert [c["seed"] for c in cohort["cases"]] == [case_seed(7, i) for i in range(3)]
    # Another cohort seed does not reuse these folders.
    write_cohort(tmp_path, 1, 8, "small")
    assert made[-1] == case_seed(8, 0)
    # Nor does a cohort of forced left-dominant hearts; asking for it again keeps them.
    write_cohort(tmp_path, 1, 8, "small", dominance="left")
    assert made[-1] == case_seed(8, 0) and len(made) == 6
    write_cohort(tmp_path, 1, 8, "small", dominance="left")
    assert len(made) == 6
    assert json.loads((tmp_path / "cohort.json").read_text())["dominance"] == "left"


def _arc_mm(points) -> float:
    return float(np.linalg.norm(np.diff(np.asarray(points), axis=0), axis=1).sum())


def test_forced_dominance_moves_the_posterior_groove(typical):
    drawn = typical.truth["dominance"]
    other = "left" if drawn == "right" else "right"
    # Forcing the drawn dominance changes nothing: the draw is made either way.
    same = make_case(11, "small", dominance=drawn)
    np.testing.assert_array_equal(same.ccta.array, typical.ccta.array)
    forced = make_case(11, "small", dominance=other)
    assert forced.truth["dominance"] == other
    hearts = {drawn: typical, other: forced}
    arcs = {d: {name: _arc_mm(hearts[d].truth["centerlines_lps_mm"][name]["points"])
                for name in ("LCx", "RCA")} for d in hearts}
    # The left-dominant heart's LCx runs on through the posterior groove; its RCA stops short.
    assert arcs["left"]["LCx"] > arcs["right"]["LCx"] + 30
    assert arcs["left"]["RCA"] < arcs["right"]["RCA"] - 30
    # A rescan rebuilds the forced heart, not the drawn one.
    rescan = rescan_reference(forced.truth, 1).agatston["total"]
    assert rescan == pytest.approx(forced.truth["reference"]["agatston"]["total"], rel=0.35, abs=5)
    with pytest.raises(ValueError, match="dominance"):
        make_case(11, "small", dominance="co")


def test_write_cohort_in_parallel_matches_serial(tmp_path):
    write_cohort(tmp_path / "serial", 2, 3, "small")
    write_cohort(tmp_path / "parallel", 2, 3, "small", jobs=2)
    serial = json.loads((tmp_path / "serial" / "cohort.json").read_text())
    parallel = json.loads((tmp_path / "parallel" / "cohort.json").read_text())
    assert serial["cases"] == parallel["cases"]
    a = read_volume(tmp_path / "serial" / "case_001" / "ccta.nrrd").array
    b = read_volume(tmp_path / "parallel" / "case_001" / "ccta.nrrd").array
    np.testing.assert_array_equal(a, b)


def test_rescan_scans_the_same_patient_again(typical, heavy):
    first = rescan_reference(typical.truth, 1)
    assert rescan_reference(typical.truth, 1).agatston == first.agatston
    second = rescan_reference(typical.truth, 2)
    assert second.agatston["total"] != first.agatston["total"]
    reference = typical.truth["reference"]["agatston"]
    assert reference["total"] > 10
    for scan in (first, second):
        # Same calcified vessels, a score within the scan-to-scan spread of a small case.
        assert ({v for v in VESSELS if scan.agatston[v] > 0}
                == {v for v in VESSELS if reference[v] > 0})
        assert scan.agatston["total"] == pytest.approx(reference["total"], rel=0.35)
    with pytest.raises(InputError, match="overrides"):
        rescan_reference(heavy.truth)


def test_overrides_are_checked():
    with pytest.raises(TypeError):
        make_case(1, "small", colour="red")
    with pytest.raises(ValueError):
        make_case(1, "tiny")


def test_touching_reference_regions_go_to_the_nearest_plaque():
    # Two plaques of different vessels 3 mm apart, each with a 2.5 mm region margin: the
    # voxels between them belong to the nearer one whatever the painting order (the later
    # vessel used to take the whole overlap, so an LM plaque's blooming was scored as LAD).
    from AutoCACLib.phantom.render import Canvas, Grid
    from AutoCACLib.phantom.shapes import Ellipsoid

    grid = Grid((12, 40, 40), (0.5, 0.5, 0.5), [-10.0, -10.0, -3.0])
    spheres = {1: Ellipsoid([-2.3, 0, 0], np.eye(3), [1.0] * 3),   # midway at x = 0.2
               2: Ellipsoid([2.7, 0, 0], np.eye(3), [1.0] * 3)}
    maps = []
    for order in ((1, 2), (2, 1)):
        canvas = Canvas(grid, -1000.0)
        for value in order:
            canvas.paint([spheres[value]], 600.0, region_value=value, region_margin=2.5)
        maps.append(canvas.regions)
    np.testing.assert_array_equal(maps[0], maps[1])
    x = grid.origin[0] + np.arange(40) * 0.5
    row = maps[0][6, 20]
    assert set(row[(x > -3.2) & (x < 0.2)]) == {1} and set(row[(x > 0.2) & (x < 3.6)]) == {2}
