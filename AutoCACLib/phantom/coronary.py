"""Coronary arteries (LM, LAD, LCx, RCA with side branches) and cardiac veins.

Vessels run in the epicardial fat just outside the myocardium, along the grooves of the
heart frame (:mod:`AutoCACLib.phantom.heart`): the LAD in the anterior interventricular
groove, the LCx and RCA in the atrioventricular groove, the posterior descending artery in the
posterior groove (from the RCA in right-dominant hearts, the LCx otherwise). Lumens taper
distally and their iodine concentration falls along the vessel (transluminal attenuation
gradient). Veins run beside the arteries and drain into the coronary sinus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .heart import Enhancement, Heart, _orthogonal
from .layers import VEIN, Layer, lumen_tag
from .materials import Material
from .shapes import Tube

#: The arteries that may supply the posterior groove (the generator's ``dominance``).
DOMINANCES = ("right", "left")


@dataclass
class Vessel:
    """One coronary artery segment.

    Attributes
    ----------
    name : str
        Anatomical name (LAD, D1, OM1, PDA...).
    vessel : str
        The scored vessel it belongs to (LM, LAD, LCx, RCA).
    tube : Tube
    main : bool
        True for the main vessel, False for side branches.
    """

    name: str
    vessel: str
    tube: Tube
    main: bool


@dataclass
class CoronaryTree:
    arteries: list
    veins: list
    dominance: str
    layers: list
    groove_fat: Layer
    sheath: Layer


def build_coronaries(rng: np.random.Generator, heart: Heart, enhancement: Enhancement,
                     dominance: str | None = None) -> CoronaryTree:
    """Random coronary tree and cardiac veins on a heart.

    ``dominance`` ("right" or "left") forces the vessel that supplies the posterior groove;
    by default it is drawn (right 85%). The draw is made either way, so forcing the drawn
    value gives the same tree.
    """
    frame = heart.frame
    a1, ub = frame.long_semi, frame.u_base

    def jitter(scale=4.0):
        return rng.normal(0.0, scale)

    def along_surface(start, stations, r0, r1, scale0, gradient, step=0.4):
        """Tube from ``start`` through surface stations (u, theta), radius r0 -> r1."""
        radii = np.linspace(r0, r1, len(stations) + 1)
        gaps = radii[1:] + rng.uniform(0.6, 1.4, len(stations))
        control = [start] + [frame.surface(u, t, g) for (u, t), g in zip(stations, gaps)]
        tube = Tube.through(control, radii, step)
        length = tube.arc_length
        tube.iodine_scale = scale0 - gradient * length / 100.0
        return tube

    lm_r = rng.uniform(1.9, 2.5)
    bifurcation = frame.surface(ub + 2, rng.uniform(55, 75), lm_r + 1.0)
    # The left main runs about level from the left sinus (ostia 5-20 mm above the valve).
    rise = (bifurcation[2] + rng.uniform(0, 6) - heart.root_center[2]) / heart.root_axis[2]
    sinus = heart.root_center + heart.root_axis * float(np.clip(rise, 5, 20))

    def ostium(target):
        return sinus + (heart.sinus_radius - 1.0) * _orthogonal(target - sinus, heart.root_axis)

    scale0 = rng.uniform(0.92, 1.0)
    gradient = rng.uniform(0.05, 0.25)
    drawn = DOMINANCES[0] if rng.random() < 0.85 else DOMINANCES[1]
    dominance = dominance or drawn

    lm_start = ostium(bifurcation)
    lm = Tube.through([lm_start, (lm_start + bifurcation) / 2, bifurcation], [lm_r, lm_r, lm_r],
                      0.4, [scale0, scale0, scale0])
    lad_r, lcx_r, rca_r = rng.uniform(1.5, 2.0), rng.uniform(1.3, 1.8), rng.uniform(1.6, 2.1)
    lad = along_surface(bifurcation, [(ub + 8, 88 + jitter()), (-0.3 * a1, 90 + jitter()),
                                      (0.0, 90 + jitter()), (0.35 * a1, 88 + jitter()),
                                      (0.7 * a1, 85 + jitter()), (0.93 * a1, 60 + jitter(8))],
                        lad_r, max(0.5, 0.33 * lad_r), scale0, gradient)
    pda_stations = [(-0.2 * a1, 272 + jitter(3)), (0.2 * a1, 272 + jitter(3)),
                    (0.5 * a1, 270 + jitter(3))]
    lcx_stations = [(ub + 1, 42 + jitter()), (ub, 12 + jitter()), (ub, -18 + jitter()),
                    (ub + 1, -48 + jitter(6))]
    rca_stations = [(ub + 3, 150 + jitter()), (ub + 1, 180 + jitter()), (ub, 215 + jitter()),
                    (ub, 245 + jitter()), (ub + 2, 268 + jitter(3))]
    if dominance == "right":
        rca_stations += pda_stations
    else:
        lcx_stations += [(ub + 2, -88 + jitter(3))] + pda_stations
    lcx = along_surface(bifurcation, lcx_stations, lcx_r, max(0.5, 0.4 * lcx_r), scale0, gradient)
    rca_start = ostium(frame.surface(ub + 2, 150, 0.0))
    rca = along_surface(rca_start, rca_stations, rca_r, max(0.5, 0.3 * rca_r), scale0, gradient)
    arteries = [Vessel("LM", "LM", lm, True), Vessel("LAD", "LAD", lad, True),
                Vessel("LCx", "LCx", lcx, True), Vessel("RCA", "RCA", rca, True)]

    def branch(parent: Vessel, name, fraction, du, dtheta):
        idx = int(fraction * (len(parent.tube.points) - 1))
        start = parent.tube.points[idx]
        u0, t0 = frame.to_frame(start)
        r0 = parent.tube.radii[idx] * rng.uniform(0.55, 0.72)
        tube = along_surface(start, [(u0 + du[0], t0 + dtheta[0]), (u0 + du[1], t0 + dtheta[1])],
                             r0, max(0.45, 0.45 * r0), parent.tube.iodine_scale[idx], gradient)
        return Vessel(name, parent.vessel, tube, False)

    lad_v, lcx_v, rca_v = arteries[1], arteries[2], arteries[3]
    arteries.append(branch(lad_v, "D1", rng.uniform(0.12, 0.28), (0.2 * a1, 0.45 * a1),
                           (-25 + jitter(), -45 + jitter())))
    if rng.random() < 0.7:
        arteries.append(branch(lad_v, "D2", rng.uniform(0.4, 0.55), (0.15 * a1, 0.35 * a1),
                               (-22 + jitter(), -38 + jitter())))
    arteries.append(branch(lcx_v, "OM1", rng.uniform(0.35, 0.55), (0.3 * a1, 0.6 * a1),
                           (-5 + jitter(), -10 + jitter())))
    if rng.random() < 0.5:
        arteries.append(branch(lcx_v, "OM2", rng.uniform(0.65, 0.8), (0.25 * a1, 0.5 * a1),
                               (-4 + jitter(), -8 + jitter())))
    arteries.append(branch(rca_v, "AM", rng.uniform(0.35, 0.45), (0.35 * a1, 0.7 * a1),
                           (5 + jitter(), 10 + jitter())))

    def vein(stations, r0, r1):
        radii = np.linspace(r0, r1, len(stations))
        control = [frame.surface(u, t, r + rng.uniform(0.4, 1.2))
                   for (u, t), r in zip(stations, radii)]
        return Tube.through(control, radii, 0.5)

    side = 1 if rng.random() < 0.5 else -1
    cs_end = (ub + 2, 262 + jitter(3))
    veins = [
        vein([(0.45 * a1, 90 + side * 9), (0.0, 90 + side * 9), (ub + 10, 88 + side * 9),
              (ub + 5, 50 + jitter()), (ub + 5, 15), (ub + 5, -20), (ub + 5, -55),
              (ub + 4, -80), cs_end],
             rng.uniform(1.1, 1.5), rng.uniform(3.5, 5.0)),
        vein([(0.45 * a1, 262 + jitter(3)), (0.0, 263), (ub + 8, 264), cs_end],
             rng.uniform(1.1, 1.5), rng.uniform(2.3, 3.0)),
    ]
    if rng.random() < 0.6:
        veins.append(vein([(0.35 * a1, -25 + jitter()), (0.0, -28), (ub + 5, -32)],
                          rng.uniform(1.0, 1.4), rng.uniform(1.6, 2.2)))

    fat_mm = rng.uniform(2.5, 5.0, len(arteries) + len(veins))
    tubes = [a.tube for a in arteries] + veins
    groove_fat = Layer("epicardial fat", Material("fat"),
                       [t.grown(m) for t, m in zip(tubes, fat_mm)])
    # The arteries' own fat (1-2 mm around the lumen): epicardial arteries never run inside
    # an atrium, its appendage or the pulmonary trunk; this layer pushes those back.
    sheath = Layer("perivascular fat", Material("fat"),
                   [a.tube.grown(0.4 * m) for a, m in zip(arteries, fat_mm)])
    lumen = Material("blood", enhancement.aorta_mg_ml)
    layers = [Layer(VEIN, enhancement.blood(enhancement.veins), veins)]
    for vessel in ("LM", "LAD", "LCx", "RCA"):
        layers.append(Layer(lumen_tag(vessel), lumen,
                            [a.tube for a in arteries if a.vessel == vessel]))
    return CoronaryTree(arteries, veins, dominance, layers, groove_fat, sheath)
