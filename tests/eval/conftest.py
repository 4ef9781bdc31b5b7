"""A small synthetic hospital with every column (images, labels, reports, masks, landmarks, boxes)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory) -> Path:
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("eval-fed")
    return write_federation(root, n_sites=1, images_per_site=36, seed=3, image_size=64)[0]


@pytest.fixture(scope="session")
def records(site_dir):
    from xr0_core.data.index import index_site

    return index_site(site_dir, verify_pixels=False).records


@pytest.fixture(scope="session")
def fast_cfg():
    from xr0_core.config import from_flat

    return from_flat({"eval.head-steps": 4, "eval.head-batch-size": 8, "eval.batch-size": 16,
                      "train.device": "cpu"})
