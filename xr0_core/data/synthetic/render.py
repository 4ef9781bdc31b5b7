"""Render one phantom radiograph with its ground truth: :func:`render_image` -> :class:`Phantom`.

Pipeline: pick a view and a pose, draw the anatomy (:mod:`.phantoms`), place findings
(:mod:`.findings`), then expose: Beer-Lambert ``1 - exp(-k * attenuation)`` with a per-image
exposure ``k``, fog, gamma and heel-effect gradient (so anatomy is not given away by mean intensity),
a slight blur, quantum-like noise, sometimes a collimation border and a lead side marker.

The generator is split into independent streams (geometry, findings, noise, report text), so the same
patient rendered with and without a finding differs only where the finding is; a test relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from xr0_core.data.synthetic.findings import FINDINGS, PREVALENCE, PlacedFinding, place_finding
from xr0_core.data.synthetic.geometry import Frame, Point, gaussian_blur, smooth_noise
from xr0_core.data.synthetic.phantoms import (
    DRAWERS,
    FIELD_OF_VIEW_MM,
    LATERAL_BODY_PARTS,
    MAIN_STRUCTURE,
    VIEWS,
)
from xr0_core.data.synthetic.reports import write_report
from xr0_core.data.synthetic.sketch import Sketch

ANATOMIES: tuple[str, ...] = tuple(DRAWERS)
"""Anatomies the generator draws (manifest ``anatomy`` values)."""

MIN_IMAGE_SIZE = 32
_MIN_VISIBLE_PIXELS = 4

# Attenuation per unit of each layer; metal saturates the detector.
_MU_SOFT, _MU_BONE, _MU_METAL = 1.0, 1.5, 8.0

# 5x3 bitmaps of the lead side markers.
_MARKERS = {
    "R": ("110", "101", "110", "101", "101"),
    "L": ("100", "100", "100", "100", "111"),
}


@dataclass(frozen=True)
class Phantom:
    """One rendered radiograph and its ground truth.

    Attributes
    ----------
    image : np.ndarray
        float32 ``[H, W]`` in ``[0, 1]``, bright = dense (bone, metal), as a viewer shows it.
    masks : dict of str to np.ndarray
        bool ``[H, W]`` per structure; ``masks[main_structure]`` is what the site writes as PNG.
    landmarks : dict of str to (x, y)
        Continuous pixel coordinates (pixel ``(i, j)`` has centre ``(j + 0.5, i + 0.5)``), a fixed
        ordered set per anatomy.
    findings : tuple of dict
        ``{"name", "location", "phrase", "box": (x0, y0, x1, y1)}``; the box (same pixel convention,
        ``x1`` / ``y1`` exclusive edges) bounds the pixels the finding changed; ``phrase`` occurs
        verbatim in ``report``.
    labels : dict of str to int
        0 / 1 for every name in :data:`~xr0_core.data.synthetic.findings.FINDINGS`.
    report : str
    anatomy, view : str
        ``view`` is ``PA``, ``AP`` or ``LAT``.
    laterality : str or None
        ``"L"`` / ``"R"`` for hands and knees.
    pixel_spacing_mm : float
    main_structure : str
        ``lungs`` for chest, ``bones`` otherwise.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    landmarks: dict[str, Point]
    findings: tuple[dict, ...]
    labels: dict[str, int]
    report: str
    anatomy: str
    view: str
    laterality: str | None
    pixel_spacing_mm: float
    main_structure: str


