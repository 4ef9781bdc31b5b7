"""A hospital's answer to the coordinator's preflight: every refusal it would make for this round, checked
before any secure-aggregation set-up and before training (issue 22: a release is charged only if it can
leave).

The coordinator asks each hospital it sampled for a round (``query.preflight``, :mod:`client.preflight`)
before the round starts; a hospital that would refuse says why *now*, and the coordinator leaves it out of the
round (and of its secure-aggregation set) or skips the round before anyone trains when too few can take part.
Without this, a hospital with no budget left went through the key exchange and refused only at training,
while the one willing hospital trained and was charged epsilon for a round that could not produce a model.

What :func:`check_round` checks, in the order the training path itself does (so the answer is the same):

1. the app version against ``apps.allowed-versions`` (:func:`~xr0_core.site.refusals.check_bundle`);
2. the coordinator's config hash against this site's run config;
3. the run config against the policy (:func:`~xr0_core.site.policy.negotiate`: DP, accountant, delta, noise,
   secure aggregation required, threshold);
4. a plain round where secure aggregation is asked for (:func:`~xr0_core.site.refusals.check_plain_round`);
5. under DP, the round's privacy cost against the lifetime budget, the per-run cap, the noise cap and the
   privacy unit, with the ledger's own planning (:func:`~xr0_core.privacy.reservation.preview_round`), which
   writes nothing.

The secure-aggregation refusals that need the site's keys (pinned peer keys, one upload per round) are added
by the ClientApp (:mod:`client.preflight`). Nothing here reads pixels: the privacy units come from the
records' patient ids. The answer is a promise of intent, not a reservation: the training message checks
everything again, and reserves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from xr0_core.site.policy import PrivacyTerms, SitePolicy, negotiate


class PreflightError(ValueError):
    """The preflight message does not follow the contract (missing round fields); the message says which."""


@dataclass(frozen=True)
class RoundAsk:
    """What the coordinator announces for a round (the train config's fields, plus whether it is secure)."""

    server_round: int
    global_step: int
    total_steps: int
    local_steps: int
    run_key: str
    config_hash: str
    secure: bool


def check_round(cfg: Any, policy: SitePolicy, state_dir: Path, ask: RoundAsk, *, version: str | None,
                records: Callable[[], Sequence[Any]]) -> PrivacyTerms:
    """Raise the refusal this site would make for the round ``ask``; return the privacy terms it would train under.

    Parameters
    ----------
    cfg : XR0Config
        This site's view of the run config (Flower's run config).
    version : str or None
        The bundle version the hospital's launcher checked (``client/approval.py``; ``None``: no launcher did,
        which an allow-list refuses: :func:`~xr0_core.site.refusals.check_bundle`).
    records : callable
        Returns the site's training records (their patient ids give the privacy units; called only under DP).

    Raises
    ------
    PolicyRefusal, PolicyError
        The policy refuses the run, the app version or a plain round.
    PreflightError
        The coordinator's config hash is not this site's.
    PrivacyBudgetExceeded, NoiseAboveCap, UnitMismatch
        Under DP: the round would pass the budget or the run cap, need noise above the cap, or mix units.
    """
    from xr0_core.site.refusals import check_bundle, check_plain_round

    check_bundle(policy, version)
    if ask.config_hash != cfg.hash():
        raise PreflightError(f"the coordinator's config hash {ask.config_hash} differs from this site's "
                             f"{cfg.hash()}: the site runs another app version or run config")
    terms = negotiate(policy, cfg)
    if not ask.secure:
        check_plain_round(policy, cfg)
    if terms.private:
        preview_private_round(cfg, records(), ask, state_dir, terms)
    return terms


def preview_private_round(cfg: Any, records: Sequence[Any], ask: RoundAsk, state_dir: Path, terms: PrivacyTerms):
    """The reservation this round would make (sigma, epsilon after), with every refusal, written nowhere."""
    from xr0_core.privacy.private_round import round_request
    from xr0_core.privacy.reservation import preview_round
    from xr0_core.privacy.units import privacy_units

    return preview_round(Path(state_dir), terms, round_request(cfg, privacy_units(records), ask, terms))
