"""Heart and great vessels: chambers, myocardium, epicardial fat, aorta, pulmonary artery, cavae.

Geometry lives in a heart frame: ``e1`` the long axis from base to apex, ``b0`` towards the
left-ventricular lateral wall and ``b1`` towards the anterior interventricular groove. An
azimuth ``theta`` (degrees) around ``e1`` names places on the ventricles: 0 the LV lateral
wall, 90 the anterior interventricular groove, 180 the right-ventricular free wall, 270 the
posterior (inferior) interventricular groove. Positions along the axis are ``u`` mm from the
ventricular centre (negative towards the base); the atrioventricular groove lies at ``u_base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .layers import AORTA, BLOOD_POOL, MYOCARDIUM, PULMONARY_ARTERY, Layer
from .materials import Material
from .shapes import Ellipsoid, Tube


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _orthogonal(v, axis) -> np.ndarray:
    """Unit component of ``v`` orthogonal to the unit vector ``axis``."""
    v = np.asarray(v, dtype=float)
    return _unit(v - (v @ axis) * axis)


def _ray_exit(ellipsoid: Ellipsoid, start: np.ndarray, direction: np.ndarray) -> float:
    """Largest t >= 0 with start + t * direction on the ellipsoid surface (0 if none)."""
    q0 = ellipsoid.rotation.T @ (start - ellipsoid.center) / ellipsoid.semi
    qd = ellipsoid.rotation.T @ direction / ellipsoid.semi
    a, b, c = qd @ qd, 2 * q0 @ qd, q0 @ q0 - 1
    disc = b * b - 4 * a * c
    return max(0.0, (-b + np.sqrt(disc)) / (2 * a)) if disc >= 0 else 0.0


#: Room between the descending aorta's wall and the epicardium, mm: the atrioventricular
#: groove with its coronary artery, vein and fat lies in between.
DESCENDING_CLEARANCE_MM = 7.0
#: Direction in which the descending aorta gives way to the heart: back and to the left, along
#: the vertebral body's side.
_GIVE_WAY = np.array([0.6, 0.8, 0.0])
#: Half width (x) of the spine's front, mm: vertebral body and the heads of the ribs.
SPINE_HALF_WIDTH_MM = 30.0
#: Range of the room between the pericardium and the vertebral bodies, mm (oesophagus and
#: periaortic fat lie in between; the heart never reaches into the spine).
SPINE_CLEARANCE_MM = (6.0, 14.0)


def _posterior_reach(parts, half_width: float, n: int = 4000) -> float:
    """Largest y (most posterior point) of the ellipsoids' surfaces within |x| <= half_width;
    -inf where none lies in that slab."""
    u = np.random.default_rng(0).standard_normal((n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    points = np.concatenate([p.center + (u * p.semi) @ p.rotation.T for p in parts])
    front = points[np.abs(points[:, 0]) <= half_width]
    return float(front[:, 1].max()) if len(front) else -np.inf


def _descending_shift(control: np.ndarray, radii: np.ndarray, wall: float,
                      frame: "HeartFrame", step_mm: float = 1.0,
                      limit_mm: float = 45.0) -> np.ndarray:
    """Displacement (LPS, mm) of the arch's end and the descending aorta that keeps their wall
    ``DESCENDING_CLEARANCE_MM`` off the ventricles' epicardium, where the coronary arteries
    run: the circumflex artery in the posterior atrioventricular groove never runs through
    the aorta. Zero where the drawn aorta is already clear."""
    epicardium = np.array([frame.surface(u, theta)
                           for u in np.arange(frame.u_base - 4.0, 0.95 * frame.long_semi, 3.0)
                           for theta in np.arange(0.0, 360.0, 5.0)])
    tube = Tube.through(control, radii, step_mm=2.0)
    needed = tube.radii + wall + DESCENDING_CLEARANCE_MM
    tree = cKDTree(epicardium)
    shift = 0.0
    while shift < limit_mm and np.any(tree.query(tube.points + shift * _GIVE_WAY)[0] < needed):
        shift += step_mm
    return shift * _GIVE_WAY


@dataclass
class Enhancement:
    """Iodine concentrations of the contrast-enhanced scan (bolus timing).

    Attributes
    ----------
    aorta_mg_ml : float
        Iodine in aortic (left-heart) blood.
    right_heart, pulmonary, svc, veins, myocardium, liver : float
        Concentration relative to the aorta's.
    """

    aorta_mg_ml: float
    right_heart: float
    pulmonary: float
    svc: float
    veins: float
    myocardium: float
    liver: float

    def blood(self, relative: float = 1.0) -> Material:
        return Material("blood", self.aorta_mg_ml * relative)


@dataclass
class HeartFrame:
    """Placement and size of the ventricles (see the module docstring)."""

    center: np.ndarray
    e1: np.ndarray
    b0: np.ndarray
    b1: np.ndarray
    long_semi: float
    radial_semi: float
    ventricles: Ellipsoid = None
    lv_outer: Ellipsoid = None

    @property
    def u_base(self) -> float:
        return -0.6 * self.long_semi

    def direction(self, theta_deg: float) -> np.ndarray:
        t = np.radians(theta_deg)
        return np.cos(t) * self.b0 + np.sin(t) * self.b1

    def axis_point(self, u: float) -> np.ndarray:
        return self.center + u * self.e1

    def surface(self, u: float, theta_deg: float, gap: float = 0.0) -> np.ndarray:
        """Point ``gap`` mm outside the epicardium at (u, theta)."""
        start, d = self.axis_point(u), self.direction(theta_deg)
        t = max(_ray_exit(self.ventricles, start, d), _ray_exit(self.lv_outer, start, d))
        return start + (t + gap) * d

    def to_frame(self, point: np.ndarray) -> tuple[float, float]:
        """(u, theta) of a point."""
        rel = np.asarray(point) - self.center
        return float(rel @ self.e1), float(np.degrees(np.arctan2(rel @ self.b1, rel @ self.b0)))


@dataclass
class Heart:
    """The heart's geometry and its layers in painting order.

    Attributes
    ----------
    frame : HeartFrame
    envelope : list of Layer
        Pericardium and epicardial fat (painted first).
    chambers : list of Layer
        Myocardium and blood pools.
    great_vessels : list of Layer
        Pulmonary trunk and arteries, cavae, pulmonary veins.
    aortic_layers : list of Layer
        Aortic wall and lumen (painted after the coronaries' fat, which must not cut the
        ostia).
    aorta : Tube
        Aortic lumen, from the valve.
    aortic_wall_mm : float
    root_center, root_axis : ndarray
        Aortic valve centre and the direction of the root.
    sinus_radius : float
    hila : list of ndarray
        Right and left pulmonary hila (where lung vessels start).
    spine_y : float
        Anterior surface of the vertebral bodies: the thorax's, or further back where the
        heart would otherwise reach into the spine.
    mitral_center : ndarray
    mitral_radius : float
    """

    frame: HeartFrame
    envelope: list = field(default_factory=list)
    chambers: list = field(default_factory=list)
    great_vessels: list = field(default_factory=list)
    aortic_layers: list = field(default_factory=list)
    aorta: Tube = None
    aortic_wall_mm: float = 2.0
    root_center: np.ndarray = None
    root_axis: np.ndarray = None
    sinus_radius: float = 15.0
    hila: list = field(default_factory=list)
    spine_y: float = 0.0
    mitral_center: np.ndarray = None
    mitral_radius: float = 14.0


def build_heart(rng: np.random.Generator, sternum_y: float, spine_y: float,
                enhancement: Enhancement) -> Heart:
    """Random heart and great vessels in the canonical patient frame (LPS, mm).

    Parameters
    ----------
    rng : numpy Generator
    sternum_y : float
        y of the sternum's posterior surface (anterior limit of the mediastinum).
    spine_y : float
        y of the vertebral bodies' anterior surface; moved back (``Heart.spine_y``) where the
        heart needs the room.
    enhancement : Enhancement
    """
    long_semi, radial_semi = rng.uniform(52, 64), rng.uniform(40, 49)
    azimuth, elevation = np.radians(rng.uniform(38, 62)), np.radians(rng.uniform(15, 35))
    e1 = _unit([np.sin(azimuth) * np.cos(elevation), -np.cos(azimuth) * np.cos(elevation),
                -np.sin(elevation)])
    b0 = _orthogonal([0.55, 0.75, 0.35], e1)
    b1 = np.cross(e1, b0)
    if b1[1] > 0:  # theta = 90 must face anteriorly
        b1 = -b1
    center = np.array([rng.uniform(12, 38), sternum_y + rng.uniform(55, 68), 0.0])
    axes = np.stack([e1, b0, b1], axis=1)
    frame = HeartFrame(center, e1, b0, b1, long_semi, radial_semi)
    frame.ventricles = Ellipsoid(center, axes,
                                 [long_semi, radial_semi, radial_semi * rng.uniform(0.88, 1.0)])
    frame.lv_outer = Ellipsoid(center + 0.22 * radial_semi * b0 + 0.04 * long_semi * e1, axes,
                               [0.96 * long_semi, 0.76 * radial_semi, 0.76 * radial_semi])
    heart = Heart(frame)

    lv_wall, rv_wall = rng.uniform(8, 12), rng.uniform(3, 5)
    lv_cavity = Ellipsoid(frame.lv_outer.center - 0.08 * long_semi * e1, axes,
                          [0.80 * long_semi, 0.76 * radial_semi - lv_wall,
                           0.76 * radial_semi - lv_wall])
    rv_cavity = frame.ventricles.grown(-rv_wall)
    myocardium = Material("myocardium", enhancement.aorta_mg_ml * enhancement.myocardium)
    left_blood = enhancement.blood(rng.uniform(0.95, 1.03))
    right_blood = enhancement.blood(enhancement.right_heart)

    u_base = frame.u_base
    patient_axes = np.eye(3)

    def beyond_base(semi, side, lateral):
        """Centre of a patient-aligned atrium touching the base plane from above."""
        reach_along_e1 = float(np.sqrt(np.sum((np.abs(e1) * semi) ** 2)))
        return frame.axis_point(u_base - reach_along_e1 - 1.0) + side * lateral

    la_semi = np.array([rng.uniform(28, 36), rng.uniform(15, 20), rng.uniform(20, 26)])
    ra_semi = np.array([rng.uniform(22, 28), rng.uniform(20, 26), rng.uniform(26, 33)])
    la = Ellipsoid(beyond_base(la_semi, 1, 0.45 * radial_semi * b0), patient_axes, la_semi)
    ra = Ellipsoid(beyond_base(ra_semi, -1, 0.75 * radial_semi * b0), patient_axes, ra_semi)
    appendage_axes = np.stack([_orthogonal(b1 + 0.3 * b0, e1), e1, np.cross(_orthogonal(
        b1 + 0.3 * b0, e1), e1)], axis=1)
    appendage = Ellipsoid(frame.surface(u_base - 8, rng.uniform(35, 55), 4.0), appendage_axes,
                          [rng.uniform(11, 16), rng.uniform(6, 9), rng.uniform(5, 7)])

    # Pericardial sac and epicardial fat enclose ventricles and atria.
    fat = rng.uniform(1.5, 4.5)
    hearts_parts = [frame.ventricles, frame.lv_outer, la, ra]
    pericardium = [p.grown(fat + 1.2) for p in hearts_parts]
    back = _posterior_reach(pericardium, SPINE_HALF_WIDTH_MM)
    spine_y = max(spine_y, back + rng.uniform(*SPINE_CLEARANCE_MM))
    heart.spine_y = spine_y
    heart.envelope = [
        Layer("pericardium", Material("soft_tissue"), pericardium),
        Layer("epicardial fat", Material("fat"), [p.grown(fat) for p in hearts_parts]),
    ]
    papillary = [Ellipsoid(lv_cavity.center + e1 * 0.3 * long_semi + lv_cavity.semi[1] * 0.8
                           * frame.direction(theta), axes, [0.3 * long_semi, 5.5, 5.5])
                 for theta in (rng.uniform(-70, -40), rng.uniform(40, 70))]
    heart.chambers = [
        Layer(MYOCARDIUM, myocardium, [frame.ventricles]),
        Layer(BLOOD_POOL, right_blood, [rv_cavity]),
        Layer(MYOCARDIUM, myocardium, [frame.lv_outer]),
        Layer(BLOOD_POOL, left_blood, [lv_cavity]),
        Layer(MYOCARDIUM, myocardium, papillary),
        Layer("atrial wall", myocardium, [ra, la, appendage.grown(1.5)]),
        Layer(BLOOD_POOL, right_blood, [ra.grown(-2.0)]),
        Layer(BLOOD_POOL, left_blood, [la.grown(-2.0), appendage]),
    ]
    heart.mitral_center = frame.axis_point(u_base - 2) + 0.3 * radial_semi * b0
    heart.mitral_radius = rng.uniform(12, 16)

    # Aorta: root at the centre of the base, ascending up and to the right, arch, descending
    # to the left of the spine.
    root = frame.axis_point(u_base - 6) + 0.12 * radial_semi * b1 - 0.05 * radial_semi * b0
    root_axis = _unit(-e1 + np.array([0.0, 0.0, 0.9]) + np.array([-0.2, -0.1, 0.0]))
    sinus_r, asc_r = rng.uniform(14, 18), rng.uniform(13, 16.5)
    arch_r, desc_r = rng.uniform(11.5, 14), rng.uniform(10, 12.5)
    desc_x, desc_y = rng.uniform(22, 34), spine_y - desc_r + rng.uniform(2, 12)
    ascending_top = root + root_axis * 22 + np.array([rng.uniform(-14, -6), rng.uniform(-10, -2),
                                                      rng.uniform(28, 40)])
    arch_top_z = ascending_top[2] + rng.uniform(25, 35)
    control = np.array([
        root - 3 * root_axis,
        root + 12 * root_axis,
        root + 24 * root_axis,
        ascending_top,
        [ascending_top[0] + 8, ascending_top[1] + 12, arch_top_z],
        [desc_x - 4, (ascending_top[1] + desc_y) / 2 + 15, arch_top_z + 2],
        [desc_x, desc_y, arch_top_z - 25],
        [desc_x, desc_y, arch_top_z - 90],
        [desc_x + rng.uniform(-6, 6), desc_y + rng.uniform(-3, 3), arch_top_z - 250],
    ])
    radii = np.array([0.85 * sinus_r, sinus_r, 0.95 * asc_r, asc_r, arch_r, arch_r, desc_r,
                      desc_r, 0.95 * desc_r])
    # Mixing: the bolus brightness varies a little along the aorta.
    aortic_scale = 1.0 + rng.uniform(-0.06, 0.06) * np.linspace(0, 1, len(control))
    wall = rng.uniform(1.5, 2.5)
    control[5:] += _descending_shift(control[5:], radii[5:], wall, frame)
    aorta = Tube.through(control, radii, step_mm=2.0, iodine_scale=aortic_scale)
    aorta.chunk_mm = 10.0
    heart.aorta, heart.aortic_wall_mm = aorta, wall
    heart.root_center, heart.root_axis, heart.sinus_radius = root, root_axis, sinus_r

    # Pulmonary trunk from the right-ventricular outflow, bifurcating behind the aorta.
    rvot = frame.surface(u_base + 4, rng.uniform(120, 140), -6.0)
    bifurcation = root + np.array([rng.uniform(18, 28), rng.uniform(5, 15), rng.uniform(40, 50)])
    trunk_r, branch_r = rng.uniform(11, 14), rng.uniform(8.5, 10.5)
    left_hilum = bifurcation + np.array([rng.uniform(40, 50), rng.uniform(15, 25), 0.0])
    right_hilum = np.array([root[0] - rng.uniform(50, 60), root[1] + rng.uniform(20, 30),
                            bifurcation[2] - 5])
    mid_trunk = (rvot + bifurcation) / 2 + np.array([8.0, -8.0, 0.0])
    pulmonary = [
        Tube.through([rvot, mid_trunk, bifurcation], [0.9 * trunk_r, trunk_r, trunk_r], 1.5),
        Tube.through([bifurcation, bifurcation + [20, 12, 3], left_hilum],
                     [branch_r, branch_r, 0.8 * branch_r], 1.5),
        Tube.through([bifurcation, root + [-2, 28 + asc_r, bifurcation[2] - root[2] - 2],
                      right_hilum], [branch_r, branch_r, 0.8 * branch_r], 1.5),
    ]
    heart.hila = [right_hilum, left_hilum]

    svc_r = rng.uniform(8, 11)
    svc_path = [ra.center + [4, 4, 0.6 * ra_semi[2]], root + [-asc_r - svc_r - 4, 12, 40],
                root + [-asc_r - svc_r - 6, 14, 200]]
    ivc = Tube.through([ra.center - [0, 0, 0.4 * ra_semi[2]], ra.center + [4, 10, -45],
                        ra.center + [6, 14, -160]], rng.uniform(10, 13), 2.0)
    veins = [Tube.through([la.center + [side * 0.5 * la_semi[0], 0, dz],
                           la.center + [side * (la_semi[0] + 15), 8, dz * 1.6],
                           la.center + [side * (la_semi[0] + 35), 14, dz * 2.2]],
                          rng.uniform(5.5, 7.5), 1.5)
             for side in (-1, 1) for dz in (-10, 10)]

    heart.great_vessels = [
        Layer("pulmonary wall", Material("soft_tissue"), [t.grown(1.2) for t in pulmonary]),
        Layer(PULMONARY_ARTERY, enhancement.blood(enhancement.pulmonary), pulmonary),
        Layer("pulmonary veins", left_blood, veins),
        Layer("caval wall", Material("soft_tissue"), [ivc.grown(1.0),
                                                      Tube.through(svc_path, svc_r + 1.0, 2.0)]),
        Layer("inferior vena cava", enhancement.blood(0.6 * enhancement.right_heart), [ivc]),
        Layer("superior vena cava", enhancement.blood(enhancement.svc),
              [Tube.through(svc_path, svc_r, 2.0)]),
    ]
    heart.aortic_layers = [Layer("aortic wall", Material("soft_tissue"), [aorta.grown(wall)]),
                           Layer(AORTA, left_blood, [aorta])]
    return heart
