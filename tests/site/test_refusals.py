"""A hospital fails closed (issue 21, rows 11-14): each test is an attack or a mistake that used to pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from tests.privacy.ledgertools import independent_epsilon, private_round
from xr0_core import record_keys as keys
from xr0_core.data.splits import private_partition
from xr0_core.secagg import identity
from xr0_core.site.policy import PolicyError, PolicyRefusal, SitePolicy, policy_path, save_policy, with_values
from xr0_core.site.refusals import UploadRecord, check_bundle, pinned_peer_keys
from xr0_core.site.round import EPSILON_WITHHELD, release_epsilon, release_eval_metrics
from xr0_core.site.state import site_policy


# ---- row 11: a missing or mistyped policy file after DP releases -------------------------------------------
def test_missing_policy_file_after_dp_releases_is_refused_with_the_path(tmp_path):
    private_round(tmp_path, "run1", 1)  # one DP release in the ledger
    policy_path(tmp_path).unlink()
    with pytest.raises(PolicyError, match="is missing") as err:
        site_policy(tmp_path)
    assert str(policy_path(tmp_path)) in str(err.value)
    typo = tmp_path / "polcy.toml"  # the node config names a file that is not there
    with pytest.raises(PolicyError, match="polcy.toml"):
        site_policy(tmp_path, {"policy": str(typo)})


def test_missing_policy_file_without_releases_still_gives_the_defaults(tmp_path):
    assert site_policy(tmp_path) == SitePolicy()  # a new hospital: nothing released, nothing to protect yet


def test_missing_policy_file_refuses_through_the_client_app(tmp_path):
    """The refusal reaches the coordinator as an error reply (and nothing trains)."""
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import build_app

    data, state = tmp_path / "data" / "mhh", tmp_path / "state"
    data.mkdir(parents=True)
    private_round(state, "run1", 1)
    policy_path(state).unlink()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(data), "state-dir": str(state)},
                      state=RecordDict(), run_config={})
    msg = Message(RecordDict({keys.ARRAYS: ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                              keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 2})}),
                  dst_node_id=7, message_type="train", group_id="2")
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = build_app()(msg, context)
    assert reply.has_error() and "is missing" in reply.error.reason and "differentially private" in reply.error.reason
    assert not reply.has_content()


# ---- row 12: plain train although the run asked for secure aggregation -------------------------------------
def test_plain_train_is_refused_when_the_run_config_asks_for_secure_aggregation(tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import build_app

    data, state = tmp_path / "data" / "mhh", tmp_path / "state"
    data.mkdir(parents=True)
    save_policy(SitePolicy(), policy_path(state))  # the policy does not require secure aggregation
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(data), "state-dir": str(state)},
                      state=RecordDict(), run_config={"secagg.enabled": True})
    msg = Message(RecordDict({keys.ARRAYS: ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                              keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1})}),
                  dst_node_id=7, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = build_app()(msg, context)
    assert reply.has_error() and "asks for secure aggregation" in reply.error.reason
    assert not reply.has_content()  # no weights in clear


# ---- row 13: a per-image test split under DP -----------------------------------------------------------------
@dataclass(frozen=True)
class SplitRec:
    path: str
    patient_id: str
    split: str
    study_id: None = None


def test_dp_split_holds_out_every_image_of_a_patient_with_a_test_image():
    records = [SplitRec("a1", "pa", "train"), SplitRec("a2", "pa", "test"), SplitRec("b1", "pb", "train"),
               SplitRec("c1", "pc", "test")]
    train, held = private_partition(records, key="site")
    assert {r.path for r in train} == {"b1"}  # patient pa had one test image: none of pa's images trains
    assert {r.path for r in held} == {"a1", "a2", "c1"}
    assert not {r.patient_id for r in train} & {r.patient_id for r in held}


# ---- row 14: what leaves under DP -----------------------------------------------------------------------------
def test_dp_evaluation_releases_no_timing_and_no_count():
    metrics = {"eval-seconds": 3.2, "num-examples": 417, "classification/anatomy/num-examples": 417,
               "classification/anatomy/ci/accuracy/units": 97, "classification/anatomy/auroc": 0.91,
               "partition-id": 2}
    out = release_eval_metrics(SitePolicy(), metrics, private=True)
    assert "eval-seconds" not in out
    assert out["num-examples"] == out["classification/anatomy/num-examples"] == 1.0  # the declared weight
    assert out["classification/anatomy/ci/accuracy/units"] == 1.0
    assert out["classification/anatomy/auroc"] == 0.91 and out["partition-id"] == 2
    declared = with_values(SitePolicy(), {"release.declared-examples": 50})
    assert release_eval_metrics(declared, {"num-examples": 0}, private=True) == {"num-examples": 0}  # empty stays
    assert release_eval_metrics(declared, {"num-examples": 9}, private=True) == {"num-examples": 50.0}
    assert release_eval_metrics(SitePolicy(), metrics, private=False) == metrics  # without DP: as computed


def test_dp_error_texts_are_fixed_categories(tmp_path):
    from client.errors import PRIVATE_FAILURE, reply_reason, sanitize_errors_mod
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    data, state = tmp_path / "data" / "mhh", tmp_path / "state"
    data.mkdir(parents=True)
    leak = FloatingPointError("non-finite SSL loss at DP step 17 (patient batch of 3)")
    for private in (True, False):
        ctx = Context(run_id=1, node_id=7, node_config={"data-path": str(data), "state-dir": str(state)},
                      state=RecordDict(), run_config={"privacy.enabled": private})
        msg = Message(RecordDict(), dst_node_id=7, message_type="train", group_id="1")
        msg.metadata.__dict__["_message_id"] = "m1"

        def fail(_m, _c):
            raise leak

        reply = sanitize_errors_mod(msg, ctx, fail)
        if private:
            assert "step 17" not in reply.error.reason and "patient" not in reply.error.reason
            assert reply.error.reason.startswith(PRIVATE_FAILURE.format(kind="training"))
        else:
            assert "non-finite SSL loss at DP step 17" in reply.error.reason
    refusal = PolicyRefusal("site policy: privacy.noise-multiplier = 20 is above this hospital's maximum")
    assert "noise-multiplier = 20" in reply_reason(refusal, "train", private=True)  # a refusal keeps its reason


def test_epsilon_leaves_rounded_up_by_default_and_can_be_withheld(tmp_path):
    # Under a calibrated sigma the exact epsilon tracks the patient count: the audit's N = 1000 -> 2.494 and
    # N = 1010 -> 2.507. Rounded up to 0.1 only the bucket leaves, and never less than was spent.
    policy = SitePolicy()
    assert release_epsilon(policy, {"epsilon": 2.494})["epsilon"] == 2.5
    assert release_epsilon(policy, {"epsilon": 2.5})["epsilon"] == 2.5
    assert release_epsilon(policy, {"epsilon": 2.507})["epsilon"] == 2.6
    exact = with_values(policy, {"release.epsilon": "exact"})
    assert release_epsilon(exact, {"epsilon": 2.494})["epsilon"] == 2.494
    withheld = release_epsilon(with_values(policy, {"release.epsilon": "withheld"}), {"epsilon": 2.494, "dp-steps": 4})
    assert withheld == {EPSILON_WITHHELD: 1.0, "dp-steps": 4}
    with pytest.raises(PolicyError, match="release.epsilon"):
        with_values(policy, {"release.epsilon": "hidden"})
    # A real DP round under the default policy: the released epsilon is the accountant's, rounded up.
    _, m = private_round(tmp_path, "run", 1, **{"release.epsilon": "rounded"})
    from xr0_core.privacy.ledger import PrivacyLedger

    led = PrivacyLedger(tmp_path)
    spent = independent_epsilon([vars(r) for r in led.read().releases], 1e-5)
    assert m["epsilon"] == pytest.approx(math.ceil(spent / 0.1 - 1e-9) * 0.1) and m["epsilon"] >= spent


# ---- pinned keys (row 5), once per round (rows 3 and 4), approved bundles (row 1) ----------------------------
def test_secure_aggregation_without_pinned_keys_is_refused_unless_acknowledged():
    own = identity.public_of(identity.generate_signing_key())
    with pytest.raises(PolicyRefusal, match="secagg.peer-keys"):
        pinned_peer_keys(SitePolicy(), own)
    assert pinned_peer_keys(with_values(SitePolicy(), {"secagg.allow-unpinned": True}), own) is None
    other = identity.public_of(identity.generate_signing_key())
    assert pinned_peer_keys(with_values(SitePolicy(), {"secagg.peer-keys": [other.hex()]}), own) == {own, other}
    assert pinned_peer_keys(SitePolicy(), own, published=[other]) == {own, other}  # simulation


def test_site_doctor_names_unpinned_secure_aggregation(tmp_path):
    from xr0_core.deploy.doctor import doctor

    tmp_path.chmod(0o700)
    save_policy(SitePolicy(), policy_path(tmp_path))
    assert any("secagg.peer-keys is empty" in p for p in doctor(tmp_path, None, None, None).problems)
    save_policy(with_values(SitePolicy(), {"secagg.allow-unpinned": True}), policy_path(tmp_path))
    found = doctor(tmp_path, None, None, None)
    assert not any("peer-keys" in p for p in found.problems) and any("allow-unpinned" in n for n in found.notes)


def test_upload_record_allows_one_masked_upload_per_run_and_round_across_restarts(tmp_path):
    UploadRecord(tmp_path).record("run-a", 3)
    again = UploadRecord(tmp_path)  # a restarted site reads the same file
    with pytest.raises(PolicyRefusal, match="already sent its masked update for round 3"):
        again.record("run-a", 3)
    again.record("run-a", 4)
    again.record("run-b", 3)  # another run's round 3 is another round
    assert again.uploaded("run-a", 3) and again.uploaded("run-b", 3) and not again.uploaded("run-b", 4)
    (tmp_path / "secagg-uploads.json").write_text("{broken")
    with pytest.raises(PolicyError, match="unreadable"):
        again.check("run-c", 1)  # fail closed: an unreadable record never means "nothing uploaded"


def test_bundle_outside_the_allow_list_is_refused_and_old_entries_are_named():
    check_bundle(SitePolicy(), "0.1.0+" + "a" * 64)  # empty list: any
    policy = with_values(SitePolicy(), {"apps.allowed-versions": ["0.1.0+" + "b" * 64, "0.1.0+" + "c" * 16]})
    check_bundle(policy, "0.1.0+" + "b" * 64)
    with pytest.raises(PolicyRefusal, match="not approved") as err:
        check_bundle(policy, "0.1.0+" + "a" * 64)
    assert "old source-only form" in str(err.value)


def test_min_degree_defaults_to_two_and_to_one_in_a_two_hospital_federation():
    s = SitePolicy().secagg
    assert s.min_degree is None and s.effective_min_degree(5) == 2 and s.effective_min_degree(None) == 2
    assert s.effective_min_degree(2) == 1  # one pinned peer: the other hospital is the only possible neighbour
    assert with_values(SitePolicy(), {"secagg.min-degree": "3"}).secagg.effective_min_degree(2) == 3  # explicit: strict
    assert with_values(SitePolicy(), {"secagg.min-degree": "auto"}).secagg.min_degree is None
    with pytest.raises(PolicyError, match="min-degree"):
        with_values(SitePolicy(), {"secagg.min-degree": 0})
