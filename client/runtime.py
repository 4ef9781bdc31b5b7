"""The hospital's work behind the Flower handlers: index data once per process, run a local round, evaluate.

A Flower SuperNode (or a Ray actor in simulation) may serve many rounds, and in simulation many hospitals,
from one process. Decoded images are cached per hospital in this process (bounded LRU) because decoding
DICOMs dominates otherwise; everything that must be *correct* across rounds (teacher, optimizer, step) is
read from the site's state folder each round instead (xr0_core/train/round_state.py), so which process serves
which hospital never changes a result.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from xr0_core.config import XR0Config

from .records import RoundInstruction
from .site import Site

log = logging.getLogger(__name__)

MAX_CACHED_SITES = 4  # per process: 100 virtual hospitals on 24 GB must not keep every image decoded


@dataclass
class SiteData:
    records: list[Any]  # usable SiteRecords
    cache: Any  # xr0_core.data.source.ImageSource over the training records (see site_data)


_SITES: "OrderedDict[tuple, SiteData]" = OrderedDict()


def site_data(cfg: XR0Config, site: Site, *, private: bool = False, canaries: int = 0) -> SiteData:
    """Index (once per process) and cache the hospital's training images; unusable files are skipped.

    Training records are ``split != test``; under DP (``private``) also without the patients held out by
    :func:`xr0_core.data.splits.private_partition` (keyed by the site's stable id), so that evaluation
    under DP only ever sees patients never used in training. With ``canaries`` (the policy's
    ``privacy.audit-canaries``) the canary patients whose secret coin is False are left out too
    (:mod:`xr0_core.audit.canaries`; the coins are drawn once, at the first call, and kept in the state folder).
    """
    key = (str(site.data_dir), str(site.manifest), cfg.train.load_size, private, canaries)
    if key in _SITES:
        _SITES.move_to_end(key)
        return _SITES[key]
    from xr0_core.data.dataset import ssl_records
    from xr0_core.data.index import index_site
    from xr0_core.data.source import open_site_images

    # Headers only: the cache decodes every image anyway and skips (and logs) the ones that fail.
    index = index_site(site.data_dir, site.manifest, verify_pixels=False)
    if index.skipped:
        log.warning("site %s: %d files skipped (run `xr0 site check` for reasons)", site.name, len(index.skipped))
    train = private_training_records(index.records, site) if private else ssl_records(index.records)
    if canaries:
        from xr0_core.audit.canaries import ensure_canaries, without_left_out

        train = without_left_out(train, ensure_canaries(site.state_dir, train, canaries))
    # In RAM for small sites, else the prepared shards in the state folder (train.image-cache; D16).
    images = open_site_images(cfg, train, site.state_dir, data_dir=site.data_dir, prepare_records=index.records)
    data = SiteData(index.records, images)
    _SITES[key] = data
    evict_sites(MAX_CACHED_SITES, cfg.simulation.site_cache_mb * 2**20)
    return data


def cached_bytes(data: SiteData) -> int:
    """RAM held by a hospital's decoded images (memory-mapped prepared shards: 0, the OS pages them out)."""
    images = getattr(data.cache, "_images", None)
    return int(images.numel() * images.element_size()) if isinstance(images, torch.Tensor) else 0


def evict_sites(max_sites: int, max_bytes: int) -> None:
    """Forget the least recently used hospitals until at most ``max_sites`` with at most ``max_bytes`` of
    decoded images are cached in this process; the newest always stays (it is the one in use). The per-actor
    memory bound of a large simulated federation: one Ray actor serves hundreds of hospitals in turn."""
    while len(_SITES) > 1 and (len(_SITES) > max_sites or sum(cached_bytes(d) for d in _SITES.values()) > max_bytes):
        _SITES.popitem(last=False)


def site_records(site: Site) -> list[Any]:
    """The hospital's records from the files' headers only (no pixels decoded): what the preflight counts
    privacy units from."""
    from xr0_core.data.index import index_site

    return list(index_site(site.data_dir, site.manifest, verify_pixels=False).records)


def _partition(records: list[Any], site: Site) -> tuple[list[Any], list[Any]]:
    from xr0_core.data.splits import private_partition
    from xr0_core.site.state import ensure_identity

    return private_partition(records, ensure_identity(site.state_dir, site.name).site_id)


def private_training_records(records: list[Any], site: Site) -> list[Any]:
    return _partition(records, site)[0]


def private_evaluation_records(records: list[Any], site: Site) -> list[Any]:
    """Held-out patients only, their ``split`` cleared so the evaluation suite splits them again by patient
    into head-fit and test parts (none of them was ever trained on)."""
    import dataclasses

    held = _partition(records, site)[1]
    return [dataclasses.replace(r, split=None) if dataclasses.is_dataclass(r) else r for r in held]


def _base_metrics(site: Site) -> dict[str, float]:
    # partition-id lets the simulated coordinator name hospitals in its report; a real site sends nothing
    # that identifies it beyond what Flower's node id already tells the coordinator.
    return {"partition-id": site.partition_id} if site.partition_id is not None else {}


def train_site(
    cfg: XR0Config, site: Site, weights: Mapping[str, torch.Tensor], instruction: RoundInstruction,
    run_active=None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One local SSL round under the site's policy; returns the shared weights and the metrics that may leave.

    ``run_active(fresh) -> bool`` (:func:`client.app.run_watch`): whether the coordinator's run still runs; the
    round stops (:class:`xr0_core.site.round.RunStopped`) and a DP reservation is withdrawn when it does not.

    Raises
    ------
    xr0_core.site.policy.PolicyRefusal, xr0_core.privacy.ledger.PrivacyError
        The site refuses (reason reaches the coordinator's report); nothing was trained or charged.
    """
    from xr0_core.site.policy import negotiate
    from xr0_core.site.round import run_site_round, site_trainer
    from xr0_core.train.round_state import RoundSpec

    t0 = time.perf_counter()
    policy = site.policy()
    private = negotiate(policy, cfg).private  # refuses here, before any data is read
    data = site_data(cfg, site, private=private, canaries=policy.privacy.audit_canaries)
    if not data.cache.kept:
        raise RuntimeError(f"site {site.name} has no training images (all are split=test or unusable)")
    spec = RoundSpec(
        server_round=instruction.server_round,
        global_step=instruction.global_step,
        total_steps=instruction.total_steps,
        local_steps=instruction.local_steps,
        run_key=instruction.run_key,
    )
    if site.gpus > 1:  # node config gpus: the round's training runs on that many data-parallel processes
        from xr0_core.site.round import run_parallel_site_round

        shared, metrics = run_parallel_site_round(cfg, data.cache, weights, spec, site.state_dir, policy,
                                                  site=site.name, workers=site.gpus, run_active=run_active)
        num_examples = len(data.cache.kept)
    else:
        trainer = site_trainer(cfg, data.records, site=site.name, cache=data.cache)
        shared, metrics = run_site_round(trainer, weights, spec, site.state_dir, policy, run_active=run_active)
        num_examples = trainer.num_examples
    out = _base_metrics(site)
    out.update({k: float(v) for k, v in metrics.items()})
    if not private:
        out["num-examples"] = int(num_examples)
        if policy.train_metric_allowed("site-seconds", private=False):
            out["site-seconds"] = time.perf_counter() - t0  # whole local work: data, model, training, state I/O
    return shared, out


def evaluate_site(
    cfg: XR0Config, site: Site, weights: Mapping[str, torch.Tensor], instruction: RoundInstruction
) -> dict[str, float]:
    """Frozen-backbone evaluation on this hospital's own labelled data, global weights vs random init.

    Every downstream task the site's columns allow (:func:`xr0_core.eval.suite.evaluate_backbone`,
    non-strict: a task with bad annotations is skipped and logged here), or the tasks ``eval.tasks`` names (with
    ``probe``: only the cheap anatomy probe, ``classification/anatomy``). Only scalars leave: ``<task>/<metric>``,
    ``<task>/random/<metric>``, ``<task>/num-examples``, and only those the site policy's
    ``release.eval-metrics`` allows; under DP no timing and no count (counts become the policy's declared
    size). Under DP only held-out patients (never trained on) are evaluated, and
    the policy may refuse evaluation altogether or once the budget is spent
    (:func:`xr0_core.site.round.check_evaluation`).
    """
    from xr0_core.eval.suite import evaluate_backbone
    from xr0_core.site.round import check_evaluation, release_eval_metrics

    t0 = time.perf_counter()
    policy = site.policy()
    private = check_evaluation(policy, cfg, site.state_dir)
    data = site_data(cfg, site, private=private, canaries=policy.privacy.audit_canaries)
    records = private_evaluation_records(data.records, site) if private else data.records
    out = _base_metrics(site)
    tasks = evaluate_backbone(cfg, records, weights, strict=False)
    for reason in tasks.skipped:
        log.info("site %s evaluation: skipped %s", site.name, reason)
    out.update(tasks.flat_metrics())
    # Weigh the site by its largest task test set (per-task weights travel as <task>/num-examples).
    out["num-examples"] = max([0] + list(tasks.counts.values()))
    if cfg.eval.audit:  # the privacy audit of these weights on this site's own patients: scalars only
        from xr0_core.audit.task import audit_metrics

        out.update(audit_metrics(cfg, site.state_dir, weights, data.records, server_round=instruction.server_round))
    out["eval-seconds"] = time.perf_counter() - t0
    # Under DP no timing and no count leaves (xr0_core/site/round.py: release_eval_metrics).
    return release_eval_metrics(policy, out, private=private)
