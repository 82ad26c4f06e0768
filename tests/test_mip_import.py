"""MIP import is untrusted input; export carries the blobs (a lossless round trip for all three
forms). Hostile files are refused whole: nothing is written. Real stores, no model run."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from memos_agents import MemOS
from memos_agents.blobs import blob_path, kv_name, lora_blob_name
from memos_agents.cube import (
    ActivationMeta,
    Form,
    MemCube,
    Provenance,
    Scope,
    SourceKind,
    new_id,
)
from memos_agents.errors import InvalidInput
from memos_agents.governance import PermissionDenied
from memos_agents.graph.falkordb_server import stop_server
from memos_agents.reader import MAX_TEXT


def exported(mem: MemOS, **filters) -> dict:
    return json.loads(mem.export(**filters).model_dump_json())


def reseal(cube: dict) -> None:
    """What an attacker can do: recompute a cube's fingerprint after editing it."""
    c = MemCube.model_validate(cube)
    cube["governance"]["fingerprint"] = c.compute_fingerprint()


def write(tmp_path: Path, doc: dict, name: str = "f.mip.json") -> Path:
    f = tmp_path / name
    f.write_text(json.dumps(doc), encoding="utf-8")
    return f


def snapshot(mem: MemOS) -> tuple[int, int, list]:
    cat = mem.vault.catalog
    cubes = cat.list(limit=100_000)
    return (
        len(cubes),
        sum(len(cat.history(c.id)) for c in cubes),
        sorted((c.id, c.lifecycle.version, c.content) for c in cubes),
    )


def refused(mem: MemOS, f: Path, match: str, error=InvalidInput, **kw) -> None:
    before = snapshot(mem)
    blobs = sorted(p for p in (mem.config.data_dir / "blobs").rglob("*"))
    with pytest.raises(error, match=match):
        mem.import_file(f, **kw)
    assert snapshot(mem) == before
    assert sorted(p for p in (mem.config.data_dir / "blobs").rglob("*")) == blobs
    assert mem.vault.catalog.pending() == []


def one_cube(mem: MemOS, text: str = "Alice likes jazz.", user: str = "alice") -> dict:
    mem.add(text, user_id=user)
    doc = exported(mem, user_id=user)
    doc["cubes"] = doc["cubes"][-1:]
    return doc


# G: hostile files
def test_blob_path_in_content_is_refused_and_nothing_is_written(mem: MemOS, tmp_path) -> None:
    victim = tmp_path / "x"
    victim.write_text("precious")
    doc = one_cube(mem)
    for version in [doc["cubes"][0]["cube"], *(v["cube"] for v in doc["cubes"][0]["versions"])]:
        version["form"] = "activation"
        version["content"] = "kv/../../../x"
        version["metadata"] = {"fingerprint": "0" * 64, "sources": []}
        reseal(version)
    refused(mem, write(tmp_path, doc), "blob name")
    for content in (str(victim), "kv/" + "0" * 40 + ".safetensors/../../x", "lora/../../x/v1"):
        for version in [doc["cubes"][0]["cube"], *(v["cube"] for v in doc["cubes"][0]["versions"])]:
            version["content"] = content
            version["form"] = "parameter" if content.startswith("lora") else "activation"
            reseal(version)
        refused(mem, write(tmp_path, doc), "blob name")
    mem.scheduler.tick()
    mem.scheduler.run_pending()
    assert victim.read_text() == "precious"


def test_forged_content_is_refused_not_resealed(mem: MemOS, tmp_path) -> None:
    doc = one_cube(mem)
    item = doc["cubes"][0]
    item["cube"]["content"] = "Alice owes Mallory 1000 EUR."
    item["versions"][-1]["cube"]["content"] = "Alice owes Mallory 1000 EUR."
    f = write(tmp_path, doc)
    refused(mem, f, "fingerprint")
    refused(mem, f, "fingerprint", vault="elsewhere", user_id="mallory")  # re-scoped too
    # an edited earlier version is forged history
    mem.update(mem.list(user_id="alice")[0].id, "Alice likes blues.")
    doc = exported(mem, user_id="alice")
    doc["cubes"][0]["versions"][0]["cube"]["content"] = "Alice likes nothing."
    refused(mem, write(tmp_path, doc), "fingerprint")


