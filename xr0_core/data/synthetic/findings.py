"""Findings placed at known positions on a drawn anatomy, each with its exact pixel footprint.

A finding edits the sketch's layers (a nodule adds soft tissue inside a lung, an effusion gives air
back to fluid at a lung base, a fracture cuts a dark line through a bone, an implant adds metal) and
returns its footprint, the pixels it changed; the grounding box is that footprint's bounding box, so
a box is always over what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from xr0_core.data.synthetic.geometry import Point, box_sdf, capsule_sdf, ellipse_sdf, fill, lerp, polyline_sdf, rotate
from xr0_core.data.synthetic.sketch import Sketch

FINDINGS: tuple[str, ...] = ("nodule", "effusion", "fracture", "implant")
"""Every finding; each site manifest has a ``label_<name>`` column for all of them (0 when absent)."""

# Occupancy above which a finding's soft edge still changes the image visibly: footprints (and so
# boxes) include the whole edge, not just the half-occupied core.
_VISIBLE = 0.05

PREVALENCE: dict[str, dict[str, float]] = {
    "chest": {"nodule": 0.3, "effusion": 0.25, "implant": 0.1},
    "hand": {"fracture": 0.3, "implant": 0.1},
    "knee": {"fracture": 0.25, "implant": 0.15},
    "spine": {"implant": 0.2},
    "pelvis": {"fracture": 0.2, "implant": 0.15},
    "skull": {"implant": 0.1},
}
"""Per-anatomy probability of each finding; a finding missing here cannot occur on that anatomy."""


@dataclass(frozen=True)
class PlacedFinding:
    """One finding as drawn: ``footprint`` is a bool ``[H, W]`` mask of the pixels it changed."""

    name: str
    location: str
    phrase: str
    footprint: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def place_finding(name: str, sketch: Sketch, rng: np.random.Generator, spacing_mm: float) -> PlacedFinding | None:
    """Draw finding ``name`` on ``sketch``; ``None`` when the anatomy offers no room for it.

    Parameters
    ----------
    name : str
        One of :data:`FINDINGS`.
    sketch : Sketch
        Edited in place.
    rng : numpy.random.Generator
        Position, size and shape.
    spacing_mm : float
        Pixel spacing, so sizes in the report are in millimetres.
    """
    return _PLACERS[name](sketch, rng, spacing_mm)


def _nodule(s: Sketch, rng: np.random.Generator, spacing_mm: float) -> PlacedFinding | None:
    if not s.lungs:
        return None
    f = s.frame
    u, v = f.grid
    lung = s.lungs[int(rng.integers(len(s.lungs)))]
    zone_index = int(rng.integers(3))
    zone = ("upper", "middle", "lower")[zone_index]
    top, bottom = lung.apex[1], lung.costophrenic[1]
    lo = top + (bottom - top) * zone_index / 3
    hi = lo + (bottom - top) / 3
    # At least ~1.5 px radius so the nodule survives 64 px images; larger images get larger nodules.
    r_px = max(1.5, float(rng.uniform(1.5, 3.2)) * (f.size / 128) ** 0.5)
    radius = r_px * f.px
    candidates = np.flatnonzero(((lung.occupancy > 0.5) & (v >= lo) & (v < hi)).ravel())
    for _ in range(30):
        if candidates.size == 0:
            return None
        k = int(rng.choice(candidates))
        centre = (float(u.flat[k]), float(v.flat[k]))
        sdf = ellipse_sdf(f, centre, (radius, radius))
        inside = sdf < 0
        if inside.any() and float(lung.occupancy[inside].min()) > 0.5:
            break
    else:
        return None
    occ = fill(sdf, s.edge)
    s.extra_soft += float(rng.uniform(0.35, 0.6)) * occ
    location = f"{lung.side} {zone} lung zone"
    size_mm = int(round(2 * r_px * spacing_mm))
    return PlacedFinding("nodule", location, f"nodule in the {location}", occ > _VISIBLE, {"size_mm": size_mm})


def _effusion(s: Sketch, rng: np.random.Generator, spacing_mm: float) -> PlacedFinding | None:
    if not s.lungs:
        return None
    u, v = s.frame.grid
    lung = s.lungs[int(rng.integers(len(s.lungs)))]
    sign = -1.0 if lung.side == "right" else 1.0
    height = float(rng.uniform(0.1, 0.24))
    # Fluid rises along the lateral chest wall (the meniscus) and fills the costophrenic angle.
    lateral = np.clip(sign * (u - lung.centre_u) / lung.half_width + 0.3, 0.0, 1.3)
    level = lung.costophrenic[1] - height * (0.35 + 0.65 * lateral**2)
    fluid = fill(level - v, 1.5 * s.edge) * lung.occupancy
    s.air *= 1.0 - 0.92 * fluid
    footprint = fluid > _VISIBLE
    if (fluid > 0.5).sum() < 3:
        return None
    return PlacedFinding(
        "effusion", f"{lung.side} costophrenic angle", f"{lung.side} pleural effusion", footprint,
        {"side": lung.side},
    )


def _fracture(s: Sketch, rng: np.random.Generator, spacing_mm: float) -> PlacedFinding | None:
    if not s.fracture_sites:
        return None
    f = s.frame
    u, v = f.grid
    site = s.fracture_sites[int(rng.integers(len(s.fracture_sites)))]
    centre = lerp(site.p0, site.p1, float(rng.uniform(0.3, 0.7)))
    axis = np.array(site.p1) - np.array(site.p0)
    axis /= np.linalg.norm(axis)
    # The line's normal: along the bone axis, tilted for an oblique fracture.
    normal = rotate((float(axis[0]), float(axis[1])), float(rng.uniform(-0.5, 0.5)))
    dist = np.abs((u - centre[0]) * normal[0] + (v - centre[1]) * normal[1])
    # Wider gaps in thick bones: a one-pixel line through a femur drowns in its cortex at low exposure.
    half = max(0.6 * f.px, min(1.1 * f.px, 0.15 * site.radius))
    band = fill(dist - half, 0.5 * f.px)
    within = fill(capsule_sdf(f, site.p0, site.p1, site.radius + 1.5 * f.px), s.edge)
    gap = band * within
    s.bone *= 1.0 - 0.9 * gap
    footprint = (gap > _VISIBLE) & (s.bone_occ > _VISIBLE)
    if not footprint.any():
        return None
    return PlacedFinding("fracture", site.name, f"fracture of the {site.name}", footprint, {})


def _implant(s: Sketch, rng: np.random.Generator, spacing_mm: float) -> PlacedFinding | None:
    if not s.implant_sites:
        return None
    f = s.frame
    site = s.implant_sites[int(rng.integers(len(s.implant_sites)))]
    p = site.params
    thin = 0.7 * f.px
    parts: list[np.ndarray] = []
    if site.kind == "plate":
        a, b, r = p["p0"], p["p1"], p["radius"]
        parts.append(capsule_sdf(f, lerp(a, b, 0.12), lerp(a, b, 0.88), max(0.3 * r, f.px)))
        axis = np.array(b) - np.array(a)
        across = np.array([-axis[1], axis[0]]) / np.linalg.norm(axis) * 1.1 * r
        for t in np.linspace(0.2, 0.8, int(rng.integers(3, 5))):
            c = np.array(lerp(a, b, float(t)))
            parts.append(capsule_sdf(f, tuple(c - across), tuple(c + across), max(0.2 * r, thin)))
    elif site.kind == "pacemaker":
        c, target = p["centre"], p["target"]
        parts.append(box_sdf(f, c, (0.085, 0.06), angle=float(rng.uniform(-0.3, 0.3)), rounding=0.025))
        bend: Point = (c[0] - 0.2, c[1] + 0.1)
        parts.append(polyline_sdf(f, [c, bend, (target[0] - 0.05, target[1]), (target[0] - 0.12, target[1] + 0.1)],
                                  max(0.007, thin)))
    elif site.kind == "hip":
        head, r = p["head"], p["radius"]
        parts.append(ellipse_sdf(f, head, (0.95 * r, 0.95 * r)))
        parts.append(capsule_sdf(f, head, p["stem_end"], 0.05, 0.028))
    elif site.kind == "rods":
        for rod in p["rods"]:
            parts.append(polyline_sdf(f, rod, max(0.018, thin)))
        for a, b in p["screws"]:
            parts.append(capsule_sdf(f, a, b, max(0.016, thin)))
    else:
        raise ValueError(f"unknown implant kind {site.kind!r}")
    sdf = parts[0]
    for d in parts[1:]:
        sdf = np.minimum(sdf, d)
    occ = s.add_metal(sdf)
    footprint = occ > _VISIBLE / 4  # metal is so dense that even its faint edge shows
    if not footprint.any():
        return None
    phrase = f"metallic implant {site.preposition} {site.location}"
    return PlacedFinding("implant", site.location, phrase, footprint, {"kind": site.kind})


_PLACERS: dict[str, Callable[[Sketch, np.random.Generator, float], PlacedFinding | None]] = {
    "nodule": _nodule,
    "effusion": _effusion,
    "fracture": _fracture,
    "implant": _implant,
}
