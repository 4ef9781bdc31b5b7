"""The coordinator asks the LinkState for replies when one has arrived, not every 0.1 s regardless (issue 27).

Flower's in-process grid (``flwr.superlink.grid.inmemory_grid.InMemoryGrid.send_and_receive``, flwr 1.42) pulls
every ``pull_interval`` (0.1 s) while a round's replies are outstanding; each pull
(``InMemoryLinkState.get_message_res``) re-validates every outstanding message id (expiry, node availability,
reply lookup) under the state's lock: at 100 hospitals and a 45 s round, ~450 pulls x 100 ids, about two
thirds of the coordinator's Python time in a round (py-spy ``--gil``), while a reply arrives every ~0.45 s.

:func:`pull_messages` below does Flower's full pull when the LinkState's reply store has changed since this
grid's last full pull (a reply stored: its ``message_res_store`` gets a new last key or another size), when
ids are asked for that the last full pull was not asked, or when :data:`FULL_EVERY` seconds have passed (so
Flower's own error replies for an expired message or an unavailable node, which appear without any reply
being stored, come at most that much later); otherwise it returns no replies, which is what the full pull
would have returned barring those error replies. :func:`install` swaps it in for a run
(``simulation/engine.py``); a LinkState without ``message_res_store`` gets Flower's pull every time.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Iterator

FULL_EVERY = 1.0  # seconds: at most this long between two full pulls while replies are outstanding

_FLOWER_PULL = None  # Flower's own InMemoryGrid.pull_messages while ours is installed


def _signature(store: dict) -> tuple[int, Any]:
    """Changes whenever a reply is stored: a new key is appended (dicts keep insertion order)."""
    return len(store), next(reversed(store), None) if store else None


def pull_messages(self: Any, message_ids: Iterable[str]) -> list[Any]:
    """Drop-in for ``InMemoryGrid.pull_messages`` (same arguments, same replies; see the module docstring)."""
    flower = _FLOWER_PULL
    if flower is None:  # not installed (a grid kept past the run): Flower's own
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid

        flower = InMemoryGrid.pull_messages
    ids = frozenset(message_ids)
    store = getattr(self.state, "message_res_store", None)
    if not isinstance(store, dict):
        return list(flower(self, ids))
    lock = getattr(self.state, "lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        sig = _signature(store)  # read under the lock: the reply thread stores under it
    last = self.__dict__.get("_xr0_last_pull")  # (signature, ids asked, monotonic time) of the last full pull
    now = time.monotonic()
    if last is not None and last[0] == sig and ids <= last[1] and now - last[2] < FULL_EVERY:
        return []
    replies = list(flower(self, ids))
    # The signature read *before* the pull: a reply stored meanwhile changes it, so it is never skipped (the
    # pull's own deletions change it too: one more full pull next time, which finds nothing new).
    self.__dict__["_xr0_last_pull"] = (sig, ids, now)
    return replies


@contextlib.contextmanager
def install() -> Iterator[None]:
    """Use :func:`pull_messages` in Flower's ``InMemoryGrid`` inside the ``with`` block."""
    global _FLOWER_PULL
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if InMemoryGrid.pull_messages is pull_messages:  # nested: already ours
        yield
        return
    _FLOWER_PULL = InMemoryGrid.pull_messages
    InMemoryGrid.pull_messages = pull_messages
    try:
        yield
    finally:
        InMemoryGrid.pull_messages = _FLOWER_PULL
        _FLOWER_PULL = None
