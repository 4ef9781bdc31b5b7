"""Report generation from ``report``: a small transformer decoder on frozen image tokens (D8).

Tokens come from the frozen text tower's tokenizer and its frozen word-embedding table (no vocabulary is
fitted to the reports, D6); the decoder predicts only over the WordPiece ids that occur in the site's train
reports (a subset of the fixed vocabulary; it never leaves the site), which keeps the output layer small on
CPU. Training: teacher forcing, cross-entropy. Decoding: greedy, up to the longest train report.

Metrics against the lower-cased reference: BLEU-4 (sacrebleu, in [0, 1]) and ROUGE-L F (rouge-score).

References: Vinyals et al., "Show and Tell" (2015); Sellam et al., DP-Cap (2024) for captioning as the
per-sample image-text objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.eval import metrics
from xr0_core.eval.tasks.base import (
    TEST,
    TRAIN,
    EvalSet,
    Features,
    TaskContext,
    TaskOutput,
    init_head,
    normalise_text,
    seeded,
    train_head,
)

FAMILY = "report_generation"
TASK = f"{FAMILY}/report"
WIDTH = 128
LAYERS = 1
MAX_TOKENS = 64


def plan(data: EvalSet) -> tuple[list[str], list[str]]:
    if any(r.report for r in data.records):
        return [TASK], []
    return [], [f"{FAMILY}: no report column"]


@dataclass
class Prepared:
    train: list[int]
    test: list[int]
    ids: torch.Tensor  # [N_train, T] local vocabulary indices, PAD where absent
    vocab: torch.Tensor  # [V_local] tokenizer ids; index 0 = PAD, 1 = BOS ([CLS]), 2 = EOS ([SEP])
    references: list[str]  # normalised test reports


PAD, BOS, EOS = 0, 1, 2


def prepare(task: str, data: EvalSet, ctx: TaskContext) -> Prepared | str:
    tr = [i for i in data.rows(TRAIN) if data.records[i].report]
    te = [i for i in data.rows(TEST) if data.records[i].report]
    if not tr or not te:
        return f"{task}: needs rows with a report in both train and test"
    if ctx.text is None:
        return f"{task}: no text encoder available"
    tok = ctx.text.tower.tokenizer
    enc = tok([normalise_text(data.records[i].report) for i in tr], truncation=True, max_length=MAX_TOKENS)
    seqs = [list(s) for s in enc["input_ids"]]  # [CLS] ... [SEP]
    specials = [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id]
    words = sorted({t for s in seqs for t in s} - set(specials))
    vocab = torch.tensor(specials + words)
    local = {int(t): k for k, t in enumerate(vocab.tolist())}
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for n, s in enumerate(seqs):
        ids[n, :len(s)] = torch.tensor([local[t] for t in s])
    refs = [normalise_text(data.records[i].report) for i in te]
    return Prepared(tr, te, ids, vocab, refs)


class ReportDecoder(nn.Module):
    """Causal transformer decoder over image tokens; ``(memory [B, 1+N, D], ids [B, T]) -> logits [B, T, V]``."""

    def __init__(self, dim: int, word_embeddings: torch.Tensor, max_len: int) -> None:
        super().__init__()
        self.register_buffer("words", word_embeddings, persistent=False)  # frozen [V_local, text_dim]
        self.embed = nn.Linear(word_embeddings.shape[1], WIDTH)
        self.pos = nn.Parameter(torch.zeros(max_len, WIDTH))
        self.memory = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, WIDTH))
        layer = nn.TransformerDecoderLayer(WIDTH, 4, 2 * WIDTH, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, LAYERS)
        self.out = nn.Linear(WIDTH, word_embeddings.shape[0])

    def forward(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.embed(self.words[ids]) + self.pos[:t]
        causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        return self.out(self.decoder(x, self.memory(memory.float()), tgt_mask=causal))


def _memory(feats: Features, rows: list[int]) -> torch.Tensor:
    return torch.cat([feats.cls[rows].unsqueeze(1), feats.patches[rows].float()], 1)


@torch.no_grad()
def greedy(head: ReportDecoder, memory: torch.Tensor, max_len: int) -> torch.Tensor:
    """Local-vocabulary ids ``[B, <= max_len]`` after BOS, stopping at EOS (later positions PAD)."""
    ids = torch.full((memory.shape[0], 1), BOS, dtype=torch.long)
    done = torch.zeros(memory.shape[0], dtype=torch.bool)
    for _ in range(max_len - 1):
        nxt = head(memory, ids)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        done |= nxt == EOS
        ids = torch.cat([ids, nxt[:, None]], 1)
        if bool(done.all()):
            break
    return ids[:, 1:]


def run(task: str, data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> TaskOutput:
    max_len = prep.ids.shape[1]
    words = ctx.text.tower.word_embeddings[prep.vocab]
    head = init_head(lambda: ReportDecoder(feats.dim, words, max_len), ctx.seed, task)
    mem_tr = _memory(feats, prep.train)

    def loss(idx: torch.Tensor) -> torch.Tensor:
        ids = prep.ids[idx]
        logits = head(mem_tr[idx], ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=PAD)

    train_head(head, loss, len(prep.train), ctx.budget, seeded(ctx.seed, task, "batches"))
    tok = ctx.text.tower.tokenizer
    hyps = []
    for s in range(0, len(prep.test), 64):
        out = greedy(head, _memory(feats, prep.test[s:s + 64]), max_len)
        for seq in out.tolist():
            kept = [prep.vocab[t].item() for t in seq if t not in (PAD, BOS)]
            kept = kept[:kept.index(tok.sep_token_id)] if tok.sep_token_id in kept else kept
            hyps.append(normalise_text(tok.decode(kept, skip_special_tokens=True)))
    examples = [{"generated": h, "reference": r} for h, r in list(zip(hyps, prep.references))[:ctx.examples]]
    each = metrics.rouge_l_each(hyps, prep.references)  # [M]
    return TaskOutput({"bleu4": metrics.bleu4(hyps, prep.references),
                       "rouge-l": float(each.mean()) if len(each) else float("nan")}, len(prep.test), examples,
                      per_row={"rouge-l": each}, rows=list(prep.test))
