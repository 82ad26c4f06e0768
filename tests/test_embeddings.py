"""The default ONNX embedder gives the packaged MiniLM's own vectors, without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

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
