"""Activation and parameter memory behind the one gate, with no model process: blob names are
names, never paths (a hostile cube's content never reaches a file outside `<data dir>/blobs`),
and every model operation (generate, its stream, build_activation, distil, load and unload of
an adapter) is checked and audited before the model process is reached or anything is written.
The scheduler's jobs are system actions, audited one entry per job.

Where a call is allowed, the model process it then asks for is an address nothing listens on:
the call gets past the gate and fails with ModelUnavailable, so no model is started."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

from memos_agents import MemOS
from memos_agents.blobs import kv_name, lora_blob_name
from memos_agents.cube import (
    Form,
    MemCube,
    Provenance,
    Scope,
    SourceKind,
    State,
    Visibility,
)
from memos_agents.errors import InvalidInput, MemOSError, NotFound
from memos_agents.governance import PermissionDenied, Role
from memos_agents.model.client import ModelUnavailable
from memos_agents.model.memory import MODEL_URL_ENV

MALLORY = "user:mallory"


def _planted(
    mem: MemOS, form: Form, content: str, derived_from: list[str], cube_id: str | None = None,
    **meta,
) -> MemCube:
    """A derived cube written straight into the catalog, as a hostile import would leave it."""
    cube = MemCube(
        id=cube_id or uuid.uuid4().hex,
        form=form,
        content=content,
        scope=Scope(vault=mem.config.vault, user_id="alice"),
        provenance=Provenance(
            source_kind=SourceKind.derived, derived_from=derived_from, created_by="user:alice"
        ),
        metadata={"sources": [[i, 1, ""] for i in derived_from], **meta},
    )
    cube.seal()
    mem.vault.catalog.insert([cube], changed_by="import")
    mem.vault.catalog.mark_committed([cube.id], {cube.id: cube.lifecycle.version})
    return cube


def _no_model_reached(mem: MemOS) -> bool:
    return mem.model_runtime.client is None and not (mem.config.data_dir / "model").exists()


@pytest.fixture
def nowhere(monkeypatch) -> str:
    """MEMOS_MODEL_URL set to a local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv(MODEL_URL_ENV, url)
    return url


def _demote_all(mem: MemOS) -> list:
    sched = mem.scheduler
    jobs = sched.tick(user_id="alice")
    assert "demote" in [j.kind for j in jobs]
    done = sched.run_pending()
    assert all(j.state == "done" for j in done), [j.error for j in done]
    return done


def test_demoting_a_cube_named_with_dots_never_deletes_outside_the_blob_folder(mem, caplog):
    data = mem.config.data_dir
    inside = data / "victim.txt"  # in the data dir, outside blobs/
    outside = data.parent / "victim.txt"  # outside the data dir
    for f in (inside, outside):
        f.write_text("keep me")
    gone = uuid.uuid4().hex  # a source that is not there: the cache has no live sources
    hostile = [
        _planted(mem, Form.activation, "kv/../../victim.txt", [gone], name="a"),
        _planted(mem, Form.activation, "kv/../../../victim.txt", [gone], name="b"),
        _planted(mem, Form.activation, str(outside), [gone], name="c"),
    ]
    with caplog.at_level(logging.WARNING, logger="memos_agents.model.memory"):
        done = _demote_all(mem)
    assert inside.read_text() == "keep me" and outside.read_text() == "keep me"
    demoted = {i for j in done if j.kind == "demote" for i in j.result["demoted"]}
    assert demoted == {c.id for c in hostile}  # the cubes are demoted, their "files" kept
    assert all(mem.get(c.id).lifecycle.state is State.archived for c in hostile)
    assert sum("not a KV blob name" in r.getMessage() for r in caplog.records) == 3
    # the direct call refuses the same way, and says so
    assert mem.model_memory.drop_blob("kv/../../victim.txt") is False
    assert inside.exists()


