"""The coordinator's event log: ``<out>/events.jsonl``, one JSON object per line, appended, never rewritten.

``metrics.json`` holds every finished round, but not *when* a run started, whether it is still going or how it
ended; ``run.json`` appears only at the end. The event log adds those few facts, so a reader (the live
dashboard, :mod:`xr0_core.dashboard`) can follow a running federation from files alone, without talking to
the coordinator. Every line::

    {"v": 1, "time": <unix seconds>, "event": "run-start" | "round-end" | "run-end", ...}

- ``run-start``: ``run_key``, ``rounds`` (the run's total), ``done`` (rounds already complete: a resume),
  ``config`` (the flat run config, as ``report.html`` shows it);
- ``round-end``: ``round``, ``kind`` (``train`` | ``evaluate``), ``seconds``, ``updated``; the round's full
  record is the matching entry of ``metrics.json``, written just before;
- ``run-end``: ``status`` (``completed`` | ``stopped`` | ``crashed``), ``reason``, ``rounds_completed``.

One writer (the coordinator), any number of readers. A line is written with one ``write`` call and flushed,
so a reader sees whole lines, except possibly a last line still being written: :class:`JsonLinesTail` keeps
its offset before such a line and reads it next time. The log is a view for people, not state: nothing is
fsynced, and a lost last line costs only a stale "running" until the next event.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"
EVENTS_VERSION = 1
RUN_START, ROUND_END, RUN_END = "run-start", "round-end", "run-end"


class EventLog:
    """Appends events to ``<out_dir>/events.jsonl`` (created on the first event)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / EVENTS_FILE

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line; returns the record written. Never raises on a full disk or a read-only folder:
        the log is for people watching, and a run must not stop because its view could not be written."""
        record = {"v": EVENTS_VERSION, "time": round(time.time(), 3), "event": event, **fields}
        try:
            line = json.dumps(record, sort_keys=True, default=str) + "\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: every write lands at the end, even if someone else opened the file meanwhile.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            pass
        return record


class JsonLinesTail:
    """Reads the new whole lines of an append-only JSON-lines file since the last call.

    Parameters
    ----------
    path : Path
        The file; it may not exist yet.

    A file that shrank or was replaced (another inode) is read again from the start and :meth:`read_new`
    reports ``reset=True``, so the caller drops what it had. A line that is not valid JSON is skipped and
    counted in :attr:`bad_lines` (a hand-edited or torn file must not stop the reader).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.inode: int | None = None
        self.bad_lines = 0

    def read_new(self, limit_bytes: int = 64 << 20) -> tuple[list[dict[str, Any]], bool]:
        """``(records, reset)``: the complete lines appended since the last call (at most ``limit_bytes``)."""
        try:
            st = self.path.stat()
        except OSError:
            reset = self.offset > 0
            self.offset, self.inode = 0, None
            return [], reset
        reset = False
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset):
            self.offset, reset = 0, True
        self.inode = st.st_ino
        if st.st_size == self.offset:
            return [], reset
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(min(st.st_size - self.offset, limit_bytes))
        end = chunk.rfind(b"\n")
        if end < 0:  # only a partial line so far
            return [], reset
        self.offset += end + 1
        out = []
        for raw in chunk[:end].split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                self.bad_lines += 1
        return out, reset
