"""A layer: shapes of one material painted together, with the truth tag they carry."""

from __future__ import annotations

from dataclasses import dataclass, field

from .materials import Material

#: Tissue tags that become truth masks (others are anatomy without a truth mask).
AORTA = "aorta"
VEIN = "cardiac vein"
EXTRA_CALCIUM = "extra-coronary calcium"
PULMONARY_ARTERY = "pulmonary artery"
MYOCARDIUM = "myocardium"
BLOOD_POOL = "cardiac blood pool"


def lumen_tag(vessel: str) -> str:
    """Tag of a coronary lumen layer (vessel: LM, LAD, LCx, RCA)."""
    return f"lumen {vessel}"


def calcium_tag(vessel: str) -> str:
    """Tag of a coronary plaque layer."""
    return f"calcium {vessel}"


@dataclass
class Layer:
    """Shapes painted with one material.

    Attributes
    ----------
    tag : str
        What the layer is (a tissue tag above, or a plain anatomical name).
    material : Material
    shapes : list
        Shapes of :mod:`AutoCACLib.phantom.shapes`; their union is painted.
    region : int
        Non-zero for calcium: the value written to the non-contrast scan's dilated truth
        regions (1..4: coronary calcium of LM, LAD, LCx, RCA; 5: extra-coronary calcium).
    """

    tag: str
    material: Material
    shapes: list = field(default_factory=list)
    region: int = 0

    def moved(self, rotation, translation) -> "Layer":
        return Layer(self.tag, self.material, [s.moved(rotation, translation) for s in self.shapes],
                     self.region)
