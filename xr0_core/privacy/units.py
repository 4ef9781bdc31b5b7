"""Privacy units and the Poisson sampling of units that the DP accountant assumes (D3).

The *privacy unit* is what the guarantee protects: the patient when the site's records carry a
``patient_id``, otherwise the single image. Every image (and every view and crop of it) of one unit is
clipped together as one unit by :mod:`xr0_core.privacy.dp`; a patient with 40 images counts once.

Sampling: each step includes every unit independently with probability ``q`` (Poisson sampling, the
subsampled-Gaussian mechanism that Opacus's RDP / PRV accountants analyse). From an included unit at most
``images_per_unit`` of its images are drawn uniformly without replacement; which images is irrelevant to
the accounting because the unit's whole contribution is clipped to norm C.

The sampling randomness must be secret to the coordinator: amplification by subsampling only holds when
nobody outside the site knows which units were in a batch. The run seed is in the run config (the
coordinator knows it), so :class:`PoissonUnitSampler` draws from a generator seeded by ``secrets`` unless a
test passes a seed.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)

UNIT_PATIENT = "patient"
UNIT_IMAGE = "image"


@dataclass(frozen=True)
class PrivacyUnits:
    """Which unit each cached image belongs to.

    Attributes
    ----------
    image_unit : LongTensor [N]
        Unit index (in ``[0, n_units)``) of cache image ``i``.
    members : list of LongTensor
        ``members[u]``: cache indices of unit ``u``'s images (ascending).
    kind : str
        ``"patient"`` (records carry patient ids) or ``"image"``.
    untagged : int
        Images without a patient id when ``kind == "patient"`` (each counted as its own unit; a warning
        says that this is only right if they belong to no tagged patient).
    """

    image_unit: torch.Tensor
    members: list[torch.Tensor]
    kind: str
    untagged: int = 0

    @property
    def n_units(self) -> int:
        return len(self.members)

    @property
    def n_images(self) -> int:
        return int(self.image_unit.numel())

    def describe(self) -> str:
        text = f"{self.kind} ({self.n_units} units, {self.n_images} images)"
        if self.untagged:
            text += f"; {self.untagged} images without patient_id counted as their own unit"
        return text


def privacy_units(records: Sequence[Any]) -> PrivacyUnits:
    """Group the cache's records (``ImageCache.kept``) into privacy units.

    Parameters
    ----------
    records : sequence
        Records with an optional ``patient_id`` attribute (SiteRecord), or anything else (e.g. the ints of
        ``ImageCache.from_arrays``), which makes every image its own unit.
    """
    ids = [getattr(r, "patient_id", None) for r in records]
    ids = [str(p).strip() if p is not None and str(p).strip() else None for p in ids]
    tagged = sum(p is not None for p in ids)
    kind = UNIT_PATIENT if tagged else UNIT_IMAGE
    key_to_unit: dict[tuple[str, Any], int] = {}
    image_unit = []
    for i, pid in enumerate(ids):
        key = ("patient", pid) if pid is not None else ("image", i)
        image_unit.append(key_to_unit.setdefault(key, len(key_to_unit)))
    unit = torch.tensor(image_unit, dtype=torch.long)
    members: list[list[int]] = [[] for _ in range(len(key_to_unit))]
    for i, u in enumerate(image_unit):
        members[u].append(i)
    untagged = len(ids) - tagged if kind == UNIT_PATIENT else 0
    if untagged:
        log.warning("%d of %d images have no patient_id: each is its own privacy unit, which is only right if "
                    "none of them belongs to a patient with tagged images", untagged, len(ids))
    return PrivacyUnits(unit, [torch.tensor(m, dtype=torch.long) for m in members], kind, untagged)


def sample_rate_for(batch_size: int, n_units: int, override: float = 0.0) -> float:
    """Poisson rate q: ``override`` when > 0, else ``batch_size / n_units`` (capped at 1)."""
    if n_units < 1:
        raise ValueError("no privacy units to sample from (the site has no training images)")
    q = override if override > 0 else batch_size / n_units
    return float(min(1.0, q))


class PoissonUnitSampler:
    """Draws the units and images of one DP step.

    Parameters
    ----------
    units : PrivacyUnits
    sample_rate : float
        Poisson inclusion probability q of every unit at every step.
    images_per_unit : int
        At most this many images of an included unit enter the step (>= 1).
    seed : int, optional
        Only for tests and benchmarks. Default: a fresh secret seed (``secrets.randbits``), so the
        coordinator cannot reconstruct which units were sampled.
    """

    def __init__(self, units: PrivacyUnits, sample_rate: float, images_per_unit: int,
                 seed: int | None = None) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
        if images_per_unit < 1:
            raise ValueError(f"images per unit must be >= 1, got {images_per_unit}")
        self.units = units
        self.sample_rate = float(sample_rate)
        self.images_per_unit = int(images_per_unit)
        self.generator = torch.Generator()
        self.generator.manual_seed(secrets.randbits(63) if seed is None else int(seed))

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's draw.

        Returns
        -------
        images : LongTensor [B]
            Cache indices of the step's images (B varies from step to step; may be 0).
        image_slot : LongTensor [B]
            For each image, the position of its unit among this step's units (``0 .. U-1``), so
            ``image_slot.max() + 1 == U`` units were sampled.
        """
        g = self.generator
        picked = torch.nonzero(torch.rand(self.units.n_units, generator=g) < self.sample_rate).flatten()
        images, slots = [], []
        for slot, u in enumerate(picked.tolist()):
            m = self.units.members[u]
            if m.numel() > self.images_per_unit:
                m = m[torch.randperm(m.numel(), generator=g)[: self.images_per_unit]].sort().values
            images.append(m)
            slots.append(torch.full((m.numel(),), slot, dtype=torch.long))
        if not images:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(images), torch.cat(slots)
