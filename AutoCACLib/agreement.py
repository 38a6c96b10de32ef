"""Agreement between a test calcium score and a reference score (DESIGN.md, method item 9).

The paper validates the CCTA scores against the CSCT reference with Lin's concordance
correlation coefficient (CCC), Pearson r, a paired t-test, Bland-Altman limits, and weighted
kappa and accuracy over the 5 risk categories of :mod:`AutoCACLib.categories`.

Conventions
-----------
* Differences are *test minus reference*.
* CCC uses the population (1/n) moments of Lin (1989); its 95% CI is Lin's asymptotic interval
  on the Fisher z scale, z = atanh(CCC), with the variance of Lin (1989) as corrected in
  Lin (2000). Bland-Altman limits use the sample SD (ddof=1): bias +/- 1.96 SD.
* Kappa weights over the 5 ordinal categories are |i - j| / 4 (linear) and
  ((i - j) / 4) ** 2 (quadratic); kappa = 1 - sum(w * observed) / sum(w * expected).
* Accuracy is a fraction (0..1), not a percentage.

Undefined statistics are ``None`` (``null`` in JSON), never NaN:

* CCC is 1.0 when both vectors hold one and the same constant (its 0/0 form is read as perfect
  agreement); ``ccc_ci95`` is ``None`` when n < 3 (Lin's variance divides by n - 2) or when one
  vector is constant and the CCC is not +/-1, and ``[ccc, ccc]`` when CCC is exactly +/-1.
* ``pearson_r`` is ``None`` when either vector is constant.
* ``paired_t_p`` is ``None`` when all differences are equal (the t statistic is undefined).
* Weighted kappa is 1.0 when the expected disagreement is zero; that happens only when every
  case falls in one and the same category for both scores, so the observed agreement is then
  perfect too. Kappa is therefore always a number.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import stats

from .categories import CATEGORIES, category_index
from .errors import InputError

#: Two-sided 95% normal quantile, as in the usual Bland-Altman 1.96 SD limits.
Z95 = 1.96


def _as_scores(values, name: str) -> np.ndarray:
    """Validated 1-D float array of non-negative finite scores."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} is not a list of numbers: {exc}") from None
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise InputError(f"{name} has a non-finite value ({arr[bad[0]]}) at index {bad[0]}")
    neg = np.flatnonzero(arr < 0)
    if neg.size:
        raise InputError(f"{name} has a negative score ({arr[neg[0]]}) at index {neg[0]}")
    return arr


def _paired(ref, test) -> tuple[np.ndarray, np.ndarray]:
    x = _as_scores(ref, "ref")
    y = _as_scores(test, "test")
    if x.shape != y.shape:
        raise InputError(f"ref and test differ in length: {x.size} vs {y.size}")
    if x.size < 2:
        raise InputError(f"agreement needs at least 2 paired scores, got {x.size}")
    return x, y


def _is_constant(a: np.ndarray) -> bool:
    return bool(np.all(a == a[0]))


