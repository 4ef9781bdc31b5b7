"""The round's global weights go to Ray once per round, not once per message (issue 27, part C).

Flower's Ray backend (``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend.process_message``, flwr
1.42) passes every message to its actor as a task argument: at 100 hospitals the coordinator pickles the same
8 MB ``ArrayRecord`` 100 times into Ray's object store and every actor unpickles it again per message. Flower's
strategies build a round's messages around one shared ``RecordDict`` (``FedAvg._construct_messages``), so the
same ``ArrayRecord`` object sits in all of them. :func:`process_message` below (the same body as Flower's) puts
each large ``ArrayRecord`` that more than one message carries into Ray's object store once (:func:`ray.put`), sends the message without it plus the
object reference, and the actor puts the record back before the ClientApp sees the message
(:class:`RestoringApp`); each actor fetches a round's record once (:data:`_ACTOR_CACHE`). What the ClientApp
gets is the real Flower ``Message`` with the same metadata and the same records (equal bytes); nothing about
the replies changes (what leaves a hospital is still its weights and scalar metrics only).

Sharing is decided by identity, never by guessing: a record is shared only while the *same* ``ArrayRecord``
holds the *same* ``Array`` and ``bytes`` objects as when it was put (bytes are immutable, so equal identity
is equal content); anything else is sent as Flower sends it.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator

MIN_BYTES = 1 << 20  # smaller records travel inside the message, as Flower sends them (a put costs a round trip)
KEEP = 2  # records remembered by the coordinator / per actor: a round's train and evaluate weights


def _fingerprint(record: Any) -> tuple:
    """Identity of an ArrayRecord's contents: (key, id(Array), id(bytes)) per entry (equal -> same content)."""
    return tuple((k, id(a), id(a.data)) for k, a in record.items())


def _nbytes(record: Any) -> int:
    return sum(len(a.data) for a in record.values())


class SharedRecords:
    """Coordinator side: ``ArrayRecord`` -> Ray object reference, put once while the record is unchanged."""

    def __init__(self, put: Callable[[Any], Any] | None = None) -> None:
        self._put = put
        self._lock = threading.Lock()  # Flower's worker threads call process_message concurrently
        # id(record) -> (record kept alive so that its id is not reused, fingerprint, reference)
        self._refs: OrderedDict[int, tuple[Any, tuple, Any]] = OrderedDict()
        self._candidate: tuple[Any, tuple] | None = None  # a record seen once (kept alive: its id stays its own)
        self.puts = 0

    def ref_of(self, record: Any) -> Any:
        """The reference to put in place of ``record``, or None to send it inside the message: a record is put
        on its second sighting (a round's weights go to every hospital; a record sent once, e.g. a secure-
        aggregation stage's per-hospital payload, would only pay an extra object)."""
        fp = _fingerprint(record)
        with self._lock:
            hit = self._refs.get(id(record))
            if hit is not None and hit[0] is record and hit[1] == fp:
                self._refs.move_to_end(id(record))
                return hit[2]
            if self._candidate is None or self._candidate[0] is not record or self._candidate[1] != fp:
                self._candidate = (record, fp)  # first sighting: inline, as Flower sends it
                return None
            self._candidate = None
            put = self._put
            if put is None:
                import ray

                put = ray.put
            ref = put(record)
            self.puts += 1
            self._refs[id(record)] = (record, fp, ref)
            while len(self._refs) > KEEP:
                self._refs.popitem(last=False)
            return ref

    def split(self, message: Any) -> tuple[Any, dict[str, Any], list[str]]:
        """``(light message, {record name: reference}, record names in order)``; the light message is a shallow
        copy without the shared records (``message`` itself, which the LinkState holds, is left untouched)."""
        if message.has_error() or not message.has_content():
            return message, {}, []
        content = message.content
        refs = {name: ref for name, rec in content.array_records.items()
                if _nbytes(rec) >= MIN_BYTES and (ref := self.ref_of(rec)) is not None}
        if not refs:
            return message, {}, []
        from flwr.app import RecordDict

        order = list(content.keys())
        light = copy.copy(message)
        light.__dict__["_content"] = RecordDict({k: v for k, v in content.items() if k not in refs})
        return light, refs, order


_ACTOR_CACHE: OrderedDict[str, Any] = OrderedDict()  # per actor process: reference hex -> ArrayRecord


def _fetch(ref: Any) -> Any:
    key = ref.hex()
    rec = _ACTOR_CACHE.get(key)
    if rec is None:
        import ray

        rec = ray.get(ref)
        _ACTOR_CACHE[key] = rec
        while len(_ACTOR_CACHE) > KEEP:
            _ACTOR_CACHE.popitem(last=False)
    else:
        _ACTOR_CACHE.move_to_end(key)
    return rec


def restore(message: Any, refs: dict[str, Any], order: list[str], fetch: Callable[[Any], Any] | None = None) -> Any:
    """The message with its shared records back in place, in their original order (a fresh ``ArrayRecord``
    per message around the cached ``Array`` objects, so that a ClientApp editing its record edits only its own)."""
    if not refs:
        return message
    from flwr.app import ArrayRecord, RecordDict

    fetch = fetch or _fetch  # looked up per call: tests swap the module's fetch
    content = message.content
    full = {}
    for name in order:
        if name in refs:
            full[name] = ArrayRecord(OrderedDict(fetch(refs[name]).items()), keep_input=True)
        else:
            full[name] = content[name]
    message.__dict__["_content"] = RecordDict(full)
    return message


