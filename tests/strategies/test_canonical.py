"""strategies/canonical.py: the order replies are summed in depends on their contents only."""

from __future__ import annotations

import numpy as np

from strategies import canonical
from strategies.aggregate import weighted_mean


def _reply(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((64, 33)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}


def _ids(pairs, pool) -> list[int]:
    return [next(i for i, p in enumerate(pool) if p[0] is u and p[1] == n) for u, n in pairs]


def test_the_order_and_the_sum_do_not_depend_on_arrival_order():
    pool = [(_reply(s), float(1 + s % 3)) for s in range(12)]
    rng = np.random.default_rng(1)
    orders, means = [], []
    for _ in range(5):
        arrival = [pool[i] for i in rng.permutation(len(pool))]
        ordered = canonical.canonical_order(arrival)
        orders.append(_ids(ordered, pool))
        means.append(weighted_mean([u for u, _ in ordered], [n for _, n in ordered]))
    assert all(o == orders[0] for o in orders) and sorted(orders[0]) == list(range(12))
    for m in means[1:]:
        for k in m:
            assert m[k].tobytes() == means[0][k].tobytes()  # bit for bit
    keys = [canonical.sample_key(pool[i][0]) for i in orders[0]]
    assert keys == sorted(keys)  # distinct replies: ordered by the sample key alone


def test_replies_equal_where_sampled_are_ordered_by_their_full_digest():
    base = _reply(0)
    step = max(1, base["w"].size // canonical.SAMPLE)
    a, b = {k: v.copy() for k, v in base.items()}, {k: v.copy() for k, v in base.items()}
    a["w"].reshape(-1)[1] += 1.0  # element 1 is never sampled (step > 1): same sample key, other contents
    b["w"].reshape(-1)[1] -= 1.0
    assert step > 1 and canonical.sample_key(a) == canonical.sample_key(b)
    assert canonical.full_digest(a) != canonical.full_digest(b)
    want = sorted([a, b], key=canonical.full_digest)
    for arrival in ([a, b], [b, a]):
        got = canonical.canonical_order([(u, 1.0) for u in arrival])
        assert [u for u, _ in got] == want


def test_equal_contents_with_different_weights_are_ordered_by_weight():
    u = _reply(3)
    v = {k: x.copy() for k, x in u.items()}
    for arrival in ([(u, 5.0), (v, 2.0)], [(v, 2.0), (u, 5.0)]):
        assert [n for _, n in canonical.canonical_order(arrival)] == [2.0, 5.0]


def test_the_sample_key_sees_names_shapes_and_dtypes():
    u = _reply(4)
    assert canonical.sample_key(u) != canonical.sample_key({"x": u["w"], "b": u["b"]})
    assert canonical.sample_key(u) != canonical.sample_key({"w": u["w"].reshape(33, 64), "b": u["b"]})
    assert canonical.sample_key(u) != canonical.sample_key({"w": u["w"].view(np.int32), "b": u["b"]})
