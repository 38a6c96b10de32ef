"""``autocac evaluate``: the pipeline against the CSCT reference on a synthetic cohort.

Writes the paper's tables (agreement overall, for the left coronary artery LM+LAD+LCx and
the RCA, by tube voltage; the 5x5 category table), its figures (CCTA-vs-CSCT scatter with r,
Bland-Altman plots) and the segmentation Dice of the aorta and of each vessel against the
truth, as CSV, JSON, Markdown and PNG.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from .agreement import agreement
from .categories import CATEGORIES
from .results import write_csv
from .segments import AORTA_LABEL, CALCIUM_LABEL, VESSEL_LABEL, VESSELS

GROUPS = {"total": VESSELS, "LCA": ("LM", "LAD", "LCx"), "RCA": ("RCA",)}


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two masks; None when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def segmentation_dice(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice of the aorta, each vessel (lumen + its calcium) and the whole coronary tree."""
    out = {"aorta": dice(pred == AORTA_LABEL, truth == AORTA_LABEL)}
    tree_p = np.zeros(pred.shape, bool)
    tree_t = np.zeros(truth.shape, bool)
    for v in VESSELS:
        p = np.isin(pred, (VESSEL_LABEL[v], CALCIUM_LABEL[v]))
        t = np.isin(truth, (VESSEL_LABEL[v], CALCIUM_LABEL[v]))
        out[v] = dice(p, t)
        tree_p |= p
        tree_t |= t
    out["coronary"] = dice(tree_p, tree_t)
    return out


def _group_scores(agatston: dict) -> dict:
    return {g: sum(agatston[v] for v in vs) for g, vs in GROUPS.items()}


def evaluate_case(folder: Path, models, device: str) -> dict:
    """Run the pipeline on one phantom case folder and compare with its truth."""
    from .pipeline import run_pipeline
    from .segmentation_io import masks_to_labels, read_segment_masks
    from .volume import read_volume

    truth = json.loads((folder / "truth.json").read_text())
    volume = read_volume(folder / "ccta.nrrd")
    result = run_pipeline(volume, device=device, models=models,
                          inputs={"image": str(folder / "ccta.nrrd")})
    masks, _ = read_segment_masks(folder / "labels.seg.nrrd")
    truth_labels = masks_to_labels(masks, volume.shape)
    ref = truth["reference"]["agatston"]
    row = {"case": folder.name, "kvp": truth["kvp"], "status": result.status,
           "failure_reason": result.scores["failure_reason"] or "",
           "warnings": " | ".join(result.scores["warnings"]),
           "seconds": result.scores["timings_s"]["total"],
           "calibration_factor": result.scores["calibration_factor"]}
    qc = result.details.get("postprocess_qc")   # the tree's QC facts, where it got that far
    row["n_major_ostia"] = qc.n_major_ostia if qc else ""
    row["removed_fraction"] = round(qc.removed_fraction, 3) if qc else ""
    for g, value in _group_scores(ref).items():
        row[f"ref_{g}"] = value
    test = result.scores["agatston"] or {v: 0.0 for v in (*VESSELS, "total")}
    for g, value in _group_scores(test).items():
        row[f"test_{g}"] = value
    row["ref_volume"] = truth["reference"]["volume_mm3"]["total"]
    row["test_volume"] = (result.scores["volume_mm3"] or {}).get("total", 0.0)
    for k, value in segmentation_dice(result.labels, truth_labels).items():
        row[f"dice_{k}"] = value
    return row


def summarize(rows: list[dict]) -> dict:
    """Agreement tables from per-case rows (failed cases excluded, counted as failures)."""
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {"n_cases": len(rows), "n_failed": len(rows) - len(ok),
               "failure_rate": (len(rows) - len(ok)) / len(rows) if rows else None}
    if len(ok) >= 2:
        for g in GROUPS:
            summary[f"agreement_{g}"] = agreement([r[f"ref_{g}"] for r in ok],
                                                  [r[f"test_{g}"] for r in ok])
        summary["agreement_volume"] = agreement([r["ref_volume"] for r in ok],
                                                [r["test_volume"] for r in ok])
        for kvp in sorted({r["kvp"] for r in ok}):
            sub = [r for r in ok if r["kvp"] == kvp]
            summary[f"kvp_{kvp}"] = (agreement([r["ref_total"] for r in sub],
                                               [r["test_total"] for r in sub])
                                     if len(sub) >= 2 else {"n": len(sub)})
    dice_keys = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]
    summary["dice_mean"] = {k[5:]: float(np.mean([r[k] for r in ok if r[k] is not None]))
                            for k in dice_keys if any(r[k] is not None for r in ok)}
    summary["seconds_mean"] = float(np.mean([r["seconds"] for r in rows])) if rows else None
    return summary


