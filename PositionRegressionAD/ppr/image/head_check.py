"""Is it a head? After registration, the inside of the scan's cranium must look like a brain.

The registration's quality figure alone does not tell a head from a head-sized object: a uniform
sphere, a water ellipsoid or a crude skull phantom (a bone shell around soft tissue) lines up with
the reference's outline and reaches 0.33-0.47, as much as a real head with part of its skull or
field of view missing (0.43 and up). What no such object has is a brain's inside: ventricles,
cisterns and the grey/white contrast at the places where the reference has them.

The check: over the reference's brain core (its intracranial space, CORE_DEPTH_MM and more from its
edge, so that the skull's outline, which any shell reproduces, does not count), the correlation
of the registered scan's windowed intensities with the reference's, where the scan's head covers
the core. Measured with the shipped bundle (ppr-ctich-default: reference ctich_100, window
[-20, 100] HU, at the registration's 3 mm; the measuring script is outside the repository, its
table in the issue-13 note), on what reaches this check (nothing refused it before):

- heads 0.48-0.78: the 31 other CT-ICH dev cases (healthy and haemorrhage; the reference itself
  0.99), the two real full-HU DICOM series (GE with gantry tilt 0.59, Siemens 0.70), ctich_056
  cut to its top 160 and 120 mm (0.62, 0.56), InVesalius cut to its top 120 and 140 mm (0.67,
  0.69), a lateral skull flap removed (ctich_054 0.61, ctich_056 0.57), ctich_051 and 056 upside
  down (slice order reversed, read mirrored: 0.56, 0.58). With the test suite's tiny reference
  (ctich_054 at 4 mm) heads gave 0.41-0.79, phantoms 0.03-0.04.
- non-heads -0.05-0.09: a uniform sphere, a water ellipsoid (quality figures 0.33, 0.37), a
  cylinder, a box, noise, bone shells (sphere and head-shaped ellipsoid) around uniform soft
  tissue, around smooth random texture and around two dark "ventricles" (0.38-0.47), and 70 mm
  slabs from the bottom of two heads (skull base and face; quality 0.17 and 0.26).
- refused too, rightly: heads the registration put wrong, whose results would be meaningless:
  InVesalius cut to its top 100 mm (0.20; 84 mm off at the model grid's corners) and ctich_054
  with an upper skull flap removed (0.14; ~45 degrees off, a known registration failure); the
  test suite's analytic head phantom (``Testing/synthetic_heads.py``) reaches 0.20 against a real
  reference (it passes against a reference made from itself).

PreprocessConfig.min_brain_match is 0.25: 0.16 above the highest non-head, 0.23 below the lowest
head. Other features were measured and left out: the fraction of the reference's skull that is
bone in the scan (heads 0.08-0.76 with cut or thin-slice scans low, skull phantoms 0.22-0.28), the
correlation over the whole intracranial space (heads 0.40-0.75, skull phantoms 0.26-0.38: the
shell's edge correlates) and the Dice of the two intracranial masks (heads 0.66-0.95, skull
phantoms 0.82-0.90).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# The brain core: the intracranial space this far and more from its edge (the inner table).
CORE_DEPTH_MM = 10.0
# Less core than this in the scan's view cannot be judged. The shipped reference's core is 620 ml;
# InVesalius cut to its top 100, 120 and 140 mm covered 520-620 ml of it.
MIN_CORE_ML = 20.0


@dataclass(frozen=True)
class HeadLikeness:
    """brain_match: correlation of the scan with the reference over the brain core it covers
        (nan when it could not be measured: see core_ml).
    core_ml: volume of the reference's brain core that the scan's head covers.
    """

    brain_match: float
    core_ml: float


def brain_core(cranium: sitk.Image) -> np.ndarray:
    """Bool array (z, y, x): the intracranial space (uint8 mask) CORE_DEPTH_MM and more from its edge."""
    depth = sitk.SignedMaurerDistanceMap(
        sitk.Cast(cranium, sitk.sitkUInt8), insideIsPositive=True, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayFromImage(depth) >= CORE_DEPTH_MM


def head_likeness(reference: sitk.Image, scan: sitk.Image, core: np.ndarray, in_head: np.ndarray) -> HeadLikeness:
    """How much the scan's brain core looks like the reference's.

    reference, scan: windowed intensities on one grid (the scan registered onto the reference's),
        in any affine mapping of HU (the correlation does not depend on it).
    core: ``brain_core`` of the reference; in_head: bool array, where the scan's head is.
    """
    seen = core & in_head
    core_ml = float(seen.sum() * np.prod(reference.GetSpacing()) / 1000.0)
    if core_ml < MIN_CORE_ML:
        return HeadLikeness(float("nan"), core_ml)
    ours = sitk.GetArrayViewFromImage(scan)[seen].astype(np.float64)
    theirs = sitk.GetArrayViewFromImage(reference)[seen].astype(np.float64)
    if ours.std() == 0 or theirs.std() == 0:
        return HeadLikeness(0.0, core_ml)
    return HeadLikeness(float(np.corrcoef(ours, theirs)[0, 1]), core_ml)


def refusal(likeness: HeadLikeness, min_brain_match: float) -> str:
    """The message for a scan that fails the check ('' when it passes)."""
    if np.isnan(likeness.brain_match):
        return (
            "The image does not look like a head CT: once aligned with the reference head, only "
            f"{likeness.core_ml:.0f} ml of it lies where the brain is (at least {MIN_CORE_ML:.0f} ml "
            "are needed to tell a head). Check that the scan shows the brain (not only the face, "
            "the skull base or the neck) and that its header's spacing is right."
        )
    if likeness.brain_match >= min_brain_match:
        return ""
    return (
        "The image does not look like a head CT, or it could not be aligned with the reference head: "
        "once aligned, the inside of its skull does not look like a brain (its intensities deep "
        "inside the cranium follow the reference brain's with a correlation of "
        f"{likeness.brain_match:.2f}, below the {min_brain_match:.2f} a head CT reaches; 0.4-0.8 is "
        "usual for a head, -0.1-0.1 for phantoms, water and other objects). Check that the scan is "
        "a head CT of a patient (not a phantom, a body part, a scout or a label map) and that it "
        "shows the brain, not only the face, the skull base or the neck. A head with only a few "
        "centimetres of it in view, or with large parts missing (a wide craniectomy), can fail to "
        "align and be refused too: its results would not mean anything."
    )
