"""Synthetic paired CCTA / CSCT cases with known truth.

A random patient (thorax, heart, coronary tree, veins, calcified plaques, extra-coronary
calcium) is scanned twice in the same coordinates: a contrast-enhanced coronary CT
angiography at 80, 100 or 120 kVp, and a non-contrast 3 mm, 120 kVp calcium-scoring CT whose
standard Agatston score is the reference. Deterministic by seed.

Modules: ``materials`` (CT numbers by kVp), ``shapes`` (signed-distance primitives),
``render`` (partial-volume rasterization), ``thorax``, ``heart``, ``coronary``, ``calcium``
(anatomy), ``anatomy`` (one patient in scanner coordinates), ``scanner`` (protocols, blur,
slice profile, noise), ``case`` (cases, files, cohorts), ``preview`` (PNG views).
"""

from .case import (PhantomCase, case_seed, make_case, rescan_cohort, rescan_reference,
                   write_case, write_cohort)

__all__ = ["PhantomCase", "case_seed", "make_case", "rescan_cohort", "rescan_reference",
           "write_case", "write_cohort"]
