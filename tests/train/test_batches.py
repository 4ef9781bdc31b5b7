"""Views, iBOT masks, image cache and deterministic batches (xr0_core.data.views / dataset / transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.data import transforms as T
from xr0_core.data.dataset import BatchMaker, ImageCache, make_batch, preprocess, ssl_records
from xr0_core.data.views import MultiCropViews, center_view, sample_ibot_masks

CFG = from_flat({"model.img-size": 32, "ssl.local-size": 16, "train.load-size": 40, "ssl.n-local-crops": 3,
                 "train.batch-size": 4})


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_views_shapes_normalisation_and_determinism():
    img = torch.rand(1, 40, 40)
    views = MultiCropViews(CFG)
    a, b = views(img, _gen(1)), views(img, _gen(1))
    assert a["global"].shape == (2, 1, 32, 32) and a["local"].shape == (3, 1, 16, 16)
    torch.testing.assert_close(a["global"], b["global"])
    torch.testing.assert_close(a["local"], b["local"])
    c = views(img, _gen(2))
    assert not torch.allclose(a["global"], c["global"])
    lo, hi = T.normalize(torch.tensor(0.0)), T.normalize(torch.tensor(1.0))
    assert a["global"].min() >= lo - 1e-5 and a["global"].max() <= hi + 1e-5
    with pytest.raises(ValueError):
        views(torch.rand(3, 40, 40), _gen())


def test_no_flip_by_default_but_available():
    """Laterality: a left-bright image stays left-bright in every default view."""
    img = torch.zeros(1, 40, 40)
    img[:, :, :20] = 1.0
    plain = MultiCropViews(from_flat({"model.img-size": 32, "ssl.local-size": 16, "train.load-size": 40,
                                      "ssl.global-scale-min": 0.9}))
    for seed in range(10):
        v = plain(img, _gen(seed))["global"]
        assert (v[..., :4].mean() > v[..., -4:].mean()).item()
    assert torch.equal(T.hflip(img)[..., -1], img[..., 0])


def test_transforms_keep_range_and_rotation_fills_with_background():
    img = torch.ones(1, 32, 32)
    rot = T.rotate(img, 30)
    assert rot[0, 0, 0] < 0.5 and rot[0, 16, 16] > 0.99
    g = _gen()
    x = T.gaussian_noise(T.adjust_contrast_brightness(T.adjust_gamma(torch.rand(1, 8, 8), 1.3), 1.2, 0.1), 0.05, g)
    assert x.min() >= 0 and x.max() <= 1
    blurred = T.gaussian_blur(torch.rand(1, 16, 16), 1.0)
    assert blurred.shape == (1, 16, 16) and blurred.std() < 0.3


@pytest.mark.parametrize("mode", ["block", "random"])
def test_ibot_mask_ratio_and_probability(mode):
    ssl = from_flat({"ssl.mask-ratio-min": 0.2, "ssl.mask-ratio-max": 0.4, "ssl.mask-probability": 0.5}).ssl
    g = _gen(3)
    masks = torch.stack([sample_ibot_masks(2, 8, ssl, g, mode=mode) for _ in range(200)])  # [200, 2, 64]
    counts = masks.sum(-1).flatten()
    masked = counts[counts > 0]
    assert masked.min() >= round(0.2 * 64) and masked.max() <= round(0.4 * 64)
    share = (counts > 0).float().mean()
    assert 0.35 < share < 0.65
    again = sample_ibot_masks(2, 8, ssl, _gen(7), mode=mode)
    assert torch.equal(again, sample_ibot_masks(2, 8, ssl, _gen(7), mode=mode))


def test_preprocess_crops_to_square_and_sanitises():
    wide = np.zeros((50, 200), dtype=np.float32)
    wide[:, 100] = np.nan
    out = preprocess(wide, 40)
    assert out.shape == (1, 40, 40) and torch.isfinite(out).all()
    assert preprocess(np.full((3000, 2500), 2.0, dtype=np.float32), 40).max() <= 1.0
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 10), dtype=np.float32), 40)


class _Rec:
    def __init__(self, path, split=None):
        self.path, self.split = path, split


class _Loaded:
    def __init__(self, pixels):
        self.pixels = pixels


def test_cache_decodes_once_and_skips_unreadable_files():
    calls = []

    def reader(path):
        calls.append(path)
        if path == "bad":
            raise OSError("truncated")
        return _Loaded(np.random.default_rng(len(calls)).random((30, 60), dtype=np.float32))

    recs = [_Rec("a"), _Rec("bad"), _Rec("c")]
    cache = ImageCache(recs, 40, reader=reader, progress=False)
    assert calls == []  # lazy
    assert len(cache) == 2 and cache.images.dtype == torch.float16
    assert [r.path for r in cache.kept] == ["a", "c"] and cache.skipped[0][0].path == "bad"
    len(cache)
    assert len(calls) == 3
    assert [r.path for r in ssl_records([_Rec("x", "test"), _Rec("y", "train"), _Rec("z")])] == ["y", "z"]


def test_batch_is_a_function_of_seed_site_step_only():
    rng = np.random.default_rng(0)
    cache = ImageCache.from_arrays([rng.random((40, 50), dtype=np.float32) for _ in range(6)], 40)
    maker = BatchMaker(cache, CFG, site="h1", patch_size=8)
    b5 = maker(5)
    assert b5["global"].shape == (4, 2, 1, 32, 32) and b5["local"].shape == (4, 3, 1, 16, 16)
    assert b5["masks"].shape == (4, 2, 16) and b5["masks"].dtype == torch.bool
    maker(3)  # history must not matter
    again = make_batch(cache, CFG, site="h1", step=5, patch_size=8)
    for k in b5:
        assert torch.equal(b5[k], again[k])
    other_site = make_batch(cache, CFG, site="h2", step=5, patch_size=8)
    assert not torch.equal(b5["global"], other_site["global"])
    assert not torch.equal(b5["global"], maker(6)["global"])


def test_center_view_is_deterministic_whole_image():
    img = torch.rand(1, 40, 40)
    v = center_view(img, 32)
    assert v.shape == (1, 32, 32)
    torch.testing.assert_close(v, center_view(img, 32))
