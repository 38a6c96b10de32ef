"""One random patient: thorax, heart, coronary tree, calcium, placed in the scanner.

The anatomy is built in a canonical patient frame and then moved by a random pose (small
rotations of the patient on the table and a table position), so the heart's position and
orientation in scanner coordinates vary from case to case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calcium import (Calcification, build_extra_calcium, build_plaques, calcium_layers,
                      target_agatston)
from .coronary import Vessel, build_coronaries
from .heart import Enhancement, build_heart
from .layers import Layer
from .materials import iodine_for_hu, nearest_kvp
from .thorax import add_thorax_layers, build_body, move_spine_back

#: Range of aortic lumen CT numbers (HU) drawn for each tube voltage (bolus timing varies).
LUMEN_HU_RANGE = {80: (350.0, 650.0), 100: (300.0, 550.0), 120: (250.0, 450.0)}


@dataclass
class Anatomy:
    """A patient in scanner (LPS) coordinates.

    Attributes
    ----------
    layers : list of Layer
        In painting order.
    arteries : list of Vessel
    veins : list of Tube
    calcifications : list of Calcification
    enhancement : Enhancement
    aortic_lumen_hu : float
        Aortic lumen CT number at the contrast scan's tube voltage (before the gradient).
    target_agatston : float
    dominance : str
    heart_center : ndarray (3,)
    z_range : tuple of float
        Lowest and highest z the coronary scan must cover.
    pose : dict
    """

    layers: list
    arteries: list
    veins: list
    calcifications: list
    enhancement: Enhancement
    aortic_lumen_hu: float
    target_agatston: float
    dominance: str
    heart_center: np.ndarray
    z_range: tuple
    pose: dict


def _rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation about z (roll of the patient on the table), then x and y (degrees)."""
    a, b, c = np.radians([roll, pitch, yaw])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def build_anatomy(rng: np.random.Generator, kvp: float, burden=None,
                  lumen_hu: float | None = None, dominance: str | None = None) -> Anatomy:
    """A random patient.

    Parameters
    ----------
    rng : numpy Generator
    kvp : float
        Tube voltage of the contrast scan (sets the iodine needed for the drawn lumen HU).
    burden : None, str or float
        Calcium burden (see :func:`AutoCACLib.phantom.calcium.target_agatston`).
    lumen_hu : float, optional
        Force the aortic lumen CT number at ``kvp``.
    dominance : {"right", "left"}, optional
        Force the coronary dominance (see :func:`build_coronaries`).
    """
    kvp = nearest_kvp(kvp)
    if lumen_hu is None:
        lumen_hu = float(rng.uniform(*LUMEN_HU_RANGE[kvp]))
    enhancement = Enhancement(
        aorta_mg_ml=iodine_for_hu(lumen_hu, kvp), right_heart=rng.uniform(0.3, 1.1),
        pulmonary=rng.uniform(0.5, 1.2), svc=rng.uniform(0.2, 3.0), veins=rng.uniform(0.25, 0.8),
        myocardium=rng.uniform(0.10, 0.20), liver=rng.uniform(0.05, 0.15))

    thorax = build_body(rng)
    heart = build_heart(rng, thorax.sternum_y, thorax.spine_y, enhancement)
    move_spine_back(thorax, heart.spine_y)
    tree = build_coronaries(rng, heart, enhancement, dominance)
    ventricles = heart.frame.ventricles
    heart_bottom = ventricles.center[2] - float(np.linalg.norm(ventricles.rotation[2]
                                                               * ventricles.semi))
    artery_points = np.concatenate([a.tube.points for a in tree.arteries])
    top = float(artery_points[:, 2].max())
    add_thorax_layers(rng, thorax, heart_bottom, top, heart.hila,
                      enhancement.aorta_mg_ml * enhancement.pulmonary,
                      enhancement.aorta_mg_ml * enhancement.liver)

    target = target_agatston(rng, burden)
    calcifications = (build_plaques(rng, tree.arteries, target)
                      + build_extra_calcium(rng, heart, target, (heart_bottom - 20, top + 40)))

    layers = (thorax.behind_heart + heart.envelope + [tree.groove_fat] + heart.chambers
              + heart.great_vessels + [tree.sheath] + heart.aortic_layers + tree.layers
              + calcium_layers(calcifications) + thorax.over_heart)

    roll, pitch, yaw = rng.uniform(-8, 8), rng.uniform(-3, 3), rng.uniform(-3, 3)
    rotation = _rotation(roll, pitch, yaw)
    translation = np.array([rng.uniform(-20, 20), rng.uniform(-25, 15), rng.uniform(-250, 50)])

    def move_points(p):
        return np.asarray(p) @ rotation.T + translation

    moved_layers: list[Layer] = [layer.moved(rotation, translation) for layer in layers]
    arteries = [Vessel(a.name, a.vessel, a.tube.moved(rotation, translation), a.main)
                for a in tree.arteries]
    calcs = [Calcification(c.kind, c.vessel, c.segment, c.shape.moved(rotation, translation),
                           c.ha_mg_cm3, c.volume_mm3) for c in calcifications]
    bottom_point = ventricles.center - ventricles.rotation @ (
        ventricles.semi * np.sign(ventricles.rotation[2]))
    z_values = np.concatenate([move_points(artery_points)[:, 2],
                               move_points(bottom_point[None])[:, 2]])
    heart_center = move_points((heart.frame.center + heart.root_center)[None] / 2)[0]
    return Anatomy(
        layers=moved_layers, arteries=arteries,
        veins=[v.moved(rotation, translation) for v in tree.veins], calcifications=calcs,
        enhancement=enhancement, aortic_lumen_hu=lumen_hu, target_agatston=target,
        dominance=tree.dominance, heart_center=heart_center,
        z_range=(float(z_values.min()), float(z_values.max())),
        pose={"roll_deg": roll, "pitch_deg": pitch, "yaw_deg": yaw,
              "translation_mm": translation.tolist()})