def test_a_blob_name_that_is_a_symlink_out_of_the_blob_folder_keeps_its_target(mem, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    fp = "ab" * 32
    link = mem.config.data_dir / "blobs" / kv_name(fp)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    real_fp = "cd" * 32
    real = mem.config.data_dir / "blobs" / kv_name(real_fp)
    real.write_bytes(b"kv")
    gone = uuid.uuid4().hex
    _planted(mem, Form.activation, kv_name(fp), [gone], name="linked", fingerprint=fp)
    _planted(mem, Form.activation, kv_name(real_fp), [gone], name="real", fingerprint=real_fp)
    _demote_all(mem)
    assert target.read_text() == "keep me" and link.is_symlink()
    assert not real.exists()  # a real blob of a demoted cache is removed
    with pytest.raises(InvalidInput, match="outside"):
        mem.model_memory.blob(Form.activation, kv_name(fp))


def test_hostile_blob_names_are_refused_before_the_model_process_is_reached(mem):
    [fact] = mem.add(["Alice's cat is named Biscuit."], user_id="alice")
    lora = _planted(mem, Form.parameter, "lora/../../../etc", [fact.id], model="m", revision="r")
    act = _planted(mem, Form.activation, "kv/../../victim.txt", [fact.id], fingerprint="0" * 64)
    calls = [
        lambda: mem.load_parameter(lora.id, user_id="alice"),
        lambda: mem.generate("q", user_id="alice", parameter=lora.id),
        lambda: mem.generate("q", user_id="alice", activation=act.id),
        lambda: mem.generate_stream("q", user_id="alice", activation=act.id),
        lambda: mem.build_activation([fact.id], user_id="alice", parameter=lora.id),
    ]
    for call in calls:
        with pytest.raises(InvalidInput, match="blob name"):
            call()
    assert _no_model_reached(mem)
    # the names we make are the blob names
    assert kv_name("e" * 64) == f"kv/{'e' * 40}.safetensors"
    assert lora_blob_name(fact.id, 3) == f"lora/{fact.id}/v3"


def test_an_adapter_folder_linked_out_of_the_blob_folder_is_never_loaded(mem, tmp_path):
    [fact] = mem.add(["Alice's cat is named Biscuit."], user_id="alice")
    elsewhere = tmp_path / "adapter"
    elsewhere.mkdir()
    (elsewhere / "adapter_config.json").write_text("{}")
    pid = uuid.uuid4().hex
    folder = mem.config.data_dir / "blobs" / "lora" / pid
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(elsewhere, target_is_directory=True)
    param = _planted(mem, Form.parameter, lora_blob_name(pid, 1), [fact.id], cube_id=pid)
    for call in (
        lambda: mem.load_parameter(param.id),
        lambda: mem.generate("q", user_id="alice", parameter=param.id),
    ):
        with pytest.raises(InvalidInput, match="outside"):
            call()
    assert _no_model_reached(mem) and (elsewhere / "adapter_config.json").exists()


def _alice(mem: MemOS) -> tuple[MemCube, MemCube, MemCube]:
    [fact] = mem.add(["Alice's PIN is 4921."], user_id="alice", tags=["secret"])
    fp = "12" * 32
    act = _planted(mem, Form.activation, kv_name(fp), [fact.id], fingerprint=fp)
    pid = uuid.uuid4().hex
    param = _planted(mem, Form.parameter, lora_blob_name(pid, 1), [fact.id], cube_id=pid)
    assert fact.governance.visibility is Visibility.private
    return fact, act, param


def _denied(mem: MemOS, principal: str, op: str) -> list:
    return [
        e
        for e in mem.audit_log()
        if e.principal == principal and e.op == op and e.outcome == "denied"
    ]


def test_a_principal_with_no_role_cannot_use_another_users_memories(mem):
    fact, act, param = _alice(mem)
    assert mem.model_memory is not None  # the system view builds it; every view shares it
    mallory = mem.as_principal(MALLORY)
    refused = {
        "generate": lambda: mallory.generate("PIN?", user_id="alice", memories=[fact.id]),
        "generate_stream": lambda: mallory.generate_stream(
            "PIN?", user_id="alice", memories=[fact.id]
        ),
        "build_activation": lambda: mallory.build_activation([fact.id], user_id="alice"),
        "distil": lambda: mallory.distil([fact.id], user_id="alice"),
        "load_parameter": lambda: mallory.load_parameter(param.id, user_id="alice"),
        "unload_parameter": lambda: mallory.unload_parameter(param.id),
    }
    before = mem.vault.catalog.stats()
    for op, call in refused.items():
        with pytest.raises(PermissionDenied) as exc:
            call()
        assert "4921" not in str(exc.value)
        assert len(_denied(mem, MALLORY, op)) == 1, op
    assert mem.vault.catalog.stats() == before  # nothing written
    assert mem.model_memory.derived(Form.activation, vault=None) == [act]
    assert _no_model_reached(mem)


def test_a_vault_reader_is_refused_each_private_cube_however_it_is_named(mem):
    fact, act, param = _alice(mem)
    mem.grant_role(mem.config.vault, MALLORY, Role.reader)
    mallory = mem.as_principal(MALLORY)
    plan = mem.scheduler.plan("PIN", user_id="alice")
    assert fact.id in plan.plaintext  # a plan (any object with these fields) names ids
    calls = [
        ("generate", lambda: mallory.generate("PIN?", user_id="alice", memories=[fact.id])),
        ("generate", lambda: mallory.generate("PIN?", user_id="alice", plan=plan)),
        ("generate", lambda: mallory.generate("PIN?", user_id="alice", activation=act.id)),
        ("generate", lambda: mallory.generate("PIN?", user_id="alice", parameter=param.id)),
        ("generate_stream", lambda: mallory.generate_stream("?", user_id="alice", memories=[fact])),
        ("load_parameter", lambda: mallory.load_parameter(param.id)),
    ]
    for i, (op, call) in enumerate(calls):
        with pytest.raises(PermissionDenied, match="may not read") as exc:
            call()
        assert "4921" not in str(exc.value)
        [entry] = [e for e in _denied(mem, MALLORY, op) if e.seq > i and e.op == op][-1:]
        assert fact.id in entry.cube_ids or param.id in entry.cube_ids
    assert len([e for e in mem.audit_log() if e.principal == MALLORY]) == len(calls)
    # a reader may not write into alice's memory; by tag, only what it may read is distilled
    with pytest.raises(PermissionDenied, match="may not write"):
        mallory.build_activation([fact.id], user_id="alice")
    mem.grant_role(mem.config.vault, MALLORY, Role.writer)
    with pytest.raises(NotFound, match="tagged"):
        mallory.distil(tag="secret", user_id="alice")
    with pytest.raises(PermissionDenied, match="may not read"):
        mallory.build_activation([fact.id], user_id="alice")
    assert [c.id for c in mem.model_memory.derived(Form.activation, vault=None)] == [act.id]
    assert _no_model_reached(mem)


def test_allowed_calls_pass_the_gate_once_and_are_audited(mem, nowhere):
    fact, act, _ = _alice(mem)
    mallory = mem.as_principal(MALLORY)
    mem.share(fact.id, MALLORY, "read")
    mem.grant_role(mem.config.vault, MALLORY, Role.reader)
    n = len(mem.audit_log())
    with pytest.raises(ModelUnavailable):  # past the gate: the model is asked for
        mallory.generate("PIN?", user_id="alice", memories=[fact.id])
    with pytest.raises(ModelUnavailable):
        mem.as_principal("user:alice").build_activation([fact.id], user_id="alice")
    new = [e for e in mem.audit_log()[n:] if e.op != "audit_log"]
    assert [(e.principal, e.op, e.outcome) for e in new] == [
        (MALLORY, "generate", "ok"),
        ("user:alice", "build_activation", "ok"),
    ]
    assert new[0].cube_ids == [fact.id]
    assert [c.id for c in mem.model_memory.derived(Form.activation, vault=None)] == [act.id]


def test_refusals_are_memos_errors_naming_the_problem(mem):
    mallory = mem.as_principal(MALLORY)
    for bad in ("", "a\x00b", 7):
        with pytest.raises(InvalidInput):
            mallory.generate("q", user_id=bad)
    with pytest.raises(MemOSError):
        mallory.load_parameter("no-such-cube")
    assert _no_model_reached(mem)


def test_each_scheduler_job_writes_one_system_audit_entry(mem):
    gone = uuid.uuid4().hex
    cube = _planted(mem, Form.activation, kv_name("9" * 64), [gone], fingerprint="9" * 64)
    n = len(mem.audit_log())
    [job] = _demote_all(mem)
    new = [e for e in mem.audit_log()[n:] if e.op.startswith("scheduler.")]
    assert [(e.principal, e.op, e.cube_ids) for e in new] == [
        ("system", "scheduler.demote", [cube.id])
    ]
    assert job.id in new[0].detail


def test_the_scheduler_is_the_systems_own_worker(mem):
    [fact] = mem.add(["Alice's PIN is 4921."], user_id="alice")
    for who in (MALLORY, "user:alice"):
        with pytest.raises(PermissionDenied, match="scheduler"):
            mem.as_principal(who).scheduler.plan("PIN", user_id="alice")
    denied = [e for e in mem.audit_log() if e.op == "scheduler" and e.outcome == "denied"]
    assert [e.principal for e in denied] == [MALLORY, "user:alice"]
    # a view of the system made before the scheduler was built uses the system's search
    sched = mem.as_principal("system").scheduler
    sched.tick(user_id="alice")
    assert fact.id in sched.plan("PIN", user_id="alice").plaintext


HOSTILE_GENERATION = [
    {"prompt": 7},
    {"prompt": None},
    {"prompt": [5]},
    {"prompt": []},
    {"memories": 7},
    {"memories": [{}]},
    {"memories": ["\x00"]},
    {"activation": 7},
    {"parameter": ["x"]},
    {"plan": object()},
    {"system_prompt": 3},
]
HOSTILE_OPTIONS = [
    {"name": 7},
    {"name": "a\x00"},
    {"steps": 0},
    {"steps": True},
    {"lr": "x"},
    {"rank": 1.5},
]


def test_hostile_arguments_are_documented_errors_before_the_model_is_reached(mem):
    [fact] = mem.add(["Alice's cat is named Biscuit."], user_id="alice")
    alice = mem.as_principal("user:alice")
    for kw in HOSTILE_GENERATION:
        kw = dict(kw)
        with pytest.raises((InvalidInput, NotFound)):
            alice.generate(kw.pop("prompt", "q"), user_id="alice", **kw)
    for kw in HOSTILE_OPTIONS:
        with pytest.raises(InvalidInput):
            alice.distil([fact.id], user_id="alice", **kw)
        if set(kw) == {"name"}:
            with pytest.raises(InvalidInput):
                alice.build_activation([fact.id], user_id="alice", **kw)
    with pytest.raises(InvalidInput):
        alice.build_activation(7, user_id="alice")
    assert _no_model_reached(mem)
