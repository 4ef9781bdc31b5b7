"""Report text for mXR-0 (D6): which part of a report trains, and its fixed-vocabulary tokens per image.

:func:`prepare_report` keeps the FINDINGS and IMPRESSION sections when a report has section headers (the
parts that describe the image; history, technique and comparison do not), normalises whitespace, and
returns None for an empty report. Truncation to the encoder's length happens at tokenisation
(:class:`ReportTokens`), with the text tower's own tokenizer: no vocabulary is ever fitted to reports.

:class:`ReportBatches` adds each image's report tokens to the SSL batch of a step (keyed by the cache index,
so the DP sampler's batches get them too); an image without a report gets ``has_report = False`` and trains
the image objectives only.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

# A header at the start of a line: "FINDINGS:", "Impression -", or the word alone on its line ("IMPRESSION").
# A sentence that merely starts with the word ("Impression of a mass ...") is not a header.
_HEADER = re.compile(r"(?im)^[ \t]*(findings|impression|conclusion|history|indication|clinical history|"
                     r"technique|comparison|examination|exam|procedure|recommendations?)"
                     r"(?:[ \t]*[:\-][ \t]*|[ \t]*$)")
_KEEP = {"findings", "impression", "conclusion"}


def prepare_report(text: str | None) -> str | None:
    """The training text of a report, or None when there is none.

    Sections: with at least one header among FINDINGS / IMPRESSION / CONCLUSION, only those sections are
    kept, in their order ("findings ... impression ..."); a report without such headers is kept whole.
    Whitespace (newlines, tabs, runs of spaces) becomes single spaces. Case is left to the tokenizer (an
    uncased BERT lower-cases; a cased one keeps it).
    """
    if text is None:
        return None
    text = str(text)
    heads = list(_HEADER.finditer(text))
    if any(m.group(1).lower() in _KEEP for m in heads):
        parts = []
        for m, nxt in zip(heads, heads[1:] + [None]):
            if m.group(1).lower() in _KEEP:
                body = text[m.end():nxt.start() if nxt else len(text)]
                if body.strip():
                    parts.append(body)
        text = " ".join(parts)
    out = " ".join(text.split())
    return out or None


class ReportTokens:
    """Token ids of every cached image's report, with the text tower's tokenizer, truncated to ``max_tokens``.

    Parameters
    ----------
    records : sequence
        The image cache's kept records (``.report`` read when present; anything else has no report).
    tokenizer : transformers tokenizer (fixed vocabulary)
    max_tokens : int
        Longest sequence kept, [CLS] and [SEP] included.

    Attributes
    ----------
    ids : LongTensor [N, T]
        ``[CLS] w1 ... wk [SEP] [PAD] ...``; T = longest kept report (>= 2).
    mask : BoolTensor [N, T]
        True on real tokens.
    has_report : BoolTensor [N]
    """

    def __init__(self, records: Sequence[Any], tokenizer: Any, max_tokens: int) -> None:
        texts = [prepare_report(getattr(r, "report", None)) for r in records]
        n = len(texts)
        rows = [i for i, t in enumerate(texts) if t]
        pad = int(tokenizer.pad_token_id)
        seqs: list[list[int]] = [[] for _ in range(n)]
        if rows:
            enc = tokenizer([texts[i] for i in rows], truncation=True, max_length=int(max_tokens))
            for i, s in zip(rows, enc["input_ids"]):
                seqs[i] = list(s)
        width = max([2] + [len(s) for s in seqs])
        self.ids = torch.full((n, width), pad, dtype=torch.long)
        self.mask = torch.zeros((n, width), dtype=torch.bool)
        for i, s in enumerate(seqs):
            if s:
                self.ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
                self.mask[i, :len(s)] = True
        self.has_report = self.mask.any(dim=1)
        self.texts = texts  # stays at the site; used for identical-report matching and evaluation

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """``report_ids`` [B, T], ``report_mask`` bool [B, T], ``has_report`` bool [B] of cache indices ``idx``."""
        idx = idx.long().cpu()
        mask = self.mask[idx]
        t = max(2, int(mask.sum(dim=1).max()) if len(idx) else 2)  # trim the batch to its longest report
        return {"report_ids": self.ids[idx, :t], "report_mask": mask[:, :t], "has_report": self.has_report[idx]}


class ReportBatches:
    """A batch maker (``BatchMaker``-like: ``__call__(step, batch_size)`` and ``build(step, idx)``) whose
    batches also carry the report tokens of their images."""

    def __init__(self, maker: Any, tokens: ReportTokens) -> None:
        self.maker, self.tokens = maker, tokens

    def __getattr__(self, name: str) -> Any:  # cache, cfg, site, indices ... of the wrapped maker
        if name in ("maker", "tokens"):
            raise AttributeError(name)
        return getattr(self.maker, name)

    def __call__(self, step: int, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        return self._add(self.maker(step, batch_size))

    def build(self, step: int, idx: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self._add(self.maker.build(step, idx, **kwargs))  # e.g. DP's secret view seed

    def _add(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch.update(self.tokens.batch(batch["index"]))
        return batch
