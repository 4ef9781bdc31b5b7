"""Procedural anatomy: one drawer per body part, each adding shapes to a :class:`Sketch`.

Each drawer ``draw_<anatomy>(sketch, rng, view)`` works in the canonical frame (``u`` right, ``v``
down, body part in about ``[-1, 1]``), jitters proportions with ``rng`` so no two patients are the
same, and names what later stages need: landmarks (a fixed, ordered set per anatomy, the same for
every view so a landmark head sees a constant number of points), bones that may fracture, places
for implants, lungs. Laterality follows radiographic convention: on frontal chest, pelvis and skull
views the patient's right is on the image left (negative ``u``).

The shapes are deliberately simple (ellipses, capsules, rounded boxes), yet each anatomy has a
distinct silhouette and bone layout at 64-128 px, which is what an SSL model has to pick up.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from xr0_core.data.synthetic.geometry import (
    Point,
    box_sdf,
    capsule_sdf,
    convex_polygon_sdf,
    ellipse_sdf,
    fill,
    halfplane_sdf,
    lerp,
    polyline_sdf,
    rotate,
    smooth_noise,
)
from xr0_core.data.synthetic.sketch import BoneSite, ImplantSite, Lung, Sketch

# Fracture sites stay within canonical |v| < 0.95 so that, after any pose, the fracture is in view.
Drawer = Callable[[Sketch, np.random.Generator, str], None]

# Patient side of a frontal view's image half: image left (u < 0) shows the patient's right.
_SIDES = (("right", -1.0), ("left", 1.0))


def _j(rng: np.random.Generator, spread: float) -> float:
    """A small symmetric jitter."""
    return float(rng.uniform(-spread, spread))


# ------------------------------------------------------------------------------------------- chest


def draw_chest(s: Sketch, rng: np.random.Generator, view: str) -> None:
    """Frontal chest (PA / AP): torso, air-filled lungs, heart, ribs, clavicles, spine, trachea."""
    f, px = s.frame, s.frame.px
    u, v = f.grid
    w = rng.uniform(0.92, 1.05)
    h = rng.uniform(0.94, 1.04)
    # AP films (supine, portable) show a wider heart and a higher diaphragm.
    ap = view == "AP"

    torso = box_sdf(f, (0.0, 0.25), (0.86 * w, 1.0), rounding=0.35)
    shoulders = ellipse_sdf(f, (0.0, -0.62 * h), (0.99 * w, 0.3))
    neck = capsule_sdf(f, (0.0, -1.4), (0.0, -0.7), 0.17)
    body = np.minimum(np.minimum(torso, shoulders), neck)
    body_occ = s.add_soft(body, 0.0, edge_px=3.0)
    s.soft += body_occ * (0.8 + 0.2 * np.clip(1.0 - (u / (0.9 * w)) ** 2, 0.0, 1.0))

    heart_c = (0.09 * w + _j(rng, 0.03), (0.2 + (0.04 if ap else 0.0)) * h)
    heart_r = (0.26 * w * rng.uniform(0.9, 1.12) * (1.08 if ap else 1.0), 0.21 * h)
    heart = ellipse_sdf(f, heart_c, heart_r, angle=-0.4)
    heart_occ = fill(heart, s.edge)
    s.soft += 0.12 * heart_occ
    aortic_knob = fill(ellipse_sdf(f, (0.11 * w, -0.3 * h), (0.07, 0.06)), s.edge)
    s.soft += 0.06 * aortic_knob

    lung_total = np.zeros_like(u)
    diaphragm_lift = 0.05 if ap else 0.0
    for side, sign in _SIDES:
        cx, cy = sign * 0.37 * w + _j(rng, 0.015), -0.1 * h
        rx, ry = 0.29 * w * rng.uniform(0.95, 1.05), 0.6 * h * rng.uniform(0.96, 1.04)
        # The right hemidiaphragm sits higher (the liver below it).
        base = (0.43 if side == "right" else 0.48) * h - diaphragm_lift + _j(rng, 0.03)
        dome_half = 0.36 * w
        outer = ellipse_sdf(f, (cx, cy), (rx, ry))
        medial = halfplane_sdf(f, (sign * 0.085 * w, 0.0), (-sign, 0.0))
        level = base - 0.17 * h * np.clip(1.0 - ((u - cx) / dome_half) ** 2, 0.0, 1.0)
        dome = v - level
        sdf = np.maximum(np.maximum(outer, medial), np.maximum(dome, -heart))
        occ = fill(sdf, s.edge)
        lung_total = np.maximum(lung_total, occ)
        cp = _costophrenic_angle(cx, cy, rx, ry, sign, base, dome_half, h)
        apex = (cx - sign * 0.03, cy - ry)
        s.lungs.append(Lung(side, occ, apex, cp, cx, rx))
        s.landmarks[f"{side}_lung_apex"] = apex
    for side, _ in _SIDES:
        s.landmarks[f"{side}_costophrenic_angle"] = next(l.costophrenic for l in s.lungs if l.side == side)
    s.air = np.maximum(s.air, 0.8 * lung_total)
    s.masks["lungs"] = lung_total
    s.masks["heart"] = heart_occ

    # Vascular markings fan out from the hila and fade to the periphery.
    texture = smooth_noise(rng, f.size, max(1.0, f.size / 90))
    vessels = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        dist = np.hypot(u - sign * 0.17 * w, v + 0.08 * h)
        vessels += np.exp(-dist / 0.3)
    s.extra_soft += lung_total * 0.12 * vessels * np.clip(0.6 + 0.5 * texture, 0.0, 1.5)

    trachea = capsule_sdf(f, (0.0, -1.3), (0.0, -0.42 * h), 0.045)
    s.air = np.maximum(s.air, 0.35 * fill(trachea, s.edge))
    for sign in (-1.0, 1.0):
        bronchus = capsule_sdf(f, (0.0, -0.42 * h), (sign * 0.13 * w, -0.27 * h), 0.03)
        s.air = np.maximum(s.air, 0.3 * fill(bronchus, s.edge))

    for yc in np.arange(-1.05, 1.0, 0.125 * h):
        s.add_bone(box_sdf(f, (0.0, float(yc)), (0.075, 0.048), rounding=0.015), density=0.3, cortex=0.012)

    for sign in (-1.0, 1.0):
        for i in range(10):
            y0 = (-0.74 + i * 0.118) * h
            _rib(s, sign, y0, w, h, body, posterior=True)
            _rib(s, sign, y0, w, h, body, posterior=False)
        clav_lift = 0.04 if ap else 0.0
        clavicle = polyline_sdf(
            f,
            [(sign * 0.07 * w, -0.66 * h - clav_lift), (sign * 0.3 * w, -0.73 * h - clav_lift),
             (sign * 0.62 * w, -0.8 * h - clav_lift)],
            0.03,
        )
        s.add_bone(clavicle, density=0.9, cortex=0.01)
        s.add_bone(ellipse_sdf(f, (sign * 0.73 * w, -0.42 * h), (0.12, 0.27), angle=sign * 0.3), density=0.22)
        humerus = np.minimum(ellipse_sdf(f, (sign * 0.9 * w, -0.72 * h), (0.1, 0.11)),
                             capsule_sdf(f, (sign * 0.92 * w, -0.7 * h), (sign * 1.0 * w, 0.5), 0.075, 0.065))
        s.add_bone(humerus, density=0.8, cortex=0.02)
        s.add_soft(capsule_sdf(f, (sign * 0.95 * w, -0.72 * h), (sign * 1.02 * w, 0.6), 0.14), 0.7, edge_px=2.5)

    s.implant_sites.append(
        ImplantSite(
            "left chest wall", "over the", "pacemaker",
            {"centre": (0.5 * w + _j(rng, 0.06), -0.55 * h + _j(rng, 0.05)), "target": heart_c},
        )
    )


def _costophrenic_angle(cx, cy, rx, ry, sign, base, dome_half, h) -> Point:
    """Where the lateral lung edge (ellipse) meets the diaphragm dome, walking down from the equator."""
    for phi in np.linspace(0.0, np.pi / 2, 400):
        pu, pv = cx + sign * rx * np.cos(phi), cy + ry * np.sin(phi)
        level = base - 0.17 * h * max(0.0, 1.0 - ((pu - cx) / dome_half) ** 2)
        if pv >= level:
            return (float(pu), float(pv))
    return (float(cx), float(cy + ry))


def _rib(s: Sketch, sign: float, y0: float, w: float, h: float, body: np.ndarray, posterior: bool) -> None:
    """One rib as a curved band: posterior ribs rise then sweep down laterally; anterior ones descend medially."""
    u, v = s.frame.grid
    span = 0.8 * w
    t = (sign * u / w - 0.06) / 0.8
    if posterior:
        centre = y0 + h * (-0.1 * t + 0.42 * t * t)
        slope = h * (-0.1 + 0.84 * t) / span
        t_lo, density, half = 0.0, 0.3, 0.019 * h
    else:
        centre = y0 + h * (0.32 + 0.3 * (1.0 - t) - 0.05 * (1.0 - t) ** 2)
        slope = -h * (0.3 - 0.1 * (1.0 - t)) / span
        t_lo, density, half = 0.35, 0.1, 0.017 * h
    band = np.abs(v - centre) / np.sqrt(1.0 + slope * slope) - half
    ends = np.maximum(t_lo - t, t - 1.0) * span
    s.add_bone(np.maximum(np.maximum(band, ends), body), density=density, cortex=0.008)


# -------------------------------------------------------------------------------------------- hand

_FINGERS = ("index", "middle", "ring", "little")
_ORDINAL = ("first", "second", "third", "fourth", "fifth")


def draw_hand(s: Sketch, rng: np.random.Generator, view: str) -> None:
    """PA hand: radius, ulna, carpals, five metacarpals, phalanges (two for the thumb)."""
    f = s.frame
    spread = rng.uniform(0.7, 1.3)
    bones_len = rng.uniform(0.93, 1.07)
    soft_parts = []

    # Forearm and wrist.
    soft_parts.append(capsule_sdf(f, (0.0, 0.75), (0.0, 1.5), 0.3))
    soft_parts.append(ellipse_sdf(f, (0.0, 0.2), (0.33, 0.36)))
    radius = np.minimum(
        capsule_sdf(f, (-0.1, 0.74), (-0.08, 1.5), 0.075, 0.06), ellipse_sdf(f, (-0.1, 0.71), (0.13, 0.055))
    )
    s.add_bone(radius, density=0.9, cortex=0.018)
    ulna = np.minimum(capsule_sdf(f, (0.15, 0.74), (0.13, 1.5), 0.045), ellipse_sdf(f, (0.15, 0.72), (0.05, 0.05)))
    s.add_bone(ulna, density=0.9, cortex=0.015)
    s.fracture_sites.append(BoneSite("distal radius", (-0.09, 0.78), (-0.087, 0.97), 0.075))
    s.implant_sites.append(
        ImplantSite("distal radius", "along the", "plate", {"p0": (-0.09, 0.8), "p1": (-0.085, 1.2), "radius": 0.075})
    )

    carpals = []
    for row, yc in enumerate((0.6, 0.47)):
        for k, xc in enumerate((-0.15, -0.05, 0.05, 0.15)):
            c = (xc + _j(rng, 0.012), yc + _j(rng, 0.012))
            carpals.append(c)
            s.add_bone(ellipse_sdf(f, c, (0.05, 0.045 + 0.006 * row), angle=_j(rng, 0.5)), density=0.75, cortex=0.01)
    s.landmarks["wrist_centre"] = (float(np.mean([c[0] for c in carpals])), float(np.mean([c[1] for c in carpals])))

    # Thumb: a metacarpal and two phalanges, angled away from the palm.
    gap = 0.028
    base, head = (-0.26, 0.37), (-0.43 + _j(rng, 0.02), 0.13 + _j(rng, 0.02))
    s.add_bone(capsule_sdf(f, base, head, 0.037, 0.032), density=0.85, cortex=0.012)
    s.fracture_sites.append(BoneSite("first metacarpal", base, head, 0.035))
    direction = _unit(rotate(_sub(head, base), -0.12 * spread))
    mcp = _add(head, _mul(direction, gap / 2 + 0.02))
    s.landmarks["thumb_mcp"] = mcp
    chain_start = _add(head, _mul(direction, gap + 0.02))
    finger_points = [base]
    for length, r0, r1 in ((0.17, 0.032, 0.026), (0.12, 0.026, 0.018)):
        end = _add(chain_start, _mul(direction, length * bones_len))
        s.add_bone(capsule_sdf(f, chain_start, end, r0, r1), density=0.85, cortex=0.01)
        finger_points.append(end)
        chain_start = _add(end, _mul(direction, gap))
    soft_parts.append(polyline_sdf(f, finger_points, 0.075))

    bases_u = (-0.17, -0.055, 0.06, 0.17)
    heads = ((-0.24, -0.02), (-0.08, -0.06), (0.08, -0.04), (0.23, 0.02))
    lengths = ((0.22, 0.13, 0.095), (0.25, 0.15, 0.1), (0.235, 0.14, 0.095), (0.18, 0.1, 0.085))
    radii = ((0.03, 0.024), (0.025, 0.02), (0.021, 0.014))
    for i, finger in enumerate(_FINGERS):
        base = (bases_u[i] + _j(rng, 0.01), 0.38)
        head = (heads[i][0] * (0.9 + 0.1 * spread) + _j(rng, 0.01), heads[i][1] + _j(rng, 0.015))
        s.add_bone(np.minimum(capsule_sdf(f, base, head, 0.036, 0.03), ellipse_sdf(f, head, (0.04, 0.036))),
                   density=0.85, cortex=0.012)
        s.fracture_sites.append(BoneSite(f"{_ORDINAL[i + 1]} metacarpal", base, head, 0.033))
        s.implant_sites.append(
            ImplantSite(f"{_ORDINAL[i + 1]} metacarpal", "along the", "plate", {"p0": base, "p1": head, "radius": 0.033})
        )
        direction = _unit(rotate(_sub(head, base), (i - 1.5) * 0.05 * spread + _j(rng, 0.04)))
        s.landmarks[f"mcp{i + 2}"] = _add(head, _mul(direction, 0.04 + gap / 2))
        start = _add(head, _mul(direction, 0.04 + gap))
        points = [base, start]
        for k, (length, (r0, r1)) in enumerate(zip(lengths[i], radii)):
            end = _add(start, _mul(direction, length * bones_len))
            s.add_bone(capsule_sdf(f, start, end, r0, r1), density=0.85, cortex=0.009)
            if k == 0:
                s.fracture_sites.append(BoneSite(f"proximal phalanx of the {finger} finger", start, end, r0))
            points.append(end)
            start = _add(end, _mul(direction, gap))
        soft_parts.append(polyline_sdf(f, points[1:], 0.062))
    s.add_soft(_union(soft_parts), 0.55, edge_px=2.0)


# -------------------------------------------------------------------------------------------- knee


def draw_knee(s: Sketch, rng: np.random.Generator, view: str) -> None:
    """Knee (AP or lateral): distal femur with condyles, tibia, fibula, patella, joint space."""
    f = s.frame
    joint = 0.05 * rng.uniform(0.6, 1.3)  # joint-space height
    if view == "LAT":
        s.add_soft(capsule_sdf(f, (0.02, -1.5), (0.02, 1.5), 0.5, 0.42), 0.9, edge_px=3.0)
        femur = _union([
            capsule_sdf(f, (0.08, -1.5), (0.06, -0.35), 0.13, 0.15),
            ellipse_sdf(f, (0.1, -0.14), (0.21, 0.15), angle=0.2),
        ])
        s.add_bone(femur, cortex=0.03)
        plateau_top = 0.01 + joint
        tibia = _union([
            box_sdf(f, (0.07, plateau_top + 0.07), (0.25, 0.07), angle=-0.12, rounding=0.03),
            ellipse_sdf(f, (0.05, plateau_top + 0.2), (0.2, 0.14)),
            ellipse_sdf(f, (-0.12, plateau_top + 0.3), (0.06, 0.08)),  # tibial tuberosity
            capsule_sdf(f, (0.05, plateau_top + 0.25), (0.04, 1.5), 0.12, 0.1),
        ])
        s.add_bone(tibia, cortex=0.028)
        s.add_bone(_union([ellipse_sdf(f, (0.22, plateau_top + 0.18), (0.055, 0.05)),
                           capsule_sdf(f, (0.22, plateau_top + 0.2), (0.17, 1.5), 0.03)]), density=0.8, cortex=0.012)
        patella_c = (-0.3 + _j(rng, 0.03), -0.17 + _j(rng, 0.04))
        s.add_bone(ellipse_sdf(f, patella_c, (0.07, 0.15), angle=0.15), density=0.9, cortex=0.02)
        femur_axis, tibia_axis = (0.075, -0.9), (0.045, 0.9)
        joint_c = (0.08, 0.01 + joint / 2)
        s.fracture_sites += [
            BoneSite("distal femur", (0.08, -0.85), (0.07, -0.42), 0.13),
            BoneSite("proximal tibia", (0.05, 0.4), (0.045, 0.85), 0.115),
        ]
    else:
        s.add_soft(_union([capsule_sdf(f, (0.0, -1.5), (0.0, 1.5), 0.52, 0.44), ellipse_sdf(f, (0.0, 0.0), (0.55, 0.4))]),
                   0.9, edge_px=3.0)
        cw = rng.uniform(0.93, 1.07)
        femur = _union([
            capsule_sdf(f, (0.0, -1.5), (0.0, -0.4), 0.12, 0.14),
            ellipse_sdf(f, (0.0, -0.24), (0.24 * cw, 0.16)),
            ellipse_sdf(f, (-0.14 * cw, -0.1), (0.13, 0.1)),
            ellipse_sdf(f, (0.14 * cw, -0.1), (0.13, 0.1)),
        ])
        s.add_bone(femur, cortex=0.028)
        # Intercondylar notch: less bone in the middle of the distal femur.
        s.bone -= 0.35 * fill(ellipse_sdf(f, (0.0, -0.05), (0.05, 0.06)), s.edge)
        plateau_top = 0.0 + joint
        tibia = _union([
            box_sdf(f, (0.0, plateau_top + 0.07), (0.27 * cw, 0.07), rounding=0.03),
            ellipse_sdf(f, (0.0, plateau_top + 0.2), (0.2 * cw, 0.15)),
            capsule_sdf(f, (0.0, plateau_top + 0.2), (0.0, 1.5), 0.12, 0.1),
            ellipse_sdf(f, (-0.035, plateau_top - 0.005), (0.025, 0.03)),  # tibial spines
            ellipse_sdf(f, (0.035, plateau_top - 0.005), (0.025, 0.03)),
        ])
        s.add_bone(tibia, cortex=0.028)
        fib_top = (0.27 * cw, plateau_top + 0.2)
        s.add_bone(_union([ellipse_sdf(f, fib_top, (0.055, 0.05)),
                           capsule_sdf(f, fib_top, (0.22, 1.5), 0.033)]), density=0.85, cortex=0.012)
        patella_c = (_j(rng, 0.03), -0.22 + _j(rng, 0.04))
        # The patella overlaps the femur on an AP view: add, don't replace.
        s.add_bone(ellipse_sdf(f, patella_c, (0.12, 0.14)), density=0.45, cortex=0.015)
        femur_axis, tibia_axis = (0.0, -0.9), (0.0, 0.9)
        joint_c = (0.0, joint / 2 - 0.0)
        s.fracture_sites += [
            BoneSite("distal femur", (0.0, -0.85), (0.0, -0.42), 0.13),
            BoneSite("proximal tibia", (0.0, 0.4), (0.0, 0.85), 0.115),
            BoneSite("proximal fibula", (0.26 * cw, 0.35), (0.24, 0.85), 0.033),
        ]
    s.landmarks.update(joint_centre=joint_c, patella_centre=patella_c, femoral_shaft=femur_axis,
                       tibial_shaft=tibia_axis)
    for site in s.fracture_sites[:2]:
        s.implant_sites.append(ImplantSite(site.name, "along the", "plate",
                                           {"p0": site.p0, "p1": site.p1, "radius": site.radius}))


# ------------------------------------------------------------------------------------------- spine

_LUMBAR = ("L1", "L2", "L3", "L4", "L5")


def draw_spine(s: Sketch, rng: np.random.Generator, view: str) -> None:
    """Lumbar spine (AP or lateral): five vertebral bodies with discs, pedicles, processes."""
    f = s.frame
    u, v = f.grid
    step = 0.34 * rng.uniform(0.95, 1.05)
    centres_v = [(-2.0 + i) * step for i in range(5)]
    s.add_soft(box_sdf(f, (0.0, 0.0), (1.1, 1.6), rounding=0.3), 1.0, edge_px=3.0)
    # Bowel gas: irregular dark pockets over the soft tissue.
    for _ in range(int(rng.integers(2, 6))):
        c = (float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-0.8, 0.8)))
        s.air = np.maximum(s.air, 0.3 * fill(ellipse_sdf(f, c, (rng.uniform(0.05, 0.12), rng.uniform(0.04, 0.08))), 2 * s.edge))
    hx, hy = 0.19 * rng.uniform(0.92, 1.08), 0.115 * rng.uniform(0.95, 1.05)
    centres: list[Point] = []
    if view == "LAT":
        lordosis = rng.uniform(0.06, 0.16)
        for i, cv in enumerate([c - step for c in centres_v[:1]] + centres_v + [centres_v[-1] + step]):
            cu = -0.12 - lordosis * (1.0 - (cv / 0.9) ** 2)
            tilt = 0.35 * lordosis * cv / 0.7
            s.add_bone(box_sdf(f, (cu, cv), (hx, hy), angle=tilt, rounding=0.03), density=0.85, cortex=0.02)
            posterior = (cu + hx + 0.02, cv - 0.02)
            s.add_bone(capsule_sdf(f, posterior, (cu + hx + 0.17, cv - 0.02), 0.035), density=0.6, cortex=0.012)
            s.add_bone(capsule_sdf(f, (cu + hx + 0.17, cv - 0.02), (cu + hx + 0.38, cv + 0.05), 0.045, 0.03),
                       density=0.6, cortex=0.012)
            if 1 <= i <= 5:
                centres.append((cu, cv))
        for i in range(1, 4):
            levels = centres[i - 1 : i + 2]
            s.implant_sites.append(ImplantSite(
                f"{_LUMBAR[i - 1]} to {_LUMBAR[i + 1]}", "at", "rods",
                {"rods": [[(c[0] + hx + 0.1, c[1]) for c in levels]],
                 "screws": [((c[0] + hx + 0.1, c[1]), (c[0] - 0.4 * hx, c[1])) for c in levels]},
            ))
    else:
        curve_a, phase = rng.uniform(0.0, 0.08), rng.uniform(0, 2 * np.pi)
        all_v = [centres_v[0] - step] + centres_v
        for i, cv in enumerate(all_v):
            cu = curve_a * np.sin(2.2 * cv + phase)
            s.add_bone(box_sdf(f, (cu, cv), (hx, hy), rounding=0.035), density=0.75, cortex=0.02)
            for sign in (-1.0, 1.0):
                ring_c = (cu + sign * 0.11, cv - 0.03)
                s.add_bone(ellipse_sdf(f, ring_c, (0.04, 0.055)), density=0.35, cortex=0.018)
                tip = (cu + sign * (0.36 + 0.04 * (i == 3)), cv - 0.03)
                s.add_bone(capsule_sdf(f, (cu + sign * hx, cv - 0.03), tip, 0.03, 0.022), density=0.55, cortex=0.01)
            s.add_bone(ellipse_sdf(f, (cu, cv + 0.06), (0.03, 0.07)), density=0.45, cortex=0.012)
            if i >= 1:
                centres.append((cu, cv))
        # T12 ribs at the top corners and the sacrum / iliac crests at the bottom.
        for sign in (-1.0, 1.0):
            top = all_v[0]
            s.add_bone(capsule_sdf(f, (sign * 0.25, top), (sign * 0.65, top + 0.25), 0.03), density=0.5, cortex=0.01)
            s.add_bone(ellipse_sdf(f, (sign * 0.68, centres_v[-1] + 0.45), (0.3, 0.25), angle=sign * 0.4),
                       density=0.4, cortex=0.02)
        sac_top = centres_v[-1] + hy + 0.06
        s.add_bone(convex_polygon_sdf(f, [(-0.25, sac_top), (0.25, sac_top), (0.07, sac_top + 0.55),
                                          (-0.07, sac_top + 0.55)]), density=0.6, cortex=0.02)
        for i in range(1, 4):
            levels = centres[i - 1 : i + 2]
            s.implant_sites.append(ImplantSite(
                f"{_LUMBAR[i - 1]} to {_LUMBAR[i + 1]}", "at", "rods",
                {"rods": [[(c[0] + sg * 0.13, c[1] - 0.03) for c in levels] for sg in (-1.0, 1.0)],
                 "screws": [((c[0] + sg * 0.15, c[1] - 0.03), (c[0] + sg * 0.05, c[1] - 0.03))
                            for c in levels for sg in (-1.0, 1.0)]},
            ))
    for name, c in zip(_LUMBAR, centres):
        s.landmarks[f"{name.lower()}_centre"] = c


# ------------------------------------------------------------------------------------------ pelvis


def draw_pelvis(s: Sketch, rng: np.random.Generator, view: str) -> None:
    """AP pelvis: iliac wings, sacrum, pubic rings, acetabula, femoral heads, necks and shafts."""
    f = s.frame
    w = rng.uniform(0.93, 1.07)
    s.add_soft(box_sdf(f, (0.0, 0.0), (1.05 * w, 1.6), rounding=0.4), 1.0, edge_px=3.0)
    for _ in range(int(rng.integers(2, 6))):
        c = (float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.95, -0.35)))
        s.air = np.maximum(s.air, 0.3 * fill(ellipse_sdf(f, c, (rng.uniform(0.05, 0.12), rng.uniform(0.04, 0.08))), 2 * s.edge))
    # L5 and the sacrum with its foramina.
    s.add_bone(box_sdf(f, (0.0, -0.72), (0.2, 0.11), rounding=0.03), density=0.75, cortex=0.02)
    s.add_bone(box_sdf(f, (0.0, -1.05), (0.2, 0.11), rounding=0.03), density=0.75, cortex=0.02)
    s.add_bone(convex_polygon_sdf(f, [(-0.22 * w, -0.5), (0.22 * w, -0.5), (0.05, 0.2), (-0.05, 0.2)]),
               density=0.6, cortex=0.02)
    for yc in (-0.38, -0.22, -0.07):
        for sign in (-1.0, 1.0):
            s.bone -= 0.3 * fill(ellipse_sdf(f, (sign * 0.09 * (1 - (yc + 0.5) * 0.5), yc), (0.025, 0.022)), s.edge)
    for side, sign in _SIDES:
        # The wing is a flared fan: an ellipse cut medially along the line from the sacroiliac
        # joint down to the acetabulum, with the pelvic inlet (true pelvis) left free of bone.
        head_c = (sign * 0.43 * w + _j(rng, 0.02), 0.2 + _j(rng, 0.02))
        head_r = 0.13 * rng.uniform(0.93, 1.07)
        wing = ellipse_sdf(f, (sign * 0.52 * w, -0.36), (0.4 * w, 0.27), angle=sign * 0.28)
        si_joint = (sign * 0.2 * w, -0.5)
        medial_normal = (-(head_c[1] - si_joint[1]) * sign, (head_c[0] - si_joint[0]) * sign)
        wing = np.maximum(wing, halfplane_sdf(f, si_joint, medial_normal))
        # The body of the ilium carries the wing down to the acetabulum, so the hip bone is one piece.
        ilium_body = capsule_sdf(f, (sign * 0.42 * w, -0.3), (head_c[0], head_c[1] - 0.05), 0.16, 0.13)
        wing = np.minimum(wing, np.maximum(ilium_body, halfplane_sdf(f, si_joint, medial_normal)))
        acetabulum = ellipse_sdf(f, (head_c[0] - sign * 0.02, head_c[1] - 0.06), (0.18, 0.14))
        ring = np.maximum(ellipse_sdf(f, (sign * 0.24 * w, 0.47), (0.17, 0.14)),
                          -ellipse_sdf(f, (sign * 0.24 * w, 0.48), (0.1, 0.08)))
        ring = np.maximum(ring, halfplane_sdf(f, (sign * 0.025, 0.0), (-sign, 0.0)))
        ramus = capsule_sdf(f, (head_c[0] - sign * 0.05, head_c[1] + 0.08), (sign * 0.06, 0.38), 0.05)
        hip_bone = _union([wing, acetabulum, ring, ramus])
        hip_bone = np.maximum(hip_bone, -ellipse_sdf(f, (0.0, 0.02), (0.27 * w, 0.25)))
        s.add_bone(hip_bone, density=0.5, cortex=0.022)
        neck_end = (sign * 0.56 * w, 0.38)
        shaft_top = (sign * 0.6 * w, 0.42)
        femur = _union([
            ellipse_sdf(f, head_c, (head_r, head_r)),
            capsule_sdf(f, head_c, neck_end, 0.085, 0.09),
            ellipse_sdf(f, (sign * 0.66 * w, 0.37), (0.08, 0.1)),
            ellipse_sdf(f, (sign * 0.51 * w, 0.56), (0.04, 0.04)),
            capsule_sdf(f, shaft_top, (sign * 0.55 * w, 1.5), 0.1),
        ])
        s.add_bone(femur, density=0.9, cortex=0.028)
        s.landmarks[f"{side}_femoral_head"] = head_c
        s.fracture_sites.append(BoneSite(f"{side} femoral neck", lerp(head_c, neck_end, 0.15), neck_end, 0.075))
        s.fracture_sites.append(BoneSite(f"{side} femoral shaft", (sign * 0.59 * w, 0.62), (sign * 0.57 * w, 0.92), 0.1))
        s.implant_sites.append(ImplantSite(
            f"{side} hip", "in the", "hip", {"head": head_c, "radius": head_r, "stem_end": (sign * 0.57 * w, 1.0)}
        ))
    s.landmarks["pubic_symphysis"] = (0.0, 0.44)
    s.landmarks["sacrum_centre"] = (0.0, -0.2)


# ------------------------------------------------------------------------------------------- skull


def draw_skull(s: Sketch, rng: np.random.Generator, view: str) -> None:
    """Skull (AP / PA or lateral): vault shell, orbits or sella, facial bones, teeth, mandible."""
    f = s.frame
    if view == "LAT":
        c, r = (0.08, -0.18), (0.82 * rng.uniform(0.95, 1.05), 0.66 * rng.uniform(0.95, 1.05))
        s.add_soft(_union([ellipse_sdf(f, c, (r[0] + 0.06, r[1] + 0.06)), ellipse_sdf(f, (-0.45, 0.45), (0.35, 0.4)),
                           capsule_sdf(f, (0.25, 0.5), (0.3, 1.5), 0.33)]), 0.9, edge_px=3.0)
        _vault(s, c, r, rng)
        s.add_bone(capsule_sdf(f, (-0.5, 0.15), (0.45, 0.3), 0.05), density=0.8, cortex=0.015)  # skull base
        s.add_bone(np.maximum(ellipse_sdf(f, (0.02, 0.08), (0.07, 0.06)), -ellipse_sdf(f, (0.02, 0.06), (0.045, 0.04))),
                   density=0.7, cortex=0.01)  # sella turcica
        s.add_bone(np.maximum(ellipse_sdf(f, (-0.62, 0.05), (0.13, 0.13)), -ellipse_sdf(f, (-0.62, 0.05), (0.09, 0.09))),
                   density=0.5, cortex=0.01)  # orbit rim
        s.add_bone(ellipse_sdf(f, (-0.55, 0.42), (0.18, 0.1)), density=0.6, cortex=0.015)  # maxilla
        jaw_angle = (0.02 + _j(rng, 0.03), 0.68 + _j(rng, 0.03))
        chin = (-0.7 + _j(rng, 0.03), 0.8 + _j(rng, 0.03))
        s.add_bone(_union([capsule_sdf(f, chin, jaw_angle, 0.07, 0.055),
                           capsule_sdf(f, jaw_angle, (0.0, 0.3), 0.055, 0.045)]), density=0.8, cortex=0.02)
        for k in range(6):
            s.add_bone(box_sdf(f, (-0.68 + 0.065 * k, 0.56), (0.025, 0.06), rounding=0.01), density=1.1)
        for k in range(4):
            s.add_bone(box_sdf(f, (0.3, 0.75 + 0.2 * k), (0.09, 0.07), rounding=0.02), density=0.6, cortex=0.015)
        vertex = (c[0], c[1] - r[1])
        menton = (chin[0], chin[1] + 0.07)
        for location, u0 in (("frontal bone", -0.55), ("parietal bone", 0.05), ("occipital bone", 0.6)):
            _vault_plate(s, location, c, r, u0)
    else:
        c, r = (0.0, -0.12), (0.7 * rng.uniform(0.95, 1.05), 0.8 * rng.uniform(0.95, 1.05))
        s.add_soft(_union([ellipse_sdf(f, c, (r[0] + 0.06, r[1] + 0.06)), ellipse_sdf(f, (0.0, 0.45), (0.55, 0.45)),
                           capsule_sdf(f, (0.0, 0.7), (0.0, 1.5), 0.36)]), 0.9, edge_px=3.0)
        _vault(s, c, r, rng)
        s.bone += 0.22 * fill(ellipse_sdf(f, c, (r[0] - 0.05, r[1] - 0.05)), 3 * s.edge)  # overlapping skull base
        for side, sign in _SIDES:
            oc = (sign * 0.25, 0.12)
            s.bone -= 0.18 * fill(ellipse_sdf(f, oc, (0.12, 0.11)), s.edge)
            s.add_bone(np.maximum(ellipse_sdf(f, oc, (0.14, 0.13)), -ellipse_sdf(f, oc, (0.11, 0.1))),
                       density=0.5, cortex=0.01)
            s.add_bone(capsule_sdf(f, (sign * 0.12, 0.3), (sign * 0.55, 0.18), 0.04), density=0.6, cortex=0.015)
            s.add_bone(capsule_sdf(f, (sign * 0.47, 0.25), (sign * 0.44, 0.62), 0.05), density=0.7, cortex=0.015)
            _vault_plate(s, f"{side} parietal bone", c, r, sign * 0.45)
        s.bone -= 0.2 * fill(convex_polygon_sdf(f, [(0.0, 0.18), (0.1, 0.42), (-0.1, 0.42)]), s.edge)  # nasal cavity
        mandible = np.maximum(ellipse_sdf(f, (0.0, 0.45), (0.46, 0.42)), -ellipse_sdf(f, (0.0, 0.45), (0.38, 0.33)))
        mandible = np.maximum(mandible, halfplane_sdf(f, (0.0, 0.55), (0.0, -1.0)))
        s.add_bone(mandible, density=0.8, cortex=0.02)
        for row_v in (0.53, 0.68):
            for k in range(-4, 5):
                s.add_bone(box_sdf(f, (0.065 * k, row_v), (0.025, 0.05), rounding=0.01), density=1.0)
        s.add_bone(capsule_sdf(f, (0.0, 0.95), (0.0, 1.5), 0.09), density=0.5, cortex=0.02)  # cervical spine
        vertex = (c[0], c[1] - r[1])
        menton = (0.0, 0.87)
    s.landmarks.update(vault_centre=c, vertex=vertex, menton=menton)


def _vault(s: Sketch, c: Point, r: Point, rng: np.random.Generator) -> None:
    """The calvarium: outer and inner tables with a lighter diploe between them."""
    thick = 0.06 * rng.uniform(0.85, 1.2)
    shell = np.maximum(ellipse_sdf(s.frame, c, r), -ellipse_sdf(s.frame, c, (r[0] - thick, r[1] - thick)))
    s.add_bone(shell, density=0.9, cortex=0.016)


def _vault_plate(s: Sketch, location: str, c: Point, r: Point, u0: float) -> None:
    """A craniotomy plate sitting on the vault near canonical ``u0``."""
    t = np.arcsin(np.clip((u0 - c[0]) / r[0], -0.95, 0.95))
    p = (c[0] + r[0] * np.sin(t) * 0.97, c[1] - r[1] * np.cos(t) * 0.97)
    tangent = _unit((r[0] * np.cos(t), r[1] * np.sin(t)))
    s.implant_sites.append(ImplantSite(location, "over the", "plate", {
        "p0": _add(p, _mul(tangent, -0.08)), "p1": _add(p, _mul(tangent, 0.08)), "radius": 0.03}))


# -------------------------------------------------------------------------------------------- table

DRAWERS: dict[str, Drawer] = {
    "chest": draw_chest,
    "hand": draw_hand,
    "knee": draw_knee,
    "spine": draw_spine,
    "pelvis": draw_pelvis,
    "skull": draw_skull,
}
"""Anatomy name -> drawer; the names are also the manifest ``anatomy`` values."""

VIEWS: dict[str, tuple[tuple[str, float], ...]] = {
    "chest": (("PA", 0.7), ("AP", 0.3)),
    "hand": (("PA", 1.0),),
    "knee": (("AP", 0.55), ("LAT", 0.45)),
    "spine": (("AP", 0.55), ("LAT", 0.45)),
    "pelvis": (("AP", 1.0),),
    "skull": (("PA", 0.5), ("LAT", 0.5)),
}
"""Views each anatomy is drawn in, with their frequencies."""

LATERAL_BODY_PARTS = frozenset({"hand", "knee"})
"""Paired body parts: drawn as a right one, mirrored for a left one (``ImageLaterality``)."""

FIELD_OF_VIEW_MM: dict[str, float] = {
    "chest": 400.0, "hand": 230.0, "knee": 260.0, "spine": 340.0, "pelvis": 400.0, "skull": 260.0,
}
"""Physical extent of the canonical ``[-1, 1]`` square, which sets PixelSpacing and lesion sizes in mm."""

MAIN_STRUCTURE: dict[str, str] = {
    "chest": "lungs", "hand": "bones", "knee": "bones", "spine": "bones", "pelvis": "bones", "skull": "bones",
}
"""The structure written as each anatomy's segmentation mask."""


# ------------------------------------------------------------------------------------------ helpers


def _union(sdfs: list[np.ndarray]) -> np.ndarray:
    out = sdfs[0]
    for d in sdfs[1:]:
        out = np.minimum(out, d)
    return out


def _sub(a: Point, b: Point) -> Point:
    return (a[0] - b[0], a[1] - b[1])


def _add(a: Point, b: Point) -> Point:
    return (a[0] + b[0], a[1] + b[1])


def _mul(a: Point, k: float) -> Point:
    return (a[0] * k, a[1] * k)


def _unit(a: Point) -> Point:
    n = float(np.hypot(*a))
    return (a[0] / n, a[1] / n)
