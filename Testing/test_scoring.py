"""Standard calcium scoring: every convention on hand-computed boundary cases."""

import numpy as np
import pytest

from AutoCACLib.categories import cac_drs, risk_category
from AutoCACLib.errors import InputError
from AutoCACLib.scoring import (NOT_AXIAL_WARNING, ScoringSettings, agatston_weight,
                                kvp_calcium_factor, score_calcium, score_labelmap,
                                score_volume)
from AutoCACLib.segments import CALCIUM_LABEL, VESSEL_LABEL
from AutoCACLib.volume import Volume, to_axial_lps

SP3 = (3.0, 0.5, 0.5)  # 3 mm slices, 0.5 mm pixels: one pixel = 0.25 mm^2


def blank(shape=(3, 20, 20)):
    return np.full(shape, 40.0), np.zeros(shape, dtype=np.uint8)


def _two_plaques():
    """An axial volume (1 mm slices) with a plaque spanning 3 slices and one in 1 slice."""
    img, lab = blank((8, 20, 20))
    img[2:5, 4:8, 4:7] = 450.0
    img[6, 12:15, 10:14] = 250.0
    lab[2:5, 3:9, 3:8] = 2
    lab[6, 11:16, 9:15] = 4
    return Volume(img, (1.0, 0.5, 0.5), (0.0, 0.0, 0.0)), lab


def test_coronal_stack_is_scored_on_axial_slices():
    axial, lab = _two_plaques()
    # The same voxels stored as coronal slices (slice axis posterior, rows head-ward).
    coronal = Volume(axial.array.transpose(1, 0, 2), (0.5, 1.0, 0.5), (0.0, 0.0, 0.0),
                     np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]))
    assert to_axial_lps(coronal)[0].same_geometry(axial)
    expected = score_calcium(axial.array, lab, axial.spacing)
    got = score_volume(coronal, lab.transpose(1, 0, 2))
    assert got.agatston == expected.agatston and got.volume_mm3 == expected.volume_mm3
    assert NOT_AXIAL_WARNING in got.warnings
    # Scoring the coronal slices as if they were axial gives another number.
    wrong = score_calcium(coronal.array, lab.transpose(1, 0, 2), coronal.spacing)
    assert wrong.agatston["total"] != pytest.approx(expected.agatston["total"])


def test_feet_first_image_keeps_its_scores_and_stored_slice_numbers():
    axial, lab = _two_plaques()
    feet_first = Volume(axial.array[::-1], axial.spacing, (0.0, 0.0, 7.0), np.diag([1, 1, -1.0]))
    expected = score_calcium(axial.array, lab, axial.spacing)
    got = score_volume(feet_first, lab[::-1])
    assert got.agatston == expected.agatston and not got.warnings
    assert sorted(les["slice"] for les in got.lesions) == \
        sorted(7 - les["slice"] for les in expected.lesions)


def test_exactly_threshold_counts_and_just_below_does_not():
    img, lab = blank()
    img[1, 5:7, 5:7] = 130.0           # 4 px = 1 mm^2 at exactly 130 HU
    lab[1, 4:8, 4:8] = 2
    s = score_calcium(img, lab, SP3)
    assert s.agatston["LAD"] == pytest.approx(1.0)   # 1 mm^2 x weight 1
    img[1, 5:7, 5:7] = 129.9
    assert score_calcium(img, lab, SP3).agatston["total"] == 0


def test_minimum_area_is_inclusive():
    img, lab = blank()
    lab[1] = 1
    img[1, 2:4, 2:4] = 300.0           # 4 px = exactly 1 mm^2 -> counts, weight 3
    img[1, 10, 10:13] = 300.0          # 3 px = 0.75 mm^2 -> too small
    s = score_calcium(img, lab, SP3)
    assert s.lesion_count["LM"] == 1
    assert s.agatston["LM"] == pytest.approx(3.0)
    assert s.volume_mm3["LM"] == pytest.approx(4 * 0.25 * 3.0)


def test_minimum_area_in_pixels():
    img, lab = blank()
    lab[1] = 1
    img[1, 2:4, 2:4] = 300.0
    s = score_calcium(img, lab, SP3, ScoringSettings(min_area_mm2=0.0, min_area_pixels=5))
    assert s.lesion_count["total"] == 0
    s = score_calcium(img, lab, SP3, ScoringSettings(min_area_mm2=0.0, min_area_pixels=4))
    assert s.lesion_count["total"] == 1


def test_diagonal_neighbours_join_with_8_connectivity_only():
    img, lab = blank()
    lab[1] = 3
    # Two 2x2 blocks touching only at a corner: one lesion (8-conn) or two (4-conn).
    img[1, 2:4, 2:4] = 250.0
    img[1, 4:6, 4:6] = 450.0
    s8 = score_calcium(img, lab, SP3)
    assert s8.lesion_count["LCx"] == 1
    assert s8.agatston["LCx"] == pytest.approx(2.0 * 4)        # 2 mm^2 x weight 4 (peak 450)
    s4 = score_calcium(img, lab, SP3, ScoringSettings(connectivity=4))
    assert s4.lesion_count["LCx"] == 2
    assert s4.agatston["LCx"] == pytest.approx(1.0 * 2 + 1.0 * 4)


