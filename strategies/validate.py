"""Checks on one client's reply before it may enter the aggregate.

A reply that fails is dropped with a one-line reason; the round goes on with the others.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .aggregate import global_norm


def check_update(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    max_update_norm: float = 0.0,
    max_update_ratio: float = 0.0,
    reference_norm: float | None = None,
) -> str | None:
    """Return ``None`` when ``update`` may be aggregated, else the reason it may not.

    Parameters
    ----------
    update : mapping name -> array
        The client's returned shared parameters.
    reference : mapping name -> array
        The global parameters sent this round (keys, shapes and dtypes to match).
    max_update_norm : float
        Reject when ``||update - reference||_2`` exceeds this; ``0`` disables the bound.
    max_update_ratio : float
        Reject when ``||update - reference||_2`` exceeds this multiple of ``||reference||_2``; ``0`` disables it.
    reference_norm : float, optional
        ``||reference||_2`` when the caller knows it (the coordinator computes it once per round, not once per
        reply: at 100 hospitals that was 100 float64 passes over the model).
    """
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        return f"parameter keys differ from the global model (missing {missing[:3]}, extra {extra[:3]})"
    bounded = max_update_norm > 0 or max_update_ratio > 0
    sq = 0.0
    for name, ref in reference.items():
        arr = update[name]
        if not isinstance(arr, np.ndarray):
            return f"{name}: not an array"
        if arr.shape != ref.shape:
            return f"{name}: shape {tuple(arr.shape)} != {tuple(ref.shape)}"
        if arr.dtype != ref.dtype:
            return f"{name}: dtype {arr.dtype} != {ref.dtype}"
        if bounded:
            # A NaN or inf in ``arr`` makes its squared distance non-finite (``ref``, the global weights, is
            # finite), so the finiteness pass over ``arr`` is only needed when the distance is not finite: the
            # same first offending name, one pass fewer per parameter per reply.
            d2 = squared_distance(arr, ref)
            if not math.isfinite(d2) and not np.all(np.isfinite(arr)):
                return f"{name}: non-finite values (NaN or inf)"
            sq += d2
        elif not np.all(np.isfinite(arr)):
            return f"{name}: non-finite values (NaN or inf)"
    if bounded:
        norm = float(np.sqrt(sq))
        if max_update_norm > 0 and norm > max_update_norm:
            return f"update norm {norm:.3g} exceeds federation.max-update-norm {max_update_norm:.3g}"
        if max_update_ratio > 0:
            bound = max_update_ratio * (global_norm(reference) if reference_norm is None else reference_norm)
            if norm > bound:
                return (f"update norm {norm:.3g} exceeds federation.max-update-ratio {max_update_ratio:g} x the global "
                        f"weights' norm ({bound:.3g})")
    return None


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b||^2`` exactly as :func:`global_norm` of ``a - b`` computes it (difference in the arrays' dtype,
    squares summed in float64, same result bit for bit), squaring in place: at 100 replies x 8 MB the fresh
    temporaries of ``np.square(d.astype(float64))`` cost more than the arithmetic."""
    d = np.subtract(a, b).astype(np.float64, copy=False)
    np.square(d, out=d)
    return float(np.sum(d))


# An aggregate this small relative to the weights it updates moves nothing a float32 model can hold
# (float32 has a 2^-24 ~ 6e-8 relative step): the round changed nothing.
VANISHED_RELATIVE = 1e-9


def aggregate_problem(
    delta: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    resolution: float = 0.0,
    client_clip: float = 0.0,
) -> str | None:
    """Why an aggregated update must not count as a trained round (``None``: it may).

    A round whose aggregate is exactly zero, non-finite, or too small to be anything but rounding changed
    nothing, yet every private site paid epsilon for it: it is a *failed* round with this reason, never a
    silent no-op (issue 22: a run's last round aggregated to exactly zero and looked completed).

    Parameters
    ----------
    delta : mapping name -> array
        The aggregated update (mean of the accepted sites' ``new - global``), shapes of the parameters.
    reference : mapping name -> array
        The global weights it would be added to.
    resolution : float
        Secure aggregation's error bound per coordinate (``secagg-error-bound``); an update whose RMS is
        below it is indistinguishable from quantization rounding. 0: not checked.
    client_clip : float
        Client-level DP's clip norm C (each site's update has norm <= C); an aggregate whose norm is below
        ``1e-6 * C`` is far below the clipping bound. 0: not checked.
    """
    sq = 0.0
    count = 0
    for name, d in delta.items():
        arr = np.asarray(d, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            return f"the aggregated update holds non-finite values ({name}): the global model is kept"
        sq += float(np.sum(np.square(arr)))
        count += arr.size
    norm = float(np.sqrt(sq))
    if norm == 0.0:
        return ("the aggregated update is exactly zero: no parameter would change (with secure aggregation: "
                "the sites' updates are below the quantization step; see secagg.weight-cap)")
    ref_norm = global_norm(reference) if reference else 0.0
    if ref_norm > 0 and norm < VANISHED_RELATIVE * ref_norm:
        return (f"the aggregated update's norm {norm:.3g} is below {VANISHED_RELATIVE:g} of the weights' norm "
                f"{ref_norm:.3g}: float32 weights would not change")
    rms = norm / np.sqrt(max(count, 1))
    if resolution > 0 and rms < resolution:
        return (f"the aggregated update's RMS {rms:.3g} is below secure aggregation's error bound {resolution:.3g}: "
                "it is mostly rounding; lower secagg.weight-cap (towards the sites' total num-examples) or "
                "secagg.quant-range")
    if client_clip > 0 and norm < 1e-6 * client_clip:
        return (f"the aggregated update's norm {norm:.3g} is far below the client-level clipping bound "
                f"{client_clip:g}")
    return None


def reply_sender(reply, sent_to: Mapping[str, int]) -> int | None:
    """The hospital a reply speaks for, or ``None`` when it cannot be attributed.

    A hospital's own reply names it in ``src_node_id``. When a SuperNode dies mid-round the SuperLink answers
    in its place (``NODE_UNAVAILABLE``, ``src_node_id`` = the SuperLink's id): that error belongs to the
    hospital the original message went to, found through ``reply_to_message_id``; counting it under the
    SuperLink's id would list one hospital twice (failed, and dropped for silence).

    Parameters
    ----------
    reply : flwr Message
        One reply returned by ``Grid.send_and_receive``.
    sent_to : mapping message id -> node id
        The messages of this round (their ids are set once pushed) and the node each went to.
    """
    try:
        node = int(reply.metadata.src_node_id)
    except (AttributeError, TypeError, ValueError):
        return None
    if node in sent_to.values():
        return node  # a hospital we asked speaks for itself (never re-attributed to another hospital)
    # An answer the SuperLink made up for a node that went away: it is that node's outcome.
    return sent_to.get(getattr(reply.metadata, "reply_to_message_id", "") or "")


def sent_to(messages) -> dict[str, int]:
    """``message id -> destination node`` of pushed messages (ids are empty until the grid pushed them)."""
    return {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages if m.metadata.message_id}