def test_a_file_mixing_scopes_writes_nothing(mem: MemOS, tmp_path) -> None:
    mem.add("Mallory's own note.", user_id="mallory")
    mem.add("Alice's secret.", user_id="alice")
    doc = exported(mem)
    assert {i["cube"]["scope"]["user_id"] for i in doc["cubes"]} == {"mallory", "alice"}
    doc["cubes"].sort(key=lambda i: i["cube"]["scope"]["user_id"] != "mallory")  # own first
    f = write(tmp_path, doc)
    mallory = mem.as_principal("user:mallory")
    before = snapshot(mem)
    with pytest.raises(PermissionDenied):
        mallory.import_file(f)
    assert snapshot(mem) == before
    assert [e.outcome for e in mem.audit_log() if e.op == "import"][-1] == "denied"
    # into her own scope the same file is fine: every cube lands there
    got = mallory.import_file(f, user_id="mallory")
    assert {c.scope.user_id for c in got} == {"mallory"}


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["cubes"].append(json.loads(json.dumps(d["cubes"][0]))), "more than once"),
        (lambda d: d["cubes"][0]["versions"].append(d["cubes"][0]["versions"][-1]),
         "more than once"),
        (lambda d: d["cubes"][0].update(versions=[]), "versions"),
        (lambda d: d["cubes"][0]["versions"][0].update(version=7), "version"),
        (lambda d: d["cubes"][0]["versions"][0].update(cube_id="f" * 32), "another cube"),
    ],
)
def test_malformed_histories_are_refused(mem: MemOS, tmp_path, edit, match) -> None:
    doc = one_cube(mem)
    edit(doc)
    refused(mem, write(tmp_path, doc), match)


def test_nul_surrogates_and_oversized_content_are_refused(mem: MemOS, tmp_path) -> None:
    doc = one_cube(mem)
    f = write(tmp_path, doc)
    text = f.read_text(encoding="utf-8")
    content = json.dumps(doc["cubes"][0]["cube"]["content"])
    for bad in ("\\ud800", "\\u0000"):
        f.write_text(text.replace(content, content[:-1] + bad + '"'), encoding="utf-8")
        refused(mem, f, "surrogate|NUL")
    for where in ("source_refs", "tags"):
        bad_doc = json.loads(text)
        part = "provenance" if where == "source_refs" else "organisation"
        bad_doc["cubes"][0]["cube"][part][where] = ["m\u0000"]
        refused(mem, write(tmp_path, bad_doc), "NUL")
    big = json.loads(text)
    for version in [big["cubes"][0]["cube"], *(v["cube"] for v in big["cubes"][0]["versions"])]:
        version["content"] = "x" * 1_000_000
        reseal(version)
    refused(mem, write(tmp_path, big), f"longer than {MAX_TEXT}")
    with pytest.raises(InvalidInput):
        mem.add("x" * 1_000_000, user_id="alice")  # the same cap as add


def test_created_by_becomes_the_importer(mem: MemOS, tmp_path) -> None:
    doc = one_cube(mem, "Imported note.", user="mallory")
    for v in [doc["cubes"][0]["cube"], *(v["cube"] for v in doc["cubes"][0]["versions"])]:
        v["provenance"]["created_by"] = "user:alice"
    for v in doc["cubes"][0]["versions"]:
        v["changed_by"] = "user:alice"
    mallory = mem.as_principal("user:mallory")
    got = mallory.import_file(write(tmp_path, doc), user_id="mallory")[0]
    assert got.provenance.created_by == "user:mallory"
    assert got.metadata["imported_from"] == {"created_by": "user:alice"}
    history = mem.history(got.id)
    assert {v.changed_by for v in history} == {"user:mallory"}
    assert {v.cube.provenance.created_by for v in history} == {"user:mallory"}
    alice = mem.as_principal("user:alice")
    assert got.id not in {c.id for c in alice.readable([mem.get(got.id)])}