@pytest.mark.parametrize("peak,weight", [(130, 1), (199.9, 1), (200, 2), (299, 2), (300, 3),
                                         (399.5, 3), (400, 4), (1500, 4), (129, 0)])
def test_weight_bins(peak, weight):
    assert agatston_weight(peak) == weight


def test_weight_uses_peak_of_lesion_in_slice():
    img, lab = blank()
    lab[1] = 4
    img[1, 2:6, 2:6] = 150.0           # 16 px = 4 mm^2
    img[1, 3, 3] = 401.0               # one bright pixel sets the weight of the whole lesion
    s = score_calcium(img, lab, SP3)
    assert s.agatston["RCA"] == pytest.approx(4.0 * 4)
    assert s.lesions[0]["peak_hu"] == 401.0


def test_thin_slices_normalized_to_3mm():
    # 1.5 mm slices: the same lesion on two slices scores like once at 3 mm.
    img, lab = blank((4, 20, 20))
    lab[:] = 2
    img[1:3, 5:9, 5:9] = 250.0         # 16 px = 4 mm^2 per slice, weight 2
    s = score_calcium(img, lab, (1.5, 0.5, 0.5))
    assert s.lesion_count["LAD"] == 2                  # 2D lesions: one per slice
    assert s.agatston["LAD"] == pytest.approx(2 * 4 * 2 * 1.5 / 3)
    assert s.volume_mm3["LAD"] == pytest.approx(32 * 0.25 * 1.5)
    raw = score_calcium(img, lab, (1.5, 0.5, 0.5),
                        ScoringSettings(normalize_slice_increment=False))
    assert raw.agatston["LAD"] == pytest.approx(2 * 4 * 2)


def test_weight_read_over_a_slab_weighs_thin_calcium_as_a_thick_slice_does():
    """With ``weight_slab_mm`` a calcification thinner than the slab loses weight (its peak is
    averaged with the slices around it); one as thick as the slab keeps it; the area, volume
    and reported peak are the slices' own; slices at least that thick are unaffected."""
    sp = (0.5, 0.5, 0.5)
    img, lab = blank((20, 20, 20))
    lab[:] = 2
    img[4, 5:9, 5:9] = 700.0           # 0.5 mm thin: slab mean (700 + 5 * 40) / 6 = 150 HU
    img[10:17, 12:16, 12:16] = 700.0   # 3.5 mm thick: its middle slices stay at 700 HU
    slab = ScoringSettings(weight_slab_mm=3.0)
    thin, averaged = score_calcium(img, lab, sp), score_calcium(img, lab, sp, slab)
    weights = {les["slice"]: les["weight"] for les in averaged.lesions}
    assert weights[4] == 1 and weights[13] == 4
    assert [les["weight"] for les in thin.lesions] == [4] * 8
    assert averaged.volume_mm3 == thin.volume_mm3
    assert {les["peak_hu"] for les in averaged.lesions} == {700.0}
    assert averaged.agatston["LAD"] < thin.agatston["LAD"]
    thick = score_calcium(img[::6], lab[::6], (3.0, 0.5, 0.5), slab)
    assert thick.agatston == score_calcium(img[::6], lab[::6], (3.0, 0.5, 0.5)).agatston
    with pytest.raises(InputError):
        ScoringSettings(weight_slab_mm=0.0)


def test_3d_lesions_group_slices_and_keep_per_slice_weights():
    img, lab = blank((4, 20, 20))
    lab[:] = 1
    img[1, 5:9, 5:9] = 250.0           # 4 mm^2, weight 2
    img[2, 5:7, 5:7] = 450.0           # 1 mm^2, weight 4, overlapping in xy -> same 3D lesion
    img[2, 15, 15] = 450.0             # single pixel: below 1 mm^2, dropped
    s = score_calcium(img, lab, SP3, ScoringSettings(lesion_dim="3d"))
    assert s.lesion_count["LM"] == 1
    assert s.lesions[0]["n_slices"] == 2
    assert s.agatston["LM"] == pytest.approx(4 * 2 + 1 * 4)
    # 6- vs 26-connectivity in 3D: a diagonal step between slices.
    img, lab = blank((4, 20, 20))
    lab[:] = 1
    img[1, 2:4, 2:4] = 300.0
    img[2, 4:6, 4:6] = 300.0
    assert score_calcium(img, lab, SP3, ScoringSettings(lesion_dim="3d")).lesion_count["LM"] == 1
    assert score_calcium(img, lab, SP3, ScoringSettings(lesion_dim="3d", connectivity=4)
                         ).lesion_count["LM"] == 2


