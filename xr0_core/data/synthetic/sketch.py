"""The canvas an anatomy is drawn on: tissue layers plus the ground truth that findings need.

An anatomy drawer (:mod:`xr0_core.data.synthetic.phantoms`) only adds shapes to a :class:`Sketch` and
names places (landmarks, bones that may break, where an implant may sit, lungs); findings
(:mod:`xr0_core.data.synthetic.findings`) then edit the layers at those places; the renderer
(:mod:`xr0_core.data.synthetic.render`) turns the layers into an exposure. Keeping the three apart is
what makes the ground truth (masks, landmarks, boxes) exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xr0_core.data.synthetic.geometry import Frame, Point, fill


@dataclass(frozen=True)
class BoneSite:
    """A long-bone segment (canonical capsule) that can carry a fracture or a plate.

    ``name`` is how a report names it ("distal radius", "proximal phalanx of the index finger").
    """

    name: str
    p0: Point
    p1: Point
    radius: float


@dataclass(frozen=True)
class ImplantSite:
    """Where metal may sit: ``kind`` selects the shape (plate, hip, pacemaker, rods), ``params`` its geometry."""

    location: str
    preposition: str
    kind: str
    params: dict[str, Any]


@dataclass
class Lung:
    """One lung's occupancy and the geometry a nodule / an effusion is placed with (canonical units)."""

    side: str  # patient side: "right" or "left"
    occupancy: np.ndarray  # float32 [H, W]
    apex: Point
    costophrenic: Point
    centre_u: float
    half_width: float


@dataclass
class Sketch:
    """Attenuation layers of one image in progress, all float32 ``[H, W]`` on ``frame``'s pixel grid.

    Final attenuation (see ``render``): ``mu_soft * (soft * (1 - air) + extra_soft) + mu_bone * bone
    + mu_metal * metal``. ``air`` is the fraction of soft tissue replaced by air (lungs, bowel gas),
    so an effusion can give it back; ``extra_soft`` (vessels, nodules) is not scaled by air.
    """

    frame: Frame
    soft: np.ndarray = field(init=False)
    air: np.ndarray = field(init=False)
    extra_soft: np.ndarray = field(init=False)
    bone: np.ndarray = field(init=False)
    bone_occ: np.ndarray = field(init=False)
    metal: np.ndarray = field(init=False)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    landmarks: dict[str, Point] = field(default_factory=dict)
    fracture_sites: list[BoneSite] = field(default_factory=list)
    implant_sites: list[ImplantSite] = field(default_factory=list)
    lungs: list[Lung] = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = (self.frame.size, self.frame.size)
        for name in ("soft", "air", "extra_soft", "bone", "bone_occ", "metal"):
            setattr(self, name, np.zeros(shape, dtype=np.float32))

    @property
    def edge(self) -> float:
        """Blur width of shape edges: under a pixel, so thin bones stay visible at 64 px."""
        return 0.7 * self.frame.px

    def add_soft(self, sdf: np.ndarray, amount: float, edge_px: float = 2.0) -> np.ndarray:
        """Add soft tissue of thickness ``amount`` inside ``sdf`` with a smooth edge; returns the occupancy."""
        occ = fill(sdf, edge_px * self.frame.px)
        self.soft += amount * occ
        return occ

    def add_bone(self, sdf: np.ndarray, density: float = 1.0, cortex: float | None = None) -> np.ndarray:
        """Add a bone: a dense cortical shell of thickness ``cortex`` around a lighter medulla.

        The shell is what makes radiographic bone look like bone (bright outline, greyer inside).
        Returns the occupancy, float32 ``[H, W]``.
        """
        cortex = max(1.2 * self.frame.px, cortex if cortex is not None else 0.02)
        occ = fill(sdf, self.edge)
        inner = fill(sdf + cortex, self.edge)
        self.bone += density * (0.55 * inner + 1.0 * (occ - inner))
        np.maximum(self.bone_occ, occ, out=self.bone_occ)
        return occ

    def add_metal(self, sdf: np.ndarray) -> np.ndarray:
        """Add metal (saturates the detector); a sharper edge than tissue, as implants are machined."""
        occ = fill(sdf, 0.4 * self.frame.px)
        np.maximum(self.metal, occ, out=self.metal)
        return occ
