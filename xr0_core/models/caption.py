"""The report decoder of mXR-0: a small causal transformer conditioned on image tokens (D6, DP-Cap).

Its input and output word embeddings are tied to the text tower's embedding table (``words [V, d]``, passed
at every call): the vocabulary is the tower's fixed WordPiece vocabulary, so nothing about the site's
words is a parameter of its own, and the decoder stays small (no ``V x width`` output layer). Logits are
cosine similarities to the word vectors times a learnable scale, so towers whose embedding norms differ
(a fresh tiny BERT, MiniLM, PubMedBERT) start from the same footing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CaptionDecoder(nn.Module):
    """``(image tokens [B, M, D], ids [B, T], words [V, d]) -> logits [B, T, V]``.

    Parameters
    ----------
    image_dim : int
        Width D of the backbone's tokens (the memory the decoder attends to).
    word_dim : int
        Width d of the text tower's word embeddings.
    width, layers : int
        Decoder width (a multiple of 4: heads of 32 or fewer) and depth.
    max_len : int
        Longest token sequence (learned positions).

    References
    ----------
    Vinyals et al., "Show and Tell" (2015); Sander et al., DP-Cap (ICML 2024).
    """

    def __init__(self, image_dim: int, word_dim: int, width: int, layers: int, max_len: int) -> None:
        super().__init__()
        heads = max(1, width // 32)
        while width % heads:
            heads -= 1
        self.embed = nn.Linear(word_dim, width)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        self.memory = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, width))
        layer = nn.TransformerDecoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, word_dim)
        # Log of the cosine-logit scale; shape [1] (Flower's ArrayRecord turns 0-d arrays into [1]).
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))
        self.max_len = int(max_len)

    def hidden(self, memory: torch.Tensor, ids: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Decoder states ``[B, T, d]`` in word-embedding space (before the tied output product)."""
        t = ids.shape[1]
        if t > self.max_len:
            raise ValueError(f"caption decoder built for {self.max_len} tokens, got {t}")
        x = self.embed(F.normalize(words[ids].float(), dim=-1)) + self.pos[:t]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=ids.device), diagonal=1)
        h = self.decoder(x, self.memory(memory.float()), tgt_mask=causal)
        return self.out(self.norm(h))

    def logits(self, hidden: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., V]``: scaled cosine to every word vector."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * F.normalize(hidden, dim=-1) @ F.normalize(words.float(), dim=-1).t()

    def forward(self, memory: torch.Tensor, ids: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(memory, ids, words), words)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, words: torch.Tensor, bos: int, eos: int, pad: int,
                 max_len: int | None = None) -> torch.Tensor:
        """Greedy decoding: token ids ``[B, <= max_len - 1]`` after ``bos``, ``pad`` after each ``eos``."""
        n = min(int(max_len or self.max_len), self.max_len)
        ids = torch.full((memory.shape[0], 1), bos, dtype=torch.long, device=memory.device)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(n - 1):
            nxt = self.logits(self.hidden(memory, ids, words)[:, -1], words).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            if bool(done.all()):
                break
        return ids[:, 1:]