def test_voxels_below_threshold_inside_segment_do_not_count_and_outside_is_ignored():
    img, lab = blank()
    lab[1, 2:10, 2:10] = 2
    img[1, 2:10, 2:10] = 100.0         # soft plaque inside the region
    img[1, 15:19, 15:19] = 900.0       # bright but outside any calcium region (e.g. bone)
    assert score_calcium(img, lab, SP3).agatston["total"] == 0


def test_lesion_split_between_vessels_is_scored_per_vessel():
    img, lab = blank()
    img[1, 4:8, 4:8] = 350.0
    lab[1, 4:8, 4:6] = 1               # left half LM
    lab[1, 4:8, 6:8] = 2               # right half LAD
    s = score_calcium(img, lab, SP3)
    assert s.agatston["LM"] == pytest.approx(2.0 * 3)
    assert s.agatston["LAD"] == pytest.approx(2.0 * 3)
    assert s.agatston["total"] == pytest.approx(12.0)


def test_mass_needs_calibration():
    img, lab = blank()
    lab[1] = 1
    img[1, 2:4, 2:4] = 500.0
    assert score_calcium(img, lab, SP3).mass_mg is None
    s = score_calcium(img, lab, SP3, ScoringSettings(mass_calibration=0.8))
    assert s.mass_mg["LM"] == pytest.approx(0.8e-3 * 3.0 * 500.0)   # c x volume x mean HU


def test_kvp_specific_thresholds():
    assert kvp_calcium_factor(120) == 1.0
    assert kvp_calcium_factor(90) == pytest.approx((1.36 + 1.15) / 2)
    img, lab = blank()
    lab[1] = 1
    img[1, 2:4, 2:4] = 160.0           # above 130, below 130 x 1.36 = 176.8
    plain = score_calcium(img, lab, SP3, kvp=80)
    adapted = score_calcium(img, lab, SP3, ScoringSettings(kvp_specific=True), kvp=80)
    assert plain.agatston["total"] == pytest.approx(1.0)
    assert adapted.agatston["total"] == 0
    unknown = score_calcium(img, lab, SP3, ScoringSettings(kvp_specific=True), kvp=None)
    assert unknown.agatston["total"] == pytest.approx(1.0) and unknown.warnings
    with pytest.raises(InputError):
        score_calcium(img, lab, SP3, ScoringSettings(kvp_specific=True), kvp=40)


def test_settings_are_validated_and_written_into_result():
    with pytest.raises(InputError):
        ScoringSettings(connectivity=6)
    with pytest.raises(InputError):
        ScoringSettings(lesion_dim="4d")
    with pytest.raises(InputError):
        ScoringSettings(weight_thresholds_hu=(130, 300, 200, 400))
    img, lab = blank()
    d = score_calcium(img, lab, SP3, ScoringSettings(connectivity=4)).to_dict()
    assert d["settings"]["connectivity"] == 4
    assert d["settings"]["threshold_hu"] == 130.0
    assert d["category"] == "0" and d["cac_drs"] == "A0"


def test_score_labelmap_reads_calcium_segments_only():
    img, _ = blank()
    labels = np.zeros(img.shape, dtype=np.uint8)
    img[1, 2:6, 2:6] = 500.0
    labels[1, 2:6, 2:6] = VESSEL_LABEL["RCA"]       # lumen segment: not calcium
    vol = Volume(img, SP3)
    assert score_labelmap(vol, labels).agatston["total"] == 0
    labels[1, 2:6, 2:6] = CALCIUM_LABEL["RCA"]
    assert score_labelmap(vol, labels).agatston["RCA"] == pytest.approx(4.0 * 4)


@pytest.mark.parametrize("score,cat", [(0, "0"), (0.1, "1-10"), (10, "1-10"), (10.4, "11-100"),
                                       (100, "11-100"), (100.5, "101-400"), (400, "101-400"),
                                       (400.01, ">400")])
def test_risk_categories(score, cat):
    assert risk_category(score) == cat


def test_cac_drs():
    assert cac_drs(0, 0) == "A0"
    assert cac_drs(99.9, 1) == "A1/N1"
    assert cac_drs(100, 2) == "A2/N2"
    assert cac_drs(300, 4) == "A3/N4"


def test_score_scales_multiply_agatston_and_volume():
    img, lab = blank()
    lab[1] = 1
    img[1, 2:4, 2:4] = 300.0
    s = score_calcium(img, lab, SP3, ScoringSettings(agatston_scale=1.5, volume_scale=2.0))
    assert s.agatston["LM"] == pytest.approx(3.0 * 1.5)
    assert s.volume_mm3["LM"] == pytest.approx(3.0 * 2.0)
    with pytest.raises(InputError):
        ScoringSettings(agatston_scale=0)
