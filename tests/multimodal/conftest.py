"""Shared fixtures: a tiny BERT folder (session-wide) and tiny mXR-0 configs."""

from __future__ import annotations

import pytest

from xr0_core.config import from_flat

from tests.multimodal.bert import write_bert_folder
from tests.tiny import tiny_flat

TINY = tiny_flat(**{"train.batch-size": 8, "model.head-out-dim": 32, "model.ibot-out-dim": 32,
                     "model.head-hidden-dim": 32, "model.head-bottleneck-dim": 16, "multimodal.enabled": True,
                     "multimodal.max-tokens": 24, "multimodal.caption-width": 32, "multimodal.proj-dim": 32})


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("pubmedbert"))


@pytest.fixture
def mm_cfg(bert_dir):
    def make(**over):
        return from_flat({**TINY, "multimodal.text-encoder": str(bert_dir), **over})
    return make
