"""Serving the dashboard: where it listens, who may read it, and running it (here, or as a child process).

- Loopback (``127.0.0.1``, the default) needs no token: only this machine's users reach it, and the app
  refuses requests whose ``Host`` is not a loopback name (DNS rebinding).
- Any other address needs a token (:func:`resolve_token`): from ``--token-file`` or ``XR0_DASHBOARD_TOKEN``,
  else a fresh random one, printed once inside the URL. The page is plain HTTP: on an untrusted network put
  it behind an SSH tunnel or a TLS proxy, or the token and the page travel in clear.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from xr0_core.dashboard.app import DashboardError, build_app

DEFAULT_PORT = 8765
TOKEN_ENV = "XR0_DASHBOARD_TOKEN"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token_file: Path | None = None) -> str | None:
    """The token the dashboard at ``host`` requires (None on loopback without one asked for).

    Raises
    ------
    DashboardError
        The token file is unreadable or the token shorter than 16 characters.
    """
    token = None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise DashboardError(f"--token-file {token_file} is unreadable ({exc})") from None
    elif os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise DashboardError(f"the dashboard token must have at least {MIN_TOKEN_CHARS} characters (got "
                             f"{len(token)}); e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    return token


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                             "(0: any free port) or --host") from None
    sock.listen(64)
    return sock


def page_url(host: str, port: int, token: str | None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(view: Any, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
          poll: float = 1.0, announce: Callable[[str], None] | None = None, url_file: Path | None = None) -> None:
    """Serve ``view`` until SIGINT / SIGTERM.

    ``announce`` gets the page's URL once the socket listens; ``url_file`` receives it too (mode 0600: it
    may hold the token), so a parent process can find a port chosen with ``port=0``.
    """
    import uvicorn

    if not is_loopback(host) and not token:
        raise DashboardError(f"--host {host} is not a loopback address: the dashboard needs a token there")
    allowed = ("127.0.0.1", "localhost", "::1") if is_loopback(host) else ()
    app = build_app(view, token=token, poll=poll, allowed_hosts=allowed if not token else ())
    sock = bind(host, port)
    view.state()  # the first reading (a hospital's accountant loads opacus) before the URL says "ready"
    url = page_url(host, sock.getsockname()[1], token)
    if url_file is not None:
        url_file = Path(url_file)
        url_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(url + "\n")
    if announce is not None:
        announce(url)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                            timeout_graceful_shutdown=1)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class DashboardProcess:
    """``xr0 dashboard --run-dir DIR`` as a child process (``xr0 simulate --dashboard``): a process of its own,
    so serving the page never competes with the coordinator for its interpreter, and its CPU time can be
    measured apart (bench/dashboard.py).

    Parameters
    ----------
    run_dir : Path
    port : int
    log_path : Path
        The child's output (uvicorn's warnings, a traceback if it fails).
    """

    def __init__(self, run_dir: Path, port: int, log_path: Path, poll: float = 1.0) -> None:
        self.run_dir, self.port, self.log_path, self.poll = Path(run_dir), int(port), Path(log_path), poll
        self.url_file = self.run_dir / "logs" / "dashboard.url"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 60.0) -> str:
        """Start the child; the page's URL once it listens. Raises :class:`DashboardError` if it exits first."""
        self.url_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 -- the child holds it; closed below
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xr0_core.dashboard.child", "--run-dir", str(self.run_dir),
                 "--port", str(self.port), "--poll", str(self.poll), "--url-file", str(self.url_file),
                 "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.url_file.is_file() and self.url_file.read_text().strip():
                return self.url_file.read_text().strip()
            if self.proc.poll() is not None:
                raise DashboardError(f"the dashboard did not start (exit {self.proc.returncode}); see {self.log_path}")
            time.sleep(0.1)
        self.stop()
        raise DashboardError(f"the dashboard did not listen within {wait:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down within a second), SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