def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def tables_markdown(summary: dict) -> str:
    """The paper's tables as Markdown."""
    lines = [f"Cases: {summary['n_cases']}, failed: {summary['n_failed']} "
             f"({100 * (summary['failure_rate'] or 0):.1f}%)", "",
             "| group | n | CCC (95% CI) | r | bias | 95% LoA | kappa lin | kappa quad | accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = [("total", "agreement_total"), ("LCA", "agreement_LCA"), ("RCA", "agreement_RCA"),
            ("volume (mm3)", "agreement_volume")]
    keys += [(f"{k[4:]} kVp", k) for k in summary if k.startswith("kvp_")]
    for label, key in keys:
        a = summary.get(key)
        if not a or "ccc" not in a:
            continue
        ci = a["ccc_ci95"]
        lines.append(f"| {label} | {a['n']} | {_fmt(a['ccc'])} "
                     f"({_fmt(ci[0]) if ci else '-'}-{_fmt(ci[1]) if ci else '-'}) | "
                     f"{_fmt(a['pearson_r'])} | {_fmt(a['mean_diff'], 1)} | "
                     f"{_fmt(a['loa'][0], 1)} to {_fmt(a['loa'][1], 1)} | "
                     f"{_fmt(a['kappa_linear'])} | {_fmt(a['kappa_quadratic'])} | "
                     f"{100 * a['accuracy']:.1f}% |")
    total = summary.get("agreement_total")
    if total:
        lines += ["", "Category table (rows: CSCT reference, columns: CCTA AutoCAC):", "",
                  "| CSCT \\ CCTA | " + " | ".join(CATEGORIES) + " |",
                  "|---" * (len(CATEGORIES) + 1) + "|"]
        for cat, row in zip(CATEGORIES, total["confusion"]):
            lines.append(f"| {cat} | " + " | ".join(str(v) for v in row) + " |")
    if summary.get("dice_mean"):
        lines += ["", "Mean Dice against the truth: " + ", ".join(
            f"{k} {v:.3f}" for k, v in summary["dice_mean"].items())]
    return "\n".join(lines) + "\n"


def plot_agreement(rows: list[dict], path: Path) -> None:
    """Scatter (with r) and Bland-Altman plots of CCTA vs CSCT Agatston, coloured by kVp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    colors = {80: "tab:red", 100: "tab:blue", 120: "tab:green"}
    for col, g in enumerate(GROUPS):
        ref = np.array([r[f"ref_{g}"] for r in ok])
        test = np.array([r[f"test_{g}"] for r in ok])
        kv = [r["kvp"] for r in ok]
        c = [colors.get(k, "gray") for k in kv]
        ax = axes[0, col]
        ax.scatter(ref, test, c=c, s=18)
        top = max(1.0, float(max(ref.max(initial=0), test.max(initial=0)))) * 1.05
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        r = np.corrcoef(ref, test)[0, 1] if len(ok) > 2 and ref.std() and test.std() else float("nan")
        ax.set_title(f"{g}: CCTA vs CSCT Agatston (r = {r:.3f}, n = {len(ok)})")
        ax.set_xlabel("CSCT reference Agatston")
        ax.set_ylabel("CCTA AutoCAC Agatston")
        ax = axes[1, col]
        mean, diff = (ref + test) / 2, test - ref
        ax.scatter(mean, diff, c=c, s=18)
        if len(ok) >= 2:
            bias, sd = diff.mean(), diff.std(ddof=1)
            for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
                ax.axhline(y, color="k", ls=style, lw=0.8)
            ax.set_title(f"{g}: Bland-Altman (bias {bias:.1f}, LoA {bias - 1.96 * sd:.1f} "
                         f"to {bias + 1.96 * sd:.1f})")
        ax.set_xlabel("mean of CCTA and CSCT")
        ax.set_ylabel("CCTA - CSCT")
    handles = [plt.Line2D([], [], marker="o", ls="", color=v, label=f"{k} kVp")
               for k, v in colors.items()]
    axes[0, 0].legend(handles=handles, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


_WORKER_MODELS: dict = {}


def _worker_init(models_dir, device: str) -> None:
    from .pipeline import load_pipeline_models

    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per worker process (resolve_device)
    _WORKER_MODELS["models"] = load_pipeline_models(models_dir, device)
    _WORKER_MODELS["device"] = device


def _worker_case(folder: Path) -> dict:
    return evaluate_case(folder, _WORKER_MODELS["models"], _WORKER_MODELS["device"])


def evaluate_cohort(cohort: Path, out: Path, device: str = "auto", models_dir=None,
                    limit: int | None = None, jobs: int = 1) -> dict:
    """Run and compare every case folder of ``cohort`` (those with ``truth.json``).

    ``jobs`` > 1 runs cases in that many worker processes (one torch thread each).
    """
    from concurrent.futures import ProcessPoolExecutor

    from .errors import InputError
    from .pipeline import load_pipeline_models

    folders = sorted(p.parent for p in Path(cohort).glob("*/truth.json"))[:limit]
    if not folders:
        raise InputError(f"no case folders with truth.json in {cohort}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if jobs > 1:
        pool = ProcessPoolExecutor(jobs, initializer=_worker_init,
                                   initargs=(models_dir, device))
        results = pool.map(_worker_case, folders)
    else:
        models = load_pipeline_models(models_dir, device)
        pool = None
        results = (evaluate_case(folder, models, device) for folder in folders)
    rows = []
    for k, row in enumerate(results, start=1):
        rows.append(row)
        print(f"[{k}/{len(folders)}] {row['case']} {row['kvp']} kVp: CSCT "
              f"{row['ref_total']:.1f}, CCTA {row['test_total']:.1f} ({row['status']}, "
              f"{row['seconds']:.0f} s)", file=sys.stderr, flush=True)
        write_csv(rows, out / "cases.csv")  # rewritten each time: partial results kept
    if pool is not None:
        pool.shutdown()
    summary = summarize(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "tables.md").write_text(tables_markdown(summary))
    plot_agreement(rows, out / "agreement.png")
    return summary
