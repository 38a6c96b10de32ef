"""The CCTA pipeline end to end with the shipped models, on small synthetic cases.

These check the contract (what a user and the Slicer module rely on), the failure reasons
and the batch behaviour; accuracy is measured by ``autocac evaluate`` on clinical-size
cohorts, not here.
"""

import csv
import json

import numpy as np
import pytest

from AutoCACLib.cli import main
from AutoCACLib.errors import Cancelled
from AutoCACLib.phantom import make_case
from AutoCACLib.pipeline import load_pipeline_models, run_pipeline
from AutoCACLib.segments import CALCIUM_LABEL, SEGMENT_BY_LABEL, VESSEL_LABEL, VESSELS
from AutoCACLib.volume import Volume, write_volume


@pytest.fixture(scope="module")
def models():
    return load_pipeline_models(device="cpu")


@pytest.fixture(scope="module")
def small_case():
    return make_case(11, "small", kvp=100, burden="101-400")


def test_run_gives_the_scores_contract_and_a_label_map(small_case, models):
    stages = []
    result = run_pipeline(small_case.ccta, device="cpu", models=models,
                          progress=lambda stage, f: stages.append((stage, f)))
    doc = result.scores
    assert doc["status"] in ("ok", "failed")
    assert result.labels.shape == small_case.ccta.shape
    assert set(np.unique(result.labels)) <= {0, *SEGMENT_BY_LABEL}
    for key in ("status", "failure_reason", "agatston", "volume_mm3", "category",
                "calibration_factor", "settings", "timings_s", "warnings"):
        assert key in doc
    json.dumps(doc)
    assert "total" in doc["timings_s"]
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the small case has pixels of about 1 mm: the user is told
    pixel = max(small_case.ccta.spacing[1:])
    assert pixel > 0.9
    assert any(f"in-plane pixels are {pixel:.2g} mm" in w for w in doc["warnings"])
    assert not any(w.startswith(("slab artefact", "step artefact")) for w in doc["warnings"])
    if doc["status"] == "ok":
        assert set(doc["agatston"]) == {*VESSELS, "total"}
        assert doc["calibration_factor"] > 150
        assert (result.labels == 1).any()   # aorta
    else:
        assert doc["failure_reason"]


def test_image_stored_in_another_axis_order_gives_the_same_result(small_case, models):
    # A NIfTI stored right-to-left and anterior-to-posterior, slices from the head down: the
    # same voxels at the same places. Same scores, and labels on the stored grid.
    from AutoCACLib.volume import Volume, to_axial_lps

    ccta = small_case.ccta
    flipped = ccta.array[::-1, ::-1, ::-1]
    ras = Volume(flipped, ccta.spacing, tuple(_positions_corner(ccta)),
                 -np.eye(3), ccta.kvp, dict(ccta.metadata))
    assert to_axial_lps(ras)[0].same_geometry(ccta)
    direct = run_pipeline(ccta, device="cpu", models=models)
    stored = run_pipeline(ras, device="cpu", models=models)
    assert direct.status == "ok" and direct.scores["agatston"]["total"] > 0
    assert stored.labels.shape == ras.shape
    assert np.array_equal(stored.labels, direct.labels[::-1, ::-1, ::-1])
    assert stored.scores["agatston"] == direct.scores["agatston"]
    n = ccta.shape[0]
    assert sorted(les["slice"] for les in stored.scores["lesions"]) == \
        sorted(n - 1 - les["slice"] for les in direct.scores["lesions"])
    assert stored.scores["input"]["shape"] == list(ras.shape)


def _positions_corner(volume):
    """LPS position of the voxel at the far corner of the array."""
    far = (np.array(volume.shape)[::-1] - 1) * np.asarray(volume.spacing)[::-1]
    return np.asarray(volume.origin) + volume.direction @ far


