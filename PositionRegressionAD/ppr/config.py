"""Configuration dataclasses that travel inside model bundles (JSON round trip)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


EQUALIZE_OVER = ("reference", "scan")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a head CT is brought into model space.

    size: the model grid is ``size`` voxels along each axis (paper: 256).
    spacing_mm: isotropic voxel size of the model grid (paper: 1 mm).
    window_hu: intensities are clipped to [lo, hi] before normalisation.
    equalize: histogram-equalise the head foreground after windowing (else map the window linearly).
    equalize_over: whose histogram gives the equalisation curve: "reference" (the reference head's,
        one curve for every scan, so the result does not depend on a scan's field of view or noise)
        or "scan" (each scan's own; the only way before, so a bundle's JSON without this key means it).
    anchor_brain: shift each scan's HU so that its brain's median matches the reference brain's
        (scanners differ by up to 15 HU on brain tissue); a bundle's JSON without this key: off.
    prewindowed: the data was exported in a window already (air and bone saturate), so the
        "does this look like CT" intensity check is relaxed to the window itself.
    min_registration_metric: a registration whose quality figure (negated Mattes mutual
        information over the reference head at 3 mm, higher is better) is below this is refused as
        "does not look like a head CT". 0.25 sits between what heads and non-heads reach: with
        ctich_054 as reference (256^3, 1 mm), the other 31 CT-ICH dev cases reached 0.340-0.658
        (the reference itself 1.64), while a water cylinder, an abdomen-like phantom, noise and a
        head with its slices shuffled reached 0.055-0.152.
    min_brain_match: a registered scan whose brain core (the reference's intracranial space 10 mm
        and more from the skull) correlates with the reference's below this is refused as "does
        not look like a head CT" (``ppr.image.head_check``, where the measurements are): heads
        reach 0.48-0.78, a sphere, a water ellipsoid or a bone shell around soft tissue -0.05-0.09
        (they pass min_registration_metric). Bundles written before this existed get 0.25 too.
    """

    size: int = 256
    spacing_mm: float = 1.0
    window_hu: tuple[float, float] = (-20.0, 100.0)
    equalize: bool = True
    equalize_over: str = "reference"
    anchor_brain: bool = True
    prewindowed: bool = False
    min_registration_metric: float = 0.25
    min_brain_match: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_hu", tuple(float(v) for v in self.window_hu))
        if self.size < 32:
            raise ValueError(f"size must be at least 32 voxels, got {self.size}")
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.equalize_over not in EQUALIZE_OVER:
            raise ValueError(f"equalize_over must be one of {EQUALIZE_OVER}, got {self.equalize_over!r}")
        lo, hi = self.window_hu
        if not lo < hi:
            raise ValueError(f"window_hu must satisfy lo < hi, got {self.window_hu}")

    @property
    def extent_mm(self) -> float:
        """Edge length of the model grid in millimetres."""
        return self.size * self.spacing_mm

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["window_hu"] = list(self.window_hu)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing settings: {sorted(unknown)}")
        # Bundles written before "equalize_over" existed equalised over each scan's own histogram.
        return cls(**{"equalize_over": "scan", "anchor_brain": False, **data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessConfig":
        return cls.from_dict(json.loads(text))
