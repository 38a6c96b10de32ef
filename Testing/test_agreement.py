"""Agreement statistics against hand-computed values and independent formulations."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from AutoCACLib.agreement import (
    agreement,
    agreement_report,
    bland_altman,
    concordance,
    confusion_table,
    paired_t_p,
    pearson_r,
    weighted_kappa,
)
from AutoCACLib.categories import CATEGORIES, category_index
from AutoCACLib.errors import InputError


def _lin_ci_r_form(x, y):
    """Lin's (1989, 2000) CI written with r, as printed, to check the C_b rewriting."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    sx, sy = x.std(), y.std()
    r = np.corrcoef(x, y)[0, 1]
    c = 1 - np.mean((x - y) ** 2) / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)
    u = (x.mean() - y.mean()) / math.sqrt(sx * sy)
    var = (
        (1 - r**2) * c**2 / ((1 - c**2) * r**2)
        + 2 * c**3 * (1 - c) * u**2 / (r * (1 - c**2) ** 2)
        - c**4 * u**4 / (2 * r**2 * (1 - c**2) ** 2)
    ) / (n - 2)
    z = math.atanh(c)
    return c, [math.tanh(z - 1.96 * math.sqrt(var)), math.tanh(z + 1.96 * math.sqrt(var))]


def _kappa_pairwise(ref_cat, test_cat, power):
    """Weighted kappa from its definition over subjects, not from a confusion matrix.

    Agreement weight a(i, j) = 1 - (|i - j| / 4) ** power. Observed agreement is the mean of
    a over the paired subjects; chance agreement is the mean of a over all n^2 pairings of a
    reference rating with a test rating; kappa = (p_o - p_e) / (1 - p_e).
    """

    def a(i, j):
        return 1 - (abs(i - j) / 4) ** power

    n = len(ref_cat)
    p_o = sum(a(i, j) for i, j in zip(ref_cat, test_cat)) / n
    p_e = sum(a(i, j) for i, j in itertools.product(ref_cat, test_cat)) / n**2
    return (p_o - p_e) / (1 - p_e)


def _random_scores(rng, n):
    """Score pairs spread over all 5 categories, test a noisy underestimate of ref."""
    ref = np.where(rng.random(n) < 0.25, 0.0, np.exp(rng.uniform(0, 7.5, n)))
    test = np.clip(ref * rng.normal(0.9, 0.15, n) + rng.normal(0, 3, n), 0, None)
    return ref, test


# --- hand-computed examples --------------------------------------------------------------


def test_three_point_example_by_hand():
    # x = [1, 2, 3], y = [2, 3, 5]: means 2 and 10/3; 1/n moments s_xx = 2/3, s_yy = 14/9,
    # s_xy = ((-1)(-4/3) + 0 + (1)(5/3)) / 3 = 1, (mean diff)^2 = 16/9.
    # CCC = 2 * 1 / (6/9 + 14/9 + 16/9) = 2 / 4 = 0.5; r = 1 / sqrt(2/3 * 14/9) = sqrt(27/28).
    # d = y - x = [1, 1, 2]: bias 4/3, sample variance (1/9 + 1/9 + 4/9) / 2 = 1/3.
    x, y = [1, 2, 3], [2, 3, 5]
    ccc, ci = concordance(x, y)
    assert ccc == pytest.approx(0.5, abs=1e-12)
    assert ci == pytest.approx(_lin_ci_r_form(x, y)[1], abs=1e-12)
    assert pearson_r(x, y) == pytest.approx(math.sqrt(27 / 28), abs=1e-12)
    bias, sd, loa = bland_altman(x, y)
    assert bias == pytest.approx(4 / 3, abs=1e-12)
    assert sd == pytest.approx(math.sqrt(1 / 3), abs=1e-12)
    assert loa == pytest.approx([4 / 3 - 1.96 * math.sqrt(1 / 3), 4 / 3 + 1.96 * math.sqrt(1 / 3)])
    # t = (4/3) / (sqrt(1/3) / sqrt(3)) = 4, df = 2: p = 2 * (1 - F_t2(4)); the t2 CDF is
    # 1/2 + t / (2 sqrt(t^2 + 2)), so p = 1 - 4 / sqrt(18) = 1 - 2 sqrt(2) / 3.
    assert paired_t_p(x, y) == pytest.approx(1 - 2 * math.sqrt(2) / 3, abs=1e-12)


def test_kappa_and_confusion_by_hand():
    # ref categories [0, 1, 2, 3, 4], test categories [0, 2, 2, 3, 3].
    # Row margins [1, 1, 1, 1, 1], column margins [1, 0, 2, 2, 0], n = 5.
    # Linear, w = |i - j| / 4: observed sum(w O) / n = (1/4 + 1/4) / 5 = 0.1; expected
    # sum_j c_j sum_i |i - j| / 4 / n^2 = (1*10 + 2*6 + 2*7) / 4 / 25 = 0.36,
    # so kappa = 1 - 0.1 / 0.36 = 13/18.
    # Quadratic, w = (i - j)^2 / 16: observed (2/16) / 5 = 1/40; expected
    # (1*30 + 2*10 + 2*15) / 16 / 25 = 0.2 -> 1 - 0.025/0.2 = 7/8.
    ref = [0, 5, 50, 200, 1000]
    test = [0, 50, 50, 200, 300]
    res = agreement(ref, test)
    assert res["kappa_linear"] == pytest.approx(13 / 18, abs=1e-12)
    assert res["kappa_quadratic"] == pytest.approx(7 / 8, abs=1e-12)
    assert res["accuracy"] == pytest.approx(3 / 5)
    assert res["confusion"] == [
        [1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 0],
    ]
    assert res["categories"] == list(CATEGORIES)