def render_image(
    anatomy: str,
    rng: np.random.Generator,
    size: int = 128,
    *,
    view: str | None = None,
    findings: Sequence[str] | None = None,
    finding_scale: Mapping[str, float] | None = None,
    exposure_scale: float = 1.0,
    noise_scale: float = 1.0,
    collimation_rate: float = 0.2,
) -> Phantom:
    """Draw one radiograph of ``anatomy`` with findings at known positions.

    Parameters
    ----------
    anatomy : str
        One of :data:`ANATOMIES`.
    rng : numpy.random.Generator
        The only source of randomness (four independent child streams are derived from it).
    size : int
        Image side in pixels (square images), at least 32.
    view : str, optional
        Force a view (``PA``, ``AP``, ``LAT``; must be one the anatomy has); random otherwise.
    findings : sequence of str, optional
        Force exactly these findings (each must be possible on ``anatomy``); sampled from
        :data:`~xr0_core.data.synthetic.findings.PREVALENCE` otherwise. A forced finding can still
        be absent when there is no room for it (it then has label 0 and no box).
    finding_scale : mapping, optional
        Multiplies each finding's prevalence (a site's case mix).
    exposure_scale, noise_scale : float
        A site's detector: multiply the exposure constant and the noise level.
    collimation_rate : float
        Probability of a collimation border.

    Returns
    -------
    Phantom
    """
    if anatomy not in DRAWERS:
        raise ValueError(f"unknown anatomy {anatomy!r}; known: {', '.join(ANATOMIES)}")
    if int(size) < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {size} is too small; use at least {MIN_IMAGE_SIZE} px")
    size = int(size)
    possible = tuple(n for n in FINDINGS if n in PREVALENCE[anatomy])
    if findings is not None:
        bad = [n for n in findings if n not in possible]
        if bad:
            raise ValueError(f"finding(s) {bad} cannot occur on {anatomy}; possible: {', '.join(possible)}")
    seeds = rng.integers(0, 2**63, size=4)
    geo, find_rng, noise_rng, text_rng = (np.random.default_rng(int(s)) for s in seeds)

    views = VIEWS[anatomy]
    drawn_view = views[int(geo.choice(len(views), p=[p for _, p in views]))][0]
    if view is not None:
        if view not in {v for v, _ in views}:
            raise ValueError(f"{anatomy} has no view {view!r}; views: {', '.join(v for v, _ in views)}")
        drawn_view = view
    flip = bool(geo.random() < 0.5) and anatomy in LATERAL_BODY_PARTS
    laterality = ("L" if flip else "R") if anatomy in LATERAL_BODY_PARTS else None
    frame = Frame(
        size=size,
        scale=float(geo.uniform(0.86, 1.06)),
        angle=float(geo.uniform(-0.12, 0.12)),
        shift=(float(geo.uniform(-0.06, 0.06)), float(geo.uniform(-0.06, 0.06))),
        flip=flip,
    )
    spacing_mm = FIELD_OF_VIEW_MM[anatomy] / (size * frame.scale)
    sketch = Sketch(frame)
    DRAWERS[anatomy](sketch, geo, drawn_view)
    exposure = _Exposure.draw(geo, size, exposure_scale, collimation_rate)
    bone_texture = smooth_noise(geo, size, max(0.7, size / 160))

    if findings is None:
        scale = finding_scale or {}
        chosen = [n for n in possible if find_rng.random() < min(1.0, PREVALENCE[anatomy][n] * scale.get(n, 1.0))]
    else:
        chosen = [n for n in possible if n in findings]
    placed: list[PlacedFinding] = []
    for name in chosen:
        result = place_finding(name, sketch, find_rng, spacing_mm)
        if result is not None:
            placed.append(result)

    image = exposure.expose(sketch, bone_texture, noise_rng, noise_scale)
    visible = ~exposure.collimated
    if laterality is not None or anatomy in ("chest", "pelvis"):
        _stamp_marker(image, laterality or "R", exposure.marker_corner, visible)

    boxes = []
    kept: list[PlacedFinding] = []
    for finding in placed:
        footprint = finding.footprint & visible
        if footprint.sum() < _MIN_VISIBLE_PIXELS:
            continue  # collimated away or out of view: not a finding anyone could report
        kept.append(finding)
        boxes.append({"name": finding.name, "location": finding.location, "phrase": finding.phrase,
                      "box": _bbox(footprint)})
    labels = {n: int(any(f.name == n for f in kept)) for n in FINDINGS}
    masks = {name: (occ > 0.5) & visible for name, occ in sketch.masks.items()}
    masks.setdefault("bones", (sketch.bone_occ > 0.5) & visible)
    landmarks = {
        name: tuple(float(np.clip(c, 0.0, size)) for c in frame.to_pixel(point))
        for name, point in sketch.landmarks.items()
    }
    report = write_report(anatomy, drawn_view, laterality, kept, possible, text_rng)
    return Phantom(
        image=image,
        masks=masks,
        landmarks=landmarks,  # type: ignore[arg-type]
        findings=tuple(boxes),
        labels=labels,
        report=report,
        anatomy=anatomy,
        view=drawn_view,
        laterality=laterality,
        pixel_spacing_mm=float(spacing_mm),
        main_structure=MAIN_STRUCTURE[anatomy],
    )


