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


@dataclass
class TeacherTargets:
    """Teacher-side targets of one batch (no grad), computed by :meth:`XR0SSL.teacher_targets`.

    Batch layout: the masked tokens of all samples gathered, M in total. Per-sample layout (in brackets): each
    sample's masked tokens padded to Mx, the largest count in the batch (at least 1).

    Attributes
    ----------
    cls : Tensor [B, G, K]
        DINO targets of each global view.
    patch : Tensor [M, K2] ([B, Mx, K2])
        iBOT targets of the masked tokens.
    patch_index : long Tensor [M] ([B, Mx])
        Position of each masked token in the B*G*N student patch tokens, row-major over [B, G, N]
        (in the sample's G*N tokens).
    patch_sample : long Tensor [M] (None)
        Sample of each masked token.
    patch_weight : Tensor [M] ([B, Mx])
        1 for a real token, 0 for padding.
    raw_cls, raw_patch : Tensor [B, G, K], [M, K2] (None)
        Raw teacher logits, for the center update after the step.
    """

    cls: torch.Tensor
    patch: torch.Tensor
    patch_index: torch.Tensor
    patch_sample: torch.Tensor | None
    patch_weight: torch.Tensor
    raw_cls: torch.Tensor | None = None
    raw_patch: torch.Tensor | None = None


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
        """Per-sample losses of one batch: :meth:`teacher_targets`, then :meth:`student_losses`.

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
        targets = self.teacher_targets(glob, masks, teacher_temp)
        loss, parts, s_tok = self.student_losses(glob, loc, masks, targets)
        b, g = glob.shape[:2]
        return SSLOutput(loss=loss, parts=parts, teacher={"dino": targets.raw_cls, "ibot": targets.raw_patch},
                         student_tokens=s_tok.reshape(b, g, *s_tok.shape[1:]))

    @torch.no_grad()
    def teacher_targets(self, glob: torch.Tensor, masks: torch.Tensor, teacher_temp: float, *,
                        per_sample: bool = False) -> TeacherTargets:
        """The teacher pass (no grad): DINO targets of every global view, iBOT targets of every masked token.

        Shapes: ``glob`` [B, G, 1, S, S], ``masks`` bool [B, G, N] -> :class:`TeacherTargets`: the masked tokens
        of all samples gathered (``per_sample=False``, what :meth:`forward` uses), or laid out per sample and
        padded (``per_sample=True``, for mapping :meth:`sample_loss` over the batch).
        """
        b, g = glob.shape[:2]
        if g < 1:
            raise ValueError("XR0SSL needs at least one global view")
        gflat = glob.flatten(0, 1)  # [B*G, 1, S, S], sample-major
        mflat = masks.flatten(0, 1).bool()  # [B*G, N]
        n = mflat.shape[1]
        t_tok = forward_tokens(self.teacher["backbone"], gflat)  # [B*G, 1+N, D]
        t_cls = self.teacher["dino_head"](t_tok[:, 0]).reshape(b, g, -1)  # [B, G, K]
        cls = self.dino_loss.softmax_center_teacher(t_cls, teacher_temp)
        if not per_sample:
            # Masked tokens in row-major order over [B*G, N] (as boolean indexing gathers them), and their sample.
            index = torch.nonzero(mflat.reshape(-1)).flatten()  # [M] into the B*G*N patch tokens
            t_patch = self.teacher["ibot_head"](t_tok[:, 1:][mflat])  # [M, K2]
            return TeacherTargets(cls=cls, patch=self.ibot_loss.softmax_center_teacher(t_patch, teacher_temp),
                                  patch_index=index, patch_sample=torch.div(index, g * n, rounding_mode="floor"),
                                  patch_weight=torch.ones(index.shape[0], device=index.device),
                                  raw_cls=t_cls.detach(), raw_patch=t_patch.detach())
        per = mflat.reshape(b, -1)  # [B, G*N]: a sample's tokens over its global views, view-major
        counts = per.sum(dim=1)
        mx = max(int(counts.max()) if b else 0, 1)
        order = torch.argsort((~per).to(torch.int8), dim=1, stable=True)[:, :mx]  # masked positions first
        valid = torch.arange(mx, device=glob.device)[None] < counts[:, None]  # [B, Mx]
        d = t_tok.shape[-1]
        tokens = t_tok[:, 1:].reshape(b, -1, d).gather(1, order[..., None].expand(-1, -1, d))  # [B, Mx, D]
        t_patch = self.teacher["ibot_head"](tokens)  # [B, Mx, K2]; padded rows are weighted 0
        return TeacherTargets(cls=cls, patch=self.ibot_loss.softmax_center_teacher(t_patch, teacher_temp),
                              patch_index=order, patch_sample=None, patch_weight=valid.to(cls.dtype))

    def student_losses(self, glob: torch.Tensor, loc: torch.Tensor | None, masks: torch.Tensor,
                       targets: TeacherTargets) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The student side of the objective: THE loss code of XR-0 (the batch and the per-sample routes).

        Parameters
        ----------
        glob : [B, G, 1, S, S]; loc : [B, L, 1, s, s] or None; masks : bool [B, G, N]
        targets : TeacherTargets in batch layout (``patch_index`` into the B*G*N patch tokens)

        Returns
        -------
        loss : Tensor [B] (weighted total), parts : dict name -> Tensor [B] (unweighted),
        student tokens of the global views : Tensor [B*G, 1+N, D]
        """
        b, g = glob.shape[:2]
        gflat = glob.flatten(0, 1)
        mflat = masks.flatten(0, 1).bool()
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
        parts = {"dino": self.dino_loss(s_logits, targets.cls)}
        patches = s_tok[:, 1:].reshape(-1, s_tok.shape[-1])[targets.patch_index]  # [M, D]
        parts["ibot"] = self.ibot_loss(self.student["ibot_head"](patches), targets.patch, targets.patch_sample, b,
                                       targets.patch_weight)
        if self.koleo_loss is not None:
            parts["koleo"] = torch.stack([self.koleo_loss(s_cls_g[:, i]) for i in range(g)], dim=1).mean(dim=1)
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return loss, parts, s_tok

    def sample_loss(self, glob: torch.Tensor, loc: torch.Tensor, masks: torch.Tensor, cls: torch.Tensor,
                    patch: torch.Tensor, patch_index: torch.Tensor, patch_weight: torch.Tensor) -> torch.Tensor:
        """The loss of ONE sample (all its views): :meth:`student_losses` on a batch of one, written so that
        ``torch.func.vmap`` can map it over the rows of ``teacher_targets(..., per_sample=True)`` (DP's vmap
        route).

        Shapes: ``glob`` [G, 1, S, S], ``loc`` [L, 1, s, s], ``masks`` bool [G, N], ``cls`` [G, K],
        ``patch`` [M, K2], ``patch_index`` long [M] (into the sample's G*N tokens), ``patch_weight`` [M]
        -> scalar. Equal to ``forward(batch).loss[i]`` for per-sample objectives (tests/privacy/test_dp.py).
        """
        row = TeacherTargets(cls=cls[None], patch=patch, patch_index=patch_index,
                             patch_sample=torch.zeros_like(patch_index), patch_weight=patch_weight)
        loss, _, _ = self.student_losses(glob[None], loc[None], masks[None], row)
        return loss[0]

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
