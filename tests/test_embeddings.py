"""The default ONNX embedder gives the packaged MiniLM's own vectors, without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from memos_agents.embeddings import OnnxMiniLM, SentenceTransformerEmbedder, resolve_embedder

TEXTS = ["I moved to Lisbon in May.", "My dog is called Miso.", "", "ünïcødé ☃ " * 200]


def test_onnx_matches_sentence_transformers(embedder: OnnxMiniLM) -> None:
    reference = np.array(SentenceTransformerEmbedder().embed_documents(TEXTS))
    ours = np.array(embedder.embed_documents(TEXTS))
    assert ours.shape == (4, 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(reference * ours, axis=1)) > 0.9999
    assert np.allclose(embedder.embed_query(TEXTS[0]), ours[0], atol=1e-6)
    assert embedder.name == SentenceTransformerEmbedder().name == "all-MiniLM-L6-v2"


def test_default_embedder_keeps_torch_out_of_the_process(embedder: OnnxMiniLM) -> None:
    code = (
        "import sys; from memos_agents.embeddings import resolve_embedder; "
        "e = resolve_embedder(); v = e.embed_query('hello'); "
        "print(len(v), 'torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["384", "False", "False"]
    assert isinstance(resolve_embedder("all-MiniLM-L6-v2"), OnnxMiniLM)


def test_int8_twin_is_close_named_apart_and_sticks_to_its_dir(
    embedder: OnnxMiniLM, data_dir
) -> None:
    from memos_agents import MemOS
    from memos_agents.errors import ConfigError

    int8 = resolve_embedder("all-MiniLM-L6-v2-int8")
    assert isinstance(int8, OnnxMiniLM) and int8.name == "all-MiniLM-L6-v2-int8"
    texts = [*TEXTS[:2], "Caroline went to the LGBTQ support group on 7 May 2023."]
    exact = np.array(embedder.embed_documents(texts))
    quant = np.array(int8.embed_documents(texts))
    cos = np.sum(exact * quant, axis=1)
    assert cos.min() > 0.95 and cos.max() < 0.99999  # close, yet really quantised
    assert np.allclose(np.linalg.norm(quant, axis=1), 1.0, atol=1e-5)

    mem = MemOS.open(data_dir, embedder="all-MiniLM-L6-v2-int8", graph_idle_timeout=30)
    mem.add("My dog is called Miso.", user_id="ana")
    mem.close()
    again = MemOS.open(data_dir, graph_idle_timeout=30)  # no embedder named: the dir's own
    try:
        assert again.vault.embedder.name == "all-MiniLM-L6-v2-int8"
        assert "Miso" in again.search("what is the dog's name?", user_id="ana", k=1)[0].cube.content
    finally:
        again.close()
    with pytest.raises(ConfigError, match="mix vector spaces"):
        MemOS.open(data_dir, embedder=embedder)