@dataclass(frozen=True)
class _Exposure:
    """How the detector turned attenuation into brightness for one image."""

    k: float
    fog: float
    gamma: float
    heel: tuple[float, float]
    noise: float
    collimated: np.ndarray  # bool [H, W]
    collimation_level: float
    marker_corner: int

    @classmethod
    def draw(cls, rng: np.random.Generator, size: int, exposure_scale: float, collimation_rate: float) -> "_Exposure":
        collimated = np.zeros((size, size), dtype=bool)
        margins = rng.uniform(0.0, 0.05, size=4) * size
        if rng.random() < collimation_rate:
            top, bottom, left, right = (int(m) for m in margins)
            collimated[:top, :] = True
            collimated[size - bottom :, :] = True
            collimated[:, :left] = True
            collimated[:, size - right :] = True
        return cls(
            k=float(rng.uniform(0.55, 1.5)) * exposure_scale,
            fog=float(rng.uniform(0.0, 0.12)),
            gamma=float(rng.uniform(0.8, 1.25)),
            heel=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
            noise=float(rng.uniform(0.008, 0.025)),
            collimated=collimated,
            collimation_level=float(rng.uniform(0.8, 1.0)),
            marker_corner=int(rng.integers(4)),
        )

    def expose(self, s: Sketch, bone_texture: np.ndarray, rng: np.random.Generator, noise_scale: float) -> np.ndarray:
        """Attenuation layers -> float32 ``[H, W]`` image in ``[0, 1]``, bright = dense."""
        size = s.frame.size
        soft = np.maximum(s.soft * (1.0 - np.clip(s.air, 0.0, 1.0)) + s.extra_soft, 0.0)
        bone = np.maximum(s.bone, 0.0) * (1.0 + 0.12 * bone_texture)
        attenuation = _MU_SOFT * soft + _MU_BONE * bone + _MU_METAL * s.metal
        ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        attenuation = attenuation * (1.0 + self.heel[0] * ramp[None, :] + self.heel[1] * ramp[:, None])
        attenuation = gaussian_blur(attenuation, 0.45 * size / 128, reflect=True)
        image = self.fog + (1.0 - self.fog) * (1.0 - np.exp(-self.k * attenuation))
        image = np.clip(image, 0.0, 1.0) ** self.gamma
        sigma = self.noise * noise_scale
        image = image + sigma * (0.6 + 0.8 * np.sqrt(image)) * rng.standard_normal((size, size))
        image = image + 0.3 * sigma * smooth_noise(rng, size, 2.0)
        image[self.collimated] = self.collimation_level + 0.3 * sigma * rng.standard_normal(int(self.collimated.sum()))
        return np.clip(image, 0.0, 1.0).astype(np.float32)


def _stamp_marker(image: np.ndarray, letter: str, corner: int, visible: np.ndarray) -> None:
    """A lead side marker ("R" / "L") in one corner, as radiographers place on the cassette."""
    size = image.shape[0]
    cell = max(1, size // 64)
    glyph = np.array([[c == "1" for c in row] for row in _MARKERS[letter]], dtype=bool)
    glyph = np.kron(glyph, np.ones((cell, cell), dtype=bool))
    gh, gw = glyph.shape
    pad = max(2, size // 32)
    y0 = pad if corner in (0, 1) else size - pad - gh
    x0 = pad if corner in (0, 2) else size - pad - gw
    region = image[y0 : y0 + gh, x0 : x0 + gw]
    if visible[y0 : y0 + gh, x0 : x0 + gw].all():
        region[glyph] = 1.0


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` of a bool mask, edges in continuous pixel coordinates."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
