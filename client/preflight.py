"""The hospital's answer to the coordinator's ``query.preflight``: will it take part in this round?

Before a round's secure-aggregation set-up and training, the coordinator asks every hospital it sampled
(``strategies/fedavg_ssl.py``). The site runs every refusal it would make at training
(:func:`xr0_core.site.preflight.check_round`: app version, config hash, policy, plain-round rule, and under DP
the budget, run cap, noise cap and unit with the ledger's own planning, nothing written) and, for a secure
round, the ones that need its keys (pinned peer keys, one upload per round). A ready site replies
``MetricRecord {"ready": 1}``; a refusal raises, and :mod:`client.errors` turns it into an error reply whose
reason the coordinator's report shows. Nothing is reserved or charged here; training checks again.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict

from xr0_core import record_keys as keys
from xr0_core.config import from_flat

from .records import RecordError
from .site import resolve_site


def parse_ask(content: RecordDict):
    """The round the coordinator announces (:class:`xr0_core.site.preflight.RoundAsk`)."""
    from xr0_core.site.preflight import RoundAsk

    if keys.CONFIG not in content.config_records or keys.PREFLIGHT not in content.config_records:
        raise RecordError(f"a preflight message carries ConfigRecords {keys.CONFIG!r} and {keys.PREFLIGHT!r}")
    cfg, pre = content.config_records[keys.CONFIG], content.config_records[keys.PREFLIGHT]
    try:
        return RoundAsk(int(cfg[keys.SERVER_ROUND]), int(cfg[keys.GLOBAL_STEP]), int(cfg[keys.TOTAL_STEPS]),
                        int(cfg[keys.LOCAL_STEPS]), str(cfg["run-key"]), str(cfg[keys.CONFIG_HASH]),
                        bool(pre[keys.SECURE]))
    except KeyError as exc:
        raise RecordError(f"the preflight's round config lacks {exc.args[0]!r}") from None


def preflight(msg: Message, context: Context) -> Message:
    from xr0_core.site.preflight import check_round
    from xr0_core.site.round import ensure_running

    from .app import run_watch
    from .approval import verified_version
    from .runtime import private_training_records, site_records

    cfg = from_flat(dict(context.run_config))
    site = resolve_site(context.node_config, cfg)
    ask = parse_ask(msg.content)
    ensure_running(run_watch(context, site), "at the round's preflight")
    check_round(cfg, site.policy(), site.state_dir, ask, version=verified_version(),
                records=lambda: private_training_records(site_records(site), site))
    if ask.secure:
        from .secagg import site_trust

        site_trust(context).uploads.check(ask.run_key, ask.server_round)  # refuses unpinned peer keys too
    return Message(RecordDict({keys.METRICS: MetricRecord({keys.READY: 1})}), reply_to=msg)


def ready(msg: Message, context: Context) -> Message:
    """A preflight that always answers ready: for in-process test hospitals that have no policy or data."""
    return Message(RecordDict({keys.METRICS: MetricRecord({keys.READY: 1})}), reply_to=msg)
