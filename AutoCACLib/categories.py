"""Risk categories of a total Agatston score.

The paper's 5 categories (0, 1-10, 11-100, 101-400, >400) and CAC-DRS (SCCT 2018:
A0 = 0, A1 = 1-99, A2 = 100-299, A3 >= 300, with N = number of vessels with calcium).
Scores are not rounded first: 10.4 is above 10 and so in "11-100"; any score above 0,
however small, is "1-10".
"""

from __future__ import annotations

#: The paper's categories, in order; the index is the ordinal used by the kappa statistics.
CATEGORIES = ("0", "1-10", "11-100", "101-400", ">400")
_UPPER = (0.0, 10.0, 100.0, 400.0)


def category_index(agatston: float) -> int:
    """Ordinal (0..4) of the paper's risk category for a total Agatston score."""
    if agatston < 0:
        raise ValueError(f"Agatston score cannot be negative: {agatston}")
    for i, upper in enumerate(_UPPER):
        if agatston <= upper:
            return i
    return len(_UPPER)


def risk_category(agatston: float) -> str:
    """The paper's risk category label ("0", "1-10", "11-100", "101-400", ">400")."""
    return CATEGORIES[category_index(agatston)]


def cac_drs(agatston: float, n_vessels: int) -> str:
    """CAC-DRS grade, e.g. ``"A0"`` or ``"A2/N3"``.

    Parameters
    ----------
    agatston : float
        Total Agatston score.
    n_vessels : int
        Number of vessels (LM, LAD, LCx, RCA) with a score above 0.
    """
    if agatston <= 0:
        return "A0"
    grade = 1 if agatston < 100 else 2 if agatston < 300 else 3
    return f"A{grade}/N{max(1, min(4, n_vessels))}"