def test_confusion_rows_are_reference_and_boundaries_are_unrounded():
    # 10 is "1-10", 10.4 is "11-100"; 400 is "101-400", 400.5 is ">400"; 0.1 is "1-10".
    table = confusion_table([10, 400, 0], [10.4, 400.5, 0.1])
    expected = np.zeros((5, 5), int)
    expected[1, 2] = expected[3, 4] = expected[0, 1] = 1
    np.testing.assert_array_equal(table, expected)


# --- independent implementations -----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_independent_formulations(seed):
    rng = np.random.default_rng(seed)
    ref, test = _random_scores(rng, 120)
    res = agreement(ref, test)

    assert res["pearson_r"] == pytest.approx(stats.pearsonr(ref, test).statistic, abs=1e-12)
    d = test - ref
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert res["paired_t_p"] == pytest.approx(2 * stats.t.sf(abs(t), d.size - 1), rel=1e-9)

    ccc_r_form, ci_r_form = _lin_ci_r_form(ref, test)
    assert res["ccc"] == pytest.approx(ccc_r_form, abs=1e-12)
    assert res["ccc_ci95"] == pytest.approx(ci_r_form, abs=1e-12)
    assert res["ccc_ci95"][0] < res["ccc"] < res["ccc_ci95"][1]

    rc = [category_index(v) for v in ref]
    tc = [category_index(v) for v in test]
    assert len(set(rc)) == 5
    assert res["kappa_linear"] == pytest.approx(_kappa_pairwise(rc, tc, 1), abs=1e-12)
    assert res["kappa_quadratic"] == pytest.approx(_kappa_pairwise(rc, tc, 2), abs=1e-12)
    # Quadratic weighted kappa equals the CCC of the category ordinals (Fleiss & Cohen 1973).
    assert res["kappa_quadratic"] == pytest.approx(concordance(rc, tc)[0], abs=1e-12)
    assert res["accuracy"] == pytest.approx(np.mean(np.array(rc) == np.array(tc)))
    assert sum(map(sum, res["confusion"])) == 120


def test_ccc_ci_covers_true_value_about_95_percent():
    # Bivariate normal: true CCC = 2 rho sx sy / (sx^2 + sy^2 + (mx - my)^2) = 19.2 / 29.
    rng = np.random.default_rng(7)
    mean, sx, sy, rho, n = np.array([30.0, 32.0]), 3.0, 4.0, 0.8, 60
    cov = [[sx**2, rho * sx * sy], [rho * sx * sy, sy**2]]
    true_ccc = 2 * rho * sx * sy / (sx**2 + sy**2 + 4.0)
    samples = rng.multivariate_normal(mean, cov, size=(2000, n))
    hits = 0
    for s in samples:
        lo, hi = concordance(s[:, 0], s[:, 1])[1]
        hits += lo <= true_ccc <= hi
    assert 0.93 <= hits / len(samples) <= 0.965


# --- edge cases ------------------------------------------------------------------------------


def test_identical_constant_scores_agree_perfectly():
    res = agreement([0, 0, 0], [0, 0, 0])
    assert res["ccc"] == 1.0 and res["ccc_ci95"] == [1.0, 1.0]
    assert res["pearson_r"] is None and res["paired_t_p"] is None
    assert res["mean_diff"] == 0.0 and res["loa"] == [0.0, 0.0]
    assert res["kappa_linear"] == res["kappa_quadratic"] == res["accuracy"] == 1.0
    assert res["confusion"][0][0] == 3
    json.dumps(res, allow_nan=False)


def test_identical_varying_scores():
    res = agreement([0, 7, 80, 900], [0, 7, 80, 900])
    assert res["ccc"] == 1.0 and res["ccc_ci95"] == [1.0, 1.0]
    assert res["pearson_r"] == pytest.approx(1.0)
    assert res["paired_t_p"] is None
    assert res["kappa_linear"] == res["kappa_quadratic"] == 1.0


def test_one_constant_vector():
    # s_xy = 0 so CCC = 0; r and hence Lin's CI are undefined.
    ccc, ci = concordance([0, 0, 0], [1, 2, 3])
    assert ccc == 0.0 and ci is None
    assert pearson_r([0, 0, 0], [1, 2, 3]) is None
    # All reference in one category: expected = observed table, kappa is exactly 0 (chance).
    res = agreement([0, 0, 0], [0, 5, 50])
    assert res["kappa_linear"] == pytest.approx(0.0, abs=1e-12)
    assert res["kappa_quadratic"] == pytest.approx(0.0, abs=1e-12)


