"""One-page PNG report: overlays of the coronaries and calcium, the score table, category.

What a radiologist expects to see on a calcium-scoring printout: axial slices through the
calcified lesions with each vessel's calcium in its colour, a projection of the coronary tree,
the per-vessel Agatston / volume / mass table, the risk category, CAC-DRS and the warnings.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np

from .segments import SEGMENT_BY_LABEL, SEGMENTS, VESSELS
from .volume import Volume, to_axial_lps

_WINDOW = (-150.0, 650.0)  # HU shown black..white: a typical CCTA window


def _overlay_rgba(labels2d: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros(labels2d.shape + (4,), dtype=float)
    for spec in SEGMENTS:
        m = labels2d == spec.label
        if m.any():
            rgba[m, :3] = spec.color
            rgba[m, 3] = 1.0 if spec.is_calcium else alpha
    return rgba


def _pick_slices(labels: np.ndarray, n: int) -> list[int]:
    """Axial slices to show: those with the most calcium, else evenly through the vessels."""
    calcium = np.isin(labels, [s.label for s in SEGMENTS if s.is_calcium])
    per_slice = calcium.sum(axis=(1, 2))
    chosen = []
    for z in np.argsort(per_slice)[::-1]:
        if per_slice[z] == 0 or len(chosen) == n:
            break
        if all(abs(z - c) > 3 for c in chosen):
            chosen.append(int(z))
    vessel_z = np.nonzero(np.isin(labels, [s.label for s in SEGMENTS if s.vessel]).any(axis=(1, 2)))[0]
    if vessel_z.size == 0:
        vessel_z = np.arange(labels.shape[0])
    for z in np.linspace(vessel_z[0], vessel_z[-1], n + 2)[1:-1].astype(int):
        if len(chosen) == n:
            break
        if all(abs(z - c) > 3 for c in chosen):
            chosen.append(int(z))
    return sorted(chosen)


def _crop_box(labels: np.ndarray, shape2d, margin: int = 40):
    yx = np.nonzero(labels.any(axis=0))
    if yx[0].size == 0:
        return slice(0, shape2d[0]), slice(0, shape2d[1])
    return tuple(slice(max(0, int(a.min()) - margin), min(s, int(a.max()) + margin))
                 for a, s in zip(yx, shape2d))


def render_report(volume: Volume, labels: np.ndarray, scores: dict, path: str | os.PathLike,
                  title: str = "AutoCAC coronary calcium report") -> None:
    """Write the one-page report as PNG.

    Parameters
    ----------
    volume : Volume
        The CT that was scored.
    labels : ndarray (z, y, x)
        AutoCAC label map (aorta, vessels, calcium per vessel) on ``volume``'s grid.
    scores : dict
        The ``scores.json`` document.
    path : path-like
        Output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    volume, orientation = to_axial_lps(volume)  # axial slices in radiological order
    labels = orientation.apply(labels)
    fig = plt.figure(figsize=(13, 8.5), dpi=100)
    fig.suptitle(title, fontsize=15, fontweight="bold", x=0.02, ha="left")
    grid = fig.add_gridspec(2, 4, height_ratios=[1, 1], hspace=0.25, wspace=0.08,
                            left=0.02, right=0.98, top=0.9, bottom=0.04)
    aspect_ax = volume.spacing[1] / volume.spacing[2]
    box = _crop_box(labels, volume.shape[1:])
    for i, z in enumerate(_pick_slices(labels, 4)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(volume.array[z][box], cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1],
                  aspect=aspect_ax, interpolation="nearest")
        ax.imshow(_overlay_rgba(labels[z][box], 0.35), aspect=aspect_ax, interpolation="nearest")
        ax.set_title(f"axial slice {z} ({z * volume.spacing[0]:.1f} mm)", fontsize=10)
        ax.axis("off")

    # Maximum-intensity projection along z (anterior view would need reorientation; axial MIP
    # of the cropped heart region shows the whole tree in one picture).
    ax = fig.add_subplot(grid[1, 0:2])
    sub = volume.array[:, box[0], box[1]]
    ax.imshow(sub.max(axis=0), cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1] + 300,
              aspect=aspect_ax, interpolation="nearest")
    proj = np.zeros(sub.shape[1:], dtype=labels.dtype)
    lab = labels[:, box[0], box[1]]
    for spec in sorted(SEGMENTS, key=lambda s: s.is_calcium):  # calcium drawn on top
        if spec.name != "Aorta":
            proj[(lab == spec.label).any(axis=0)] = spec.label
    ax.imshow(_overlay_rgba(proj, 0.55), aspect=aspect_ax, interpolation="nearest")
    ax.set_title("axial maximum-intensity projection: coronary tree and calcium", fontsize=10)
    ax.axis("off")
    present = sorted({int(v) for v in np.unique(proj) if v})
    ax.legend(handles=[Patch(color=SEGMENT_BY_LABEL[v].color, label=SEGMENT_BY_LABEL[v].name)
                       for v in present], loc="lower right", fontsize=8, framealpha=0.8)

    ax = fig.add_subplot(grid[1, 2:4])
    ax.axis("off")
    _score_table(ax, scores)
    fig.savefig(path)
    plt.close(fig)


