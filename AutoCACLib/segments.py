"""The segments AutoCAC writes and reads: names, label values, colours, terminology.

One label map holds all of them without overlap (Slicer's Segment Editor default): a calcium
voxel belongs to ``Calcium <vessel>``, not to the vessel's lumen segment. Terminology follows
Slicer's terminology entry string (SNOMED CT codes, "SCT"); the vessel codes are those of the
DICOM master list that Slicer ships (checked against its terminology files). "Pathologic
calcification" (18115005) is a valid SNOMED CT code that Slicer's lists lack, so Slicer shows it
as a custom entry.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The four vessels scored, in report order.
VESSELS = ("LM", "LAD", "LCx", "RCA")

_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ANATOMY = ("SCT", "123037004", "Anatomical Structure")
_ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
_CALCIFICATION = ("SCT", "18115005", "Pathologic calcification")


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of an AutoCAC segmentation.

    Attributes
    ----------
    name : str
        Segment name (also its ID in files we write).
    label : int
        Value in AutoCAC's label map.
    color : tuple of float
        RGB in 0..1.
    category, type : tuple of str
        Terminology codes (scheme, value, meaning).
    region : tuple of str or None
        Anatomic region code, for the calcium segments.
    vessel : str or None
        The vessel this segment belongs to (LM, LAD, LCx, RCA), None for the aorta.
    """

    name: str
    label: int
    color: tuple[float, float, float]
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    region: tuple[str, str, str] | None = None
    vessel: str | None = None

    @property
    def is_calcium(self) -> bool:
        return self.name.startswith("Calcium ")

    def terminology(self) -> str:
        """Slicer's terminology entry string for this segment."""
        region = "^".join(self.region) if self.region else "^^"
        context = _ANATOMIC_CONTEXT if self.region else ""
        return "~".join([_CONTEXT, "^".join(self.category), "^".join(self.type), "^^",
                         context, region, "^^"])


_VESSEL_CODES = {
    "LM": ("SCT", "3227004", "Left Main Coronary Artery"),
    "LAD": ("SCT", "59438005", "Left Anterior Descending Coronary Artery"),
    "LCx": ("SCT", "57396003", "Circumflex Coronary Artery"),
    "RCA": ("SCT", "13647002", "Right Coronary Artery"),
}
_VESSEL_COLORS = {
    "LM": (0.85, 0.33, 0.10),
    "LAD": (0.93, 0.69, 0.13),
    "LCx": (0.47, 0.67, 0.19),
    "RCA": (0.30, 0.75, 0.93),
}
_CALCIUM_COLORS = {
    "LM": (1.00, 0.00, 0.00),
    "LAD": (1.00, 0.00, 1.00),
    "LCx": (0.00, 1.00, 0.00),
    "RCA": (0.00, 0.40, 1.00),
}

SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec("Aorta", 1, (0.85, 0.35, 0.35), _ANATOMY, ("SCT", "15825003", "Aorta")),
    *(SegmentSpec(v, 2 + i, _VESSEL_COLORS[v], _ANATOMY, _VESSEL_CODES[v], vessel=v)
      for i, v in enumerate(VESSELS)),
    *(SegmentSpec(f"Calcium {v}", 6 + i, _CALCIUM_COLORS[v], _ALTERED, _CALCIFICATION,
                  region=_VESSEL_CODES[v], vessel=v)
      for i, v in enumerate(VESSELS)),
)

SEGMENT_BY_NAME = {s.name: s for s in SEGMENTS}
SEGMENT_BY_LABEL = {s.label: s for s in SEGMENTS}
AORTA_LABEL = SEGMENT_BY_NAME["Aorta"].label
#: Label value of each vessel's lumen segment and of its calcium segment.
VESSEL_LABEL = {v: SEGMENT_BY_NAME[v].label for v in VESSELS}
CALCIUM_LABEL = {v: SEGMENT_BY_NAME[f"Calcium {v}"].label for v in VESSELS}