def concordance(ref, test) -> tuple[float, list[float] | None]:
    """Lin's concordance correlation coefficient and its 95% confidence interval.

    Parameters
    ----------
    ref, test : array_like
        Paired non-negative scores, at least 2.

    Returns
    -------
    ccc : float
        ``2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` with 1/n moments; 1.0 when both
        vectors are the same constant.
    ci95 : list of float or None
        ``[lo, hi]`` = tanh(atanh(ccc) -/+ 1.96 se) with Lin's standard error of atanh(ccc);
        ``None`` when n < 3 or when a constant vector leaves Pearson r undefined;
        ``[ccc, ccc]`` when ccc is exactly +/-1.

    Notes
    -----
    With r the Pearson correlation, v = s_x / s_y, u = (mean_x - mean_y) / sqrt(s_x s_y) and
    the bias correction C_b = 2 / (v + 1/v + u^2), ccc = r C_b and (Lin 1989, 2000)::

        var(z) = [ (1 - r^2) C_b^2 / (1 - ccc^2)
                   + 2 C_b ccc^2 (1 - ccc) u^2 / (1 - ccc^2)^2
                   - C_b^2 ccc^2 u^4 / (2 (1 - ccc^2)^2) ] / (n - 2)

    which is Lin's formula with ccc / r written as C_b so that it stays finite at r = 0.
    """
    x, y = _paired(ref, test)
    n = x.size
    mx, my = x.mean(), y.mean()
    sxx = np.mean((x - mx) ** 2)
    syy = np.mean((y - my) ** 2)
    sxy = np.mean((x - mx) * (y - my))
    denom = sxx + syy + (mx - my) ** 2
    ccc = 1.0 if denom == 0 else float(2 * sxy / denom)
    if n < 3:
        return ccc, None
    if abs(ccc) == 1.0:
        return ccc, [ccc, ccc]
    if sxx == 0 or syy == 0:
        return ccc, None
    r = sxy / math.sqrt(sxx * syy)
    u2 = (mx - my) ** 2 / math.sqrt(sxx * syy)
    cb = 2 / (math.sqrt(sxx / syy) + math.sqrt(syy / sxx) + u2)
    one_minus = 1 - ccc**2
    var_z = (
        (1 - r**2) * cb**2 / one_minus
        + 2 * cb * ccc**2 * (1 - ccc) * u2 / one_minus**2
        - cb**2 * ccc**2 * u2**2 / (2 * one_minus**2)
    ) / (n - 2)
    z = math.atanh(ccc)
    half = Z95 * math.sqrt(var_z)
    return ccc, [math.tanh(z - half), math.tanh(z + half)]


def pearson_r(ref, test) -> float | None:
    """Pearson correlation coefficient of paired scores; ``None`` when either is constant."""
    x, y = _paired(ref, test)
    if _is_constant(x) or _is_constant(y):
        return None
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.sum(dx * dy) / math.sqrt(np.sum(dx**2) * np.sum(dy**2)))


def paired_t_p(ref, test) -> float | None:
    """Two-sided p-value of the paired t-test of test against ref (``scipy.stats.ttest_rel``).

    ``None`` when all differences are equal: their SD is 0 and t is undefined.
    """
    x, y = _paired(ref, test)
    if _is_constant(y - x):
        return None
    return float(stats.ttest_rel(y, x).pvalue)


def bland_altman(ref, test) -> tuple[float, float, list[float]]:
    """Bland-Altman bias, SD of the differences and 95% limits of agreement.

    Returns
    -------
    bias : float
        Mean of test minus ref.
    sd : float
        Sample SD (ddof=1) of test minus ref.
    loa : list of float
        ``[bias - 1.96 sd, bias + 1.96 sd]``.
    """
    x, y = _paired(ref, test)
    d = y - x
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    return bias, sd, [bias - Z95 * sd, bias + Z95 * sd]


def confusion_table(ref, test) -> np.ndarray:
    """5x5 counts of risk categories: rows = reference category, columns = test category.

    Both axes follow the order of :data:`AutoCACLib.categories.CATEGORIES`.
    """
    x, y = _paired(ref, test)
    table = np.zeros((len(CATEGORIES), len(CATEGORIES)), dtype=int)
    for a, b in zip(x, y):
        table[category_index(a), category_index(b)] += 1
    return table


