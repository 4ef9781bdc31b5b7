"""A PubMedBERT-layout folder written by tests: config.json, vocab.txt, pytorch_model.bin (or safetensors).

The layout is PubMedBERT's / BiomedBERT's on the hub: a ``BertForMaskedLM`` checkpoint (keys ``bert.*`` and
``cls.*``), an uncased WordPiece ``vocab.txt`` and no tokenizer_config.json. The vocabulary is MiniLM's (a
fixed English WordPiece list, never fitted to reports); the model is tiny so tests stay fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def write_bert_folder(folder: Path, *, weights: str = "bin", hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from xr0_core.models.text import default_text_encoder_dir

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(default_text_encoder_dir() / "vocab.txt", folder / "vocab.txt")
    vocab = sum(1 for _ in (folder / "vocab.txt").open())
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128, architectures=["BertForMaskedLM"])
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg)
    cfg.to_json_file(str(folder / "config.json"))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"))  # drops tied duplicates, as save_pretrained does
    return folder
