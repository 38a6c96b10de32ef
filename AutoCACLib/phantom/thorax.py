"""The thorax around the heart: body wall, lungs with vessels, mediastinum, airways, bones,
and the upper abdomen under the diaphragm.

Canonical patient frame (LPS, mm): the body axis is the z axis, x points to the patient's left,
y posteriorly; the ventricles' centre is at z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layers import Layer
from .materials import Material
from .shapes import Cylinder, Ellipsoid, Tube

_LONG = 600.0  # half length of structures that run through the whole scan, mm


def _bone(cortical_ha: float, trabecular_ha: float):
    return Material("soft_tissue", ha_mg_cm3=cortical_ha), Material("soft_tissue",
                                                                     ha_mg_cm3=trabecular_ha)


@dataclass
class Thorax:
    """Body geometry that the heart is placed in, and the thorax layers.

    Attributes
    ----------
    cavity_semi : ndarray (2,)
        Semi-axes (x, y) of the thoracic cavity.
    sternum_y, spine_y : float
        Posterior surface of the sternum; anterior surface of the vertebral bodies.
    body_semi : ndarray (2,)
    wall : float
        Chest wall thickness (muscle), mm.
    center_y : float
        y of the body's and the cavity's centre.
    behind_heart : list of Layer
        Painted before the heart (body, lungs and their vessels, mediastinum, airways,
        abdomen).
    over_heart : list of Layer
        Painted after it (bones).
    """

    body_semi: np.ndarray
    cavity_semi: np.ndarray
    sternum_y: float
    spine_y: float
    wall: float
    center_y: float = 0.0
    behind_heart: list = field(default_factory=list)
    over_heart: list = field(default_factory=list)


def move_spine_back(thorax: Thorax, spine_y: float) -> None:
    """Deepen the thorax so that the vertebral bodies' front lies at ``spine_y`` or further
    back; the sternum stays (the chest grows backwards)."""
    deficit = spine_y - thorax.spine_y
    if deficit > 0:
        thorax.spine_y = float(spine_y)
        thorax.center_y += deficit / 2
        thorax.cavity_semi = thorax.cavity_semi + [0.0, deficit / 2]
        thorax.body_semi = thorax.body_semi + [0.0, deficit / 2]


def build_body(rng: np.random.Generator) -> Thorax:
    """Random body outline; the layers are added by :func:`add_thorax_layers`."""
    cavity = np.array([rng.uniform(105, 150), rng.uniform(75, 95)])
    fat, wall = rng.uniform(6, 25), rng.uniform(12, 18)
    body = cavity + [fat + wall, 0.6 * fat + wall]
    vertebra_depth = rng.uniform(30, 36)
    return Thorax(body, cavity, -cavity[1], cavity[1] - 22 - vertebra_depth / 2 - 14, wall)


def _lung_vessel_tree(rng, hilum, lateral, cavity, center_y, lo_z, hi_z, radius
                      ) -> list[Tube]:
    """Random branching vessels from a hilum into one lung."""
    tubes = []
    stack = [(np.asarray(hilum, float), None, radius, 0)]
    while stack:
        start, direction, r, depth = stack.pop()
        n_children = 6 if depth == 0 else 3
        for _ in range(n_children):
            if direction is None:
                d = np.array([lateral * rng.uniform(0.5, 1.0), rng.uniform(-0.6, 0.8),
                              rng.uniform(-1.0, 1.0)])
            else:
                d = direction + rng.normal(0, 0.45, 3)
            d /= np.linalg.norm(d)
            length = rng.uniform(30, 50) * (0.75 ** depth)
            mid = start + 0.5 * length * d + rng.normal(0, 3, 3)
            end = start + length * d
            inside = ((end[0] / (cavity[0] - 8)) ** 2
                      + ((end[1] - center_y) / (cavity[1] - 8)) ** 2 < 1
                      and lo_z < end[2] < hi_z and np.sign(end[0]) == lateral)
            if not inside:
                continue
            child_r = max(0.7, r * rng.uniform(0.6, 0.75))
            tubes.append(Tube.through([start, mid, end], [r, (r + child_r) / 2, child_r], 0.5))
            if depth < 3:
                stack.append((end, d, child_r, depth + 1))
    return tubes


def add_thorax_layers(rng: np.random.Generator, thorax: Thorax, heart_bottom_z: float,
                      heart_top_z: float, hila, lung_vessel_iodine: float,
                      liver_iodine: float) -> None:
    """Fill ``thorax.behind_heart`` and ``thorax.over_heart``."""
    body, cavity, wall = thorax.body_semi, thorax.cavity_semi, thorax.wall
    cy = thorax.center_y
    z_axes = np.eye(3)
    muscle, fat = Material("muscle"), Material("fat")
    lung = Material("lung", lung_vessel_iodine * 0.04)
    thorax.behind_heart = [
        Layer("subcutaneous fat", fat, [Cylinder([0, cy, 0], z_axes, body, _LONG)]),
        Layer("chest wall", muscle, [Cylinder([0, cy, 0], z_axes, cavity + wall, _LONG)]),
        Layer("back muscles", muscle, [Cylinder([side * 32, cy + cavity[1] + 6, 0], z_axes,
                                                [26, 22], _LONG) for side in (-1, 1)]),
        Layer("lung", lung, [Cylinder([0, cy, 0], z_axes, cavity, _LONG)]),
    ]
    dome_r = heart_bottom_z + rng.uniform(-5, 12)
    dome_l = dome_r - rng.uniform(5, 20)
    liver_semi = np.array([rng.uniform(100, 120), rng.uniform(85, 100), rng.uniform(75, 90)])
    stomach_semi = np.array([rng.uniform(70, 90), rng.uniform(65, 80), rng.uniform(60, 75)])
    mediastinum_x = rng.uniform(28, 42)
    thorax.behind_heart += [
        Layer("mediastinal fat", fat, [Cylinder([rng.uniform(2, 10), cy - 4, 0], z_axes,
                                                [mediastinum_x, cavity[1] - 2], _LONG)]),
        Layer("liver", Material("liver", liver_iodine),
              [Ellipsoid([-rng.uniform(25, 45), 5, dome_r - liver_semi[2]], z_axes, liver_semi)]),
        Layer("upper abdomen", Material("soft_tissue"),
              [Ellipsoid([rng.uniform(45, 65), 15, dome_l - stomach_semi[2]], z_axes,
                         stomach_semi)]),
    ]

    cortical, trabecular = _bone(rng.uniform(900, 1200), rng.uniform(110, 230))
    spine_center_y = thorax.spine_y + 17
    pitch = rng.uniform(25, 30)
    lo, hi = heart_bottom_z - 120, heart_top_z + 120
    levels = np.arange(lo + rng.uniform(0, pitch), hi, pitch)
    body_semi = np.array([rng.uniform(18, 22), 17.0])
    vertebrae = [Cylinder([0, spine_center_y, z], z_axes, body_semi, pitch / 2 - 3) for z in levels]
    arches = [Cylinder([0, spine_center_y + 27, z], z_axes, [14, 11], pitch / 2 - 4)
              for z in levels]
    spinous = [Tube.through([[0, spine_center_y + 35, z], [0, spine_center_y + 62, z - 18]],
                            4.0, 1.0) for z in levels]
    transverse = [Tube.through([[side * 8, spine_center_y + 27, z],
                                [side * 30, spine_center_y + 32, z + 2]], 4.5, 1.0)
                  for z in levels for side in (-1, 1)]

    ribs, cartilage = [], []
    rib_radius = rng.uniform(4.5, 5.8)
    drop = rng.uniform(35, 60)
    ring = cavity + wall / 2
    for z in levels:
        for side in (-1, 1):
            phi = np.linspace(0.12 * np.pi, 0.86 * np.pi, 24)
            pts = np.stack([side * ring[0] * np.sin(phi), cy + ring[1] * np.cos(phi),
                            z + 8 - drop * (phi / np.pi) ** 1.4], axis=1)
            ribs.append(Tube.through(pts, rib_radius, 1.0))
            phi_c = np.linspace(0.86 * np.pi, 0.96 * np.pi, 5)
            pts_c = np.stack([side * ring[0] * np.sin(phi_c), cy + ring[1] * np.cos(phi_c),
                              z + 8 - drop * (phi_c / np.pi) ** 1.4], axis=1)
            cartilage.append(Tube.through(pts_c, rib_radius * 0.9, 1.0))
    sternum = Cylinder([0, cy - (cavity[1] + wall / 2), heart_bottom_z + 75], z_axes,
                       [rng.uniform(14, 20), rng.uniform(5, 7)], rng.uniform(90, 110))

    trachea_x = rng.uniform(-4, 4)
    carina = np.array([trachea_x, thorax.spine_y - 20, heart_top_z + rng.uniform(10, 30)])
    airway_ends = [carina + [-45, 10, -30], carina + [50, 12, -35]]
    airways = [Tube.through([carina + [0, -8, 150], carina + [0, 0, 40], carina], 8.5, 2.0)]
    airways += [Tube.through([carina, (carina + end) / 2 + [0, 0, 3], end], [8.0, 6.5, 5.0], 1.5)
                for end in airway_ends]
    esophagus = Tube.through([[8, thorax.spine_y - 10, hi], [10, thorax.spine_y - 12, 0],
                              [25, thorax.spine_y - 20, lo]], rng.uniform(6, 8), 2.0)

    vessels = []
    for hilum, lateral in zip(hila, (-1, 1)):
        vessels += _lung_vessel_tree(rng, hilum, lateral, cavity, cy, lo, hi,
                                     rng.uniform(4.5, 6.0))

    thorax.behind_heart += [
        Layer("lung vessels", Material("blood", lung_vessel_iodine), vessels),
        Layer("airway wall", Material("soft_tissue"), [t.grown(1.8) for t in airways]),
        Layer("airway", Material("air"), airways),
        Layer("esophagus", Material("muscle"), [esophagus]),
    ]
    thorax.over_heart = [
        Layer("cortical bone", cortical, vertebrae + arches + spinous + transverse + ribs
              + [sternum]),
        Layer("trabecular bone", trabecular, [v.grown(-1.0) for v in vertebrae]
              + [r.grown(-1.2) for r in ribs] + [sternum.grown(-1.5)]),
        Layer("costal cartilage", Material("cartilage"), cartilage),
        Layer("spinal canal", Material("csf"),
              [Cylinder([0, spine_center_y + 27, 0], z_axes, [8, 7], _LONG)]),
        Layer("intervertebral disc", Material("cartilage"),
              [Cylinder([0, spine_center_y, z + pitch / 2], z_axes, body_semi - 1, 2.5)
               for z in levels]),
    ]
