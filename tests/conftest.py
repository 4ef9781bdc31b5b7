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


# --- Two test processes (scripts/test.sh runs `pytest -n 2 --dist loadfile`, pytest-xdist) ------------------
# The suite's long pole is tests/deploy/test_deployment.py (a real SuperLink and SuperNodes, mostly waiting on
# processes): on a second worker it overlaps with the CPU-bound rest. `loadfile` keeps each module on one worker
# (its module-scoped fixtures, e.g. the deployment, are set up once, and its tests run in order: they build on
# each other's state). Not `loadgroup`: with pytest 9 its groups never reach the node ids (xdist 3.8 renames
# `item._nodeid`, which pytest 9 no longer reads), so grouped tests were spread over both workers.
# The longest modules are handed out first (scripts/test.sh passes --no-loadscope-reorder, else xdist orders
# modules by their number of tests): xdist gives each worker one module, then a second one to queue behind it,
# so the third module here, which waits behind the deployment, is a short one.
_FIRST = ("tests/deploy/test_deployment.py", "tests/dashboard/test_live_browser.py", "tests/test_layers.py",
          "tests/simulation/test_simulate_cli.py", "tests/secagg/test_simulation.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parents[1]

    def rank(item: pytest.Item) -> int:
        path = Path(str(item.path)).resolve().relative_to(root).as_posix()
        return next((i for i, p in enumerate(_FIRST) if path == p), len(_FIRST))

    items.sort(key=rank)  # stable: the order inside a module is kept
