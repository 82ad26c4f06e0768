"""The LangGraph store through the one gate: every op kind is checked and audited, only cubes
the store wrote are items (a foreign cube holding an item's id is never versioned or served),
two processes creating one key do not fail, and the LlamaIndex history key is unambiguous."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp
from memos_agents.langgraph.store import MemOSStore, encode_namespace

from memos_agents import MemOS
from memos_agents.cube import MemCube, Provenance, Scope, Visibility
from memos_agents.errors import MemOSError, ScopeViolation
from memos_agents.governance import PermissionDenied

ALICE = ("users", "alice")


def _snapshot(mem: MemOS, user: str, vault: str = "default") -> list[tuple[str, str, int]]:
    return [
        (c.id, c.content, c.lifecycle.version)
        for c in mem.list(user_id=user, vault=vault, include_deleted=True)
    ]


def _plant(mem: MemOS, cube_id: str, user_id: str, metadata: dict | None = None) -> MemCube:
    """An attacker's cube that holds `cube_id` (as an import that keeps an unused id would)."""
    cube = MemCube(
        id=cube_id,
        content="mallory's bait",
        scope=Scope(vault="langgraph", user_id=user_id),
        provenance=Provenance(created_by="user:mallory"),
        governance={"visibility": Visibility.shared},
        metadata=metadata or {},
    )
    mem.vault.add([cube], created_by="user:mallory")
    return mem.get(cube_id)


@pytest.mark.parametrize("owner", ["mallory", encode_namespace(ALICE)])
def test_a_put_never_versions_a_foreign_cube(mem: MemOS, owner: str) -> None:
    store = MemOSStore(mem)
    cid = store.cube_id(ALICE, "profile")
    forged = {"namespace": list(ALICE), "key": "profile", "value": {"name": "forged"}}
    bait = _plant(mem, cid, owner, forged)
    mem.add("bob's own note", user_id="bob")
    bystander = _snapshot(mem, "bob")
    with pytest.raises(ScopeViolation):
        store.put(ALICE, "profile", {"name": "Alice", "secret": "s3cret"})
    with pytest.raises(ScopeViolation):  # a batch with the hijacked key writes nothing at all
        store.batch([PutOp(ALICE, "other", {"v": 1}), PutOp(ALICE, "profile", {"v": 2})])
    after = mem.get(cid)
    assert (after.lifecycle.version, after.content) == (bait.lifecycle.version, bait.content)
    assert [h.version for h in mem.history(cid)] == [1]
    assert "s3cret" not in json.dumps([h.cube.metadata for h in mem.history(cid)])
    assert store.get(ALICE, "profile") is None  # the bait is not served as an item
    assert store.get(ALICE, "other") is None
    assert store.search(("users",)) == []
    store.delete(ALICE, "profile")  # not an item: nothing to delete, the bait stays as it was
    assert mem.get(cid).lifecycle.version == bait.lifecycle.version
    assert _snapshot(mem, "bob") == bystander
    refused = [e for e in mem.audit_log(limit=10_000) if e.op == "store.put"]
    assert [e.outcome for e in refused] == ["denied", "denied"]
    assert cid in refused[0].detail


def test_an_imported_cube_with_an_items_id_does_not_hijack_it(mem: MemOS, tmp_path: Path) -> None:
    store = MemOSStore(mem)
    cid = store.cube_id(ALICE, "profile")
    mallory = mem.as_principal("user:mallory")
    mem.grant_role("langgraph", "user:mallory", "writer")
    mallory.add("bait", user_id="mallory", vault="langgraph", visibility="shared")
    doc = json.loads(mallory.export(vault="langgraph", user_id="mallory").model_dump_json())
    for item in doc["cubes"]:
        old = item["cube"]["id"]
        text = json.dumps(item).replace(old, cid)
        item.clear()
        item.update(json.loads(text))
    path = tmp_path / "attack.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with contextlib.suppress(MemOSError):  # an importer that refuses the file is fine too
        mallory.import_file(path, vault="langgraph", user_id="mallory")
    try:
        store.put(ALICE, "profile", {"name": "Alice", "secret": "s3cret"})
        assert store.get(ALICE, "profile").value == {"name": "Alice", "secret": "s3cret"}
    except ScopeViolation:
        assert store.get(ALICE, "profile") is None
    seen = [c for c in mallory.list(user_id="mallory", vault="langgraph")]
    assert "s3cret" not in json.dumps([c.model_dump(mode="json") for c in seen])
    for c in seen:
        assert "s3cret" not in json.dumps([h.cube.metadata for h in mallory.history(c.id)])