def test_an_id_that_exists_in_another_scope_gets_a_new_id(mem: MemOS, tmp_path) -> None:
    theirs = mem.add("Alice's diary.", user_id="alice")[0]
    doc = one_cube(mem, "Mallory's note.", user="mallory")
    item = doc["cubes"][0]
    for v in [item["cube"], *(v["cube"] for v in item["versions"])]:
        v["id"] = theirs.id
    for v in item["versions"]:
        v["cube_id"] = theirs.id
    got = mem.as_principal("user:mallory").import_file(write(tmp_path, doc))[0]
    assert got.id != theirs.id and got.provenance.derived_from[-1] == theirs.id
    assert mem.get(theirs.id).content == "Alice's diary."
    assert [v.version for v in mem.history(theirs.id)] == [1]


def test_store_ids_cannot_be_claimed_by_import(mem: MemOS, tmp_path) -> None:
    from memos_agents.langgraph import MemOSStore

    store = MemOSStore(mem)
    target = store.cube_id(("users", "alice"), "profile")
    doc = one_cube(mem, "Mallory's bait.", user="mallory")
    item = doc["cubes"][0]
    for v in [item["cube"], *(v["cube"] for v in item["versions"])]:
        v["id"] = target
        v["scope"]["vault"] = "langgraph"
        v["metadata"] = {"namespace": ["users", "alice"], "key": "profile", "value": {"x": 1}}
        reseal(v)
    for v in item["versions"]:
        v["cube_id"] = target
    got = mem.as_principal("user:mallory").import_file(write(tmp_path, doc))[0]
    assert got.id != target and got.scope.user_id == "mallory"
    store.put(("users", "alice"), "profile", {"name": "Alice"})
    item_ = store.get(("users", "alice"), "profile")
    assert item_ is not None and item_.value == {"name": "Alice"}
    assert mem.vault.catalog.get(target).scope.user_id != "mallory"
    assert mem.get(got.id).content == "Mallory's bait."


# F: blobs, a lossless round trip without running the model
def _activation(mem: MemOS, user: str) -> tuple[MemCube, bytes]:
    fp = hashlib.sha256(f"kv of {user}".encode()).hexdigest()
    data = bytes(range(256)) * 64 + b"\x00end"
    cube = MemCube(
        form=Form.activation,
        content=kv_name(fp),
        scope=Scope(user_id=user),
        provenance=Provenance(source_kind=SourceKind.derived, created_by=f"user:{user}"),
        metadata=ActivationMeta(fingerprint=fp, model="tiny", sources=[]).to_metadata(),
    )
    path = blob_path(mem.config.data_dir / "blobs", Form.activation, cube.content)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    mem.vault.add([cube], created_by=f"user:{user}")
    return cube, data


