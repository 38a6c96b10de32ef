"""CT numbers of the phantom's materials as a function of tube voltage.

A material is a base tissue plus optional iodine (contrast agent, mg/ml) and hydroxyapatite
(calcium, mg HA/cm^3). Its CT number at a tube voltage is

    HU = base_hu(kVp) + iodine * iodine_hu_per_mg_ml(kVp) + ha * ha_hu_per_mg_cm3(kVp)

which is the linear mixture model of quantitative CT: the additives are dilute, so their
contributions add to that of the base tissue.

Approximate sources for the tables (effective energies of about 43, 50 and 57 keV for 80,
100 and 120 kVp clinical spectra):

* base tissues: ICRU Report 46 compositions with NIST XCOM mass attenuation; fat becomes more
  negative at low kVp (about -100 HU at 120 kVp, -120 HU at 80 kVp); soft tissues change little.
* iodine: about 25-26 HU per mg/ml at 120 kVp, 31 at 100 kVp and 40 at 80 kVp (e.g. Bae,
  Radiology 2010;256:32-61, "Intravenous contrast medium administration and scan timing at CT").
* hydroxyapatite: about 1.4 HU per mg/cm^3 at 120 kVp, rising about 1.2x at 100 kVp and
  1.5x at 80 kVp (the photoelectric share of calcium grows at low energy). The 120 kVp value
  is measured on the real QRM calcium-scoring phantom scan in ``shared/data`` (Canon, 120 kVp,
  3 mm): the 800, 400 and 200 mg HA/cm^3 large inserts peak at 1275, 649 and 383 HU (1.3-1.6
  HU per mg/cm^3 between them), and the published FQM mass of the 800 insert over its
  thresholded volume and mean CT number gives 1.40 HU per mg/cm^3.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Tube voltages the phantom can simulate.
KVPS = (80, 100, 120)

#: CT number (HU) of each base tissue by tube voltage.
BASE_HU = {
    "air": {80: -1000.0, 100: -1000.0, 120: -1000.0},
    "lung": {80: -865.0, 100: -858.0, 120: -850.0},
    "fat": {80: -122.0, 100: -110.0, 120: -100.0},
    "water": {80: 0.0, 100: 0.0, 120: 0.0},
    "csf": {80: 12.0, 100: 10.0, 120: 8.0},
    "blood": {80: 43.0, 100: 41.0, 120: 40.0},
    "muscle": {80: 50.0, 100: 48.0, 120: 46.0},
    "myocardium": {80: 45.0, 100: 43.0, 120: 42.0},
    "liver": {80: 60.0, 100: 58.0, 120: 56.0},
    "cartilage": {80: 110.0, 100: 104.0, 120: 100.0},
    "soft_tissue": {80: 36.0, 100: 35.0, 120: 34.0},
}

#: HU added by 1 mg/ml of iodine.
IODINE_HU_PER_MG_ML = {80: 40.0, 100: 31.0, 120: 25.5}

#: HU added by 1 mg/cm^3 of hydroxyapatite.
HA_HU_PER_MG_CM3 = {80: 2.15, 100: 1.70, 120: 1.40}


def nearest_kvp(kvp: float) -> int:
    """The tabulated tube voltage closest to ``kvp``."""
    return min(KVPS, key=lambda k: abs(k - kvp))


@dataclass(frozen=True)
class Material:
    """A base tissue with dissolved iodine and hydroxyapatite.

    Attributes
    ----------
    base : str
        Key of :data:`BASE_HU`.
    iodine_mg_ml : float
        Iodine concentration in the contrast-enhanced scan (0 in the non-contrast scan).
    ha_mg_cm3 : float
        Hydroxyapatite density (bone, calcified plaque).
    """

    base: str
    iodine_mg_ml: float = 0.0
    ha_mg_cm3: float = 0.0

    def hu(self, kvp: float, contrast: bool, iodine_scale: float = 1.0) -> float:
        """CT number at a tube voltage, with or without the contrast agent.

        ``iodine_scale`` multiplies the iodine concentration (contrast gradients along a vessel).
        """
        k = nearest_kvp(kvp)
        iodine = self.iodine_mg_ml * iodine_scale if contrast else 0.0
        return (BASE_HU[self.base][k] + iodine * IODINE_HU_PER_MG_ML[k]
                + self.ha_mg_cm3 * HA_HU_PER_MG_CM3[k])

    def iodine_hu(self, kvp: float, contrast: bool) -> float:
        """The iodine part of :meth:`hu` (what ``iodine_scale`` multiplies)."""
        return self.iodine_mg_ml * IODINE_HU_PER_MG_ML[nearest_kvp(kvp)] if contrast else 0.0


def iodine_for_hu(target_hu: float, kvp: float, base: str = "blood") -> float:
    """Iodine concentration (mg/ml) that brings ``base`` to ``target_hu`` at ``kvp``."""
    k = nearest_kvp(kvp)
    return max(0.0, (target_hu - BASE_HU[base][k]) / IODINE_HU_PER_MG_ML[k])