def test_calcium_segments_hold_what_the_score_counts(models):
    case = make_case(5, "small", kvp=100, burden=">400")
    result = run_pipeline(case.ccta, device="cpu", models=models)
    assert result.status == "ok", result.scores["failure_reason"]
    calcium = np.isin(result.labels, list(CALCIUM_LABEL.values()))
    assert calcium.any() and result.scores["agatston"]["total"] > 0
    assert case.ccta.array[calcium].min() >= result.scores["settings"]["threshold_hu"]


def test_non_contrast_scan_fails_with_a_reason(small_case, models):
    result = run_pipeline(small_case.csct, device="cpu", models=models)
    assert result.status == "failed"
    assert "contrast" in result.scores["failure_reason"]
    assert result.scores["agatston"] is None


def test_image_without_aorta_fails_with_a_reason(models):
    rng = np.random.default_rng(0)
    a = rng.normal(40, 15, (40, 96, 96)).astype(np.float32)   # soft tissue block
    a[:, :, :20] = -900                                          # lung
    a[:, 40:50, 40:50] = 350                                     # a bright blob, not an aorta
    result = run_pipeline(Volume(a, (1.0, 0.8, 0.8), kvp=100), device="cpu", models=models)
    assert result.status == "failed"
    assert result.scores["failure_reason"]


def _tree_slice(case, fraction: float = 0.5) -> int:
    """The axial slice ``fraction`` of the way up the true coronary tree."""
    vessels = np.isin(case.ccta_labels, list(VESSEL_LABEL.values()))
    z = np.flatnonzero(vessels.any(axis=(1, 2)))
    return int(z[0] + fraction * (z[-1] - z[0]))


def test_field_of_view_cutting_through_the_heart_fails_with_a_reason(small_case, models):
    # A scan that stops half-way down the heart: the arteries run off its bottom edge while
    # still wide, and their calcium beyond the image would be missing.
    v, cut = small_case.ccta, _tree_slice(small_case)
    origin = np.asarray(v.origin) + np.asarray(v.direction) @ [0.0, 0.0, cut * v.spacing[0]]
    upper = Volume(v.array[cut:].copy(), v.spacing, tuple(origin), v.direction, v.kvp,
                   dict(v.metadata))
    result = run_pipeline(upper, device="cpu", models=models)
    assert result.status == "failed" and result.scores["agatston"] is None
    reason = result.scores["failure_reason"]
    assert reason.startswith("field of view cuts through the heart")
    assert "leaves the image at its bottom (feet) edge" in reason
    assert (result.labels > 0).any()


def test_step_between_heartbeats_fails_as_motion_artefact(small_case, models):
    # The upper half of the scan comes from a heartbeat 4 mm away from the lower half's.
    from scipy import ndimage

    v, z = small_case.ccta, _tree_slice(small_case)
    moved = v.array.copy()
    moved[z:] = ndimage.shift(moved[z:], (0, 2.4 / v.spacing[1], 3.2 / v.spacing[2]),
                              order=1, mode="nearest")
    result = run_pipeline(Volume(moved, v.spacing, v.origin, v.direction, v.kvp,
                                 dict(v.metadata)), device="cpu", models=models)
    assert result.status == "failed"
    reason = result.scores["failure_reason"]
    assert reason.startswith("motion artefacts")
    height = v.origin[2] + (z - 0.5) * v.spacing[0]     # axial, head up: S of the boundary
    assert f"at S = {height:.1f} mm" in reason
    assert all(abs(j.slice - z) > 1 for j in result.details["slice_jumps"])   # told once