def _fmt(value, nd=1):
    return "-" if value is None else f"{value:.{nd}f}"


def _score_table(ax, scores: dict) -> None:
    if scores.get("status", "ok") != "ok":
        y = 1.0
        for part in textwrap.wrap(f"FAILED: {scores.get('failure_reason')}", 58):
            ax.text(0, y, part, fontsize=12, color="darkred", va="top", fontweight="bold")
            y -= 0.055
        _warnings(ax, scores.get("warnings", []), y - 0.03)
        _footer(ax)
        return
    mass = scores.get("mass_mg")
    rows = [[v, _fmt(scores["agatston"][v]), _fmt(scores["volume_mm3"][v]),
             _fmt(mass[v], 2) if mass else "-", str(scores["lesion_count"][v])]
            for v in (*VESSELS, "total")]
    rows[-1][0] = "Total"
    table = ax.table(cellText=rows, colLabels=["Vessel", "Agatston", "Volume mm³", "Mass mg",
                                               "Lesions"],
                     loc="upper center", cellLoc="center", bbox=[0, 0.5, 1, 0.48])
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    for (r, _), cell in table.get_celld().items():
        if r == 0 or r == len(rows):
            cell.set_text_props(fontweight="bold")
    lines = [f"Risk category: {scores['category']}    CAC-DRS: {scores['cac_drs']}"]
    if scores.get("calibration_factor") is not None:
        lines.append(f"Calibration factor (coronary lumen): {scores['calibration_factor']:.0f} HU")
    kvp = scores.get("input", {}).get("kvp")
    if kvp:
        lines.append(f"Tube voltage: {kvp:g} kVp")
    y = 0.44
    for line in lines:
        ax.text(0, y, line, fontsize=11, va="top", fontweight="bold" if "Risk" in line else None)
        y -= 0.07
    _warnings(ax, scores.get("warnings", []), y)
    _footer(ax)


def _warnings(ax, warnings: list[str], y: float) -> None:
    """The warnings, wrapped, from ``y`` down to the footer; the first that does not fit is
    cut short ("…") and those after it are counted (all of them are in scores.json)."""
    room = int((y - 0.04) / 0.05 + 1e-9)        # lines above the footer

    def line(text):
        nonlocal y
        ax.text(0, y, text, fontsize=9, va="top", color="darkorange")
        y -= 0.05

    for i, w in enumerate(warnings):
        parts = [("⚠ " if k == 0 else "   ") + part
                 for k, part in enumerate(textwrap.wrap(w, 80))]
        after = len(warnings) - i - 1
        if len(parts) + bool(after) <= room:      # whole, and a line left for a count
            for part in parts:
                line(part)
            room -= len(parts)
            continue
        fit = max(room - 1, 0)                   # a line kept for the note below
        for part in parts[:fit - 1]:
            line(part)
        if fit:
            line(parts[fit - 1] + " …")
        left = after + (not fit)
        line(f"(+{left} more warnings in scores.json)" if left else "(full text in scores.json)")
        return


def _footer(ax) -> None:
    ax.text(0, 0.0, "Research software, not a medical device. Method: Lee et al., "
            "J Cardiovasc Dev Dis 2023;10:143.", fontsize=8, color="gray", va="bottom")
