"""Registry-wide check of every loss's declared coupling (D3, STYLE 2), plus loss-specific behaviour."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from xr0_core.ssl.losses import LOSSES, load_all
from xr0_core.ssl.losses.centering import TeacherCentering

load_all()
B, K = 6, 32


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class Case:
    """Inputs of one loss for a batch, and how to take sample i of them (or perturb sample j)."""

    def __init__(self, make: Callable[[], torch.nn.Module], inputs: Callable[[torch.Generator], dict],
                 select: Callable[[dict, list[int]], dict],
                 perturb: Callable[[dict, int], dict] | None = None) -> None:
        self.make, self.inputs, self.select = make, inputs, select
        self.perturb = perturb or _perturb_features


def _dino_inputs(g: torch.Generator) -> dict:
    loss = LOSSES.get("dino")(K)
    teacher = loss.softmax_center_teacher(torch.randn(B, 2, K, generator=g) * 3, 0.05)
    return {"student_logits": torch.randn(B, 5, K, generator=g), "teacher_probs": teacher}


def _dino_select(x: dict, rows: list[int]) -> dict:
    return {k: v[rows] for k, v in x.items()}


def _ibot_inputs(g: torch.Generator) -> dict:
    counts = [3, 0, 5, 1, 2, 4]  # sample 1 has no masked token
    token_sample = torch.repeat_interleave(torch.arange(B), torch.tensor(counts))
    m = token_sample.numel()
    teacher = torch.softmax(torch.randn(m, K, generator=g) / 0.1, dim=-1)
    return {"student_logits": torch.randn(m, K, generator=g), "teacher_probs": teacher,
            "token_sample": token_sample, "batch_size": B}


def _ibot_select(x: dict, rows: list[int]) -> dict:
    keep = torch.isin(x["token_sample"], torch.tensor(rows))
    remap = {r: i for i, r in enumerate(rows)}
    ts = torch.tensor([remap[int(s)] for s in x["token_sample"][keep]], dtype=torch.long)
    return {"student_logits": x["student_logits"][keep], "teacher_probs": x["teacher_probs"][keep],
            "token_sample": ts, "batch_size": len(rows)}


def _koleo_inputs(g: torch.Generator) -> dict:
    return {"features": torch.randn(B, 16, generator=g)}


def _perturb_features(x: dict, j: int) -> dict:
    y = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in x.items()}
    y["features"][j] = y["features"][(j + 1) % B] + 1e-3  # make j the nearest neighbour of j+1
    return y


def _pair_inputs(g: torch.Generator) -> dict:
    return {"image": torch.randn(B, 8, generator=g), "text": torch.randn(B, 8, generator=g),
            "logit_scale": torch.tensor(2.0)}


def _pair_select(x: dict, rows: list[int]) -> dict:
    return {k: (v[rows] if k in ("image", "text") else v) for k, v in x.items()}


def _perturb_text(x: dict, j: int) -> dict:
    y = dict(x)
    y["text"] = x["text"].clone()
    y["text"][j] = torch.randn(8)  # another report in the batch = another negative
    return y


def _caption_inputs(g: torch.Generator) -> dict:
    valid = torch.ones(B, 7)
    valid[1] = 0  # an image without a report
    valid[2, 4:] = 0  # a shorter report
    return {"logits": torch.randn(B, 7, 11, generator=g), "target": torch.randint(0, 11, (B, 7), generator=g),
            "valid": valid}


CASES = {
    "dino": Case(lambda: LOSSES.get("dino")(K), _dino_inputs, _dino_select),
    "ibot": Case(lambda: LOSSES.get("ibot")(K), _ibot_inputs, _ibot_select),
    "koleo": Case(lambda: LOSSES.get("koleo")(), _koleo_inputs, _dino_select),
    "clip": Case(lambda: LOSSES.get("clip")(), _pair_inputs, _pair_select, _perturb_text),
    "siglip": Case(lambda: LOSSES.get("siglip")(), lambda g: {**_pair_inputs(g), "logit_bias": torch.tensor(-1.0)},
                   _pair_select, _perturb_text),
    "caption": Case(lambda: LOSSES.get("caption")(), _caption_inputs, _dino_select),
}


def test_every_registered_loss_has_a_coupling_case():
    assert set(CASES) == set(LOSSES.names())


@pytest.mark.parametrize("name", LOSSES.names())
def test_declared_coupling_holds(name: str):
    cls = LOSSES.get(name)
    assert cls.coupling in ("per-sample", "batch")
    assert "Coupling:" in cls.__doc__ and "Shapes:" in cls.__doc__ and "References:" in cls.__doc__
    case = CASES[name]
    loss_fn = case.make()
    x = case.inputs(_gen(0))
    full = loss_fn(**x)
    assert full.shape == (B,) and torch.isfinite(full).all()
    if cls.coupling == "per-sample":
        for i in range(B):
            alone = loss_fn(**case.select(x, [i]))
            torch.testing.assert_close(alone[0], full[i], rtol=1e-5, atol=1e-6)
    else:
        # Batch-coupled: some sample's loss changes when *another* sample changes.
        changed = False
        for j in range(B):
            other = loss_fn(**case.perturb(x, j))
            mask = torch.ones(B, dtype=torch.bool)
            mask[j] = False
            changed |= not torch.allclose(other[mask], full[mask])
        assert changed, f"{name} declares batch coupling but no sample depends on another"


def test_dino_loss_skips_same_view_pairs_and_is_minimal_when_student_matches():
    loss = LOSSES.get("dino")(K, student_temp=1.0)
    t_logits = torch.randn(2, 2, K)
    probs = loss.softmax_center_teacher(t_logits, 1.0)
    # Student views 0 and 1 swapped: each global view's *other* view matches the teacher exactly.
    student = torch.stack([t_logits[:, 1], t_logits[:, 0]], dim=1)
    matched = loss(student, probs)
    entropy = -(probs * probs.log()).sum(-1).mean(-1)  # CE >= entropy, equality when distributions match
    torch.testing.assert_close(matched, entropy)
    assert (loss(torch.randn(2, 2, K), probs) > matched).all()


def test_ibot_sample_without_masked_tokens_has_zero_loss():
    x = _ibot_inputs(_gen(1))
    out = LOSSES.get("ibot")(K)(**x)
    assert out[1] == 0 and (out[[0, 2, 3, 4, 5]] > 0).all()


def test_koleo_rewards_spread_features():
    koleo = LOSSES.get("koleo")()
    spread = torch.eye(4)
    clumped = torch.eye(4) * 0.01 + torch.tensor([1.0, 0, 0, 0])
    assert koleo(spread).mean() < koleo(clumped).mean()


def test_ema_centering_moves_toward_batch_mean_and_frozen_mode_waits_for_commit():
    ema = TeacherCentering(4, momentum=0.9, mode="ema")
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    ema.update_center(logits)
    torch.testing.assert_close(ema.center, 0.1 * logits.mean(0))

    frozen = TeacherCentering(4, momentum=0.9, mode="frozen-per-round")
    before = frozen.softmax_center_teacher(logits, 0.1)
    frozen.accumulate_center_stats(logits)
    frozen.accumulate_center_stats(logits * 2)
    torch.testing.assert_close(frozen.softmax_center_teacher(logits, 0.1), before)  # unchanged within a round
    with pytest.raises(RuntimeError):
        frozen.update_center(logits)
    frozen.commit_center()
    torch.testing.assert_close(frozen.center, torch.cat([logits, logits * 2]).mean(0))
    assert float(frozen.stat_count) == 0
    frozen.commit_center(torch.zeros(4))  # a federation-aggregated mean wins
    assert frozen.center.abs().sum() == 0
    assert ema.target_coupling == "batch" and frozen.target_coupling == "per-sample"


def test_sinkhorn_targets_are_distributions_that_use_prototypes_equally():
    from xr0_core.ssl.losses.centering import sinkhorn_knopp

    logits = torch.randn(8, 2, 4) + torch.tensor([3.0, 0, 0, 0])  # prototype 0 dominates before balancing
    q = sinkhorn_knopp(logits, 0.5, n_iterations=50)
    assert q.shape == logits.shape
    torch.testing.assert_close(q.sum(-1), torch.ones(8, 2), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(q.reshape(-1, 4).mean(0), torch.full((4,), 0.25), rtol=1e-2, atol=1e-2)
    sk = TeacherCentering(4, mode="sinkhorn")
    assert sk.target_coupling == "batch"
    # Batch-coupled: changing another row changes row 0's target.
    other = logits.clone()
    other[5] += 5.0
    assert not torch.allclose(sk.softmax_center_teacher(other, 0.5)[0], sk.softmax_center_teacher(logits, 0.5)[0])


def _fit(loss_of, params, steps=60, lr=0.05):
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_of().mean()
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, float(loss_of().mean())


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contrastive_losses_decrease_on_synthetic_pairs_and_align_them(name):
    """Images and reports are two noisy views of 5 latent findings; linear projections trained with the loss
    bring each image closest to a report of the same finding."""
    g = _gen(3)
    latent = torch.randn(5, 6, generator=g)
    which = torch.arange(20) % 5
    img = latent[which] @ torch.randn(6, 16, generator=g) + 0.1 * torch.randn(20, 16, generator=g)
    txt = latent[which] @ torch.randn(6, 12, generator=g) + 0.1 * torch.randn(20, 12, generator=g)
    same = which[:, None] == which[None]
    torch.manual_seed(0)
    pi, pt = torch.nn.Linear(16, 8), torch.nn.Linear(12, 8)
    scale = torch.nn.Parameter(torch.tensor(1.0))
    bias = torch.nn.Parameter(torch.tensor(-1.0))
    loss = LOSSES.get(name)()
    extra = (bias,) if name == "siglip" else ()
    first, last = _fit(lambda: loss(pi(img), pt(txt), scale, *extra, same=same),
                       [*pi.parameters(), *pt.parameters(), scale, *extra])
    assert last < 0.5 * first
    sim = torch.nn.functional.normalize(pi(img), dim=-1) @ torch.nn.functional.normalize(pt(txt), dim=-1).t()
    assert (which[sim.argmax(1)] == which).float().mean() == 1.0


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_caption_loss_decreases_on_synthetic_pairs():
    """A tiny decoder learns to emit the report token sequence of each image's finding."""
    from xr0_core.models.caption import CaptionDecoder

    g = _gen(4)
    words = torch.randn(20, 8, generator=g)
    reports = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0], [1, 10, 11, 12, 2]])
    valid = reports[:, 1:] != 0
    memory = torch.randn(3, 4, 16, generator=g)
    torch.manual_seed(0)
    dec = CaptionDecoder(16, 8, 16, 1, 8)
    loss = LOSSES.get("caption")()
    first, last = _fit(lambda: loss(dec(memory, reports[:, :-1], words), reports[:, 1:], valid), dec.parameters(),
                       steps=120, lr=0.01)
    assert last < 0.2 * first
    out = dec.generate(memory, words, bos=1, eos=2, pad=0, max_len=6)
    assert out[0, :4].tolist() == [5, 6, 7, 2] and out[1, :3].tolist() == [8, 9, 2]
