"""The hospital's own rules around secure aggregation, through the real ClientApp: a plain ``train`` to a
site whose policy requires secure aggregation is refused; the site's signing key and pinned peers come from
its state folder and policy."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client import secagg as client_secagg
from xr0_core import record_keys as keys
from xr0_core.secagg import identity
from xr0_core.site.policy import PolicyError, SitePolicy, from_mapping, save_policy, with_values


def _site_context(tmp_path, policy: SitePolicy) -> Context:
    data, state = tmp_path / "data" / "mhh", tmp_path / "state"
    data.mkdir(parents=True)
    save_policy(policy, state / "policy.toml")
    return Context(run_id=1, node_id=7, node_config={"data-path": str(data), "state-dir": str(state)},
                   state=RecordDict(), run_config={})


def test_plain_train_is_refused_where_secure_aggregation_is_required(tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import build_app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    context = _site_context(tmp_path, with_values(SitePolicy(), {"secagg.required": True}))
    weights = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    msg = Message(RecordDict({keys.ARRAYS: weights, keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1})}),
                  dst_node_id=7, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = build_app()(msg, context)
    assert reply.has_error()
    assert "requires secure aggregation" in reply.error.reason
    assert not reply.has_content()  # no weights left the site


def test_site_trust_pins_the_policy_keys_and_keeps_its_own_key(tmp_path):
    other = identity.public_of(identity.generate_signing_key()).hex()
    context = _site_context(tmp_path, with_values(SitePolicy(), {"secagg.peer-keys": [other],
                                                                 "secagg.min-threshold": 3}))
    trust = client_secagg.site_trust(context)
    state = tmp_path / "state"
    assert (state / identity.SIGNING_KEY_FILE).stat().st_mode & 0o077 == 0  # private key: owner only
    assert identity.read_public(state) == identity.public_of(trust.signer)
    assert trust.rules.pinned == {bytes.fromhex(other), identity.public_of(trust.signer)}
    assert trust.rules.min_threshold == 3
    assert client_secagg.site_trust(context).signer == trust.signer  # the same identity every round


def test_policy_rejects_malformed_peer_keys():
    with pytest.raises(PolicyError, match="peer-keys"):
        from_mapping({"secagg": {"peer-keys": ["not-hex"]}})