def weighted_kappa(table, weights: str) -> float:
    """Cohen's weighted kappa of a square confusion table of ordinal categories.

    Parameters
    ----------
    table : array_like
        k x k counts, rows = reference, columns = test.
    weights : {"linear", "quadratic"}
        Disagreement weight |i - j| / (k - 1), or its square.

    Returns
    -------
    float
        ``1 - sum(w * O) / sum(w * E)`` with E the outer product of the margins over n;
        1.0 when ``sum(w * E)`` is 0 (every case in one and the same category).
    """
    obs = np.asarray(table, dtype=float)
    k = obs.shape[0]
    idx = np.arange(k)
    dist = np.abs(idx[:, None] - idx[None, :]) / (k - 1)
    if weights == "linear":
        w = dist
    elif weights == "quadratic":
        w = dist**2
    else:
        raise ValueError(f"weights must be 'linear' or 'quadratic', not {weights!r}")
    expected = np.outer(obs.sum(axis=1), obs.sum(axis=0)) / obs.sum()
    expected_dis = np.sum(w * expected)
    if expected_dis == 0:
        return 1.0
    return float(1 - np.sum(w * obs) / expected_dis)


def agreement(ref, test) -> dict:
    """All agreement statistics of paired scores, as a JSON-ready dict.

    Parameters
    ----------
    ref, test : array_like
        Paired non-negative, finite total Agatston scores (the categories assume Agatston), at
        least 2 pairs.

    Returns
    -------
    dict
        ``n``, ``ccc``, ``ccc_ci95`` [lo, hi], ``pearson_r``, ``paired_t_p``, ``mean_diff``
        (test minus ref), ``sd_diff`` (ddof=1), ``loa`` [lo, hi], ``kappa_linear``,
        ``kappa_quadratic``, ``accuracy`` (fraction of cases in the same category),
        ``confusion`` (5x5 list of lists, rows = reference) and ``categories`` (the labels of
        its rows and columns). Plain Python numbers; undefined values are ``None``.

    Raises
    ------
    InputError
        Fewer than 2 pairs, unequal lengths, or a NaN, infinite or negative score.
    """
    x, y = _paired(ref, test)
    ccc, ci = concordance(x, y)
    bias, sd, loa = bland_altman(x, y)
    table = confusion_table(x, y)
    return {
        "n": int(x.size),
        "ccc": ccc,
        "ccc_ci95": ci,
        "pearson_r": pearson_r(x, y),
        "paired_t_p": paired_t_p(x, y),
        "mean_diff": bias,
        "sd_diff": sd,
        "loa": loa,
        "kappa_linear": weighted_kappa(table, "linear"),
        "kappa_quadratic": weighted_kappa(table, "quadratic"),
        "accuracy": float(np.trace(table) / x.size),
        "confusion": table.tolist(),
        "categories": list(CATEGORIES),
    }


def _cell(text: str | None, row: int, line: int, col: str) -> float:
    where = f"row {row} (line {line}), column {col!r}"
    if text is None or not text.strip():
        raise InputError(f"{where} is empty")
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: {text.strip()!r} is not a finite number")
    if value < 0:
        raise InputError(f"{where}: {value:g} is a negative score")
    return value


def agreement_report(csv_path, ref_col: str, test_col: str) -> dict:
    """Agreement statistics of two score columns of a CSV file (header row first).

    Parameters
    ----------
    csv_path : str or Path
        Comma-separated file whose first row names the columns.
    ref_col, test_col : str
        Names of the reference and test score columns.

    Returns
    -------
    dict
        :func:`agreement` of the two columns.

    Raises
    ------
    InputError
        Missing or unreadable file, missing column (the message lists the available ones), an
        empty, non-numeric or negative cell (named by row and column), fewer than 2 rows.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    ref, test = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames
            if not columns:
                raise InputError(f"{path} is empty: expected a header row")
            for col in (ref_col, test_col):
                if col not in columns:
                    available = ", ".join(map(repr, columns))
                    raise InputError(f"column {col!r} not in {path.name}; available: {available}")
            for row, record in enumerate(reader, start=1):
                ref.append(_cell(record[ref_col], row, reader.line_num, ref_col))
                test.append(_cell(record[test_col], row, reader.line_num, test_col))
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise InputError(f"cannot read {path} as CSV: {exc}") from None
    if len(ref) < 2:
        raise InputError(f"{path.name} has {len(ref)} data row(s); agreement needs at least 2")
    return agreement(ref, test)
