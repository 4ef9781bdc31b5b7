"""XR-0 image self-supervision: DINO (CLS) + iBOT (masked patches) + optional KoLeo, EMA teacher (D5).

:class:`XR0SSL` owns the student and its twin teacher and *computes* per-sample losses; it never calls
``backward`` or steps anything (STYLE 1): :mod:`xr0_core.train.loop` does, and it is also the only caller of
:meth:`XR0SSL.update_teacher` and :meth:`XR0SSL.update_centers`.

State is sorted by where it lives (STYLE 3, D4):

- :meth:`XR0SSL.shared_state_dict` -- student backbone, both student heads and the mask token: the only
  tensors that leave a site;
- :meth:`XR0SSL.site_state_dict` -- teacher weights and the loss centers: stay at the site.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from xr0_core.config import XR0Config
from xr0_core.models.backbone import build_backbone, forward_tokens, patch_size
from xr0_core.models.ema import ema_update_
from xr0_core.models.heads import DINOHead
from xr0_core.ssl.losses import load_all

MASK_TOKEN = "mask_token"


@dataclass
class SSLOutput:
    """What a forward pass returns.

    Attributes
    ----------
    loss : Tensor [B]
        Per-sample weighted total (``dino_w * dino + ibot_w * ibot + koleo_w * koleo``).
    parts : dict[str, Tensor [B]]
        Unweighted per-sample parts: ``"dino"``, ``"ibot"``, and ``"koleo"`` when its weight is > 0.
    teacher : dict[str, Tensor]
        Detached raw teacher logits (``"dino"`` ``[B, G, K]``, ``"ibot"`` ``[M, K2]``) for the center update
        the loop performs after the step.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    student_tokens: torch.Tensor | None = None  # [B, G, 1+N, D] student tokens of the global views (mXR-0 reuses them)


