"""The backend's ``app_fn`` pickled once per run, not once per message (issue 27).

Flower's Ray backend (``RayBackend.process_message``, flwr 1.42) sends ``self.app_fn`` as an argument of every
actor task. That function is a closure defined inside ``flwr.server.superlink.fleet.vce.vce_api.start_vce``
(``_load_client_app``), which cloudpickle cannot pickle by reference: it pickles it by value, and for that
scans ``sys.modules`` for the submodules the function uses (``_find_imported_submodules``), 200 times a round
at 100 hospitals (preflight + train), about half of what ``ActorMethod.remote`` cost the coordinator.

:class:`PickledOnce` holds the function together with its cloudpickle bytes, made once; pickling it writes
those bytes (no new cloudpickle pass), and unpickling in an actor loads them once per actor process
(:data:`_LOADED`, keyed by the bytes' SHA-256: equal key -> equal bytes -> the same function). What the actor
calls is the same function cloudpickle would have sent: it is cloudpickle's own output, loaded by
``cloudpickle.loads``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable

KEEP = 4  # functions remembered per actor process (one per run; a process serves one run at a time)

_LOADED: OrderedDict[str, Callable[[], Any]] = OrderedDict()  # per process: SHA-256 of the bytes -> function
_LOCK = threading.Lock()


def _load(key: str, blob: bytes) -> Callable[[], Any]:
    """Unpickling side: the function stored in ``blob`` (loaded at most once per process while remembered).

    Parameters
    ----------
    key : str
        SHA-256 (hex) of ``blob``, computed where it was pickled. Checked against the bytes before they are
        loaded, so a cached entry always stands for exactly the bytes its key names.
    blob : bytes
        ``cloudpickle.dumps(fn)``.
    """
    with _LOCK:
        fn = _LOADED.get(key)
        if fn is not None:
            _LOADED.move_to_end(key)
            return fn
    if hashlib.sha256(blob).hexdigest() != key:
        raise ValueError("simulation.pickled_once: the pickled app_fn does not match its digest")
    import cloudpickle

    fn = cloudpickle.loads(blob)
    with _LOCK:
        _LOADED[key] = fn
        while len(_LOADED) > KEEP:
            _LOADED.popitem(last=False)
    return fn


class PickledOnce:
    """A zero-argument callable whose pickle is made once (see the module docstring).

    Calling it calls ``fn``; pickling it yields ``_load(key, blob)`` so the receiving process gets ``fn``
    itself (not a ``PickledOnce``) back.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        import cloudpickle

        self.fn = fn
        self.blob = cloudpickle.dumps(fn)
        self.key = hashlib.sha256(self.blob).hexdigest()

    def __call__(self) -> Any:
        return self.fn()

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, bytes]]:
        return _load, (self.key, self.blob)


def pickled_once(holder: Any, fn: Callable[[], Any]) -> PickledOnce:
    """``fn`` wrapped in a :class:`PickledOnce` remembered on ``holder`` (the backend) while ``fn`` is the
    same object (``build`` may be called again with another function: then it is pickled anew)."""
    cached = holder.__dict__.get("_xr0_pickled_app_fn")
    if cached is not None and cached.fn is fn:
        return cached
    with _LOCK:  # Flower's worker threads call process_message concurrently: pickle once, not once per thread
        cached = holder.__dict__.get("_xr0_pickled_app_fn")
        if cached is None or cached.fn is not fn:
            cached = PickledOnce(fn)
            holder.__dict__["_xr0_pickled_app_fn"] = cached
    return cached
