"""``xr0 privacy`` on a hospital's state folder (issue 22, row 10)."""

from __future__ import annotations

import json

from cli import main


def test_a_state_folder_without_dp_releases_yet_is_shown_not_refused(tmp_path, capsys):
    state = tmp_path / "state"
    assert main(["site", "policy", "--state-dir", str(state), "--set", "privacy.budget=8",
                 "--set", "privacy.run-cap=2"]) == 0
    capsys.readouterr()
    assert main(["privacy", "--state-dir", str(state)]) == 0
    err = capsys.readouterr().err
    assert "no releases yet" in err and "of budget 8.0" in err and "per-run cap 2" in err
    assert main(["privacy", "--state-dir", str(state), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["releases"] == [] and body["epsilon"] == 0.0 and body["budget"] == 8.0


def test_a_folder_that_is_no_state_folder_is_still_refused(tmp_path, capsys):
    assert main(["privacy", "--state-dir", str(tmp_path / "nothing")]) == 2
    assert "is this the hospital's state-dir" in capsys.readouterr().err
