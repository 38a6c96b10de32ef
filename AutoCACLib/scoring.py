"""Standard calcium scoring (the CSCT reference method) with explicit conventions.

A calcified voxel has at least ``threshold_hu``; a lesion is a connected region of such
voxels inside one vessel's calcium segment (2D: within one axial slice; 3D: across slices);
a lesion counts when its area reaches the minimum. Its Agatston contribution is
``area_mm2 x weight`` per slice, where the weight comes from the peak HU of the lesion in that
slice (130-199: 1, 200-299: 2, 300-399: 3, >= 400: 4), scaled by ``increment / 3 mm`` for images
that are not 3 mm. With ``weight_slab_mm`` the peak is read from the image averaged over a slab
of that thickness around each slice, as a thicker slice would show it. Volume is the voxel
count times the voxel volume; mass is ``c x 1e-3 x volume_mm3 x mean_HU`` mg when a
calibration ``c`` (mg HA/cm^3 per HU) is given.

Every convention is a field of :class:`ScoringSettings` and is written into every result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .categories import cac_drs, risk_category
from .errors import InputError
from .segments import CALCIUM_LABEL, VESSELS
from .structuring import bounding_box
from .volume import Reorientation, to_axial_lps

#: Approximate attenuation of hydroxyapatite relative to 120 kVp. With ``kvp_specific``,
#: the threshold and weight bins are multiplied by this factor (giving about 150 HU at
#: 100 kVp and 177 HU at 80 kVp, the order of the kVp-adapted thresholds reported for
#: low-kVp calcium scoring). Linear interpolation between entries.
KVP_CALCIUM_FACTOR = {70: 1.48, 80: 1.36, 100: 1.15, 120: 1.0, 140: 0.92}

_AREA_TOL = 1e-6  # mm^2: a lesion of exactly the minimum area counts despite float rounding


@dataclass(frozen=True)
class ScoringSettings:
    """The conventions of a calcium score.

    Attributes
    ----------
    threshold_hu : float
        A voxel is calcified at or above this value (at 120 kVp unless ``kvp_specific``).
    weight_thresholds_hu : tuple of 4 floats
        Peak HU at which the Agatston weight becomes 1, 2, 3, 4.
    connectivity : {8, 4}
        In-plane neighbourhood: 8 includes diagonal neighbours. For 3D lesions, 8 means
        26-connectivity and 4 means 6-connectivity.
    lesion_dim : {"2d", "3d"}
        Lesions per axial slice (standard) or connected across slices.
    min_area_mm2 : float
        Smallest lesion area that counts (for 3D lesions: the largest cross-section).
    min_area_pixels : int or None
        Also require at least this many pixels in that area, when set.
    reference_slice_mm : float
        The slice increment Agatston scores are normalized to.
    normalize_slice_increment : bool
        Multiply per-slice areas by ``increment / reference_slice_mm``.
    weight_slab_mm : float or None
        Read each lesion's peak (for its weight) from the image averaged along z over a slab
        of this thickness centred on each slice (box profile), not from the slice itself; a
        calcification thinner than the slab then weighs what a slice that thick gives it.
        None (standard): the slice itself. No effect when the slices are at least this thick.
    kvp_specific : bool
        Scale threshold and weight bins with :data:`KVP_CALCIUM_FACTOR` for the image's kVp.
    mass_calibration : float or None
        ``c`` in mg HA/cm^3 per HU for the mass score; no mass without it.
    agatston_scale, volume_scale : float
        Multiply each lesion's Agatston score / volume (and mass). 1 for standard scoring;
        the CCTA method fits them so that CCTA scores estimate the CSCT's (thin contrast
        slices show less calcium blooming than 3 mm non-contrast slices).
    """

    threshold_hu: float = 130.0
    weight_thresholds_hu: tuple[float, float, float, float] = (130.0, 200.0, 300.0, 400.0)
    connectivity: int = 8
    lesion_dim: str = "2d"
    min_area_mm2: float = 1.0
    min_area_pixels: int | None = None
    reference_slice_mm: float = 3.0
    normalize_slice_increment: bool = True
    weight_slab_mm: float | None = None
    kvp_specific: bool = False
    mass_calibration: float | None = None
    agatston_scale: float = 1.0
    volume_scale: float = 1.0

    def __post_init__(self):
        if self.connectivity not in (4, 8):
            raise InputError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.lesion_dim not in ("2d", "3d"):
            raise InputError(f"lesion_dim must be '2d' or '3d', got {self.lesion_dim!r}")
        w = tuple(float(t) for t in self.weight_thresholds_hu)
        if len(w) != 4 or list(w) != sorted(w):
            raise InputError(f"weight_thresholds_hu must be 4 increasing values, got {w}")
        object.__setattr__(self, "weight_thresholds_hu", w)
        if self.agatston_scale <= 0 or self.volume_scale <= 0:
            raise InputError("score scales must be positive")
        if self.min_area_mm2 < 0 or (self.min_area_pixels is not None and self.min_area_pixels < 1):
            raise InputError("minimum lesion area must be non-negative")
        if self.weight_slab_mm is not None and not self.weight_slab_mm > 0:
            raise InputError(f"weight_slab_mm must be positive, got {self.weight_slab_mm}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weight_thresholds_hu"] = list(self.weight_thresholds_hu)
        return d

    def for_kvp(self, kvp: float | None) -> tuple["ScoringSettings", list[str]]:
        """Settings with the kVp-specific threshold applied (when asked for) and warnings."""
        if not self.kvp_specific:
            return self, []
        if kvp is None:
            return self, ["kVp-specific thresholds asked for but the tube voltage is unknown: "
                          "120 kVp thresholds used"]
        f = kvp_calcium_factor(kvp)
        return dataclasses.replace(
            self, threshold_hu=self.threshold_hu * f,
            weight_thresholds_hu=tuple(t * f for t in self.weight_thresholds_hu),
            kvp_specific=False), []


def kvp_calcium_factor(kvp: float) -> float:
    """Hydroxyapatite attenuation at ``kvp`` relative to 120 kVp (interpolated)."""
    keys = sorted(KVP_CALCIUM_FACTOR)
    if not keys[0] <= kvp <= keys[-1]:
        raise InputError(f"no kVp-specific calcium threshold for {kvp:g} kVp "
                         f"(known {keys[0]}-{keys[-1]} kVp)")
    return float(np.interp(kvp, keys, [KVP_CALCIUM_FACTOR[k] for k in keys]))


def agatston_weight(peak_hu: float, weight_thresholds_hu=(130.0, 200.0, 300.0, 400.0)) -> int:
    """Agatston density weight (0-4) of a lesion's peak HU."""
    return int(np.searchsorted(np.asarray(weight_thresholds_hu), peak_hu, side="right"))


