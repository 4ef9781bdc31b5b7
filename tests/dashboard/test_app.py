"""The dashboard's web app on a real uvicorn socket (xr0_core/dashboard/app.py, serve.py): read-only routes,
the token on other addresses, the Host check on loopback, only its own static files, and a live event stream
that pushes a new round without being asked."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path

import pytest

from tests.report import fakerun
from xr0_core.atomic import atomic_write_json
from xr0_core.dashboard.app import DashboardError, build_app
from xr0_core.dashboard.run_view import RunView
from xr0_core.dashboard.serve import bind, is_loopback, resolve_token, serve
from xr0_core.run_events import ROUND_END, RUN_START, EventLog

TOKEN = "t0ken-for-the-tests-0123456789"


class Server:
    """``build_app(view)`` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, view, **kw) -> None:
        import uvicorn

        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(build_app(view, **kw), log_level="warning", lifespan="off", ws="none",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(400):  # until uvicorn accepts
            if self.server.started:
                break
            threading.Event().wait(0.05)

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def _run(out: Path, rounds: int) -> None:
    history = [r for r in fakerun.history(rounds=3) if r["kind"] == "train"]
    atomic_write_json(out / "metrics.json", {"run_key": "k", "rounds": history[:rounds]})


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    EventLog(out).append(RUN_START, run_key="k", rounds=3, done=0, config={"federation.rounds": 3})
    _run(out, 1)
    EventLog(out).append(ROUND_END, round=1, kind="train", seconds=1.0, updated=True)
    return out


def test_only_get_routes_and_only_the_dashboards_own_files(run_dir):
    srv = Server(RunView(run_dir))
    try:
        status, headers, body = srv.request("GET", "/")
        assert status == 200 and b'data-kind="run"' in body
        assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
        status, _, body = srv.request("GET", "/api/state")
        assert status == 200 and json.loads(body)["progress"]["rounds_done"] == 1
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert srv.request(method, "/api/state")[0] == 405
            assert srv.request(method, "/")[0] == 405
        assert srv.request("GET", "/static/plotly.min.js")[0] == 200
        for path in ("/static/../metrics.json", "/static/%2e%2e%2fmetrics.json", "/static/index.html", "/metrics.json",
                     "/static/run_view.py"):
            assert srv.request("GET", path)[0] == 404, path
    finally:
        srv.stop()


def test_loopback_without_a_token_answers_only_loopback_host_names(run_dir):
    srv = Server(RunView(run_dir))
    try:
        assert srv.request("GET", "/api/state", {"Host": f"localhost:{srv.port}"})[0] == 200
        status, _, body = srv.request("GET", "/api/state", {"Host": "attacker.example"})  # DNS rebinding
        assert status == 421 and b"not allowed" in body
    finally:
        srv.stop()


def test_with_a_token_every_request_needs_it(run_dir):
    srv = Server(RunView(run_dir), token=TOKEN)
    try:
        assert srv.request("GET", "/")[0] == 401
        assert srv.request("GET", "/api/state")[0] == 401
        assert srv.request("GET", "/?token=wrong-token-wrong-token")[0] == 401
        assert srv.request("GET", "/api/state", {"Host": "anything.example"})[0] == 401
        status, headers, _ = srv.request("GET", f"/?token={TOKEN}")
        assert status == 303 and headers["location"] == "./"  # the token leaves the address bar
        cookie = headers["set-cookie"]
        assert TOKEN in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        assert srv.request("GET", "/", jar)[0] == 200
        assert srv.request("GET", "/api/state", jar)[0] == 200
        assert srv.request("GET", "/api/state", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert srv.request("GET", "/api/state", {"Authorization": "Bearer nope"})[0] == 401
    finally:
        srv.stop()


def _sse_events(sock_file, count: int) -> list[tuple[str, dict]]:
    """Read ``count`` events from a server-sent-event stream."""
    events, name, data = [], None, []
    while len(events) < count:
        line = sock_file.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and name:
            events.append((name, json.loads("".join(data))))
            name, data = None, []
    return events


def test_the_event_stream_pushes_a_new_round_unasked(run_dir):
    srv = Server(RunView(run_dir), poll=0.1)
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        s.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        f = s.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += f.readline()
        assert b"200" in head.split(b"\r\n")[0] and b"text/event-stream" in head
        [(kind, first)] = _sse_events(f, 1)
        assert kind == "state" and first["state"]["progress"]["rounds_done"] == 1
        _run(run_dir, 2)  # the coordinator finishes round 2
        [(kind, second)] = _sse_events(f, 1)
        assert kind == "state" and second["state"]["progress"]["rounds_done"] == 2
        assert second["state"]["version"] > first["state"]["version"]
        s.close()
    finally:
        srv.stop()


def test_another_address_needs_a_token_and_a_short_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("XR0_DASHBOARD_TOKEN", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert resolve_token("127.0.0.1") is None
    generated = resolve_token("0.0.0.0")
    assert generated and len(generated) >= 16 and resolve_token("0.0.0.0") != generated
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert resolve_token("0.0.0.0", tmp_path / "tok") == TOKEN
    monkeypatch.setenv("XR0_DASHBOARD_TOKEN", "short")
    with pytest.raises(DashboardError, match="at least 16"):
        resolve_token("0.0.0.0")
    with pytest.raises(DashboardError, match="needs a token"):
        serve(RunView(tmp_path / "run"), host="0.0.0.0", port=0, token=None)
