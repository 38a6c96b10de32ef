"""PNG overview of a phantom case: axial slices and projections of its CCTA and CSCT.

Usage: ``python -m AutoCACLib.phantom.preview OUT.png [--seed S] [--size clinical|small]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..segments import AORTA_LABEL, CALCIUM_LABEL, VESSEL_LABEL
from .case import PhantomCase, make_case


def _slice_at(volume, z_mm: float) -> int:
    k = (z_mm - volume.origin[2]) / volume.spacing[0]
    return int(np.clip(round(k), 0, volume.shape[0] - 1))


def _extent(volume):
    """imshow extent (x left, x right, y bottom, y top) in mm for axial views."""
    sy, sx = volume.spacing[1], volume.spacing[2]
    ny, nx = volume.shape[1:]
    return (0, nx * sx, ny * sy, 0)


def save_preview(case: PhantomCase, path: str | Path) -> Path:
    """Write a 3 x 4 panel figure of the case to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ccta, csct, truth = case.ccta, case.csct, case.truth
    lines = truth["centerlines_lps_mm"]
    z_ostium = lines["LM"]["points"][0][2]
    z_mid = float(np.median([p[2] for p in lines["LAD"]["points"]]))
    z_low = float(np.percentile([p[2] for p in lines["RCA"]["points"]], 20))
    levels = [z_ostium + 25, z_ostium, z_mid, z_low]
    fig, axes = plt.subplots(3, 4, figsize=(20, 15.5))
    for ax, z in zip(axes[0], levels):
        ax.imshow(ccta.array[_slice_at(ccta, z)], cmap="gray", vmin=-300, vmax=700,
                  extent=_extent(ccta))
        ax.set_title(f"CCTA z={z:.0f} mm")
    for ax, z in zip(axes[1], levels):
        ax.imshow(csct.array[_slice_at(csct, z)], cmap="gray", vmin=-160, vmax=240,
                  extent=_extent(csct))
        ax.set_title(f"CSCT z={z:.0f} mm")
    k = _slice_at(ccta, z_ostium)
    half = int(8 / ccta.spacing[0])
    slab = ccta.array[max(k - 2 * half, 0):k + half]
    axes[2, 0].imshow(slab.max(axis=0), cmap="gray", vmin=-200, vmax=900, extent=_extent(ccta))
    axes[2, 0].set_title("CCTA axial MIP, 24 mm slab at the ostia")
    aspect = ccta.spacing[0] / ccta.spacing[2]
    axes[2, 1].imshow(ccta.array.max(axis=1)[::-1], cmap="gray", vmin=-200, vmax=1000,
                      aspect=aspect)
    axes[2, 1].set_title("CCTA coronal MIP")
    labels = case.ccta_labels
    overlay = np.zeros(labels.shape[1:] + (4,))
    projection = labels.max(axis=0)
    colors = {AORTA_LABEL: (0.9, 0.3, 0.3)}
    colors.update({VESSEL_LABEL[v]: (0.2, 0.8, 1.0) for v in VESSEL_LABEL})
    colors.update({CALCIUM_LABEL[v]: (1.0, 1.0, 0.0) for v in CALCIUM_LABEL})
    for value, color in colors.items():
        overlay[projection == value] = (*color, 1.0)
    veins = case.extra_masks["cardiac_veins"].max(axis=0) & (projection == 0)
    overlay[veins] = (0.3, 0.3, 1.0, 1.0)
    axes[2, 2].imshow(ccta.array.max(axis=0), cmap="gray", vmin=-200, vmax=1000,
                      extent=_extent(ccta))
    axes[2, 2].imshow(overlay, extent=_extent(ccta), alpha=0.6)
    axes[2, 2].set_title("labels (aorta red, lumen cyan, calcium yellow, veins blue)")
    axes[2, 3].imshow(csct.array.max(axis=0), cmap="gray", vmin=-200, vmax=800,
                      extent=_extent(csct))
    regions = case.csct_calcium_labels.max(axis=0) > 0
    outline = regions & ~ndimage.binary_erosion(regions)
    red = np.zeros(outline.shape + (4,))
    red[outline] = (1.0, 0.0, 0.0, 1.0)
    axes[2, 3].imshow(red, extent=_extent(csct))
    axes[2, 3].set_title("CSCT axial MIP, reference regions in red")
    ref = truth["reference"]["agatston"]
    fig.suptitle(f"seed {truth['seed']}  {truth['kvp']} kVp  aortic lumen "
                 f"{truth['measured_aortic_lumen_hu']} HU  CCTA noise {truth['ccta']['noise_hu']} "
                 f"HU  reference Agatston {ref['total']:.1f} ({truth['category']})", fontsize=14)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=("clinical", "small"), default="clinical")
    parser.add_argument("--burden", default=None, help='calcium category, e.g. ">400"')
    args = parser.parse_args(argv)
    overrides = {"burden": args.burden} if args.burden else {}
    print(save_preview(make_case(args.seed, args.size, **overrides), args.out))


if __name__ == "__main__":
    main()