@dataclass
class CalciumScore:
    """Scores of one image: per lesion, per vessel and total.

    Per-vessel quantities are dicts with keys LM, LAD, LCx, RCA and total.
    """

    settings: ScoringSettings
    lesions: list[dict]
    agatston: dict[str, float]
    volume_mm3: dict[str, float]
    mass_mg: dict[str, float] | None
    lesion_count: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def category(self) -> str:
        return risk_category(self.agatston["total"])

    @property
    def cac_drs(self) -> str:
        n = sum(1 for v in VESSELS if self.agatston[v] > 0)
        return cac_drs(self.agatston["total"], n)

    def to_dict(self) -> dict:
        """JSON-ready scores (the score part of ``scores.json``)."""
        def rounded(d, nd=3):
            return None if d is None else {k: round(float(v), nd) for k, v in d.items()}
        return {
            "agatston": rounded(self.agatston),
            "volume_mm3": rounded(self.volume_mm3),
            "mass_mg": rounded(self.mass_mg),
            "lesion_count": dict(self.lesion_count),
            "category": self.category,
            "cac_drs": self.cac_drs,
            "settings": self.settings.to_dict(),
            "lesions": self.lesions,
            "warnings": list(self.warnings),
        }


def _structure(settings: ScoringSettings) -> np.ndarray:
    if settings.lesion_dim == "3d":
        return ndimage.generate_binary_structure(3, 3 if settings.connectivity == 8 else 1)
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, 2 if settings.connectivity == 8 else 1)
    return s


def slab_reach(increment_mm: float, slab_mm: float) -> int:
    """How many slices on each side of a slice a slab of ``slab_mm`` centred on it reaches
    (in part), for slices ``increment_mm`` apart (0 when the slab is no thicker than one)."""
    return int(np.ceil(slab_mm / 2.0 / increment_mm - 0.5))