def _parameter(mem: MemOS, user: str) -> tuple[MemCube, dict[str, bytes]]:
    cid = new_id()
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": hashlib.sha512(b"w").digest() * 100,
        "sub/extra.bin": b"\x01\x02",
    }
    cube = MemCube(
        id=cid,
        form=Form.parameter,
        content=lora_blob_name(cid, 1),
        scope=Scope(user_id=user),
        provenance=Provenance(source_kind=SourceKind.derived, created_by=f"user:{user}"),
        metadata={"name": "style", "model": "tiny"},
    )
    folder = blob_path(mem.config.data_dir / "blobs", Form.parameter, cube.content)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    mem.vault.add([cube], created_by=f"user:{user}")
    return cube, files


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.embedded_only(
    "imports into a second, empty data dir: on the scale-out deployment its MEMOS_* URLs name "
    "the test's own stores, not empty ones"
)
def test_export_carries_blobs_and_the_round_trip_is_lossless(
    mem: MemOS, tmp_path, embedder
) -> None:
    mem.add("Alice likes jazz.", user_id="alice")
    act, kv = _activation(mem, "alice")
    par, lora = _parameter(mem, "alice")
    f = tmp_path / "alice.mip.json"
    doc = mem.export(f, user_id="alice")
    by_form = {i.cube.form: i for i in doc.cubes}
    assert set(by_form) == {Form.plaintext, Form.activation, Form.parameter}
    assert by_form[Form.plaintext].blobs == []
    assert base64.b64decode(by_form[Form.activation].blobs[0].files[""]) == kv
    other = tmp_path / "other"
    try:
        with MemOS.open(other, embedder=embedder) as fresh:
            got = {c.form: c for c in fresh.import_file(f)}
            root = other / "blobs"
            assert got[Form.activation].content == act.content
            assert blob_path(root, Form.activation, act.content).read_bytes() == kv
            assert got[Form.parameter].content == par.content
            assert _files(blob_path(root, Form.parameter, par.content)) == lora
            assert all(c.intact for c in got.values())
            # again, into another scope: ids are taken, so a new LoRA name; the KV blob of
            # the same fingerprint is kept, never overwritten
            moved = {c.form: c for c in fresh.import_file(f, user_id="alice2")}
            p2 = moved[Form.parameter]
            assert p2.id != par.id and p2.content == lora_blob_name(p2.id, 1)
            assert _files(blob_path(root, Form.parameter, p2.content)) == lora
            assert moved[Form.activation].content == act.content and p2.intact
            again = fresh.export(user_id="alice2")
            assert {i.cube.form: len(i.blobs) for i in again.cubes} == {
                Form.plaintext: 0, Form.activation: 1, Form.parameter: 1
            }
    finally:
        stop_server(other / "graph")


@pytest.mark.parametrize("rel", ["../../../../escape", "/abs", "a/../../b", "a\\..\\b", ""])
def test_blob_files_that_would_escape_are_refused(mem: MemOS, tmp_path, rel) -> None:
    _parameter(mem, "alice")
    doc = exported(mem, user_id="alice")
    item = next(i for i in doc["cubes"] if i["cube"]["form"] == "parameter")
    item["blobs"][0]["files"] = {rel: base64.b64encode(b"evil").decode()}
    refused(mem, write(tmp_path, doc), "blob file", user_id="bob")
    assert not (tmp_path / "escape").exists()


def test_blobs_not_named_by_the_cube_or_not_base64_are_refused(mem: MemOS, tmp_path) -> None:
    _activation(mem, "alice")
    doc = exported(mem, user_id="alice")
    item = doc["cubes"][0]
    item["blobs"][0]["name"] = "kv/" + "1" * 40 + ".safetensors"
    refused(mem, write(tmp_path, doc), "not named by any version", user_id="bob")
    item["blobs"][0]["name"] = item["cube"]["content"]
    item["blobs"][0]["files"] = {"": "not base64!"}
    refused(mem, write(tmp_path, doc), "base64", user_id="bob")
    for files in ({}, {"a": "AA=="}, {"": "AA==", "b": "AA=="}):
        item["blobs"][0]["files"] = files
        refused(mem, write(tmp_path, doc), "one file", user_id="bob")
    item["blobs"] = []
    for v in [item["cube"], *(v["cube"] for v in item["versions"])]:
        v["metadata"]["sources"] = "not a list"
    refused(mem, write(tmp_path, doc), "activation metadata", user_id="bob")



def test_lineage_inside_a_file_follows_renamed_cubes(mem: MemOS, tmp_path) -> None:
    src = mem.add("Alice likes jazz.", user_id="alice")[0]
    cube = MemCube(form=Form.plaintext, content="Derived note.", scope=Scope(user_id="alice"),
                   provenance=Provenance(created_by="user:alice", derived_from=[src.id]))
    mem.vault.add([cube], created_by="user:alice")
    f = tmp_path / "a.mip.json"
    mem.export(f, user_id="alice")
    moved = {c.content: c for c in mem.import_file(f, user_id="alice2")}
    new_src = moved["Alice likes jazz."]
    assert new_src.id != src.id and new_src.provenance.derived_from == [src.id]
    assert moved["Derived note."].provenance.derived_from == [new_src.id, cube.id]