class XR0SSL(nn.Module):
    """Student / teacher pair with the DINO + iBOT (+ KoLeo) objective.

    Parameters
    ----------
    cfg : XR0Config
        Uses ``cfg.model`` (backbone, head sizes) and ``cfg.ssl`` (weights, temperatures, centering).

    Attributes
    ----------
    student : nn.ModuleDict
        ``backbone`` (timm ViT), ``dino_head``, ``ibot_head``.
    teacher : nn.ModuleDict
        Same keys; ``requires_grad=False``, always in eval mode, updated only by EMA.
    mask_token : nn.Parameter [1, D]
        Replaces masked patch embeddings in the student's global views.
    """

    def __init__(self, cfg: XR0Config) -> None:
        super().__init__()
        losses = load_all()
        m, s = cfg.model, cfg.ssl
        backbone = build_backbone(m)
        dim = backbone.embed_dim
        self.student = nn.ModuleDict({
            "backbone": backbone,
            "dino_head": DINOHead(dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim, m.head_layers),
            "ibot_head": DINOHead(dim, m.ibot_out_dim, m.head_hidden_dim, m.head_bottleneck_dim, m.head_layers),
        })
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = losses.get("dino")(m.head_out_dim, s.student_temp, s.center_momentum, s.centering)
        self.ibot_loss = losses.get("ibot")(m.ibot_out_dim, s.student_temp, s.center_momentum, s.centering)
        self.koleo_loss = losses.get("koleo")() if s.koleo_weight > 0 else None
        self.weights = {"dino": s.dino_weight, "ibot": s.ibot_weight, "koleo": s.koleo_weight}
        self.centering = s.centering
        self.patch_size = patch_size(backbone)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "XR0SSL":
        super().train(mode)
        self.teacher.eval()  # the teacher never uses dropout / drop-path
        return self

    @property
    def coupling(self) -> str:
        """``"batch"`` if any active term or target is batch-coupled (KoLeo, EMA centering), else per-sample."""
        if self.koleo_loss is not None or self.centering != "frozen-per-round":
            return "batch"
        return "per-sample"

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, torch.Tensor], teacher_temp: float) -> SSLOutput:
        """Per-sample losses of one batch.

        Parameters
        ----------
        batch : dict
            ``"global"`` [B, G, 1, S, S], ``"local"`` [B, L, 1, s, s] (L may be 0),
            ``"masks"`` bool [B, G, N] with N = (S / patch)^2.
        teacher_temp : float
            Teacher temperature of this step (``Schedules.teacher_temp[step]``).

        Returns
        -------
        SSLOutput
        """
        glob, loc, masks = batch["global"], batch.get("local"), batch["masks"]
        b, g = glob.shape[:2]
        if g < 1:
            raise ValueError("XR0SSL needs at least one global view")
        gflat = glob.flatten(0, 1)  # [B*G, 1, S, S], sample-major
        mflat = masks.flatten(0, 1).bool()  # [B*G, N]
        # Which sample each masked token belongs to (row-major over [B*G, N], matching boolean indexing).
        token_sample = (torch.arange(b * g, device=glob.device) // g).unsqueeze(1).expand_as(mflat)[mflat]

        with torch.no_grad():
            t_tok = forward_tokens(self.teacher["backbone"], gflat)  # [B*G, 1+N, D]
            t_cls = self.teacher["dino_head"](t_tok[:, 0]).reshape(b, g, -1)  # [B, G, K]
            t_patch = self.teacher["ibot_head"](t_tok[:, 1:][mflat])  # [M, K2]
            t_cls_p = self.dino_loss.softmax_center_teacher(t_cls, teacher_temp)
            t_patch_p = self.ibot_loss.softmax_center_teacher(t_patch, teacher_temp)

        backbone = self.student["backbone"]
        s_tok = forward_tokens(backbone, gflat, mflat, self.mask_token)  # [B*G, 1+N, D]
        s_cls_g = s_tok[:, 0].reshape(b, g, -1)
        cls_views = [s_cls_g]
        if loc is not None and loc.shape[1] > 0:
            n_loc = loc.shape[1]
            l_tok = forward_tokens(backbone, loc.flatten(0, 1))  # [B*L, 1+n, D]
            cls_views.append(l_tok[:, 0].reshape(b, n_loc, -1))
        s_cls = torch.cat(cls_views, dim=1)  # [B, V, D], globals first
        s_logits = self.student["dino_head"](s_cls)  # [B, V, K]
        parts = {"dino": self.dino_loss(s_logits, t_cls_p)}
        s_patch = self.student["ibot_head"](s_tok[:, 1:][mflat])  # [M, K2]
        parts["ibot"] = self.ibot_loss(s_patch, t_patch_p, token_sample, b)
        if self.koleo_loss is not None:
            parts["koleo"] = torch.stack([self.koleo_loss(s_cls_g[:, i]) for i in range(g)], dim=1).mean(dim=1)
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return SSLOutput(loss=loss, parts=parts, teacher={"dino": t_cls.detach(), "ibot": t_patch.detach()},
                         student_tokens=s_tok.reshape(b, g, *s_tok.shape[1:]))

    # ------------------------------------------------------------------ updates (called by the loop only)
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        ema_update_(self.teacher, self.student, momentum)

    @torch.no_grad()
    def update_centers(self, out: SSLOutput) -> None:
        """EMA centering: update from this step's teacher logits; frozen-per-round: accumulate statistics;
        sinkhorn: nothing."""
        for name, loss in (("dino", self.dino_loss), ("ibot", self.ibot_loss)):
            logits = out.teacher[name]
            if self.centering == "ema":
                if logits.numel():
                    loss.update_center(logits)
            elif self.centering == "frozen-per-round":
                loss.accumulate_center_stats(logits)
            # sinkhorn: targets come from the batch itself, no center to move

    @torch.no_grad()
    def commit_centers(self) -> None:
        """Round boundary in frozen-per-round mode: centers := means accumulated during the round."""
        if self.centering != "frozen-per-round":
            return
        self.dino_loss.commit_center()
        self.ibot_loss.commit_center()

    @torch.no_grad()
    def reset_teacher_from_student(self) -> None:
        """Teacher := copy of the student (first round, before any EMA history exists)."""
        self.teacher.load_state_dict(self.student.state_dict())

    # ------------------------------------------------------------------ state
    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        """The shared parameter set (D4): student backbone + heads + mask token, float32 CPU, sorted keys."""
        sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.student.state_dict().items()}
        sd[MASK_TOKEN] = self.mask_token.detach().to("cpu", torch.float32).clone()
        return dict(sorted(sd.items()))

    def shared_keys(self) -> dict[str, tuple[int, ...]]:
        """Expected key -> shape of :meth:`shared_state_dict` (for validation of incoming weights)."""
        shapes = {k: tuple(v.shape) for k, v in self.student.state_dict().items()}
        shapes[MASK_TOKEN] = tuple(self.mask_token.shape)
        return dict(sorted(shapes.items()))

    @torch.no_grad()
    def load_shared_state_dict(self, sd: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load shared weights into the student (and mask token).

        Raises
        ------
        ValueError
            Missing or unexpected keys (with ``strict``), a shape mismatch, or a non-floating tensor;
            the message names the first offending keys.
        """
        expected = self.shared_keys()
        missing = sorted(set(expected) - set(sd))
        extra = sorted(set(sd) - set(expected))
        if strict and (missing or extra):
            raise ValueError(f"shared weights do not match the model: missing {missing[:5]} "
                             f"({len(missing)}), unexpected {extra[:5]} ({len(extra)}); same preset/config?")
        bad = [f"{k}: got {tuple(sd[k].shape)}, expected {expected[k]}"
               for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
        if bad:
            raise ValueError(f"shared weights have wrong shapes: {'; '.join(bad[:5])}")
        not_float = [k for k in expected if k in sd and not torch.as_tensor(sd[k]).is_floating_point()]
        if not_float:
            raise ValueError(f"shared weights must be floating point: {not_float[:5]}")
        student_sd = {k: torch.as_tensor(sd[k]) for k in expected if k in sd and k != MASK_TOKEN}
        # Keys were checked against shared_keys() above; a subclass may keep student tensors that never travel
        # (mXR-0's frozen text tower), so the module-level load itself is not strict.
        self.student.load_state_dict(student_sd, strict=False)
        if MASK_TOKEN in sd:
            self.mask_token.copy_(torch.as_tensor(sd[MASK_TOKEN]))

    def site_state_dict(self) -> dict[str, torch.Tensor]:
        """Teacher weights and loss centers (stay at the site), CPU tensors."""
        sd = {f"teacher.{k}": v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
        for name, loss in (("dino", self.dino_loss), ("ibot", self.ibot_loss)):
            for k, v in loss.state_dict().items():
                sd[f"{name}_loss.{k}"] = v.detach().cpu().clone()
        return sd

    @torch.no_grad()
    def load_site_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.site_state_dict())
        missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
        if missing or extra:
            raise ValueError(f"site state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        self.teacher.load_state_dict({k[len("teacher."):]: v for k, v in sd.items() if k.startswith("teacher.")})
        for name, loss in (("dino", self.dino_loss), ("ibot", self.ibot_loss)):
            prefix = f"{name}_loss."
            loss.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
