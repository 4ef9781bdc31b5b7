"""simulation/pickled_once.py: the backend's app_fn is cloudpickled once, and the actor runs that function."""

from __future__ import annotations

import pickle
import subprocess
import sys

import cloudpickle
import pytest

from simulation import pickled_once as po
from simulation import shared_weights as sw


def _make_app_fn(tag: str):
    def _load_client_app():  # a closure, as Flower's: cloudpickle pickles it by value
        return f"client app {tag}"
    return _load_client_app


@pytest.fixture
def count_dumps(monkeypatch):
    calls = []
    real = cloudpickle.dumps

    def dumps(obj, *a, **k):
        calls.append(obj)
        return real(obj, *a, **k)
    monkeypatch.setattr(cloudpickle, "dumps", dumps)
    monkeypatch.setattr(po, "_LOADED", po.OrderedDict())
    return calls


def test_pickling_many_times_runs_cloudpickle_once_and_gives_back_the_function(count_dumps):
    fn = _make_app_fn("a")
    once = po.PickledOnce(fn)
    blobs = [pickle.dumps(once) for _ in range(5)]
    assert len(count_dumps) == 1
    loaded = [pickle.loads(b) for b in blobs]
    assert loaded[0]() == "client app a"
    assert all(f is loaded[0] for f in loaded)  # loaded once per process


def test_a_fresh_process_runs_the_pickled_closure():
    blob = pickle.dumps(po.PickledOnce(_make_app_fn("fresh")))
    code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())())"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "client app fresh"


def test_bytes_that_do_not_match_their_key_are_refused(count_dumps):
    once = po.PickledOnce(_make_app_fn("a"))
    other = po.PickledOnce(_make_app_fn("b"))
    with pytest.raises(ValueError, match="does not match"):
        po._load(once.key, other.blob)


class _Pool:
    def __init__(self) -> None:
        self.sent = []

    def submit(self, fn, value):
        self.sent.append(pickle.dumps(value[0]))  # what Ray would serialise as the task's app_fn

    def fetch_result_and_return_actor_to_pool(self, future):
        return "reply", "context"


class _Context:
    node_config = {"partition-id": 3}


class _Message:
    def has_error(self):
        return False

    def has_content(self):
        return False


def test_process_message_sends_the_once_pickled_app_fn(count_dumps):
    class Backend:
        pool = _Pool()
        app_fn = staticmethod(_make_app_fn("backend"))

    backend = Backend()
    for _ in range(4):
        assert sw.process_message(backend, _Message(), _Context()) == ("reply", "context")
    assert len(count_dumps) == 1 and len(backend.pool.sent) == 4
    assert all(pickle.loads(b)().app == "client app backend" for b in backend.pool.sent)  # what the actor runs
    backend.app_fn = _make_app_fn("rebuilt")  # build() called again: the new function is pickled anew
    sw.process_message(backend, _Message(), _Context())
    assert len(count_dumps) == 2 and pickle.loads(backend.pool.sent[-1])().app == "client app rebuilt"
