"""Admitting hospitals by name (issue 22, rows 7-8): the coordinator's admit is idempotent for a key already
admitted under its name (the runbook's loop over every .pub no longer fails), refuses a revoked key with how to
re-admit, and refuses a name or key already taken; revoke finds a hospital by name. The SuperLink's registry is
played by a list (the real one is exercised by tests/deploy/test_deployment.py)."""

from __future__ import annotations

import pytest

from server import sites
from server.sites import Site, SitesError, admit, key_bytes, revoke
from xr0_core.deploy.certs import make_site_key


class Registry:
    """Flower's Control API over a list of :class:`Site` (ListNodes / RegisterNode / UnregisterNode)."""

    def __init__(self, entries):
        self.entries = list(entries)
        self.registered, self.unregistered = [], []

    def install(self, monkeypatch):
        monkeypatch.setattr(sites, "list_sites", lambda connection: list(self.entries))
        monkeypatch.setattr(sites, "_control", lambda connection: self)

    def RegisterNode(self, request):  # noqa: N802 - Flower's method name
        self.registered.append((request.name, bytes(request.public_key)))
        return type("Response", (), {"node_id": 42})()

    def UnregisterNode(self, request):  # noqa: N802
        self.unregistered.append(int(request.node_id))

    def close(self):
        pass


def _entry(node_id, name, key, status="online"):
    return Site(node_id, name, status, "SHA256:x", "2026-01-01 00:00:00Z", "", "" if status != "unregistered"
                else "2026-02-01 00:00:00Z", key)


@pytest.fixture
def keys(tmp_path):
    make_site_key(tmp_path, "mhh")
    make_site_key(tmp_path, "ukb")
    return {n: tmp_path / f"{n}.pub" for n in ("mhh", "ukb")}


def test_admitting_a_key_twice_changes_nothing(monkeypatch, keys):
    reg = Registry([_entry(7, "mhh", key_bytes(keys["mhh"]))])
    reg.install(monkeypatch)
    existing, node_id, what = admit("xr0", keys["mhh"])
    assert existing is not None and node_id == 7 and "already admitted" in what and reg.registered == []
    _, node_id, what = admit("xr0", keys["ukb"])  # the name comes from the key's label
    assert node_id == 42 and reg.registered == [("ukb", key_bytes(keys["ukb"]))] and "admitted ukb" in what


def test_a_revoked_key_is_refused_with_how_to_readmit(monkeypatch, keys):
    Registry([_entry(7, "mhh", key_bytes(keys["mhh"]), status="unregistered")]).install(monkeypatch)
    with pytest.raises(SitesError, match="never accepts a revoked key again.*--replace"):
        admit("xr0", keys["mhh"])


def test_a_name_or_key_already_taken_is_refused(monkeypatch, keys):
    Registry([_entry(7, "mhh", key_bytes(keys["ukb"]))]).install(monkeypatch)
    with pytest.raises(SitesError, match="already admitted as mhh"):
        admit("xr0", keys["ukb"])  # ukb's key is node 7's, named mhh
    with pytest.raises(SitesError, match="is already node 7's"):
        admit("xr0", keys["mhh"])  # another key under the name mhh


def test_revoke_finds_the_hospital_by_name(monkeypatch, keys):
    reg = Registry([_entry(7, "mhh", key_bytes(keys["mhh"])), _entry(9, "ukb", key_bytes(keys["ukb"]))])
    reg.install(monkeypatch)
    assert revoke("xr0", "ukb").node_id == 9 and reg.unregistered == [9]
    with pytest.raises(SitesError, match="no admitted hospital named 'nope'"):
        revoke("xr0", "nope")
