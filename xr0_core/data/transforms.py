"""Grayscale radiograph augmentations on tensors ``[1, H, W]`` in [0, 1] (bright = bone).

Every random draw comes from an explicit ``torch.Generator`` argument (STYLE 9); nothing reads the global
RNG. Functions are pure (they return new tensors).

What is deliberately *not* here, and why:

- colour jitter (saturation / hue): one channel, nothing to jitter;
- solarization (DINO's second global view): inverting bright pixels has no physical counterpart in a
  radiograph (MONOCHROME1/2 inversion is handled, deterministically, by the reader), and it would teach
  invariance to the bone / soft-tissue contrast the model should encode;
- horizontal flip by default: radiographs have laterality (heart on the left, L/R markers, left vs right
  hand), so flipping changes what an image *is*. It stays available (``ViewAugment.hflip_p``), off by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Fixed intensity normalisation applied after augmentation, identical in training and feature extraction
# (and written to the export sidecar): x_model = (x - PIXEL_MEAN) / PIXEL_STD.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def coin(generator: torch.Generator, p: float) -> bool:
    """True with probability ``p`` (always draws, so the stream does not depend on ``p`` being 0 or 1)."""
    return float(torch.rand((), generator=generator)) < p


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - PIXEL_MEAN) / PIXEL_STD


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[C, H, W]`` to ``size`` (int: square)."""
    hw = (size, size) if isinstance(size, int) else size
    out = F.interpolate(image.unsqueeze(0).float(), size=hw, mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(0)


def random_resized_crop(image: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random box covering a ``scale`` share of the area with aspect in ``ratio``, resize to ``size``.

    As torchvision's ``RandomResizedCrop`` (10 tries, then the central crop of the largest allowed aspect).

    Shapes: ``[C, H, W] -> [C, size, size]``.
    """
    _, h, w = image.shape
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * uniform(generator, *scale)
        aspect = math.exp(uniform(generator, *log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            return resize(image[:, top:top + ch, left:left + cw], size)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(image[:, top:top + ch, left:left + cw], size)


def hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1)


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre by ``degrees`` (bilinear); uncovered corners become 0 (X-ray background)."""
    if degrees == 0:
        return image
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=torch.float32).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(0)


def adjust_gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """``x ** gamma``: mimics different detector response / windowing curves."""
    return image.clamp(0.0, 1.0) ** gamma


def adjust_contrast_brightness(image: torch.Tensor, contrast: float, brightness: float) -> torch.Tensor:
    """Scale around the image mean by ``contrast`` and shift by ``brightness``; clamp to [0, 1]."""
    mean = image.mean()
    return ((image - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a kernel of radius ``ceil(3 sigma)`` (reflect padding)."""
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, (min(image.shape[-2:]) - 1))
    if radius < 1:
        return image
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    img = image.unsqueeze(0).float()
    img = F.pad(img, (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, k.view(1, 1, 1, -1))
    img = F.conv2d(img, k.view(1, 1, -1, 1))
    return img.squeeze(0)


def gaussian_noise(image: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise (quantum / detector noise); clamp to [0, 1]."""
    if std <= 0:
        return image
    noise = torch.randn(image.shape, generator=generator) * std
    return (image + noise).clamp(0.0, 1.0)
