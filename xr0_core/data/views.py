"""Multi-crop views and iBOT masks for one image (D5).

``MultiCropViews(cfg)(image [1, H, W], generator)`` returns G = 2 global crops of ``model.img-size`` and
L = ``ssl.n-local-crops`` local crops of ``ssl.local-size``, augmented and normalised; :func:`sample_ibot_masks`
draws the patch masks of the global crops. Both take an explicit generator: the same generator state gives
the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xr0_core.config import SSLConfig, XR0Config
from xr0_core.data import transforms as T

N_GLOBAL = 2


@dataclass(frozen=True)
class ViewAugment:
    """Augmentation strengths (radiograph-suited defaults; see :mod:`xr0_core.data.transforms` for what is
    left out and why).

    Blur sigmas are given for a 224-pixel crop and scaled with the crop size, so a 64-pixel crop is not
    blurred into a smudge.
    """

    hflip_p: float = 0.0  # laterality matters in radiographs: off unless a study wants it
    rotate_degrees: float = 10.0
    rotate_p: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.4)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    intensity_p: float = 0.8
    blur_sigma_224: tuple[float, float] = (0.1, 2.0)
    blur_p_global: tuple[float, float] = (0.8, 0.1)  # first / second global view (DINO: 1.0 / 0.1)
    blur_p_local: float = 0.5
    noise_std_range: tuple[float, float] = (0.0, 0.03)
    noise_p: float = 0.2


class MultiCropViews:
    """Global and local crops of one cached image.

    Parameters
    ----------
    cfg : XR0Config
        ``model.img-size`` (global side S), ``ssl.local-size`` (local side s), ``ssl.n-local-crops`` (L),
        ``ssl.global-scale-min``, ``ssl.local-scale-min``, ``ssl.local-scale-max``.
    augment : ViewAugment, optional

    Shapes
    ------
    ``image [1, H, W]`` (float in [0, 1]) -> ``{"global": [2, 1, S, S], "local": [L, 1, s, s]}`` (normalised).
    """

    def __init__(self, cfg: XR0Config, augment: ViewAugment | None = None) -> None:
        s = cfg.ssl
        self.global_size = cfg.model.img_size
        self.local_size = s.local_size
        self.n_local = s.n_local_crops
        self.global_scale = (s.global_scale_min, 1.0)
        self.local_scale = (s.local_scale_min, s.local_scale_max)
        self.aug = augment or ViewAugment()
        if not 0 < s.global_scale_min <= 1 or not 0 < s.local_scale_min <= s.local_scale_max <= 1:
            raise ValueError("crop scales must satisfy 0 < ssl.global-scale-min <= 1 and "
                             "0 < ssl.local-scale-min <= ssl.local-scale-max <= 1")

    def _view(self, image: torch.Tensor, size: int, scale: tuple[float, float], blur_p: float,
              g: torch.Generator) -> torch.Tensor:
        a = self.aug
        x = T.random_resized_crop(image, size, scale, g)
        if T.coin(g, a.hflip_p):
            x = T.hflip(x)
        if T.coin(g, a.rotate_p):
            x = T.rotate(x, T.uniform(g, -a.rotate_degrees, a.rotate_degrees))
        if T.coin(g, a.intensity_p):
            log_g = T.uniform(g, math.log(a.gamma_range[0]), math.log(a.gamma_range[1]))
            x = T.adjust_gamma(x, math.exp(log_g))
            x = T.adjust_contrast_brightness(x, T.uniform(g, *a.contrast_range), T.uniform(g, *a.brightness_range))
        if T.coin(g, blur_p):
            k = size / 224.0
            x = T.gaussian_blur(x, T.uniform(g, a.blur_sigma_224[0] * k, a.blur_sigma_224[1] * k))
        if T.coin(g, a.noise_p):
            x = T.gaussian_noise(x, T.uniform(g, *a.noise_std_range), g)
        return T.normalize(x)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image = image.float()
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(f"MultiCropViews expects one grayscale image [1, H, W], got {tuple(image.shape)}")
        glob = torch.stack([
            self._view(image, self.global_size, self.global_scale, self.aug.blur_p_global[i], generator)
            for i in range(N_GLOBAL)
        ])
        if self.n_local:
            loc = torch.stack([
                self._view(image, self.local_size, self.local_scale, self.aug.blur_p_local, generator)
                for _ in range(self.n_local)
            ])
        else:
            loc = torch.zeros(0, 1, self.local_size, self.local_size)
        return {"global": glob, "local": loc}


def center_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """The deterministic evaluation view: the whole cached image resized to ``size``, normalised.

    Shapes: ``[1, H, W] -> [1, size, size]``.
    """
    return T.normalize(T.resize(image.float(), size))


def sample_ibot_masks(n_views: int, grid: int, ssl_cfg: SSLConfig, generator: torch.Generator,
                      mode: str = "block") -> torch.Tensor:
    """iBOT masks for the global views of one sample.

    Each view is masked with probability ``ssl.mask-probability``; a masked view hides a share of its
    ``grid x grid`` patches drawn uniformly in ``[ssl.mask-ratio-min, ssl.mask-ratio-max]`` (at least one
    patch), as rectangular blocks (``mode="block"``, BEiT / iBOT) topped up with random patches to the exact
    count, or as random patches (``mode="random"``).

    Returns
    -------
    bool Tensor [n_views, grid * grid]

    References
    ----------
    Bao et al., BEiT (2022), block-wise masking; ``dinov2/data/masking.py: MaskingGenerator``.
    """
    if mode not in ("block", "random"):
        raise ValueError(f"mask mode {mode!r} unknown; use block or random")
    n = grid * grid
    masks = torch.zeros(n_views, n, dtype=torch.bool)
    for v in range(n_views):
        if not T.coin(generator, ssl_cfg.mask_probability):
            continue
        ratio = T.uniform(generator, ssl_cfg.mask_ratio_min, ssl_cfg.mask_ratio_max)
        target = max(1, int(round(ratio * n)))
        m = torch.zeros(grid, grid, dtype=torch.bool)
        if mode == "block":
            _add_blocks(m, target, generator)
        flat = m.flatten()
        short = target - int(flat.sum())
        if short > 0:
            free = (~flat).nonzero().squeeze(1)
            pick = free[torch.randperm(free.numel(), generator=generator)[:short]]
            flat[pick] = True
        masks[v] = flat
    return masks


def _add_blocks(m: torch.Tensor, target: int, g: torch.Generator, min_block: int = 4) -> None:
    """Add random rectangles (aspect 0.3..3.3) until ``target`` patches are masked or tries run out."""
    grid = m.shape[0]
    for _ in range(10 * grid):
        left_to_mask = target - int(m.sum())
        if left_to_mask <= 0:
            return
        area = T.uniform(g, min(min_block, left_to_mask), max(min_block, left_to_mask))
        aspect = math.exp(T.uniform(g, math.log(0.3), math.log(1 / 0.3)))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (0 < h <= grid and 0 < w <= grid):
            continue
        top = int(torch.randint(0, grid - h + 1, (), generator=g))
        left = int(torch.randint(0, grid - w + 1, (), generator=g))
        block = m[top:top + h, left:left + w]
        new = int((~block).sum())
        if 0 < new <= left_to_mask:
            block.fill_(True)
