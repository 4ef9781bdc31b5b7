"""One hospital's federated round, composed: policy, training, privacy, what leaves (D3, D4, D14).

``xr0_core.train`` knows nothing of privacy and ``xr0_core.privacy`` nothing of training; this module puts
them together in the only order that never under-counts:

1. :func:`~xr0_core.site.policy.negotiate`: the run config meets the site policy; a conflict refuses the
   round before anything else happens.
2. load the global weights and the site's state of this run (nothing is written);
3. private rounds: reserve the release in the ledger (budget, run cap, noise cap, unit checks; charged as
   pending) and give the trainer the DP-SGD step (:class:`~xr0_core.train.stepper.DPStep`) built for it; the
   trainer was built with the DP objective (:func:`site_trainer`);
4. train, then save the local SSL state (the steps it holds are already charged);
5. private rounds: client-level DP, commit the reservation;
6. keep only the metrics the policy lets leave (under DP never losses, timings, the sample rate or the noise
   multiplier; ``num-examples`` is the policy's declared weight, not the site's count).

:func:`run_parallel_site_round` is the same order with steps 2 and 4 on ``W`` data-parallel processes (node config
``gpus``; :mod:`xr0_core.site.launch.parallel`): reservation and commit stay here, once per round.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Mapping

import torch

from xr0_core.site.policy import PolicyRefusal, SitePolicy, negotiate
from xr0_core.train.round_state import RoundSpec, run_local_round, save_round_state, start_round
from xr0_core.train.trainer import SiteTrainer

log = logging.getLogger(__name__)

# ``run_active(fresh)``: is the coordinator's run still running? ``fresh=False`` may answer from a recent check
# (the hospital's client throttles its questions to the SuperLink); None: nobody to ask (simulation).
RunActive = Callable[[bool], bool]


class RunStopped(RuntimeError):
    """The coordinator's run is no longer running (``flwr stop``, or it failed): the hospital stops the round
    and sends nothing; a private round's reservation is withdrawn (nothing left the site, nothing was saved)."""


def ensure_running(run_active: RunActive | None, when: str) -> None:
    """Raise :class:`RunStopped` when ``run_active`` says the run has stopped (asked afresh)."""
    if run_active is not None and not run_active(True):
        raise RunStopped(f"the coordinator's run is no longer running ({when}): this hospital stops the round and "
                         "sends nothing")


def _stop_check(run_active: RunActive | None):
    """A trainer ``on_step`` that ends training at the first check that finds the run stopped."""
    if run_active is None:
        return None

    def on_step(_step: int, _metrics: dict) -> None:
        if not run_active(False):
            raise RunStopped("the coordinator's run stopped during training: this hospital stops the round and "
                             "sends nothing")
    return on_step


def training_objective(cfg):
    """The config the site's SSL model is built from: with ``privacy.enabled`` the DP-compatible objective
    (:func:`xr0_core.privacy.dp.dp_objective_config`: per-sample targets, no KoLeo, no drop-path), else ``cfg``.

    Raises
    ------
    xr0_core.privacy.dp.BatchCoupledLossError
        The run config explicitly chose a batch-coupled term under DP (the message names the alternative).
    """
    if not cfg.privacy.enabled:
        return cfg
    from xr0_core.privacy.dp import dp_objective_config

    return dp_objective_config(cfg)


def site_trainer(cfg, records, **kwargs) -> SiteTrainer:
    """The site's :class:`~xr0_core.train.trainer.SiteTrainer` for ``cfg``, built with :func:`training_objective`
    (``kwargs``: ``site``, ``cache``, ``device``, ``reader`` as ``SiteTrainer`` takes them)."""
    return SiteTrainer(cfg, records, objective=training_objective(cfg), **kwargs)


