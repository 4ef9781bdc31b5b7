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


# --- Two test processes (scripts/test.sh runs `pytest -n 2 --dist loadgroup`, pytest-xdist) -----------------
# The suite's long pole is tests/deploy (a real SuperLink and SuperNodes, mostly waiting on processes): on a
# second worker it overlaps with the CPU-bound rest. Each module stays on one worker (its module-scoped
# fixtures, e.g. the deployment, are set up once), the whole of tests/deploy shares one worker (its tests run
# `flwr` against SuperLinks of their own and a shared FLWR_HOME would mix them), and the longest groups are
# handed out first so that the last one to finish does not start last.
# xdist hands each worker one group, then a second one to queue behind it: the third group here waits behind
# tests/deploy, so it is a short one.
_FIRST = ("tests/deploy/", "tests/dashboard/test_live_browser.py", "tests/test_layers.py",
          "tests/simulation/test_simulate_cli.py", "tests/secagg/test_simulation.py")


def _group_of(item: pytest.Item) -> str:
    path = Path(str(item.path)).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    return "tests/deploy" if path.startswith("tests/deploy/") else path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = _group_of(item)
        return next((i for i, p in enumerate(_FIRST) if path.startswith(p.rstrip("/"))), len(_FIRST))

    items.sort(key=rank)  # stable: the order inside a module is kept
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(_group_of(item)))
