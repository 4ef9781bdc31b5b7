"""Hospitals by name (issue 22, row 6): the coordinator names each node by the name it was admitted under (the
SuperLink's registry, ``Grid.get_nodes``), with the node id beside it, in metrics.json, the report and
``xr0 coordinator status --out``; the key fingerprint is the one ``ssh-keygen -lf`` prints."""

from __future__ import annotations

import json

from server.deploy_cmd import hospital_lines
from server.run import Coordinator
from server.sites import fingerprint, key_name
from simulation.inprocess import InProcessGrid
from tests.server.knownapp import build
from xr0_core.config import from_flat


N = 3
NODES = [101 + 13 * i for i in range(N)]  # InProcessGrid's node ids


def test_nodes_are_named_by_their_admitted_names(tmp_path):
    cfg = from_flat({"preset": "cpu-tiny", "federation.rounds": 1, "federation.out-dir": str(tmp_path / "out"),
                     "eval.tasks": "none", "federation.min-replies": 2})
    names = {0: "mhh", 1: "charite"}  # the third node was never given a name
    Coordinator(cfg).run(InProcessGrid(build(), N, names=names))
    rounds = json.loads((tmp_path / "out" / "metrics.json").read_text())["rounds"]
    sites = {s["node_id"]: s["name"] for s in rounds[0]["sites"]}
    assert sites[NODES[0]] == "mhh" and sites[NODES[1]] == "charite" and sites[NODES[2]] == f"node-{NODES[2]}"
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"<td>train</td><td>mhh</td><td>{NODES[0]}</td><td>ok</td>" in html  # the node id beside the name
    lines = hospital_lines(tmp_path / "out")
    assert any(line.startswith(f"hospital mhh  node {NODES[0]}  round 1 ok") for line in lines), lines


def test_status_lines_show_epsilon_this_run_cap_and_budget_left(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"rounds": [{"round": 2, "kind": "train", "sites": [
        {"node_id": 7, "name": "mhh", "status": "ok", "reason": "",
         "metrics": {"epsilon": 3.1, "epsilon-run": 1.2, "privacy-run-cap": 2.0, "privacy-budget": 8.0}},
        {"node_id": 9, "name": "ukb", "status": "failed", "reason": "preflight: privacy ledger", "metrics": {}}]}]}))
    lines = hospital_lines(tmp_path)
    assert lines[0] == "hospital mhh  node 7  round 2 ok  epsilon this run 1.2 of cap 2  budget left 4.9 of 8"
    assert lines[1] == "hospital ukb  node 9  round 2 failed (preflight: privacy ledger)"


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path):
    """``ssh-keygen -lf`` prints SHA256 of the key blob (the .pub line's base64 field), base64 without padding;
    the SuperLink stores the key as PEM, and both give the same fingerprint."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from xr0_core.deploy.certs import make_site_key

    make_site_key(tmp_path, "mhh")
    line = (tmp_path / "mhh.pub").read_bytes()
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(line.split()[1])).digest()).decode().rstrip("=")
    pem = serialization.load_ssh_public_key(line).public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    assert fingerprint(line) == expected == fingerprint(pem)
    assert key_name(tmp_path / "mhh.pub") == "mhh"
