"""Fixtures for simulations: tiny synthetic hospitals shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hospitals(tmp_path_factory) -> Path:
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("hospitals")
    write_federation(root, 4, 12, seed=0, image_size=96)
    return root