def slab_profile(increment_mm: float, slab_mm: float) -> np.ndarray:
    """Weights (summing to 1) of the slices within a slab of ``slab_mm`` centred on a slice,
    for slices ``increment_mm`` apart: a box profile, the end slices weighted by the part of
    their interval inside the slab."""
    half = slab_mm / 2.0
    n = slab_reach(increment_mm, slab_mm)
    centres = np.arange(-n, n + 1) * increment_mm
    inside = (np.minimum(centres + increment_mm / 2, half)
              - np.maximum(centres - increment_mm / 2, -half))
    weights = np.clip(inside, 0.0, None)
    return weights / weights.sum()


def _slab_averaged(image: np.ndarray, box: tuple, increment_mm: float, slab_mm: float
                   ) -> np.ndarray:
    """``image[box]`` averaged along z over a slab (:func:`slab_profile`), using the slices
    beyond the box that the slab reaches (edge slices repeated at the image's ends)."""
    reach = slab_reach(increment_mm, slab_mm)
    z0, z1 = max(box[0].start - reach, 0), min(box[0].stop + reach, image.shape[0])
    wide = image[(slice(z0, z1),) + tuple(box[1:])].astype(np.float32)
    profile = slab_profile(increment_mm, slab_mm).astype(np.float32)
    averaged = ndimage.convolve1d(wide, profile, axis=0, mode="nearest")
    return averaged[box[0].start - z0:box[0].stop - z0]


def _score_vessel(image, mask, vessel, spacing, settings, offset_z, peak_image=None):
    """Lesions of one vessel: list of dicts (only lesions that count). ``peak_image`` (same
    shape) gives the values the weights are read from (default ``image``)."""
    calcified = mask & (image >= settings.threshold_hu)
    if not calcified.any():
        return []
    components, n = ndimage.label(calcified, structure=_structure(settings))
    pixel_area = spacing[1] * spacing[2]
    voxel_volume = pixel_area * spacing[0]
    slice_factor = (spacing[0] / settings.reference_slice_mm
                    if settings.normalize_slice_increment else 1.0)
    peak_image = image if peak_image is None else peak_image
    lesions = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        own = components[box] == index
        values, peaks = image[box], peak_image[box]
        per_slice = []  # (z, pixels, peak for the weight) for each slice the lesion occupies
        for dz in range(own.shape[0]):
            in_slice = own[dz]
            if in_slice.any():
                per_slice.append((box[0].start + dz, int(in_slice.sum()),
                                  float(peaks[dz][in_slice].max())))
        largest = max(p for _, p, _ in per_slice)
        if largest * pixel_area + _AREA_TOL < settings.min_area_mm2:
            continue
        if settings.min_area_pixels is not None and largest < settings.min_area_pixels:
            continue
        agatston = sum(p * pixel_area * agatston_weight(peak, settings.weight_thresholds_hu)
                       for _, p, peak in per_slice) * slice_factor * settings.agatston_scale
        n_vox = int(own.sum())
        volume = n_vox * voxel_volume * settings.volume_scale
        mean_hu = float(values[own].mean())
        weight_peak = max(pk for _, _, pk in per_slice)
        lesion = {
            "vessel": vessel,
            "slice": int(per_slice[0][0] + offset_z),
            "n_slices": len(per_slice),
            "area_mm2": round(largest * pixel_area, 4),
            "peak_hu": round(float(values[own].max()), 1),
            "mean_hu": round(mean_hu, 1),
            "weight": agatston_weight(weight_peak, settings.weight_thresholds_hu),
            "agatston": round(agatston, 4),
            "volume_mm3": round(volume, 4),
            "voxels": n_vox,
        }
        if settings.mass_calibration is not None:
            lesion["mass_mg"] = round(settings.mass_calibration * 1e-3 * volume * mean_hu, 4)
        lesions.append(lesion)
    return lesions