OUT_OF_BAND_MIN = 1 << 16  # smaller arrays stay bytes inside the pickle (a buffer of its own costs more)


def out_of_band(reply: Any) -> Any:
    """Actor side, after the ClientApp (and its audit log) is done with ``reply``: each large ``Array``'s
    ``data`` becomes a read-only ``numpy.uint8`` view of the same bytes, so that Ray's pickle (protocol 5)
    writes it into the object store as an out-of-band buffer (one copy, not two) and the coordinator gets a
    view of the object store (no copy) instead of new ``bytes`` (issue 27: deserialising 100 replies of 8 MB
    was a third of the coordinator's CPU per round). The bytes are the ones the audit log hashed.

    Departure from Flower's types: on the coordinator such an ``Array.data`` is a buffer (``len``,
    ``memoryview``, ``np.frombuffer``, ``io.BytesIO`` and so ``Array.numpy()`` work as on bytes; ``==`` with
    bytes does not). The coordinator reads reply arrays only through ``np.frombuffer``-style views
    (``xr0_core.secagg.wire.npy_view``) or ``Array.numpy()``."""
    if not hasattr(reply, "has_content") or reply.has_error() or not reply.has_content():
        return reply
    import numpy as np
    from flwr.app import RecordDict

    def view(arr: Any) -> Any:
        data = arr.__dict__.get("data")
        if not (isinstance(data, bytes) and len(data) >= OUT_OF_BAND_MIN):
            return arr
        out = copy.copy(arr)  # a new Array: the reply may hold Arrays this actor keeps (e.g. a round's cache)
        out.__dict__["data"] = np.frombuffer(data, dtype=np.uint8)  # the same bytes (bytes are immutable)
        out.__dict__.pop("_object_id", None)
        return out

    content = reply.content
    records = content.array_records
    if not any(view(a) is not a for rec in records.values() for a in rec.values()):
        return reply
    def viewed(rec: Any) -> Any:
        out = copy.copy(rec)  # a new ArrayRecord (Flower's constructor would re-encode Arrays from numpy)
        out.__dict__["_data"] = {k: view(a) for k, a in rec.items()}
        out.__dict__.pop("_object_id", None)
        return out

    full = {name: (viewed(rec) if name in records else rec) for name, rec in content.items()}
    reply.__dict__["_content"] = RecordDict(full)  # a new record tree: nothing the actor keeps is changed
    return reply


class RestoringApp:
    """What the actor calls instead of the ClientApp: restores the message, runs the real ClientApp, and
    hands its reply to Ray with the large arrays out of band (:func:`out_of_band`)."""

    def __init__(self, app: Any, refs: dict[str, Any], order: list[str]) -> None:
        self.app, self.refs, self.order = app, refs, order

    def __call__(self, message: Any, context: Any) -> Any:
        return out_of_band(self.app(message=restore(message, self.refs, self.order), context=context))


class RestoringAppFn:
    """Picklable stand-in for the backend's ``app_fn`` (the actor calls it with no arguments)."""

    def __init__(self, app_fn: Callable[[], Any], refs: dict[str, Any], order: list[str]) -> None:
        self.app_fn, self.refs, self.order = app_fn, refs, order

    def __call__(self) -> RestoringApp:
        return RestoringApp(self.app_fn(), self.refs, self.order)


_SHARED = SharedRecords()


def process_message(self: Any, message: Any, context: Any) -> tuple[Any, Any]:
    """Flower's ``RayBackend.process_message`` (flwr 1.42), with the shared records sent by reference and the
    backend's ``app_fn`` pickled once (:mod:`simulation.pickled_once`)."""
    from flwr.common.constant import PARTITION_ID_KEY

    partition_id = context.node_config[PARTITION_ID_KEY]
    if self.pool is None:
        raise ValueError("The actor pool is empty, unfit to process messages.")
    if self.app_fn is None:
        raise ValueError("Unspecified function to load a `ClientApp`. "
                         "Call the backend's `build()` method before processing messages.")
    from .pickled_once import pickled_once

    light, refs, order = _SHARED.split(message)
    once = pickled_once(self, self.app_fn)  # cloudpickled once per run, not per message (simulation/pickled_once.py)
    app_fn = RestoringAppFn(once, refs, order)  # also when nothing is shared: the reply goes out of band
    future = None
    try:
        future = self.pool.submit(
            lambda a, a_fn, mssg, cid, state: a.run.remote(a_fn, mssg, cid, state),
            (app_fn, light, str(partition_id), context),
        )
        return self.pool.fetch_result_and_return_actor_to_pool(future)
    except Exception:
        from logging import ERROR

        from flwr.supercore import log as flwr_log

        flwr_log(ERROR, "An exception was raised when processing a message by %s", self.__class__.__name__)
        if future is not None:
            self.pool.add_actor_back_to_pool(future)
        raise


@contextlib.contextmanager
def install() -> Iterator[SharedRecords]:
    """Use :func:`process_message` in Flower's Ray backend inside the ``with`` block."""
    global _SHARED
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.process_message
    if original is process_message:  # nested: already ours
        yield _SHARED
        return
    _SHARED = SharedRecords()
    RayBackend.process_message = process_message
    try:
        yield _SHARED
    finally:
        RayBackend.process_message = original
        _SHARED = SharedRecords()  # drop the references: Ray frees the objects
