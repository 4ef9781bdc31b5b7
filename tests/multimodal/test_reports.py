"""Report text preparation: sections, whitespace, truncation with the fixed tokenizer."""

from __future__ import annotations

import torch

from xr0_core.data.reports import ReportTokens, prepare_report
from xr0_core.models.text import load_text_encoder

from tests.multimodal.mmdata import Rec


def test_findings_and_impression_are_kept_other_sections_dropped():
    text = ("EXAMINATION: CHEST PA\nHISTORY: cough, John Smith\n\nFINDINGS:  Small left\n  effusion.\t\n"
            "IMPRESSION: Effusion.\nRECOMMENDATION: follow up")
    assert prepare_report(text) == "Small left effusion. Effusion."
    assert prepare_report("Findings - no acute fracture") == "no acute fracture"
    assert prepare_report("HISTORY: fall\nIMPRESSION\nNo fracture.") == "No fracture."
    # A sentence that starts with a section word is text, not a header.
    assert prepare_report("Impression of a mass in the\nleft lung.") == "Impression of a mass in the left lung."


def test_reports_without_sections_are_kept_whole_and_whitespace_normalised():
    assert prepare_report("  PA view of the chest.\n\nNo effusion.  ") == "PA view of the chest. No effusion."
    assert prepare_report("") is None and prepare_report("   \n") is None and prepare_report(None) is None


def test_tokens_truncate_to_max_tokens_and_mark_images_without_report(bert_dir):
    tok, _ = load_text_encoder(bert_dir)
    recs = [Rec("a", "p", "word " * 100), Rec("b", "p", None), Rec("c", "p", "IMPRESSION: nodule")]
    t = ReportTokens(recs, tok, max_tokens=16)
    assert t.ids.shape == (3, 16)
    assert t.has_report.tolist() == [True, False, True]
    assert t.ids[0, 0] == tok.cls_token_id and t.ids[0, 15] == tok.sep_token_id  # truncated, still closed
    assert not t.mask[1].any()
    assert tok.decode(t.ids[2][t.mask[2]], skip_special_tokens=True) == "nodule"
    b = t.batch(torch.tensor([2, 1]))
    assert b["report_ids"].shape[1] == int(t.mask[2].sum())  # trimmed to the batch's longest report
    assert b["has_report"].tolist() == [True, False]
