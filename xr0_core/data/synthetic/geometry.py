"""Drawing primitives for phantoms: a random pose, signed distance fields and soft fills.

Every anatomy is drawn in a *canonical* frame: ``u`` to the image right, ``v`` down, the body part
spanning roughly ``[-1, 1]`` on both axes. A :class:`Frame` holds the per-image pose (scale, rotation,
shift, mirror) that maps canonical points to pixels, so shapes, landmarks and finding footprints all
move together and ground truth stays exact.

Pixel convention (used for landmarks and boxes everywhere in :mod:`xr0_core.data.synthetic`):
continuous coordinates ``(x, y)`` with pixel ``(row i, column j)`` covering ``[j, j+1) x [i, i+1)``,
so its centre is ``(j + 0.5, i + 0.5)`` and the image spans ``[0, W] x [0, H]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Frame:
    """The pose of one image: canonical ``(u, v)`` -> normalised ``scale * R(angle) [flip u, v] + shift``.

    Parameters
    ----------
    size : int
        Image side in pixels (images are square).
    scale : float
        Zoom; 1 maps canonical ``[-1, 1]`` onto the full image.
    angle : float
        Rotation in radians (counter-clockwise on screen is negative, as ``v`` points down).
    shift : tuple of float
        Translation in normalised units (``[-1, 1]`` spans the image).
    flip : bool
        Mirror left-right in the canonical frame (left vs right hand / knee).
    """

    size: int
    scale: float = 1.0
    angle: float = 0.0
    shift: Point = (0.0, 0.0)
    flip: bool = False

    @property
    def px(self) -> float:
        """Canonical units per pixel: edges and thin lines are sized with it so they survive at 64 px."""
        return 2.0 / (self.size * self.scale)

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical coordinates ``(u, v)`` of every pixel centre, each float32 ``[H, W]``."""
        centres = (np.arange(self.size, dtype=np.float64) + 0.5) / self.size * 2.0 - 1.0
        x, y = np.meshgrid(centres, centres)
        x, y = x - self.shift[0], y - self.shift[1]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        u = (cos * x + sin * y) / self.scale
        v = (-sin * x + cos * y) / self.scale
        if self.flip:
            u = -u
        return u.astype(np.float32), v.astype(np.float32)

    def to_pixel(self, point: Point) -> Point:
        """Canonical ``(u, v)`` -> continuous pixel ``(x, y)`` (module docstring convention)."""
        u, v = point
        if self.flip:
            u = -u
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x = self.scale * (cos * u - sin * v) + self.shift[0]
        y = self.scale * (sin * u + cos * v) + self.shift[1]
        return (float((x + 1.0) * self.size / 2.0), float((y + 1.0) * self.size / 2.0))


def fill(sdf: np.ndarray, edge: float) -> np.ndarray:
    """Soft occupancy in ``[0, 1]`` from a signed distance (negative inside); ``edge`` is the blur width."""
    return (0.5 * (1.0 - np.tanh(sdf / (2.0 * edge)))).astype(np.float32)


def ellipse_sdf(frame: Frame, centre: Point, radii: Point, angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact on the axes; good enough for soft fills)."""
    u, v = frame.grid
    du, dv = u - centre[0], v - centre[1]
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        du, dv = cos * du + sin * dv, -sin * du + cos * dv
    k = np.sqrt((du / radii[0]) ** 2 + (dv / radii[1]) ** 2)
    return (k - 1.0) * min(radii)


def capsule_sdf(frame: Frame, p0: Point, p1: Point, r0: float, r1: float | None = None) -> np.ndarray:
    """Signed distance to a (tapered) capsule: a segment ``p0 -> p1`` with radius ``r0 -> r1``."""
    r1 = r0 if r1 is None else r1
    u, v = frame.grid
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(du * du + dv * dv, 1e-12)
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / length2, 0.0, 1.0)
    dist = np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))
    return dist - (r0 + t * (r1 - r0))


def polyline_sdf(frame: Frame, points: list[Point], radius: float) -> np.ndarray:
    """Signed distance to a thick polyline (union of capsules)."""
    out = capsule_sdf(frame, points[0], points[1], radius)
    for a, b in zip(points[1:-1], points[2:]):
        out = np.minimum(out, capsule_sdf(frame, a, b, radius))
    return out


def box_sdf(frame: Frame, centre: Point, half: Point, angle: float = 0.0, rounding: float = 0.0) -> np.ndarray:
    """Signed distance to a rounded rectangle (``rounding`` is the corner radius, inside ``half``)."""
    u, v = frame.grid
    du, dv = u - centre[0], v - centre[1]
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        du, dv = cos * du + sin * dv, -sin * du + cos * dv
    qx = np.abs(du) - (half[0] - rounding)
    qy = np.abs(dv) - (half[1] - rounding)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside - rounding


def halfplane_sdf(frame: Frame, point: Point, normal: Point) -> np.ndarray:
    """Signed distance to the half-plane ``dot(q - point, normal) <= 0`` (``normal`` points outwards)."""
    u, v = frame.grid
    n = np.hypot(*normal)
    return ((u - point[0]) * normal[0] + (v - point[1]) * normal[1]) / n


def convex_polygon_sdf(frame: Frame, vertices: list[Point]) -> np.ndarray:
    """Signed distance (exact inside, approximate outside) to a convex polygon, vertices clockwise on screen."""
    out = None
    for a, b in zip(vertices, vertices[1:] + vertices[:1]):
        # With v pointing down, clockwise-on-screen vertices put the interior on the right of a -> b.
        normal = (b[1] - a[1], -(b[0] - a[0]))
        d = halfplane_sdf(frame, a, normal)
        out = d if out is None else np.maximum(out, d)
    return out


def smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field, float32 ``[size, size]``, correlation length ``sigma_px``.

    Filtering white noise in Fourier space keeps this numpy-only and fast at the sizes used here.
    """
    white = rng.standard_normal((size, size))
    return _normalise(gaussian_blur(white, sigma_px))


def gaussian_blur(image: np.ndarray, sigma_px: float, *, reflect: bool = False) -> np.ndarray:
    """Gaussian blur via FFT; periodic edges, or mirrored ones with ``reflect`` (for images, not noise)."""
    if sigma_px <= 0:
        return image.astype(np.float32)
    if reflect:
        pad = int(np.ceil(3 * sigma_px)) + 1
        padded = np.pad(image, pad, mode="reflect")
        return gaussian_blur(padded, sigma_px)[pad:-pad, pad:-pad]
    h, w = image.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(image) * kernel, s=(h, w)).astype(np.float32)


def _normalise(field: np.ndarray) -> np.ndarray:
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def rotate(vec: Point, angle: float) -> Point:
    cos, sin = np.cos(angle), np.sin(angle)
    return (float(cos * vec[0] - sin * vec[1]), float(sin * vec[0] + cos * vec[1]))


def lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
