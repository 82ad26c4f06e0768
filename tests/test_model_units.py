"""The pieces of activation / parameter memory that need no model process: fingerprints, the
memory block, KV blobs, the LRU pool, cache forks, training examples, streamed-chunk and error
handling of the client, and the token-to-text step of generation."""

from __future__ import annotations

import subprocess
import sys
import threading

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
    def asked(e: dict) -> str:
        return next(m["content"] for m in e["messages"] if m["role"] == "user")

    prompts = {asked(e) for e in train if "messages" in e}
    assert {"text": "Vexa Thorne sails the Gilded Heron."} in train
    assert test and all(asked(e) not in prompts for e in test)
    # "x y" names no subject to ask about: it is trained on as text, never probed
    assert {e["completion"] for e in test} == {"Vexa Thorne sails the Gilded Heron."}


def test_importing_the_model_package_loads_neither_torch_nor_the_sdk():
    code = (
        "import sys, memos_agents.model as m; m.ModelError; m.lora_name; "
        "print(sorted(k for k in ('torch', 'openai', 'transformers') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_streamed_chunks_and_sdk_errors_map_to_ours():
    openai = pytest.importorskip("openai")
    import httpx
    from openai.types.chat import ChatCompletionChunk

    from memos_agents.model.client import (
        ActivationRefused,
        Completion,
        ModelError,
        ModelUnauthorized,
        ModelUnavailable,
        absorb_chunk,
        model_error,
    )

    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Bis"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "cuit"}}]},
        {
            **head,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "memos": {"timings": {"first_token_s": 0.1}},
        },
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 2,
                "total_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        },
    ]
    result = Completion(text="", finish_reason=None)
    text = "".join(absorb_chunk(ChatCompletionChunk.model_validate(c), result) for c in chunks)
    assert text == "Biscuit" and result.finish_reason == "stop"
    assert result.timings == {"first_token_s": 0.1} and result.cached_tokens == 4
    assert result.usage == chunks[-1]["usage"]  # as sent: no fields the server did not send

    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    refusal = {"message": "fingerprint differs", "type": "activation_refused", "code": 409}
    resp = httpx.Response(409, json={"error": refusal}, request=request)
    err = model_error(openai.APIStatusError("x", response=resp, body=refusal), "u")
    assert type(err) is ActivationRefused and err.status == 409
    assert str(err) == "model process: fingerprint differs"
    midway = model_error(openai.APIError("boom", request, body={"message": "boom"}), "u")
    assert type(midway) is ModelError and "boom" in str(midway)
    denied = {"message": "missing or wrong bearer token", "type": "authentication_error"}
    resp = httpx.Response(401, json={"error": denied}, request=request)
    err = model_error(openai.AuthenticationError("x", response=resp, body=denied), "u")
    assert type(err) is ModelUnauthorized and err.status == 401 and "bearer token" in str(err)
    gone = model_error(openai.APIConnectionError(request=request), "http://127.0.0.1:1")
    assert isinstance(gone, ModelUnavailable) and "no model process answers" in str(gone)


torch = pytest.importorskip("torch")


PIECES = {1: b"Hel", 2: b"lo", 3: b" w", 4: b"\xc3", 5: b"\xa9", 6: b"!", 7: b" STOP", 8: b"x"}


class _ByteTokenizer:
    """Token i is the bytes PIECES[i]; decoding joins bytes, as byte-level BPE does."""

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def _run_text_out(tokens, stop=(), cancel_after=None):
    from memos_agents.model.engine import _TextOut

    deltas: list[str] = []
    cancel = threading.Event()
    out = _TextOut(
        _ByteTokenizer(), {0}, list(stop), lambda e: deltas.append(e["delta"]), cancel, 2
    )
    seq = [9, 9]
    for i, t in enumerate(tokens):
        seq.append(t)
        if cancel_after is not None and i == cancel_after:
            cancel.set()
        if bool(out(torch.tensor([seq]), None)[0]):
            break
    return out, deltas


def test_generation_text_waits_for_whole_characters_and_cuts_at_stop_strings():
    out, deltas = _run_text_out([1, 2, 3, 4, 5, 6, 0, 8])
    assert deltas == ["Hel", "lo", " w", "\u00e9", "!"]  # half of é is held back, not emitted
    assert (
        out.text == "Hello w\u00e9!" and out.finish == "stop" and out.produced == [1, 2, 3, 4, 5, 6]
    )
    assert out.first_token_at is not None

    out, deltas = _run_text_out([1, 2, 7, 8], stop=[" ST"])
    assert out.text == "Hello" and "".join(deltas) == "Hello" and out.finish == "stop"
    assert out.produced == [1, 2, 7]  # the token that completed the stop string is counted

    out, _ = _run_text_out([1, 2, 3, 8, 8], cancel_after=1)
    assert out.finish == "cancelled" and out.text == "Hello"

    out, _ = _run_text_out([1, 2, 3])
    assert out.finish == "length" and out.text == "Hello w"


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


def test_response_format_becomes_the_schema_the_engine_decodes_under():
    pytest.importorskip("fastapi")
    from memos_agents.model.protocol import RequestError
    from memos_agents.model.server import json_schema_of

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert json_schema_of(None) is None and json_schema_of({"type": "text"}) is None
    assert json_schema_of({"type": "json_object"}) == {"type": "object"}
    rf = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}
    assert json_schema_of(rf) == schema
    for bad in ({"type": "json_schema"}, {"type": "xml"}, "json"):
        with pytest.raises(RequestError) as err:
            json_schema_of(bad)
        assert err.value.status == 400


def test_structured_output_of_the_chat_model_parses_or_says_why():
    from langchain_core.messages import AIMessage
    from pydantic import BaseModel

    from memos_agents.errors import ExtractionError
    from memos_agents.model.chat import MemOSChatModel, parse_structured, response_format

    class Pet(BaseModel):
        name: str

    rf = response_format(Pet)
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Pet"
    assert rf["json_schema"]["schema"]["required"] == ["name"]
    assert response_format({"title": "X", "type": "object"})["json_schema"]["name"] == "X"
    done = {"finish_reason": "stop"}
    assert parse_structured(Pet, AIMessage('{"name": "Miso"}', response_metadata=done)) == Pet(
        name="Miso"
    )
    assert parse_structured({"type": "object"}, AIMessage('{"a": 1}', response_metadata=done)) == {
        "a": 1
    }
    cut = AIMessage('{"name": "Mi', response_metadata={"finish_reason": "length"})
    with pytest.raises(ExtractionError, match="max_tokens"):
        parse_structured(Pet, cut)
    with pytest.raises(ExtractionError, match="not JSON"):
        parse_structured(Pet, AIMessage("Miso", response_metadata=done))
    with pytest.raises(ExtractionError, match="does not fit Pet"):
        parse_structured(Pet, AIMessage('{"age": 3}', response_metadata=done))
    llm = MemOSChatModel(base_url="http://127.0.0.1:9/v1", model="m")
    body = llm.with_structured_output(Pet).first.kwargs  # type: ignore[attr-defined]
    assert body == {"response_format": rf}
    with pytest.raises(ValueError, match="unsupported"):
        llm.with_structured_output(Pet, tools=[])