def run_site_round(trainer, global_weights: Mapping[str, torch.Tensor], spec: RoundSpec, state_dir: Path,
                   policy: SitePolicy, *, progress: bool = False, run_active: RunActive | None = None,
                   ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One local round under the site's policy.

    With ``run_active`` the round asks whether the coordinator's run still runs: before it reserves anything,
    during training (at the trainer's metric syncs, as often as ``run_active`` lets through) and after training,
    before the round's local state is saved or its release committed. A stop ends the round with
    :class:`RunStopped`; under DP the pending reservation is then *withdrawn* (it stops counting: the trained
    weights are dropped, unsaved, and never sent). A stop after the commit cannot be seen here: that release
    counts (the window is the commit and the reply's hand-over to the SuperNode).

    Parameters
    ----------
    trainer : xr0_core.train.trainer.SiteTrainer
        Fresh (no local history yet), from :func:`site_trainer`; under DP its cache holds only the site's
        training patients.
    policy : SitePolicy
        The hospital's policy (:func:`xr0_core.site.state.site_policy`).

    Returns
    -------
    shared : dict[str, Tensor]
        The shared parameter set to send (clipped and noised under client-level DP).
    metrics : dict[str, float]
        Only what the policy lets leave.

    Raises
    ------
    PolicyRefusal, xr0_core.privacy.ledger.PrivacyError
        Before any training (nothing charged, nothing saved).
    RuntimeError
        The trainer was not built with this round's objective (use :func:`site_trainer`).
    """
    terms = negotiate(policy, trainer.cfg)
    if trainer.objective != training_objective(trainer.cfg):
        # A plain-objective model under DP could hold batch-coupled terms or drop-path: no guarantee.
        raise RuntimeError("the site's trainer was built with another objective than this round's (build it "
                           "with xr0_core.site.round.site_trainer)")
    ensure_running(run_active, "before training")
    if not terms.private:
        shared, metrics = run_local_round(trainer, global_weights, spec, state_dir, progress=progress,
                                          on_step=_stop_check(run_active))
        return shared, release_metrics(policy, metrics, private=False)
    from xr0_core.privacy.private_round import reserve_private_round, reserved_dp_step

    start_round(trainer, global_weights, spec, state_dir)
    len(trainer.cache)  # decode now: units come from the kept records
    private = reserve_private_round(trainer.cfg, trainer.cache.kept, spec, state_dir, terms)  # charged from here
    try:
        step = None
        if private.sample_level:
            step = trainer.use_stepper(reserved_dp_step(trainer, private.noise_multiplier, private.sample_rate,
                                                        private.n_units))
        metrics = trainer.train(spec.local_steps, start_step=spec.global_step, total_steps=spec.total_steps,
                                progress=progress, on_step=_stop_check(run_active))
        ensure_running(run_active, "after training, before anything was saved or released")
    except RunStopped as exc:
        # Nothing of this round exists outside this process: the weights were never sent, the local state is
        # not saved (the next round starts from the previous one), so the reservation stops counting.
        private.withdraw(str(exc))
        raise
    save_round_state(trainer, spec, state_dir)
    steps = step.steps if step is not None else 0
    shared, metrics = private.finish(trainer.shared_state_dict(), dict(global_weights), metrics, steps=steps)
    return shared, release_metrics(policy, metrics, private=True)


def run_parallel_site_round(cfg, images, global_weights: Mapping[str, torch.Tensor], spec: RoundSpec,
                            state_dir: Path, policy: SitePolicy, *, site: str, workers: int,
                            progress: bool = False, run_active: RunActive | None = None,
                            ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """:func:`run_site_round` with the training on ``workers`` data-parallel processes (node config ``gpus``).

    Same order and the same single reservation: policy -> process-count check -> (private) reserve once HERE
    -> the ranks load state, train and rank 0 saves it (:func:`xr0_core.site.launch.parallel.launch_round`) ->
    (private) commit once HERE with the steps the ranks ran -> filtered metrics. A failed rank raises
    :class:`~xr0_core.site.launch.parallel.ParallelRoundError` after the reservation: the round stays charged.
    ``run_active`` is asked before the reservation and after the ranks finished; the ranks themselves do not ask
    (rank 0 saves the round's state), so a run that stopped meanwhile is charged anyway, its release noted
    "charged, unused" in the ledger.

    Parameters
    ----------
    images : ImageSource
        The site's training images (``kept`` gives the privacy units); the ranks reopen the same source.
    """
    from xr0_core.site.launch.parallel import check_workers, launch_round

    terms = negotiate(policy, cfg)
    check_workers(cfg, workers, private=terms.private)  # refused before anything is charged
    ensure_running(run_active, "before training")
    if not terms.private:
        shared, metrics, _ = launch_round(cfg, images, global_weights, spec, state_dir, site=site,
                                          workers=workers, progress=progress)
        return shared, release_metrics(policy, metrics, private=False)
    from xr0_core.privacy.private_round import reserve_private_round

    len(images)  # decode now: units come from the kept records
    private = reserve_private_round(cfg, images.kept, spec, state_dir, terms)  # charged from here on
    dp = {"noise_multiplier": private.noise_multiplier, "sample_rate": private.sample_rate,
          "n_units": private.n_units} if private.sample_level else None
    shared, metrics, steps = launch_round(cfg, images, global_weights, spec, state_dir, site=site, workers=workers,
                                          dp=dp, progress=progress)
    try:
        ensure_running(run_active, "after training on the data-parallel ranks")
    except RunStopped as exc:
        private.charge_unused(str(exc))  # rank 0 saved the round's state: what it learnt stays at the site
        raise
    shared, metrics = private.finish(shared, dict(global_weights), metrics, steps=steps)
    return shared, release_metrics(policy, metrics, private=True)


def release_metrics(policy: SitePolicy, metrics: Mapping[str, float], *, private: bool) -> dict[str, float]:
    """The training metrics that may leave: the policy's allow-list, narrowed under DP (see
    :data:`~xr0_core.site.policy.DP_SAFE_TRAIN_METRICS`). Under DP ``num-examples`` (the weight in the
    federated mean) is the policy's ``release.declared-examples`` (1 when 0), a constant chosen by the
    hospital, so the reply does not reveal how many patients it has; ``epsilon`` leaves as the policy's
    ``release.epsilon`` says (:func:`release_epsilon`)."""
    out = {k: float(v) for k, v in metrics.items() if policy.train_metric_allowed(k, private)}
    if private:
        out["num-examples"] = float(policy.release.declared_examples or 1)
    out = release_epsilon(policy, out)
    kept = sorted(set(metrics) - set(out))
    if kept:
        log.info("metrics kept at the site by its policy: %s", ", ".join(kept))
    return out


EPSILON_WITHHELD = "epsilon-withheld"  # metric 1.0: this site spent privacy budget but does not say how much


EPSILON_METRICS = ("epsilon", "epsilon-run")  # spent over every run / over this run: released alike


def release_epsilon(policy: SitePolicy, metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` with ``epsilon`` (and ``epsilon-run``, this run's share) as the policy's ``release.epsilon``
    lets them leave.

    ``rounded`` (default): rounded *up* to a multiple of ``release.epsilon-step`` (0.1), so the report never
    shows less than was spent while the exact value, which under a calibrated noise multiplier follows the
    site's patient count (N = 1000 -> 2.494, N = 1010 -> 2.507), stays at the site; ``exact``: as the ledger
    has it; ``withheld``: no epsilon at all but :data:`EPSILON_WITHHELD` = 1, so the coordinator's
    report can say "withheld" rather than "no DP".
    """
    out = dict(metrics)
    if "epsilon" not in out:
        return out
    mode = policy.release.epsilon
    for name in EPSILON_METRICS:
        if name not in out:
            continue
        if mode == "withheld":
            del out[name]
            out[EPSILON_WITHHELD] = 1.0
        elif mode == "rounded":
            eps, step = float(out[name]), float(policy.release.epsilon_step)
            if math.isfinite(eps):
                # 1e-9: an epsilon already on the grid (2.5) stays there instead of rising by float noise
                out[name] = round(math.ceil(eps / step - 1e-9) * step, 9)
    return out


COUNT_SUFFIXES = ("num-examples", "/units")  # evaluation metrics that count this site's images or patients


def release_eval_metrics(policy: SitePolicy, metrics: Mapping[str, float], *, private: bool) -> dict[str, float]:
    """The evaluation metrics that may leave: the policy's ``release.eval-metrics``; under DP (the evaluation
    then runs on held-out patients) no timing (``*-seconds``) and no count: every count metric
    (:data:`COUNT_SUFFIXES`) becomes ``release.declared-examples`` (1 when 0), except 0, which says "nothing to
    evaluate" and is kept. ``partition-id`` (simulation only) always leaves."""
    declared = float(policy.release.declared_examples or 1)
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name != "partition-id" and not policy.eval_metric_allowed(name):
            continue
        if private and name.endswith("-seconds"):
            continue
        if private and name.endswith(COUNT_SUFFIXES) and float(value) != 0:
            value = declared
        out[name] = value
    kept = sorted(set(metrics) - set(out))
    if kept:
        log.info("evaluation metrics kept at the site by its policy: %s", ", ".join(kept))
    return out


def check_evaluation(policy: SitePolicy, cfg, state_dir: Path) -> bool:
    """May this site answer an evaluation request now? Returns whether evaluation is private (DP run).

    Raises
    ------
    PolicyRefusal
        Evaluation is off in the policy, or the run is private and the site's budget is spent and the policy
        does not allow evaluation after that (``evaluation.after-budget-spent``).
    """
    if not policy.evaluation.enabled:
        raise PolicyRefusal("site policy: this hospital does not take part in federated evaluation "
                            "(evaluation.enabled = false)")
    terms = negotiate(policy, cfg)
    if not terms.private:
        return False
    if not policy.evaluation.after_budget_spent and budget_spent(policy, terms.delta, state_dir):
        raise PolicyRefusal("site policy: this hospital's privacy budget is spent, and its policy does not allow "
                            "evaluation after that (evaluation.after-budget-spent = false)")
    return True


SPENT_FRACTION = 0.99  # epsilon at 99 % of the budget leaves no room for a useful round: "spent"


def budget_spent(policy: SitePolicy, delta: float, state_dir: Path) -> bool:
    """Whether epsilon spent (pending releases included) has reached 99 % of the lifetime budget."""
    from xr0_core.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(state_dir)
    if policy.privacy.budget is None or not ledger.exists():
        return False
    eps = ledger.epsilon(delta=delta, accountant=policy.privacy.accountant)
    return math.isinf(eps) or eps >= SPENT_FRACTION * policy.privacy.budget
