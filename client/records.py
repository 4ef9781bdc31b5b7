"""Flower records <-> typed objects for the client (thin: no training logic here).

What a reply may carry is decided here, in one place: the shared weights as float32 tensors and scalar
metrics. :func:`train_reply_content` refuses anything else, so a bug elsewhere cannot put pixels, text
or identifiers into a message (D4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from xr0_core import record_keys as keys


class RecordError(ValueError):
    """An incoming message does not follow the XR-0 contract (see strategies/fedavg_ssl.py)."""


@dataclass(frozen=True)
class RoundInstruction:
    server_round: int
    global_step: int
    total_steps: int
    local_steps: int
    run_seed: int
    run_key: str
    config_hash: str


def torch_state_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` (Flower's: ``torch.from_numpy(np.load(...))`` per entry), read through the
    one ``.npy`` reader (:func:`xr0_core.secagg.wire.array_view`, whose header parse is remembered per header)
    and copied once: the same names, dtypes, shapes, memory order and values, each tensor its own writable
    memory. ``np.load``'s header parse (``ast.literal_eval``) was ~5 ms of every message at 69 tensors.

    Raises
    ------
    TypeError
        An entry that is not numpy-serialized (``Array.numpy``'s own refusal).
    ValueError
        An entry whose bytes are not a ``.npy`` image of a plain numeric dtype.
    """
    from xr0_core.secagg.wire import array_view

    # the view's memory order is the image's (Fortran or C), as np.load returns it; the copy keeps it
    return {name: torch.from_numpy(array_view(arr).copy(order="K")) for name, arr in record.items()}


def parse_instruction(content: RecordDict) -> tuple[dict[str, torch.Tensor], RoundInstruction]:
    """Global shared weights and the round's instruction from a train / evaluate message."""
    if keys.ARRAYS not in content.array_records or keys.CONFIG not in content.config_records:
        raise RecordError(f"message must carry ArrayRecord {keys.ARRAYS!r} and ConfigRecord {keys.CONFIG!r}")
    weights = torch_state_dict(content.array_records[keys.ARRAYS])
    cfg: ConfigRecord = content.config_records[keys.CONFIG]
    try:
        instruction = RoundInstruction(
            server_round=int(cfg[keys.SERVER_ROUND]),
            global_step=int(cfg[keys.GLOBAL_STEP]),
            total_steps=int(cfg[keys.TOTAL_STEPS]),
            local_steps=int(cfg[keys.LOCAL_STEPS]),
            run_seed=int(cfg[keys.RUN_SEED]),
            run_key=str(cfg["run-key"]),
            config_hash=str(cfg[keys.CONFIG_HASH]),
        )
    except KeyError as exc:
        raise RecordError(f"round config lacks {exc.args[0]!r}; is the server an XR-0 coordinator?") from None
    return weights, instruction


def scalar_metrics(metrics: Mapping[str, float | int]) -> MetricRecord:
    """A MetricRecord of finite scalars only (bools and strings are refused)."""
    out: dict[str, float | int] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"metric {name!r} is not a number ({type(value).__name__}); only scalars may leave")
        out[name] = value if isinstance(value, int) else float(value)
    return MetricRecord(out)


def train_reply_content(shared: Mapping[str, torch.Tensor], metrics: Mapping[str, float | int]) -> RecordDict:
    """The only thing a hospital sends after training: float weights of the shared set + scalars."""
    from xr0_core.secagg.wire import NUMPY_STYPE, npy_bytes

    arrays: dict[str, Array] = {}
    for name, t in shared.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise RecordError(f"shared parameter {name!r} is not a floating-point tensor")
        # fp32 on the wire: bf16 is not representable in an ArrayRecord, fp64 would double the upload.
        values = t.detach().to("cpu", torch.float32).contiguous().numpy()
        # What ArrayRecord(tensors) stores (np.save's bytes, dtype, shape), with one copy of the values instead
        # of np.save's three into fresh memory (xr0_core.secagg.wire.npy_bytes; tests/client: equal records).
        arrays[name] = Array(dtype=str(values.dtype), shape=values.shape, stype=NUMPY_STYPE, data=npy_bytes(values))
    return RecordDict({keys.ARRAYS: ArrayRecord(arrays), keys.METRICS: scalar_metrics(metrics)})


def metrics_reply_content(metrics: Mapping[str, float | int]) -> RecordDict:
    return RecordDict({keys.METRICS: scalar_metrics(metrics)})

