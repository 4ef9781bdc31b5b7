"""The mXR-0 image-report re-linkage score of the audit (issue 25): exact margins, a leak it sees, and the real
model's path (its own projections and text tower)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.multimodal.bert import write_bert_folder
from tests.multimodal.mmdata import Rec, paired_cache
from tests.tiny import tiny_flat
from xr0_core.audit import stats
from xr0_core.audit.scores import IMAGE_REPORT, ImageFeatures, image_report_scores, per_patient


class StubLinker(nn.Module):
    """Stands in for MultimodalXR0's contrastive side: report ``t`` embeds to ``vectors[t]``, an image's
    projection is its CLS token."""

    max_tokens = 4

    def __init__(self, vectors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.texts = list(vectors)
        self.table = torch.stack(list(vectors.values()))

    def tokenizer(self, texts, **_):
        ids = torch.tensor([[self.texts.index(t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def encode_text(self, ids, mask):
        return self.table[ids[:, 0]]

    def encode_image(self, cls):
        return cls


def _features(cls: torch.Tensor) -> ImageFeatures:
    n, d = cls.shape
    return ImageFeatures(center=torch.zeros(n, d), views=torch.zeros(n, 1, d), raw=cls[:, None])


def test_margin_is_own_report_minus_closest_other_patients_report():
    g = torch.Generator().manual_seed(0)
    reports = [f"report {i}" for i in range(5)]
    text = {r: torch.randn(8, generator=g) for r in reports}
    cls = torch.randn(6, 8, generator=g)
    patients = ["a", "a", "b", "c", "d", "e"]
    images_reports = [reports[0], reports[1], reports[2], None, reports[3], reports[4]]  # image 3: no report
    got = image_report_scores(StubLinker(text), _features(cls), images_reports, patients)
    assert np.isnan(got[3]) and np.isfinite(np.delete(got, 3)).all()
    rows = [0, 1, 2, 4, 5]
    zi = F.normalize(cls[rows], dim=-1)
    zt = F.normalize(torch.stack([text[images_reports[i]] for i in rows]), dim=-1)
    sim = zi @ zt.T
    for k, i in enumerate(rows):
        others = [j for j, r in enumerate(rows) if patients[r] != patients[i]]  # patient a's two reports are its own
        assert abs(got[i] - float(sim[k, k] - sim[k, others].max())) < 1e-6


def test_a_model_that_links_its_training_pairs_is_caught():
    # members: the image projection sits next to its own report's; non-members: unrelated
    g = torch.Generator().manual_seed(1)
    n = 40
    reports = [f"report {i}" for i in range(n)]
    text = {r: torch.randn(16, generator=g) for r in reports}
    member = np.arange(n) < n // 2
    cls = torch.stack([text[r] + (0.3 if m else 3.0) * torch.randn(16, generator=g) for r, m in zip(reports, member)])
    patients = [f"p{i}" for i in range(n)]
    got = per_patient(image_report_scores(StubLinker(text), _features(cls), reports, patients), patients, patients)
    assert stats.auroc(got, member) > 0.95


def test_the_audit_scores_image_report_linkage_of_a_real_mxr0_model(tmp_path):
    from xr0_core.audit.run import model_scorer
    from xr0_core.config import from_flat
    from xr0_core.eval.baseline import backbone_from_shared
    from xr0_core.ssl.factory import initial_shared_state

    cfg = from_flat(tiny_flat(**{"model.head-out-dim": 32, "model.ibot-out-dim": 32, "model.head-hidden-dim": 32,
                                 "model.head-bottleneck-dim": 16, "multimodal.enabled": True,
                                 "multimodal.max-tokens": 24, "multimodal.caption-width": 32,
                                 "multimodal.proj-dim": 32,
                                 "multimodal.text-encoder": str(write_bert_folder(tmp_path / "bert"))}))
    shared = initial_shared_state(cfg)
    images = paired_cache(10)
    patients = [r.patient_id for r in images.kept]
    scores = model_scorer(cfg, lambda: backbone_from_shared(cfg, shared), shared, n_views=2)(images, patients, patients)
    assert IMAGE_REPORT in scores and scores[IMAGE_REPORT].shape == (10,) and np.isfinite(scores[IMAGE_REPORT]).all()
    # same model, a patient without any report: the score is left out rather than computed on part of them
    images.kept = [Rec(r.path, r.patient_id, None if i == 0 else r.report, r.split) for i, r in enumerate(images.kept)]
    partial = model_scorer(cfg, lambda: backbone_from_shared(cfg, shared), shared, n_views=2)(images, patients, patients)
    assert IMAGE_REPORT not in partial and "ssl-loss" in partial
    # an exported backbone (no heads, no projections): feature scores only
    black = model_scorer(cfg, lambda: backbone_from_shared(cfg, shared), None, n_views=2)(images, patients, patients)
    assert set(black) == {"ssl-consistency", "nn-margin"}
