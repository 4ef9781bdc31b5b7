"""The console: the project's lines and one bar reach the terminal; library output, warnings and child
processes go to the log; errors reach the terminal in full with the log's path."""

from __future__ import annotations

import pytest

import subprocess
import sys
import textwrap
from pathlib import Path

from xr0_core.console import Console, eta

SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from xr0_core.console import quiet_console
    out = Path(sys.argv[1])
    with quiet_console(out / "logs", "demo") as con:
        con.line("hello from the project")
        print("library print on stdout")
        print("library print on stderr", file=sys.stderr)
        os.write(2, b"C-level write to fd 2\\n")
        warnings.warn("a FutureWarning nobody asked for", FutureWarning)
        subprocess.run(["echo", "child process output"])
        logging.getLogger("flwr").error("something broke in flower")
        con.progress(1, 3, "train 3/3 sites ok")
        if sys.argv[2] == "raise":
            raise ValueError("the run failed here")
    print("after the block")
""")


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.slow  # a fresh Python process
def test_library_output_goes_to_the_log_and_errors_to_the_terminal(tmp_path):
    proc = _run(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr
    terminal = proc.stderr.splitlines()
    assert terminal == ["[xr0] hello from the project", "ERROR flwr: something broke in flower",
                        "[xr0] round 1/3 [#######.............] train 3/3 sites ok"], proc.stderr
    assert proc.stdout == "after the block\n"  # stdout is restored after the block
    log = (tmp_path / "logs" / "demo.log").read_text()
    for text in ("library print on stdout", "library print on stderr", "C-level write to fd 2",
                 "a FutureWarning nobody asked for", "child process output"):
        assert text in log and text not in proc.stderr


@pytest.mark.slow  # a fresh Python process
def test_an_escaping_error_is_shown_in_full_with_the_log_path(tmp_path):
    proc = _run(tmp_path, "raise")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: the run failed here" in proc.stderr
    assert f"full log: {tmp_path / 'logs' / 'demo.log'}" in proc.stderr
    assert "library print" not in proc.stderr


class _Tty:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_lines_go_above_it():
    tty = _Tty()
    con = Console(tty)
    con.progress(1, 4, "a")
    con.progress(2, 4, "b")
    con.line("a problem")
    con.end_progress()
    assert tty.text.count("\n") == 2  # the permanent line, and the bar's final newline
    assert tty.text.endswith("[xr0] round 2/4 [##########..........] b\n")
    assert "[xr0] a problem\n" in tty.text


def test_eta():
    assert eta(1, 3, 10.0) == "ETA 20 s" and eta(3, 3, 10.0) == "" and eta(1, 10, 60.0) == "ETA 9 min 0 s"
