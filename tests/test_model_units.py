"""The pieces of activation / parameter memory that need no model process: fingerprints, the
memory block, KV blobs, the LRU pool, cache forks, training examples."""

from __future__ import annotations

import pytest

from memos_agents.cube import MemCube, Organisation, Provenance, Scope
from memos_agents.model.examples import held_out, training_examples
from memos_agents.model.protocol import (
    DEFAULT_SYSTEM_PROMPT,
    activation_fingerprint,
    memory_block,
    memory_messages,
)

IDENTITY = {"model": "m", "revision": "r1", "dtype": "float32", "template_sha": "t1"}


def _cube(text: str, version: int = 1, entities: list[str] | None = None) -> MemCube:
    c = MemCube(
        content=text,
        scope=Scope(user_id="u"),
        provenance=Provenance(created_by="user:u"),
        organisation=Organisation(entities=entities or []),
    )
    c.lifecycle.version = version
    return c.seal()


def test_fingerprint_covers_model_template_prompt_adapter_and_each_source_version():
    a, b = _cube("Alice has a cat."), _cube("Bob has a dog.")
    base = activation_fingerprint(IDENTITY, [a, b], None)
    assert base == activation_fingerprint(dict(IDENTITY), [a, b], DEFAULT_SYSTEM_PROMPT)
    variants = [
        activation_fingerprint({**IDENTITY, "model": "other"}, [a, b], None),
        activation_fingerprint({**IDENTITY, "revision": "r2"}, [a, b], None),
        activation_fingerprint({**IDENTITY, "dtype": "bfloat16"}, [a, b], None),
        activation_fingerprint({**IDENTITY, "template_sha": "t2"}, [a, b], None),
        activation_fingerprint(IDENTITY, [a, b], "another prompt"),
        activation_fingerprint(IDENTITY, [a, b], None, adapter="memos-x-v1"),
        activation_fingerprint(IDENTITY, [b, a], None),
        activation_fingerprint(IDENTITY, [a], None),
    ]
    edited = a.model_copy(deep=True)
    edited.content = "Alice has two cats."
    edited.lifecycle.version = 2
    variants.append(activation_fingerprint(IDENTITY, [edited.seal(), b], None))
    assert len({base, *variants}) == len(variants) + 1


def test_memory_block_grows_at_the_end_so_a_cached_block_stays_a_prefix():
    one = memory_block(["a fact", "multi\nline"])
    two = memory_block(["a fact", "multi\nline", "one more"])
    assert two.startswith(one)
    assert "- multi line" in one  # a memory is one line of the block
    msgs = memory_messages(
        ["x"], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "Be brief." in msgs[0]["content"] and msgs[0]["content"].endswith("- x")


def test_training_examples_and_held_out_phrasings_differ():
    cubes = [_cube("Vexa Thorne sails the Gilded Heron.", entities=["Vexa Thorne"]), _cube("x y")]
    train = training_examples(cubes)
    test = held_out(cubes)
    prompts = {e["messages"][0]["content"] for e in train if "messages" in e}
    assert {"text": "Vexa Thorne sails the Gilded Heron."} in train
    assert all(e["messages"][0]["content"] not in prompts for e in test)
    assert {e["completion"] for e in test} == {c.content for c in cubes}


torch = pytest.importorskip("torch")


def _cache(tokens: int, layers: int = 2, seed: int = 0):
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for i in range(layers):
        k = torch.randn(1, 3, tokens, 8, generator=g)
        cache.update(k, k + 1, i)
    return cache


def test_fork_never_touches_the_stored_cache():
    from memos_agents.model.kv import fork

    stored = _cache(10)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in stored.layers]
    child = fork(stored, None)
    child.crop(-4)
    for i in range(2):
        child.update(torch.ones(1, 3, 5, 8), torch.ones(1, 3, 5, 8), i)
    assert child.get_seq_length() == 11
    assert stored.get_seq_length() == 10
    for layer, (k, v) in zip(stored.layers, before, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_blob_round_trip_and_refusals(tmp_path):
    from memos_agents.model.kv import BlobRefused, KVEntry, load_blob, save_blob

    cache = _cache(6)
    meta = {**IDENTITY, "adapter": "", "layers": "2", "tokens": "6"}
    path = tmp_path / "kv" / "blob.safetensors"
    save_blob(path, KVEntry("fp1", cache, [1, 2, 3, 4, 5, 6], meta, 0))
    got = load_blob(path, IDENTITY, "fp1", None)
    assert got.prefix_ids == [1, 2, 3, 4, 5, 6]
    assert torch.equal(got.cache.layers[1].values, cache.layers[1].values)
    with pytest.raises(BlobRefused, match="revision"):
        load_blob(path, {**IDENTITY, "revision": "r2"}, "fp1", None)
    with pytest.raises(BlobRefused, match="fingerprint"):
        load_blob(path, IDENTITY, "fp-of-other-memories", None)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BlobRefused):
        load_blob(path, IDENTITY, "fp1", None)
    with pytest.raises(BlobRefused, match="no activation blob"):
        load_blob(tmp_path / "missing.safetensors", IDENTITY, "fp1", None)


def test_pool_evicts_least_recently_used_within_its_byte_budget():
    from memos_agents.model.kv import KVEntry, KVPool, cache_nbytes

    entries = [
        KVEntry(f"fp{i}", c, [], {}, cache_nbytes(c))
        for i, c in enumerate(_cache(4, seed=s) for s in range(4))
    ]
    size = entries[0].nbytes
    pool = KVPool(budget_bytes=3 * size)
    for e in entries[:3]:
        assert pool.put(e)
    assert pool.get("fp0") is not None  # fp1 is now the least recently used
    assert pool.put(entries[3])
    assert pool.get("fp1") is None and pool.get("fp0") is not None
    assert pool.used <= pool.budget and pool.stats()["evictions"] == 1
    big = KVEntry("big", _cache(64), [], {}, cache_nbytes(_cache(64)))
    assert not pool.put(big)  # larger than the whole budget: used once, never held
    assert pool.stats()["entries"] == 3
