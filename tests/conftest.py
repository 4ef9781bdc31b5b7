"""Fixtures every test package may use: the one tiny configuration, the session's synthetic hospitals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiny


@pytest.fixture
def tiny_cfg():
    """The tiny configuration factory: ``tiny_cfg(**{"train.batch-size": 8})`` -> XR0Config (tests/tiny.py)."""
    return tiny.tiny_cfg


@pytest.fixture(scope="session")
def hospitals(tmp_path_factory) -> Path:
    """Four tiny synthetic hospitals (12 DICOMs each, 96 px), written once per session."""
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("hospitals")
    write_federation(root, 4, 12, seed=0, image_size=96)
    return root
