"""Opacus's DP optimizer for one rank of a site's data-parallel group (D3, D16).

The mechanism is unchanged from one process (:class:`xr0_core.train.stepper.DPStep`): per step, the sum over the sampled
units of their gradients clipped to norm C, plus ONE draw of ``N(0, (sigma C)^2 I)``, divided by the expected
batch size ``q * n_units``. Spread over ``W`` ranks, each holding a share of the sampled units:

1. clip and sum this rank's units (Opacus ``clip_and_accumulate``; an empty share sums to zero);
2. rank 0 adds the noise to its partial sum; the other ranks add nothing;
3. one all-reduce SUM over ranks of the flattened partial sums: every rank now holds the same
   ``sum of all clipped unit gradients + one noise draw``;
4. divide by ``q * n_units`` (Opacus ``scale_grad``, global expected batch size) and step the wrapped AdamW,
   identically on every rank.

Why the noise is drawn on rank 0 before the all-reduce, rather than by an identical generator on every rank
after it: the one all-reduce then carries both the sum and the noise (no extra broadcast), the noise
generator's secret state exists in one process only, and no rank relies on another device producing the same
Gaussian bits from a shared seed. Opacus's ``DistributedDPOptimizer`` makes the same choice; it reduces
parameter by parameter and rescales by a per-rank batch size, this class reduces once, coalesced.

References: Abadi et al., "Deep Learning with Differential Privacy" (2016); Opacus
``optimizers/ddpoptimizer.py`` (``DistributedDPOptimizer``).
"""

from __future__ import annotations

from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _mark_as_processed

from xr0_core.train.distributed import DistContext, all_reduce_sum_


class RankDPOptimizer(DPOptimizer):
    """:class:`~opacus.optimizers.DPOptimizer` of one rank: noise once (rank 0), one all-reduce SUM.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The rank's AdamW (identical on every rank).
    dist : DistContext
    **kwargs
        As ``DPOptimizer``; ``expected_batch_size`` is the GLOBAL ``q * n_units``.

    Attributes
    ----------
    noise_draws : int
        Noise draws made by this rank (steps on rank 0, 0 elsewhere): the count a test sums over ranks.
    """

    def __init__(self, optimizer, *, dist: DistContext, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.dist = dist
        self.noise_draws = 0

    def add_noise(self) -> None:
        """Steps 2-3 of the module docstring: ``p.grad`` = all ranks' clipped sums + rank 0's one noise draw."""
        if self.dist.is_main:
            super().add_noise()  # p.grad = summed_grad + N(0, (sigma C)^2)
            self.noise_draws += 1
        else:
            for p in self.params:
                p.grad = p.summed_grad.view_as(p).clone()
                _mark_as_processed(p.summed_grad)
        all_reduce_sum_([p.grad for p in self.params], self.dist)
