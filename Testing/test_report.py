"""The one-page PNG report renders for scored and failed cases."""

import numpy as np
from matplotlib.image import imread

from AutoCACLib.report import render_report
from AutoCACLib.results import scores_document
from AutoCACLib.scoring import score_labelmap
from AutoCACLib.segments import AORTA_LABEL, CALCIUM_LABEL, VESSEL_LABEL
from AutoCACLib.volume import Volume


def small_case():
    a = np.full((20, 64, 64), 40.0, dtype=np.float32)
    a[:, :, :8] = -1000
    labels = np.zeros(a.shape, np.uint8)
    labels[:, 40:50, 10:20] = AORTA_LABEL
    a[labels == AORTA_LABEL] = 400
    labels[5:15, 30, 20:40] = VESSEL_LABEL["LAD"]
    labels[10, 29:32, 30:33] = CALCIUM_LABEL["LAD"]
    a[10, 29:32, 30:33] = 700
    return Volume(a, (0.5, 0.4, 0.4), kvp=100), labels


def test_report_of_a_scored_case(tmp_path):
    volume, labels = small_case()
    doc = scores_document(score_labelmap(volume, labels), warnings=["a warning"],
                          inputs={"kvp": 100}, calibration_factor=380.0)
    render_report(volume, labels, doc, tmp_path / "r.png")
    image = imread(tmp_path / "r.png")
    assert image.shape[0] == 850 and image.shape[1] == 1300
    assert image[..., :3].std() > 0.05          # not a blank page


def test_report_of_a_failed_case(tmp_path):
    volume, _ = small_case()
    labels = np.zeros(volume.shape, np.uint8)
    doc = scores_document(None, status="failed", failure_reason="no aorta found")
    render_report(volume, labels, doc, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_many_warnings_stay_above_the_footer():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from AutoCACLib.report import _warnings

    fig, ax = plt.subplots()
    warnings = [f"warning {i}: " + "a long explanation of what went wrong " * 3 for i in range(12)]
    _warnings(ax, warnings, 0.44)
    texts = ax.texts
    assert min(t.get_position()[1] for t in texts) >= 0.04
    assert texts[-1].get_text().startswith("(+") and "more warnings in scores.json" in \
        texts[-1].get_text()
    shown = sum(t.get_text().startswith("⚠") for t in texts)
    assert f"(+{12 - shown} more" in texts[-1].get_text()
    plt.close(fig)


def test_a_warning_too_long_for_the_room_is_cut_short_not_hidden():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from AutoCACLib.report import _warnings

    fig, ax = plt.subplots()
    warning = "slab artefact: " + "the slices do not join at this height " * 7
    _warnings(ax, [warning], 0.23)               # where a scored case's warnings start
    texts = [t.get_text() for t in ax.texts]
    assert texts[0].startswith("⚠ slab artefact: the slices do not join")
    assert texts[-2].endswith(" …") and texts[-1] == "(full text in scores.json)"
    assert min(t.get_position()[1] for t in ax.texts) >= 0.04
    plt.close(fig)
