"""The write path (MemVault.prepare): redaction on every write and every stored field, text no
store can hold refused before the first write, TTL on get. Real stores, no mocks."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from memos_agents import MemOS
from memos_agents.cube import Form, MemCube, Provenance, Scope, State, utcnow
from memos_agents.errors import InvalidInput, NotFound
from memos_agents.lifecycle import next_version
from memos_agents.redaction import RedactionPolicy, redact

PII = (
    "ana@example.org",
    "bo@example.org",
    "josé.müller@exämple.de",
    "415-555-2671",
    "de89370400440532013000",
    "DE89370400440532013000",
)


def leaks(text: str) -> list[str]:
    return [p for p in PII if p in text]


def graph_dump(mem: MemOS) -> str:
    """Every property of every node of the graph store, as text."""
    rows = mem.vault.graph._read("MATCH (n) RETURN properties(n)", {})
    return json.dumps([list(r) for r in rows], ensure_ascii=False, default=str)


def catalog_dump(mem: MemOS, user_id: str, vault: str = "default") -> str:
    cubes = mem.vault.catalog.list(vault=vault, user_id=user_id, limit=10_000)
    out = [c.model_dump_json() for c in cubes]
    out += [v.model_dump_json() for c in cubes for v in mem.vault.catalog.history(c.id)]
    return "\n".join(out)


# B: detectors
@pytest.mark.parametrize(
    "text, kind",
    [
        ("pay to de89370400440532013000 please", "iban"),
        ("IBAN de89 3704 0044 0532 0130 00 is mine", "iban"),
        ("gb82 west 1234 5698 7654 32, thanks", "iban"),
        ("write to josé.müller@exämple.de today", "email"),
        ("用户@例子.广告 is my address", "email"),
        ("mail ana@example.org.", "email"),
    ],
)
def test_lowercase_ibans_and_unicode_emails_are_masked(text: str, kind: str) -> None:
    out, found = redact(text, RedactionPolicy())
    assert f"[{kind.upper()}]" in out and [r.kind for r in found] == [kind], out
    assert "@" not in out and "3704" not in out and "1234" not in out


def test_invalid_ibans_and_non_addresses_are_kept() -> None:
    text = "code de00370400440532013000 and user@localhost and DE89 is a prefix"
    assert redact(text, RedactionPolicy(phones=False)) == (text, [])


def test_add_masks_lowercase_iban_and_unicode_email(mem: MemOS) -> None:
    mem.set_redaction_policy("default", RedactionPolicy(name="p"))
    c = mem.add("Mail josé.müller@exämple.de, IBAN de89370400440532013000.", user_id="ana")[0]
    assert leaks(c.content) == [] and "[EMAIL]" in c.content and "[IBAN]" in c.content
    assert {r.kind for r in c.governance.redactions} == {"email", "iban"}
    assert leaks(catalog_dump(mem, "ana")) == []


# A: every write, every field
def test_redaction_is_a_property_of_every_write(mem: MemOS, tmp_path) -> None:
    from memos_agents.langgraph import MemOSStore

    # written before any policy, in another vault: the source of an import
    plain = mem.add("Imported: reach zed@example.net", user_id="src", vault="plain")[0]
    f = tmp_path / "src.mip.json"
    mem.export(f, vault="plain", user_id="src")

    mem.set_redaction_policy("default", RedactionPolicy(name="pii-v2"))
    mem.set_redaction_policy("langgraph", RedactionPolicy(name="pii-v2"))
    c = mem.add(
        [{"role": "user", "speaker": "ana@example.org", "id": "msg:ana@example.org",
          "content": "Ana Lima moved to Lisbon."}],
        user_id="ana",
        tags=["contact ana@example.org"],
        metadata={"note": "call 415-555-2671", "deep": {"list": ["bo@example.org", 3]}},
    )[0]
    assert leaks(c.model_dump_json()) == [], c.model_dump_json()
    assert c.provenance.source_refs == ["msg:[EMAIL]"] and c.provenance.speaker == "[EMAIL]"
    assert c.metadata == {"note": "call [PHONE]", "deep": {"list": ["[EMAIL]", 3]}}
    assert c.intact

    new = mem.update(c.id, "Ana Lima: IBAN de89370400440532013000, bo@example.org.")
    assert leaks(new.content) == [] and "[IBAN]" in new.content
    kinds = {r.kind for r in new.governance.redactions}
    assert {"iban", "email", "phone"} <= kinds and new.intact
    assert all(leaks(e) == [] for e in new.organisation.entities)

    store = MemOSStore(mem)
    store.put(("users", "ana"), "profile", {"text": "Ana: ana@example.org, 415-555-2671"})
    item = store.get(("users", "ana"), "profile")
    assert item is not None and leaks(json.dumps(item.value)) == []
    assert item.key == "profile" and item.namespace == ("users", "ana")
    store.put(("users", "ana"), "profile", {"text": "now josé.müller@exämple.de"})
    item = store.get(("users", "ana"), "profile")
    assert item is not None and item.value == {"text": "now [EMAIL]"}

    # a namespace or key that looks like personal data is an identifier (like the scope): kept,
    # so the item is still found; its value is masked
    store.put(("users", "tel 212-555-0199"), "bo@example.org", {"text": "bo@example.org"})
    item = store.get(("users", "tel 212-555-0199"), "bo@example.org")
    assert item is not None and item.value == {"text": "[EMAIL]"}
    assert [i.key for i in store.search(("users", "tel 212-555-0199"))] == ["bo@example.org"]
    store.delete(("users", "tel 212-555-0199"), "bo@example.org")

    imported = mem.import_file(f, vault="default", user_id="ana")
    assert [leaks(i.content) for i in imported] == [[]] and "[EMAIL]" in imported[0].content
    assert imported[0].intact and plain.content == mem.get(plain.id).content  # source kept

    ids = {c.id, *(i.id for i in imported)}
    for got in [mem.get(i) for i in ids] + mem.list(user_id="ana"):
        assert leaks(got.model_dump_json()) == []
    hits = mem.search("Ana Lima Lisbon IBAN", user_id="ana", k=10)
    assert hits and all(leaks(h.cube.model_dump_json()) == [] for h in hits)
    for i in ids:
        assert all(leaks(v.model_dump_json()) == [] for v in mem.history(i))
    assert leaks(catalog_dump(mem, "ana")) == []
    mem.vault.operator.wait("default", "ana")
    assert leaks(mem.graph(user_id="ana").render()) == []
    dump = graph_dump(mem)
    assert leaks(dump) == [] and "msg:[EMAIL]" in dump and "Ana Lima" in dump
    fact = mem.vault.graph._read(
        "MATCH (f:Fact {id: $id}) RETURN f.text", {"id": imported[0].id}
    )
    assert [list(r) for r in fact] == [["Imported: reach [EMAIL]"]]
    assert "zed@example.net" in dump  # the 'plain' vault has no policy


def test_every_vault_write_is_redacted_even_below_the_facade(mem: MemOS) -> None:
    """Whoever writes through the vault (operator, model memory, store) gets it."""
    mem.set_redaction_policy("default", RedactionPolicy(name="p"))
    cube = MemCube(
        content="Direct write: ana@example.org",
        scope=Scope(user_id="ana"),
        provenance=Provenance(created_by="user:ana", source_refs=["415-555-2671"],
                              speaker="bo@example.org"),
        metadata={"k": ["de89370400440532013000"]},
    )
    cube.organisation.tags = ["ana@example.org"]
    cube.organisation.entities = ["ana@example.org", "Ana"]
    mem.vault.add([cube], created_by="user:ana")
    stored = mem.vault.catalog.get(cube.id)
    assert leaks(stored.model_dump_json()) == [] and stored.intact
    assert stored.organisation.entities == ["Direct"]  # re-read from the masked text
    assert {r.kind for r in stored.governance.redactions} == {"email", "phone", "iban"}
    v2 = next_version(stored, State.active, utcnow(), content="v2 bo@example.org",
                      metadata={"n": "415-555-2671"})
    mem.vault.write_version(v2, "update", "user:ana", 1)
    got = mem.vault.get(cube.id)
    assert (got.content, got.metadata, got.lifecycle.version) == ("v2 [EMAIL]", {"n": "[PHONE]"}, 2)
    assert leaks(catalog_dump(mem, "ana")) == [] and leaks(graph_dump(mem)) == []


# C: NUL and lone surrogates, before the first write
BAD = ["a\x00b", "a\ud800b"]


def _nothing_written(mem: MemOS, before: int) -> None:
    assert mem.stats()["cubes"] == before
    assert mem.vault.catalog.pending() == []


@pytest.mark.parametrize("bad", BAD)
def test_nul_and_surrogates_are_refused_in_every_field_and_nothing_is_written(
    mem: MemOS, bad: str
) -> None:
    keep = mem.add("bystander fact", user_id="bob")[0]
    before = mem.stats()["cubes"]
    attempts = [
        lambda: mem.add(bad, user_id="ana"),
        lambda: mem.add([{"role": "user", "content": "hi", "id": bad}], user_id="ana"),
        lambda: mem.add([{"role": "user", "content": "hi", "speaker": bad}], user_id="ana"),
        lambda: mem.add("hi", user_id="ana", metadata={"note": bad}),
        lambda: mem.add("hi", user_id="ana", metadata={bad: 1}),
        lambda: mem.add("hi", user_id="ana", metadata={"l": [{"x": bad}]}),
        lambda: mem.add("hi", user_id="ana", tags=[bad]),
        lambda: mem.update(keep.id, bad),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(InvalidInput):
            attempt()
        _nothing_written(mem, before)
        assert mem.get(keep.id).content == "bystander fact", i
    # straight to the vault (what the store adapter, operator and loader call)
    fields = {
        "content": {"content": bad},
        "source_refs": {"provenance": Provenance(created_by="x", source_refs=["ok", bad])},
        "speaker": {"provenance": Provenance(created_by="x", speaker=bad)},
        "metadata": {"metadata": {"v": {"w": [bad]}}},
        "id": {"id": bad},
    }
    for name, update in fields.items():
        cube = MemCube(content="fine", scope=Scope(user_id="ana"),
                       provenance=Provenance(created_by="x"))
        cube = cube.model_copy(update=update)
        with pytest.raises(InvalidInput, match=r"NUL|surrogate"):
            mem.vault.add([MemCube(content="good", scope=Scope(user_id="ana"),
                                   provenance=Provenance(created_by="x")), cube],
                          created_by="x")
        _nothing_written(mem, before)
        assert name
    tagged = MemCube(content="fine", scope=Scope(user_id="ana"),
                     provenance=Provenance(created_by="x"))
    tagged.organisation.tags = [bad]
    with pytest.raises(InvalidInput, match=r"organisation\.tags\.0"):
        mem.vault.add([tagged], created_by="x")
    v2 = keep.model_copy(deep=True)
    v2.content, v2.lifecycle.version = bad, 2
    with pytest.raises(InvalidInput):
        mem.vault.write_version(v2, "update", "x", 1)
    assert mem.vault.catalog.get(keep.id).lifecycle.version == 1
    _nothing_written(mem, before)
    mem.close()
    reopened = MemOS.open(mem.config.data_dir, embedder=mem.vault.embedder)
    try:
        assert reopened.vault.reconcile() == 0  # nothing left pending to retry forever
    finally:
        reopened.close()


# D: TTL on get
def test_get_honours_ttl(mem: MemOS) -> None:
    c = mem.add("Door code 4711 for today.", user_id="ana",
                expires_at=utcnow() + timedelta(seconds=1.5))[0]
    other = mem.add("Ana likes jazz.", user_id="ana")[0]
    assert mem.get(c.id).id == c.id
    time.sleep(1.7)
    with pytest.raises(NotFound, match="expired"):
        mem.get(c.id)
    with pytest.raises(NotFound, match="expired"):
        mem.get(c.id, user_id="ana")
    assert [x.id for x in mem.list(user_id="ana")] == [other.id]
    assert c.id not in {h.cube.id for h in mem.search("door code", user_id="ana", k=5)}
    assert mem.vault.get(c.id, expired=True).id == c.id  # for purge and history
    assert mem.get(other.id).id == other.id
    mem.sweep()
    assert mem.vault.get(c.id, expired=True).lifecycle.state is State.expired


def test_blob_forms_are_not_masked(mem: MemOS) -> None:
    """Activation content and metadata are machine-made names and hashes: kept as they are."""
    from memos_agents.blobs import kv_name

    mem.set_redaction_policy("default", RedactionPolicy(name="p", patterns={"hex": "[0-9a-f]{8}"}))
    fp = "4155552671" * 6 + "abcd"
    cube = MemCube(form=Form.activation, content=kv_name(fp), scope=Scope(user_id="ana"),
                   provenance=Provenance(created_by="user:ana"), metadata={"fingerprint": fp})
    mem.vault.add([cube], created_by="user:ana")
    stored = mem.vault.catalog.get(cube.id)
    assert stored.content == kv_name(fp) and stored.metadata["fingerprint"] == fp
