"""What a person sees in the terminal: the project's own lines and one progress bar; the rest goes to a log.

Flower, Ray, PyTorch and Python warnings write to the process's stdout / stderr, and Ray forwards every
worker's output there too. :func:`quiet_console` points file descriptors 1 and 2 at ``<out>/logs/<name>.log``
(so C-level writes, child processes and Ray's forwarded worker output land there as well) and hands back a
:class:`Console` that writes to the real terminal. Errors still reach the terminal: any log record at ERROR
level is echoed with its traceback, and an exception that escapes the block is printed in full followed
by the path of the log.

``--verbose`` skips the redirection: everything goes to the terminal as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Iterator

PREFIX = "[xr0]"
BAR_WIDTH = 20


class Console:
    """The project's lines and one progress bar.

    On a terminal the bar is redrawn in place (``\\r``) and permanent lines are printed above it; elsewhere
    (a CI log, a test's pipe) every bar update is one plain line, so the output stays readable and short.

    Parameters
    ----------
    stream : text stream, the real terminal (or what stands for it)
    log_path : Path, optional; named in error messages
    """

    def __init__(self, stream: IO[str], log_path: Path | None = None) -> None:
        self.stream = stream
        self.log_path = log_path
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._bar = ""

    def _clear_bar(self) -> None:
        if self.tty and self._bar:
            self.stream.write("\r" + " " * len(self._bar) + "\r")

    def line(self, text: str) -> None:
        """A permanent line (prefixed ``[xr0]`` unless it already is)."""
        text = text if text.startswith(PREFIX) else f"{PREFIX} {text}"
        self._clear_bar()
        self.stream.write(text + "\n")
        if self.tty and self._bar:
            self.stream.write(self._bar)
        self.stream.flush()

    def progress(self, done: int, total: int, text: str, label: str = "round") -> None:
        """Draw the bar at ``done / total``: ``[xr0] round 2/3 [#############.......] text``."""
        total = max(int(total), 1)
        filled = round(BAR_WIDTH * min(max(done, 0), total) / total)
        bar = f"{PREFIX} {label} {done}/{total} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
        if not self.tty:
            self.stream.write(bar + "\n")
        else:
            self._clear_bar()
            self._bar = bar
            self.stream.write(bar)
        self.stream.flush()

    def end_progress(self) -> None:
        """Leave the bar's last state on screen and start a new line."""
        if self.tty and self._bar:
            self.stream.write("\n")
            self.stream.flush()
        self._bar = ""

    def error(self, text: str) -> None:
        """An error line (no ``[xr0]`` prefix rewriting; always on its own line)."""
        self._clear_bar()
        self.stream.write(text.rstrip("\n") + "\n")
        if self.tty and self._bar:
            self.stream.write(self._bar)
        self.stream.flush()


_current: Console | None = None


def console() -> Console:
    """The console of this process: the one :func:`quiet_console` opened, else plain stderr."""
    return _current if _current is not None else Console(sys.stderr)


def eta(done: int, total: int, elapsed_s: float) -> str:
    """``"ETA 1 min 20 s"`` from the mean time per unit so far (``""`` when nothing is done or all is)."""
    if done <= 0 or done >= total:
        return ""
    left = elapsed_s / done * (total - done)
    return f"ETA {int(left // 60)} min {int(left % 60)} s" if left >= 60 else f"ETA {left:.0f} s"


class _EchoErrors(logging.Handler):
    """Echo ERROR records (with their traceback) to the console: errors must not hide in the log."""

    def __init__(self, con: Console) -> None:
        super().__init__(level=logging.ERROR)
        self.con = con
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "_xr0_echoed", False):  # attached to two loggers; one record may reach both
            return
        record._xr0_echoed = True
        try:
            self.con.error(self.format(record))
        except Exception:  # noqa: BLE001 -- a logging handler must never raise
            self.handleError(record)


def _error_loggers() -> list[logging.Logger]:
    # Flower's logger does not propagate to the root logger, so it gets its own handler.
    return [logging.getLogger(), logging.getLogger("flwr")]


@contextlib.contextmanager
def quiet_console(log_dir: Path, name: str, verbose: bool = False) -> Iterator[Console]:
    """Send fds 1 / 2 to ``log_dir/<name>.log`` for the block and yield the terminal's :class:`Console`.

    Parameters
    ----------
    log_dir : Path, created if missing (``<out>/logs``)
    name : log file stem (``simulate``, ``pretrain``)
    verbose : True: no redirection (everything on the terminal); the console is still returned
    """
    global _current
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    if verbose:
        con = Console(sys.stderr, log_path)
        previous, _current = _current, con
        try:
            yield con
        finally:
            _current = previous
        return
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    try:
        fd_out, fd_err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        fd_out, fd_err = 1, 2  # pytest's capsys and friends: the process's real descriptors
    saved_out, saved_err = os.dup(fd_out), os.dup(fd_err)
    log_fh = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- closed in finally
    log_fh.write(f"\n===== {name} {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} =====\n")
    log_fh.flush()
    terminal = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    con = Console(terminal, log_path)
    echo = _EchoErrors(con)
    previous, _current = _current, con
    os.dup2(log_fh.fileno(), fd_out)
    os.dup2(log_fh.fileno(), fd_err)
    for lg in _error_loggers():
        lg.addHandler(echo)
    try:
        yield con
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)) and type(exc).__name__ != "CLIError":
            # in full, on the terminal and in the log
            text = "".join(traceback.format_exception(exc))
            log_fh.write(text)
            con.error(text)
            con.error(f"{PREFIX} full log: {log_path}")
        raise
    finally:
        for lg in _error_loggers():
            lg.removeHandler(echo)
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved_out, fd_out)
        os.dup2(saved_err, fd_err)
        os.close(saved_out)
        os.close(saved_err)
        con.end_progress()
        terminal.flush()
        terminal.close()
        log_fh.close()
        _current = previous
