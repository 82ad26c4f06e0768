"""Fine-mode extraction with the packaged SmolLM2-135M: the reader asks the local chat model for
structured output, the model process decodes under the JSON schema, so every reply parses; the
facts keep the LoCoMo dia_ids of the turns they come from.

The 20 turns in `data/locomo_20_turns.json` are the first 20 of LoCoMo conversation conv-26
(session 1, and the start of session 2). The model process is the one of `tests/test_model.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from memos_agents import MemOS
from memos_agents.cube import SourceKind
from memos_agents.formats import read_batches
from memos_agents.reader import MemReader

TURNS = Path(__file__).resolve().parent / "data" / "locomo_20_turns.json"
WINDOW = 2  # turns per extraction: one exchange


class _Structured:
    """A chat model with structured output (as ChatOpenAI has): records the schema asked for."""

    def __init__(self) -> None:
        self.schemas: list[Any] = []

    def with_structured_output(self, schema: Any) -> Any:
        self.schemas.append(schema)
        fact = {"text": "Alice adopted a dog named Miso.", "source_turns": [1], "entities": [
            "Miso", "Bob"], "tags": ["pets", "pets"], "importance": 0.7}
        return _Reply(schema.model_validate({"facts": [fact]}))


class _Reply:
    def __init__(self, out: Any) -> None:
        self.out = out

    def invoke(self, _prompt: Any) -> Any:
        return self.out


def test_fine_mode_takes_any_chat_model_with_structured_output():
    llm = _Structured()
    msgs = [
        {"speaker": "Bob", "content": "Any news?", "id": "t1"},
        {"speaker": "Alice", "content": "I adopted a dog, Miso!", "id": "t2"},
    ]
    [draft] = MemReader(llm=llm).read_messages(msgs, mode="fine")
    assert draft.text == "Alice adopted a dog named Miso." and draft.source_refs == ["t2"]
    assert draft.speaker == "Alice" and draft.importance == 0.7 and draft.tags == ["pets"]
    assert draft.entities == ["Miso"]  # Bob is named in neither the fact nor its turn
    fact = llm.schemas[0].model_json_schema()["$defs"]["Fact"]
    assert fact["properties"]["source_turns"]["items"]["enum"] == [0, 1]  # turns that exist
    assert set(fact["required"]) == {"text", "source_turns", "entities", "tags", "importance"}


@pytest.mark.slow  # 20 turns through the local model take minutes on 2 cores
def test_fine_mode_with_the_local_model_gives_valid_facts_with_provenance(
    lm, tmp_path, embedder
):
    llm = lm.chat_model(max_tokens=512)
    fine = MemOS.open(tmp_path / "fine", embedder=embedder, llm=llm, graph_idle_timeout=30)
    windows: list[list[dict[str, Any]]] = []
    for batch in read_batches(TURNS):
        windows += [batch.messages[i : i + WINDOW] for i in range(0, len(batch.messages), WINDOW)]
    assert sum(len(w) for w in windows) == 20
    facts = 0
    started = time.perf_counter()
    try:
        for window in windows:
            ids = {m["id"] for m in window}
            cubes = fine.add(window, user_id="conv-26", mode="fine")  # raises if a reply fails
            for cube in cubes:
                assert cube.content.strip()
                assert cube.provenance.source_kind is SourceKind.extraction
                assert cube.provenance.source_refs and set(cube.provenance.source_refs) <= ids
                assert cube.provenance.speaker in {m["speaker"] for m in window}
            facts += len(cubes)
        stored = fine.search("painting", user_id="conv-26", k=3)
    finally:
        fine.close()
    elapsed = time.perf_counter() - started
    assert facts >= len(windows) // 2
    assert stored and all(h.cube.provenance.source_refs for h in stored)
    print(f"{len(windows)} extractions, {facts} facts, {elapsed / len(windows):.1f} s each")
