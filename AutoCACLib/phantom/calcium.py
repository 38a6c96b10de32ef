"""Calcified plaques in the coronary arteries, and calcium outside them that must not count.

The calcium burden of a case is drawn first, as a target Agatston score in one of the paper's
5 risk categories (with a realistic share of calcium-free patients), then plaques are added,
proximal-heavy and often clustered, until their estimated score reaches the target. The score
that counts as truth is measured afterwards on the rendered non-contrast scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..categories import CATEGORIES
from ..segments import VESSELS
from .heart import Heart
from .layers import EXTRA_CALCIUM, Layer, calcium_tag
from .materials import HA_HU_PER_MG_CM3, Material
from .shapes import Ellipsoid, Tube, frame_at

#: Share of each risk category in a cohort (roughly the paper's Table 4 population).
CATEGORY_SHARES = (0.30, 0.10, 0.25, 0.20, 0.15)
#: Target Agatston ranges of the categories (log-uniform within).
_CATEGORY_TARGETS = ((0.0, 0.0), (2.0, 10.0), (11.0, 100.0), (101.0, 400.0), (401.0, 2500.0))
#: Share of plaques by vessel (the LAD is most often and most heavily calcified).
_VESSEL_SHARES = {"LM": 0.07, "LAD": 0.40, "LCx": 0.18, "RCA": 0.27, "branch": 0.08}
#: Estimated-to-measured Agatston calibration (blooming of the 3 mm scan).
_BLOOM = 1.25
#: Region values of the non-contrast truth regions.
REGION_VALUE = {v: i + 1 for i, v in enumerate(VESSELS)}
EXTRA_REGION = 5


@dataclass
class Calcification:
    """One calcified lesion.

    Attributes
    ----------
    kind : str
        "plaque" (coronary), or "aortic wall", "aortic valve", "mitral annulus".
    vessel : str or None
        Scored vessel of a coronary plaque (LM, LAD, LCx, RCA).
    segment : str or None
        Artery segment carrying it (LAD, D1, ...).
    shape : Ellipsoid or Tube
    ha_mg_cm3 : float
    volume_mm3 : float
        Analytic volume.
    """

    kind: str
    vessel: str | None
    segment: str | None
    shape: object
    ha_mg_cm3: float
    volume_mm3: float

    @property
    def mass_mg(self) -> float:
        return self.ha_mg_cm3 * self.volume_mm3 / 1000.0

    def summary(self) -> dict:
        center = self.shape.center if isinstance(self.shape, Ellipsoid) else self.shape.points.mean(0)
        return {"kind": self.kind, "vessel": self.vessel, "segment": self.segment,
                "center_lps_mm": [round(float(c), 2) for c in center],
                "ha_mg_cm3": round(self.ha_mg_cm3, 1), "volume_mm3": round(self.volume_mm3, 3),
                "mass_mg": round(self.mass_mg, 3)}


def target_agatston(rng: np.random.Generator, burden=None) -> float:
    """Target total Agatston score.

    Parameters
    ----------
    burden : None, str or float
        None: draw a category with :data:`CATEGORY_SHARES`; a category label ("0", "1-10",
        "11-100", "101-400", ">400"): draw within it; a number: that target.
    """
    if burden is None:
        index = int(rng.choice(len(CATEGORIES), p=CATEGORY_SHARES))
    elif isinstance(burden, str):
        if burden not in CATEGORIES:
            raise ValueError(f"unknown calcium category {burden!r}; use one of {CATEGORIES}")
        index = CATEGORIES.index(burden)
    else:
        return max(0.0, float(burden))
    lo, hi = _CATEGORY_TARGETS[index]
    return 0.0 if hi == 0 else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _weight(peak_hu: float) -> int:
    return 0 if peak_hu < 130 else 1 if peak_hu < 200 else 2 if peak_hu < 300 else 3 if \
        peak_hu < 400 else 4


def estimated_agatston(semi, ha_mg_cm3: float) -> float:
    """Rough Agatston contribution of an ellipsoidal plaque on a 3 mm, 120 kVp scan."""
    volume = 4.0 / 3.0 * np.pi * float(np.prod(semi))
    partial = min(1.0, 2 * float(np.min(semi)) / 1.8)
    peak = 40 + HA_HU_PER_MG_CM3[120] * ha_mg_cm3 * partial
    return _BLOOM * volume / 3.0 * _weight(peak)


def build_plaques(rng: np.random.Generator, arteries, target: float) -> list[Calcification]:
    """Coronary plaques whose estimated Agatston score reaches ``target``."""
    plaques: list[Calcification] = []
    if target <= 0:
        return plaques
    main = {a.vessel: a for a in arteries if a.main}
    branches = [a for a in arteries if not a.main]
    names = list(_VESSEL_SHARES)
    shares = np.array([_VESSEL_SHARES[n] for n in names])
    total, previous = 0.0, None
    while total < target and len(plaques) < 40:
        remaining = target - total
        if previous is not None and rng.random() < 0.35:
            artery, arc0 = previous
            arc = arc0 + rng.choice([-1, 1]) * rng.uniform(2.5, 8.0)
        else:
            name = names[int(rng.choice(len(names), p=shares / shares.sum()))]
            artery = main[name] if name != "branch" else branches[rng.integers(len(branches))]
            length = artery.tube.arc_length[-1]
            arc = length * (rng.uniform(0.1, 0.9) if artery.name == "LM" else rng.beta(1.3, 3.2))
        arc_lengths = artery.tube.arc_length
        index = int(np.clip(np.searchsorted(arc_lengths, arc), 1, len(arc_lengths) - 2))
        lumen_r = float(artery.tube.radii[index])
        size = (rng.uniform(1.2, 2.6) if remaining < 15 else rng.uniform(1.8, 4.0)
                if remaining < 80 else rng.uniform(2.5, 5.5) if remaining < 300
                else rng.uniform(3.5, 7.0))
        half = size / 2
        along, radial = half * rng.uniform(1.0, 2.2), half * rng.uniform(0.35, 0.65)
        around = float(np.clip(half ** 3 / (along * radial), 0.5, 1.5 * lumen_r + 1.0))
        semi = np.array([along, radial, around])
        ha = rng.uniform(250, 700) + 300 * min(1.0, size / 6.0)
        tangent, n1, n2 = frame_at(artery.tube.points, index)
        phi = rng.uniform(0, 2 * np.pi)
        normal = np.cos(phi) * n1 + np.sin(phi) * n2
        center = artery.tube.points[index] + normal * (lumen_r + radial * rng.uniform(-0.4, 0.6))
        shape = Ellipsoid(center, np.stack([tangent, normal, np.cross(tangent, normal)], axis=1),
                          semi)
        plaques.append(Calcification("plaque", artery.vessel, artery.name, shape, float(ha),
                                     4.0 / 3.0 * np.pi * float(np.prod(semi))))
        total += estimated_agatston(semi, ha)
        previous = (artery, arc)
    return plaques


def build_extra_calcium(rng: np.random.Generator, heart: Heart, target: float,
                        z_range: tuple[float, float]) -> list[Calcification]:
    """Aortic wall, aortic valve and mitral annulus calcification (never scored)."""
    level = 0 if target <= 0 else 1 if target < 100 else 2
    found: list[Calcification] = []

    def add(kind, shape, volume):
        found.append(Calcification(kind, None, None, shape, float(rng.uniform(300, 1100)),
                                   float(volume)))

    aorta = heart.aorta
    visible = np.nonzero((aorta.points[:, 2] > z_range[0]) & (aorta.points[:, 2] < z_range[1]))[0]
    for _ in range(rng.poisson((0.4, 1.2, 2.5)[level]) if len(visible) else 0):
        index = int(rng.choice(visible[2:-2] if len(visible) > 4 else visible))
        tangent, n1, n2 = frame_at(aorta.points, index)
        phi = rng.uniform(0, 2 * np.pi)
        normal = np.cos(phi) * n1 + np.sin(phi) * n2
        semi = np.array([rng.uniform(1.0, 5.0), rng.uniform(0.6, 1.3), rng.uniform(1.0, 4.0)])
        center = aorta.points[index] + normal * (aorta.radii[index] + heart.aortic_wall_mm / 2)
        add("aortic wall", Ellipsoid(center, np.stack([tangent, normal, np.cross(tangent, normal)],
                                                      axis=1), semi),
            4 / 3 * np.pi * np.prod(semi))
    if rng.random() < (0.06, 0.12, 0.3)[level]:
        _, n1, n2 = frame_at(np.stack([heart.root_center, heart.root_center + heart.root_axis]), 0)
        for _ in range(rng.integers(1, 4)):
            phi = rng.uniform(0, 2 * np.pi)
            offset = (np.cos(phi) * n1 + np.sin(phi) * n2) * heart.sinus_radius * rng.uniform(0.4, 0.9)
            semi = rng.uniform(1.0, 3.0, 3)
            add("aortic valve", Ellipsoid(heart.root_center + heart.root_axis * rng.uniform(-1, 3)
                                          + offset, np.eye(3), semi), 4 / 3 * np.pi * np.prod(semi))
    if rng.random() < (0.04, 0.08, 0.2)[level]:
        frame = heart.frame
        start = rng.uniform(-70, 0)
        angles = np.radians(np.linspace(start, start + rng.uniform(60, 150), 12))
        ring = np.array([heart.mitral_center + heart.mitral_radius *
                         (np.cos(a) * frame.b0 + np.sin(a) * frame.b1) for a in angles])
        radius = rng.uniform(1.2, 2.5)
        tube = Tube.through(ring, radius, 0.5)
        add("mitral annulus", tube, np.pi * radius ** 2 * tube.arc_length[-1])
    return found


def calcium_layers(calcifications: list[Calcification]) -> list[Layer]:
    """One layer per lesion (each has its own density)."""
    layers = []
    for c in calcifications:
        material = Material("soft_tissue", ha_mg_cm3=c.ha_mg_cm3)
        if c.kind == "plaque":
            layers.append(Layer(calcium_tag(c.vessel), material, [c.shape], REGION_VALUE[c.vessel]))
        else:
            layers.append(Layer(EXTRA_CALCIUM, material, [c.shape], EXTRA_REGION))
    return layers