def test_slab_skipped_between_heartbeats_is_a_warning(small_case, models):
    # 6 mm of the heart missing where two heartbeats' slabs meet: scored, with a warning.
    v = small_case.ccta
    # (above the middle: on this coarse case the networks find only the upper arteries)
    k, gap = _tree_slice(small_case, 0.6), int(round(6.0 / v.spacing[0]))
    skipped = np.concatenate([v.array[:k], v.array[k + gap:]])
    result = run_pipeline(Volume(skipped, v.spacing, v.origin, v.direction, v.kvp,
                                 dict(v.metadata)), device="cpu", models=models)
    height = v.origin[2] + (k - 0.5) * v.spacing[0]     # axial, head up: S of the boundary
    assert [w for w in result.scores["warnings"] if w.startswith("slab artefact")] == [
        f"slab artefact: the slices do not join at S = {height:.1f} mm "
        f"(the heart changes {result.details['slice_jumps'][0].ratio:.1f} times as much there "
        f"as between neighbouring slices: slabs of two heartbeats that do not match, as where "
        f"one is skipped or misplaced): "
        f"calcium near it may be missed or doubled"]


def test_implausible_tree_fails_instead_of_giving_a_number(small_case, models, monkeypatch):
    # As on a real chest CTA where the network followed the calcified aortic wall: the tree
    # touches the aorta in many places. The case fails, and the user still gets the labels.
    import dataclasses

    import AutoCACLib.postprocess as postprocess

    real = postprocess.postprocess_coronaries

    def many_ostia(*args, **kwargs):
        result = real(*args, **kwargs)
        return dataclasses.replace(result, qc=dataclasses.replace(result.qc, n_major_ostia=9))

    monkeypatch.setattr(postprocess, "postprocess_coronaries", many_ostia)
    result = run_pipeline(small_case.ccta, device="cpu", models=models)
    assert result.status == "failed" and result.scores["agatston"] is None
    assert result.scores["failure_reason"].startswith("coronary tree not usable")
    assert "join the aorta in 9 separate places" in result.scores["failure_reason"]
    assert (result.labels > 0).any()


def test_tree_without_the_lad_fails_instead_of_scoring_without_it(small_case, models,
                                                                    monkeypatch):
    # A network that loses the LAD (heavy calcium, low contrast) would give a score missing
    # the LAD's calcium: the case fails and names the vessel.
    import dataclasses

    import AutoCACLib.postprocess as postprocess

    real = postprocess.postprocess_coronaries

    def without_lad(*args, **kwargs):
        result = real(*args, **kwargs)
        labels = result.labels.copy()
        labels[labels == postprocess.LAD] = 0
        return postprocess.PostprocessResult(
            labels, dataclasses.replace(result.qc, missing=("LAD",)))

    monkeypatch.setattr(postprocess, "postprocess_coronaries", without_lad)
    result = run_pipeline(small_case.ccta, device="cpu", models=models)
    assert result.status == "failed" and result.scores["agatston"] is None
    reason = result.scores["failure_reason"]
    assert reason.startswith("coronary tree incomplete")
    assert "left anterior descending artery (LAD) was not found" in reason


def test_cancel_stops_before_writing_anything(small_case, models):
    with pytest.raises(Cancelled):
        run_pipeline(small_case.ccta, device="cpu", models=models, cancel=lambda: True)


def test_batch_run_keeps_going_after_a_failed_case(small_case, tmp_path, capsys):
    write_volume(small_case.ccta, tmp_path / "in" / "good.nrrd")
    write_volume(small_case.csct, tmp_path / "in" / "plain.nrrd")
    (tmp_path / "in" / "broken.nrrd").write_text("not an image")
    assert main(["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"good", "plain", "broken"}
    assert rows["plain"]["status"] == "failed"
    assert "contrast" in rows["plain"]["failure_reason"]
    assert rows["broken"]["status"] == "failed"
    assert "unusable input" in rows["broken"]["failure_reason"]
    for name in ("scores.json", "segmentation.seg.nrrd", "report.png"):
        assert (tmp_path / "out" / "good" / name).is_file()


def test_single_unusable_input_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "broken.nrrd").write_text("not an image")
    assert main(["run", str(tmp_path / "broken.nrrd"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autocac: error: cannot read image")
