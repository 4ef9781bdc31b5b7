"""client/site.py one_message: a message resolves its site once (handler + audit log), never across messages."""

from __future__ import annotations

import json

from flwr.app import Context, Message, RecordDict

import client.site as site_mod
from client.audit import AUDIT_FILE, audit_mod
from xr0_core.config import from_flat


def _node(tmp_path, name="xr"):
    return {"data-path": str(tmp_path / name), "state-dir": str(tmp_path / f"st-{name}")}


def _counting(monkeypatch):
    calls = []
    real = site_mod._resolve_site

    def counted(node_config, cfg):
        calls.append(dict(node_config))
        return real(node_config, cfg)
    monkeypatch.setattr(site_mod, "_resolve_site", counted)
    return calls


def test_inside_one_message_a_site_is_resolved_once_per_node_config(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    cfg = from_flat()
    with site_mod.one_message():
        a = site_mod.resolve_site(_node(tmp_path), cfg)
        assert site_mod.resolve_site(_node(tmp_path), cfg) is a
        b = site_mod.resolve_site(_node(tmp_path, "other"), cfg)  # another node config: its own site
    assert len(calls) == 2 and b.state_dir != a.state_dir
    site_mod.resolve_site(_node(tmp_path), cfg)  # outside: resolved afresh
    with site_mod.one_message():
        site_mod.resolve_site(_node(tmp_path), cfg)  # a new message remembers nothing of the last
    assert len(calls) == 4


def test_the_audit_mod_logs_under_the_handlers_site_resolved_once(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)
    calls = _counting(monkeypatch)
    node = _node(tmp_path)
    context = Context(run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config={})
    msg = Message(content=RecordDict(), message_type="query.x", dst_node_id=1)

    def handler(m, ctx):
        site_mod.resolve_site(ctx.node_config, from_flat(dict(ctx.run_config)))  # as client/app.py does
        return Message(RecordDict(), reply_to=m)

    audit_mod(msg, context, handler)
    assert len(calls) == 1
    lines = (tmp_path / "st-xr" / AUDIT_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message_type"] == "query.x"
