"""Per-unit gradients of the SSL objective: what DP-SGD clips (D3).

A *unit* is a group of images whose contribution is clipped together (under DP: a patient, or one image;
the caller groups them, :mod:`xr0_core.privacy.units`). The gradient of unit ``u`` is the gradient of the mean
loss of its images, over every view and crop of them. Both routes differentiate the one objective of the
model (:meth:`~xr0_core.ssl.method.XR0SSL.student_losses`, through ``forward`` or ``sample_loss``); none holds
loss code of its own:

- ``"vmap"``: the teacher pass once for the batch (:meth:`~xr0_core.ssl.method.XR0SSL.teacher_targets`, laid
  out per sample), then ``torch.func.vmap(grad(model.sample_loss))`` over the images; per-image gradients are
  summed into their unit (``index_add``). One batched pass: the fast route.
- ``"microbatch"``: ``model(unit's images).loss.mean()`` and ``autograd.grad`` per unit. Slow, but exact for
  any model (mXR-0's text tower and decoder); the reference the vmap route is tested against.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from xr0_core.train.loop import trainable_parameters

# The name under which the model sits inside the vmap wrapper, and the parameter names functional_call replaces.
_MODEL = "model"


class _SampleLoss(nn.Module):
    """``forward`` = the model's :meth:`sample_loss` (``functional_call`` can only call ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model.sample_loss(*args)


def _functional_name(name: str) -> str:
    """``trainable_parameters`` name -> its path inside :class:`_SampleLoss`."""
    return f"{_MODEL}.{name}" if name == "mask_token" else f"{_MODEL}.student.{name}"


@contextlib.contextmanager
def unfused_attention(module: nn.Module) -> Iterator[None]:
    """Switch timm attention to its explicit ``q @ k^T`` path while mapping with ``vmap``: PyTorch has no vmap
    batching rule for the fused SDPA kernels (it would fall back to a slow per-sample loop)."""
    changed = [m for m in module.modules() if getattr(m, "fused_attn", False) is True]
    for m in changed:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in changed:
            m.fused_attn = True


def mean_weights(image_slot: torch.Tensor, n_units: int) -> torch.Tensor:
    """``[B]``: 1 / (images of the unit) for each image, so a unit's gradient is the mean over its images."""
    counts = torch.zeros(n_units).index_add_(0, image_slot.cpu(), torch.ones(image_slot.numel()))
    return (1.0 / counts.clamp(min=1.0))[image_slot.cpu()]


def per_unit_grads_vmap(model, batch: Mapping[str, torch.Tensor], image_slot: torch.Tensor, n_units: int,
                        teacher_temp: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-unit gradients through ``torch.func`` (one batched pass).

    Parameters
    ----------
    model : XR0SSL
        With a per-sample objective (the caller checks; a batch-coupled term would not be one unit's alone).
    batch : dict
        ``global`` [B, G, 1, S, S], ``local`` [B, L, 1, s, s], ``masks`` bool [B, G, N].
    image_slot : LongTensor [B]
        Unit (``0 .. n_units-1``) of each image.
    teacher_temp : float

    Returns
    -------
    grads : dict name -> Tensor [U, *param.shape]
        Gradient of each unit's mean image loss (keys of ``trainable_parameters``).
    unit_loss : Tensor [U]
    """
    from torch.func import functional_call, grad_and_value, vmap

    params = trainable_parameters(model)
    fn = _SampleLoss(model)
    inner = {_functional_name(k): p.detach() for k, p in params.items()}
    glob, masks = batch["global"], batch["masks"].bool()
    rows = model.teacher_targets(glob, masks, teacher_temp, per_sample=True)

    def loss_of(p, *sample):
        return functional_call(fn, p, sample)

    with unfused_attention(model.student):
        g_img, loss_img = vmap(grad_and_value(loss_of), in_dims=(None, 0, 0, 0, 0, 0, 0, 0),
                               randomness="different")(
            inner, glob, batch["local"], masks, rows.cls, rows.patch, rows.patch_index, rows.patch_weight)
    weight = mean_weights(image_slot, n_units)  # [B]
    grads = {}
    for k in params:
        gi = g_img[_functional_name(k)]
        w = weight.to(device=gi.device, dtype=gi.dtype).reshape(-1, *([1] * (gi.ndim - 1)))
        grads[k] = gi.new_zeros((n_units, *gi.shape[1:])).index_add_(0, image_slot.to(gi.device), gi * w)
    unit_loss = loss_img.new_zeros(n_units).index_add_(0, image_slot.to(loss_img.device),
                                                        loss_img.detach() * weight.to(loss_img.device))
    return grads, unit_loss


def per_unit_grads_microbatch(model, batch: Mapping[str, torch.Tensor], image_slot: torch.Tensor, n_units: int,
                              teacher_temp: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-unit gradients by one forward/backward per unit (same outputs as :func:`per_unit_grads_vmap`)."""
    params = trainable_parameters(model)
    names, plist = list(params), list(params.values())
    grads = {k: torch.zeros((n_units, *p.shape), device=p.device, dtype=p.dtype) for k, p in params.items()}
    losses = torch.zeros(n_units)
    for u in range(n_units):
        rows = torch.nonzero(image_slot == u).flatten()
        sub = {k: v[rows.to(v.device)] for k, v in batch.items() if k != "index"}  # mXR-0: report tokens too
        loss = model(sub, teacher_temp).loss.float().mean()
        gs = torch.autograd.grad(loss, plist, allow_unused=True)
        for k, gk in zip(names, gs):
            if gk is not None:
                grads[k][u] = gk
        losses[u] = float(loss.detach())
    return grads, losses


GradRoute = Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]]
GRAD_ROUTES: dict[str, GradRoute] = {"vmap": per_unit_grads_vmap, "microbatch": per_unit_grads_microbatch}
