"""The one factory of SSL methods: XR-0 (:class:`~xr0_core.ssl.method.XR0SSL`) or mXR-0
(:class:`~xr0_core.ssl.multimodal.MultimodalXR0`), and the seeded start every site and the server share."""

from __future__ import annotations

import torch

from xr0_core.config import XR0Config
from xr0_core.runtime import derive_seed
from xr0_core.ssl.method import XR0SSL


def build_method(cfg: XR0Config) -> XR0SSL:
    """The SSL method of ``cfg``: :class:`MultimodalXR0` with ``multimodal.enabled``, else :class:`XR0SSL`
    (weights from the caller's torch RNG; :func:`build_model` is the seeded start)."""
    if cfg.multimodal.enabled:
        from xr0_core.ssl.multimodal import MultimodalXR0  # loads the text tower: only when asked for

        return MultimodalXR0(cfg)
    return XR0SSL(cfg)


def build_model(cfg: XR0Config) -> XR0SSL:
    """The SSL model with initial weights from torch seed ``derive_seed(cfg.seed, "init")``: every site and the
    server build the same start. The global torch RNG is forked, so callers' random state is untouched.
    With ``multimodal.enabled`` it is mXR-0's :class:`~xr0_core.ssl.multimodal.MultimodalXR0`;
    ``model.init-from`` (a local backbone, SHA-256 checked) is applied when set."""
    from xr0_core.models.init_from import apply_init_from

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = build_method(cfg)
    apply_init_from(model, cfg.model)  # no-op when model.init-from is unset
    return model


def initial_shared_state(cfg: XR0Config) -> dict[str, torch.Tensor]:
    """The round-0 global weights: the shared parameter set of :func:`build_model` (float32 CPU)."""
    return build_model(cfg).shared_state_dict()