def score_calcium(image_hu: np.ndarray, calcium_labels: np.ndarray, spacing,
                  settings: ScoringSettings | None = None, kvp: float | None = None
                  ) -> CalciumScore:
    """Score the calcium inside per-vessel calcium regions.

    Parameters
    ----------
    image_hu : ndarray (z, y, x)
        CT image in HU.
    calcium_labels : ndarray (z, y, x) of int
        0 = no calcium region; 1, 2, 3, 4 = calcium region of LM, LAD, LCx, RCA. Voxels
        below the threshold inside a region do not count.
    spacing : sequence of 3 floats
        Voxel size (z, y, x) in mm; ``spacing[0]`` is the slice increment.
    settings : ScoringSettings, optional
        Conventions (standard CSCT defaults when omitted).
    kvp : float, optional
        Tube voltage, used when ``settings.kvp_specific``.

    Returns
    -------
    CalciumScore
    """
    settings = settings or ScoringSettings()
    effective, warnings = settings.for_kvp(kvp)
    image_hu = np.asarray(image_hu)
    calcium_labels = np.asarray(calcium_labels)
    if image_hu.shape != calcium_labels.shape:
        raise InputError(f"calcium label map shape {calcium_labels.shape} differs from the "
                         f"image {image_hu.shape}")
    spacing = tuple(float(s) for s in spacing)
    lesions = []
    present = calcium_labels > 0
    if present.any():
        # Work inside the bounding box of the calcium regions: fast on clinical volumes.
        box = bounding_box(present)
        sub_img, sub_lab = image_hu[box], calcium_labels[box]
        slab = effective.weight_slab_mm
        sub_peaks = (_slab_averaged(image_hu, box, spacing[0], slab)
                     if slab is not None and slab > spacing[0] else None)
        for i, vessel in enumerate(VESSELS, start=1):
            lesions += _score_vessel(sub_img, sub_lab == i, vessel, spacing, effective,
                                     box[0].start, sub_peaks)
    lesions.sort(key=lambda d: (VESSELS.index(d["vessel"]), d["slice"]))

    def total(key):
        out = {v: sum(les[key] for les in lesions if les["vessel"] == v) for v in VESSELS}
        out["total"] = sum(out[v] for v in VESSELS)
        return out

    counts = {v: sum(1 for les in lesions if les["vessel"] == v) for v in VESSELS}
    counts["total"] = len(lesions)
    return CalciumScore(
        settings=settings,
        lesions=lesions,
        agatston=total("agatston"),
        volume_mm3=total("volume_mm3"),
        mass_mg=total("mass_mg") if settings.mass_calibration is not None else None,
        lesion_count=counts,
        warnings=warnings,
    )


#: Said when an image's slices are not axial (lesion slice numbers then count axial slices).
NOT_AXIAL_WARNING = ("the image is stored as coronal or sagittal slices: it was scored on "
                     "axial slices, and lesion slice numbers count axial slices from the feet")


def stored_slices(lesions: list[dict], warnings: list[str], change: Reorientation,
                  n_slices: int) -> None:
    """Renumber (in place) lesions found on the axial grid of
    :func:`AutoCACLib.volume.to_axial_lps` by the image's stored slices, when those are axial
    (``n_slices`` of them); otherwise add :data:`NOT_AXIAL_WARNING` to ``warnings``."""
    if not change.slices_axial:
        warnings.append(NOT_AXIAL_WARNING)
    elif change.flips[0]:
        for lesion in lesions:
            lesion["slice"] = n_slices - 1 - lesion["slice"]


def score_volume(volume, calcium_labels: np.ndarray, settings: ScoringSettings | None = None,
                 kvp: float | None = None) -> CalciumScore:
    """:func:`score_calcium` on a volume's axial slices, whatever its stored axis order.

    The Agatston score is defined on axial slices: an image stored as coronal or sagittal
    slices is scored on its axial grid (:func:`AutoCACLib.volume.to_axial_lps`, no
    resampling); scores of images stored right-to-left or feet-first do not change. Lesion
    slice numbers are those of the stored slices (see :func:`stored_slices`).
    """
    axial, change = to_axial_lps(volume)
    score = score_calcium(axial.array, change.apply(calcium_labels), axial.spacing, settings,
                          kvp=kvp)
    stored_slices(score.lesions, score.warnings, change, volume.shape[0])
    return score


def calcium_labels_from_labelmap(labels: np.ndarray) -> np.ndarray:
    """1..4 vessel calcium labels from an AutoCAC label map (``Calcium <vessel>`` segments)."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    for i, vessel in enumerate(VESSELS, start=1):
        out[labels == CALCIUM_LABEL[vessel]] = i
    return out


def score_labelmap(volume, labels: np.ndarray, settings: ScoringSettings | None = None
                   ) -> CalciumScore:
    """Score the ``Calcium <vessel>`` segments of an AutoCAC label map on ``volume``'s grid."""
    return score_volume(volume, calcium_labels_from_labelmap(labels), settings, kvp=volume.kvp)