def test_core_cubes_in_the_store_vault_are_not_items(mem: MemOS) -> None:
    store = MemOSStore(mem)
    user = encode_namespace(ALICE)
    forged = {"namespace": list(ALICE), "key": "profile", "value": {"name": "forged"}}
    mem.add("forged profile", user_id=user, vault="langgraph", metadata=forged)
    assert store.get(ALICE, "profile") is None
    assert store.search(("users",)) == []
    assert store.search(ALICE, query="forged profile") == []
    assert store.list_namespaces() == []
    store.put(ALICE, "profile", {"name": "Alice"})
    assert store.get(ALICE, "profile").value == {"name": "Alice"}
    assert [i.value for i in store.search(("users",))] == [{"name": "Alice"}]
    assert store.list_namespaces() == [ALICE]
    assert [h.version for h in mem.history(store.cube_id(ALICE, "profile"))] == [1]


def test_every_store_op_kind_is_gated_and_audited_once(mem: MemOS) -> None:
    store = MemOSStore(mem)
    store.put(("a",), "gone", {"v": 0})
    kinds = ("store.put", "store.delete", "store.get", "store.search", "store.list_namespaces")

    def counts() -> dict[str, int]:
        log = mem.audit_log(limit=100_000)
        return {k: sum(1 for e in log if e.op == k) for k in kinds}

    before = counts()
    store.batch(
        [
            PutOp(("a",), "k1", {"v": 1}),
            PutOp(("a",), "k2", {"v": 2}),
            PutOp(("a",), "gone", None),
            GetOp(("a",), "k1"),
            GetOp(("a",), "k2"),
            SearchOp(("a",)),
            ListNamespacesOp(),
        ]
    )
    after = counts()
    assert {k: after[k] - before[k] for k in kinds} == dict.fromkeys(kinds, 1)
    put = [e for e in mem.audit_log(limit=100_000) if e.op == "store.put"][-1]
    assert put.outcome == "ok" and put.vault == "langgraph" and put.detail == "2 op(s)"


def test_a_principal_without_a_role_is_refused_and_audited(mem: MemOS) -> None:
    MemOSStore(mem).put(ALICE, "k", {"v": 1})
    mem.add("bob's own note", user_id="bob")
    bystander = _snapshot(mem, "bob")
    mallory = MemOSStore(mem.as_principal("user:mallory"))
    for call in (
        lambda: mallory.get(ALICE, "k"),
        lambda: mallory.search(("users",)),
        lambda: mallory.list_namespaces(),
        lambda: mallory.put(ALICE, "k", {"v": "pwned"}),
        lambda: mallory.delete(ALICE, "k"),
    ):
        with pytest.raises(PermissionDenied):
            call()
    denied = [e.op for e in mem.audit_log(limit=10_000) if e.principal == "user:mallory"]
    ops = ["get", "search", "list_namespaces", "put", "delete"]
    assert denied == [f"store.{op}" for op in ops]
    assert MemOSStore(mem).get(ALICE, "k").value == {"v": 1}
    assert _snapshot(mem, "bob") == bystander


RACE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from memos_agents import MemOS
    from memos_agents.langgraph.store import MemOSStore

    data_dir, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    mem = MemOS.open(data_dir)
    store = MemOSStore(mem)
    store.put(("warm",), tag, {"v": tag})
    (data_dir / f"ready-{tag}").touch()
    deadline = time.time() + 120
    while len(list(data_dir.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.002)
    errors = []
    for i in range(n):
        try:
            store.put(("race",), f"k{i}", {"by": tag, "text": f"value {i} from {tag}"})
        except Exception as exc:
            errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
    mem.close()
    print(json.dumps(errors))
    """
)


def test_two_processes_creating_one_key(mem: MemOS, data_dir: Path) -> None:
    n = 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(data_dir), tag, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == []  # no raw database error, no error
    store = MemOSStore(mem)
    for i in range(n):
        item = store.get(("race",), f"k{i}")
        assert item is not None and item.value["by"] in ("p1", "p2")
        history = mem.history(store.cube_id(("race",), f"k{i}"))
        assert [h.op for h in history] == ["create", "update"]
        assert sorted(h.cube.metadata["value"]["by"] for h in history) == ["p1", "p2"]
        assert history[-1].cube.metadata["value"] == item.value


def test_llamaindex_history_keys_never_collide(mem: MemOS) -> None:
    from memos_agents.llamaindex import MemOSMemory

    def key(**kw: str) -> str:
        return MemOSMemory.from_defaults(mem=mem, **kw).chat_store_key

    assert key(user_id="a/b", session_id="c") != key(user_id="a", session_id="b/c")
    assert key(user_id="a", session_id="b") != key(user_id="a", session_id="b", vault="other")
    assert key(user_id="a") != key(user_id="a", session_id="a")
    assert key(user_id="a", session_id="b") == key(user_id="a", session_id="b", vault="default")
    assert json.loads(key(user_id='a","b', session_id="c")) == ["default", 'a","b', "c"]
