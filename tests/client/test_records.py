import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.records import RecordError, parse_instruction, train_reply_content
from client.site import SiteConfigError, resolve_site
from xr0_core import record_keys as keys
from xr0_core.config import from_flat


def test_reply_holds_float32_weights_and_scalars_only():
    shared = {"a": torch.randn(2, 3, dtype=torch.float64), "b": torch.randn(4).to(torch.bfloat16)}
    content = train_reply_content(shared, {"loss": 1.5, "num-examples": 10})
    arrays = content.array_records[keys.ARRAYS]
    assert {k: arrays[k].dtype for k in arrays} == {"a": "float32", "b": "float32"}
    np.testing.assert_allclose(arrays["a"].numpy(), shared["a"].numpy(), rtol=1e-6)
    assert set(content) == {keys.ARRAYS, keys.METRICS}
    assert dict(content.metric_records[keys.METRICS]) == {"loss": 1.5, "num-examples": 10}


@pytest.mark.parametrize(
    "shared, metrics",
    [
        ({"ids": torch.arange(3)}, {"num-examples": 1}),  # integer tensor (e.g. a counter or ids)
        ({"a": torch.ones(1)}, {"site": "hospital-a"}),  # text
        ({"a": torch.ones(1)}, {"flag": True}),
    ],
)
def test_reply_refuses_non_float_tensors_and_non_scalar_metrics(shared, metrics):
    with pytest.raises(RecordError):
        train_reply_content(shared, metrics)


def test_parse_instruction_requires_the_contract_keys():
    rd = RecordDict({keys.ARRAYS: ArrayRecord({"w": torch.ones(2)}), keys.CONFIG: ConfigRecord({"server-round": 1})})
    with pytest.raises(RecordError, match="lacks"):
        parse_instruction(rd)
    cfg = ConfigRecord({keys.SERVER_ROUND: 2, keys.GLOBAL_STEP: 10, keys.TOTAL_STEPS: 30, keys.LOCAL_STEPS: 10,
                        keys.RUN_SEED: 0, "run-key": "abc", keys.CONFIG_HASH: "h"})
    weights, ins = parse_instruction(RecordDict({keys.ARRAYS: ArrayRecord({"w": torch.ones(2)}), keys.CONFIG: cfg}))
    assert ins.server_round == 2 and ins.global_step == 10 and torch.equal(weights["w"], torch.ones(2))


def test_resolve_site_deployment_and_simulation(tmp_path):
    cfg = from_flat()
    site = resolve_site({"data-path": str(tmp_path / "xr"), "state-dir": str(tmp_path / "st")}, cfg)
    assert site.name == "xr" and site.state_dir == tmp_path / "st"
    with pytest.raises(SiteConfigError, match="data-path"):
        resolve_site({}, cfg)
    for name in ("b_site", "a_site"):
        (tmp_path / "root" / name).mkdir(parents=True)
    sim = from_flat({"simulation.data-root": str(tmp_path / "root"), "simulation.state-root": str(tmp_path / "s")})
    assert resolve_site({"partition-id": 1, "num-partitions": 2}, sim).name == "b_site"
    with pytest.raises(SiteConfigError, match="no hospital folder"):
        resolve_site({"partition-id": 5, "num-partitions": 6}, sim)


def test_reply_records_are_exactly_what_flowers_own_arrayrecord_holds():
    from client.records import torch_state_dict

    shared = {"w": torch.randn(3, 5), "b": torch.randn(5), "s": torch.tensor(2.5), "e": torch.zeros(0, 4),
              "t": torch.randn(4, 6).t()}  # a non-contiguous tensor (sent C-ordered)
    ours = train_reply_content(shared, {"num-examples": 3})[keys.ARRAYS]
    flower = ArrayRecord({k: v.contiguous() for k, v in shared.items()})
    assert list(ours) == list(flower)
    for k in flower:
        assert (ours[k].data, ours[k].dtype, ours[k].shape, ours[k].stype) == \
            (flower[k].data, flower[k].dtype, flower[k].shape, flower[k].stype)
    # reading back: what Flower's to_torch_state_dict gives (values, dtype, layout), in writable memory of its own
    back, ref = torch_state_dict(ours), flower.to_torch_state_dict()
    assert list(back) == list(ref)
    for k in ref:
        assert back[k].dtype == ref[k].dtype and back[k].shape == ref[k].shape
        assert back[k].is_contiguous() == ref[k].is_contiguous()
        if back[k].numel():  # (an empty tensor's strides mean nothing: numpy 2 gives zeros for a fresh one)
            assert back[k].stride() == ref[k].stride()
        assert torch.equal(back[k], ref[k])
    back["w"] += 1  # its own memory: the record's bytes are unchanged
    assert torch.equal(torch_state_dict(ours)["w"], ref["w"])


def test_weights_that_are_not_numpy_serialized_are_refused_as_flower_refuses_them():
    from flwr.app import Array

    from client.records import torch_state_dict

    record = ArrayRecord({"w": Array(dtype="float32", shape=(2,), stype="torch.raw", data=b"\0" * 8)})
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        torch_state_dict(record)
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        record.to_torch_state_dict()


def test_a_fortran_order_image_reads_back_as_flower_reads_it():
    from flwr.app import Array

    from client.records import torch_state_dict

    record = ArrayRecord({"f": Array(np.asfortranarray(np.arange(12.0, dtype=np.float32).reshape(3, 4)))})
    ours, ref = torch_state_dict(record)["f"], record.to_torch_state_dict()["f"]
    assert torch.equal(ours, ref) and ours.stride() == ref.stride() == (1, 3)
