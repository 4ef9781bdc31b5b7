"""Synthetic hospitals written when first used (issue 27): a planned federation holds no image until a
hospital's ClientApp resolves it; then that hospital (and only it) holds exactly the files an eager
``write_federation`` writes, and the simulate summary counted it right before it existed."""

from __future__ import annotations

import hashlib

from client.site import resolve_site
from simulation.sites import describe_sites, ensure_synthetic
from xr0_core.config import from_flat
from xr0_core.data.index import hospital_dirs
from xr0_core.data.synthetic import write_federation
from xr0_core.data.synthetic.lazy import is_materialized, materialize

N, IMAGES, SIZE = 5, 4, 32


def _files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_hospital_is_written_only_when_its_client_uses_it(tmp_path):
    root = tmp_path / "hospitals"
    dirs = ensure_synthetic(root, N, IMAGES, seed=3, image_size=SIZE, lazy=True)
    assert [d.name for d in dirs] == [d.name for d in sorted(dirs)] and hospital_dirs(root) == sorted(dirs)
    assert not any(p.is_file() for d in dirs for p in d.rglob("*"))  # nothing but empty folders
    before = describe_sites(hospital_dirs(root), tmp_path / "state")

    cfg = from_flat({"simulation.data-root": str(root), "simulation.state-root": str(tmp_path / "state")})
    site = resolve_site({"partition-id": 2}, cfg)  # what the ClientApp does for its first message
    used = hospital_dirs(root)[2]
    assert site.name == used.name and is_materialized(used)
    assert [is_materialized(d) for d in hospital_dirs(root)] == [i == 2 for i in range(N)]

    eager = tmp_path / "eager"
    write_federation(eager, N, IMAGES, seed=3, image_size=SIZE)
    assert _files(used) == _files(eager / used.name)  # the same bytes as written up front
    after = describe_sites(hospital_dirs(root), tmp_path / "state")
    assert [(b["name"], b["images"], b["by_anatomy"]) for b in before] == \
        [(a["name"], a["images"], a["by_anatomy"]) for a in after]
    assert materialize(used) is False  # written once
    # A second look (an eager run over the same plan) writes the rest.
    ensure_synthetic(root, N, IMAGES, seed=3, image_size=SIZE, lazy=False)
    assert all(is_materialized(d) for d in hospital_dirs(root))


def test_given_hospital_folders_are_never_written(tmp_path):
    (tmp_path / "given" / "mhh").mkdir(parents=True)
    assert materialize(tmp_path / "given" / "mhh") is False
    assert list((tmp_path / "given" / "mhh").iterdir()) == []
