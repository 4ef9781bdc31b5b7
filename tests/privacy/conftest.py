"""Fixtures of the privacy tests (helpers: tests/privacy/dpdata.py)."""

from __future__ import annotations

import pytest

from tests.privacy.dpdata import patient_cache


@pytest.fixture
def cache12():
    return patient_cache(list(range(12)))