def test_constant_difference_has_no_t_test():
    res = agreement([1, 2, 3, 4], [6, 7, 8, 9])
    assert res["paired_t_p"] is None
    assert res["mean_diff"] == 5.0 and res["loa"] == [5.0, 5.0]
    assert 0 < res["ccc"] < 1 and res["pearson_r"] == pytest.approx(1.0)


def test_two_pairs():
    res = agreement([1, 3], [2, 5])
    assert res["ccc_ci95"] is None  # Lin's variance divides by n - 2
    assert res["pearson_r"] == pytest.approx(1.0)
    # d = [1, 2]: t = 1.5 / (sqrt(0.5) / sqrt(2)) = 3, df = 1: p = 1 - 2 atan(3) / pi.
    assert res["paired_t_p"] == pytest.approx(1 - 2 * math.atan(3) / math.pi, abs=1e-12)


def test_weighted_kappa_rejects_unknown_weights():
    with pytest.raises(ValueError, match="linear"):
        weighted_kappa(np.eye(5), "cubic")


@pytest.mark.parametrize(
    "ref, test, message",
    [
        ([1.0], [1.0], "at least 2"),
        ([], [], "at least 2"),
        ([1, 2, 3], [1, 2], "differ in length"),
        ([1, float("nan"), 3], [1, 2, 3], "ref has a non-finite value"),
        ([1, 2, 3], [1, 2, float("inf")], "test has a non-finite value"),
        ([1, -2, 3], [1, 2, 3], "negative"),
        ([[1, 2], [3, 4]], [[1, 2], [3, 4]], "1-D"),
        (["a", "b"], [1, 2], "not a list of numbers"),
    ],
)
def test_bad_arrays_are_rejected_in_one_line(ref, test, message):
    with pytest.raises(InputError, match=message) as exc:
        agreement(ref, test)
    assert "\n" not in str(exc.value)


# --- CSV report ------------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_report_from_csv_matches_arrays(tmp_path):
    rng = np.random.default_rng(3)
    ref, test = _random_scores(rng, 40)
    rows = [f"c{i},{float(a)!r},{float(b)!r}" for i, (a, b) in enumerate(zip(ref, test))]
    lines = ["case,csct,ccta"] + rows
    path = _write(tmp_path / "scores.csv", "\n".join(lines) + "\n")
    res = agreement_report(path, "csct", "ccta")
    assert res == agreement(ref, test)
    required = {"n", "ccc", "ccc_ci95", "pearson_r", "paired_t_p", "mean_diff", "loa",
                "kappa_linear", "kappa_quadratic", "accuracy", "confusion"}
    assert required <= res.keys()
    assert res["n"] == 40 and type(res["n"]) is int
    assert all(type(res[k]) is float for k in ("ccc", "pearson_r", "kappa_linear", "accuracy"))
    assert json.loads(json.dumps(res, allow_nan=False)) == res


def test_report_reads_bom_and_undefined_values_become_null(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffref,test\r\n0,0\r\n0,0\r\n".encode("utf-8"))
    res = agreement_report(str(path), "ref", "test")
    assert res["n"] == 2 and res["ccc"] == 1.0
    assert '"pearson_r": null' in json.dumps(res, allow_nan=False)


@pytest.mark.parametrize(
    "text, ref_col, message",
    [
        ("ref,test\n1,2\n3,4\n", "csct", r"column 'csct' not in s\.csv; available: 'ref', 'test'"),
        ("ref,test\n1,2\nabc,4\n", "ref", r"row 2 \(line 3\), column 'ref': 'abc' is not a number"),
        ("ref,test\n1,2\n3,\n", "ref", r"row 2 \(line 3\), column 'test' is empty"),
        ("ref,test\n1,2\n3\n", "ref", r"row 2 \(line 3\), column 'test' is empty"),
        ("ref,test\n1,2\nnan,4\n", "ref", r"row 2 \(line 3\), column 'ref': 'nan' is not a finite"),
        ("ref,test\n1,2\n-1,4\n", "ref", r"row 2 \(line 3\), column 'ref': -1 is a negative score"),
        ("ref,test\n1,2\n", "ref", r"s\.csv has 1 data row\(s\); agreement needs at least 2"),
        ("ref,test\n", "ref", r"has 0 data row"),
        ("", "ref", r"is empty: expected a header row"),
    ],
)
def test_report_errors_are_one_line_and_name_the_problem(tmp_path, text, ref_col, message):
    path = _write(tmp_path / "s.csv", text)
    with pytest.raises(InputError, match=message) as exc:
        agreement_report(path, ref_col, "test")
    assert "\n" not in str(exc.value)


def test_report_missing_or_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="no such file: .*absent.csv"):
        agreement_report(tmp_path / "absent.csv", "ref", "test")
    with pytest.raises(InputError, match="no such file"):
        agreement_report(tmp_path, "ref", "test")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"ref,test\n1,2\n3,\xe9\n")
    with pytest.raises(InputError, match="cannot read .*latin1.csv as CSV") as exc:
        agreement_report(path, "ref", "test")
    assert "\n" not in str(exc.value)
