"""Typed settings (memos_agents.settings) on SQLite and PostgreSQL, and legacy data dirs."""

from __future__ import annotations

import json
import threading
from typing import ClassVar

import pytest
from pydantic import BaseModel, Field

from memos_agents.catalog import Catalog
from memos_agents.errors import StoreError
from memos_agents.settings import SettingsStore, kind_of


class Policy(BaseModel):
    settings_kind: ClassVar[str] = "test-policy"

    name: str = "default"
    max_count: int | None = Field(default=None, gt=0)
    patterns: dict[str, str] = Field(default_factory=dict)


class Plain(BaseModel):
    n: int = 0


@pytest.fixture
def catalog(catalog_url):
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


def test_kind_is_the_class_variable_or_the_class_name() -> None:
    assert kind_of(Policy) == "test-policy"
    assert kind_of(Plain) == "Plain"


def test_get_set_delete_by_kind_and_scope(catalog) -> None:
    st = catalog.settings
    assert st.get(Policy, "user:alice") is None
    st.set(Policy(max_count=3, patterns={"ticket": r"T-\d+"}), "user:alice")
    st.set(Policy(name="other"), "user:bob")
    st.set(Plain(n=7), "user:alice")  # another kind, same scope: its own row
    st.set(Plain(n=1))  # the global scope ""
    got = st.get(Policy, "user:alice")
    assert isinstance(got, Policy)
    assert got == Policy(max_count=3, patterns={"ticket": r"T-\d+"})
    assert st.get(Policy, "user:bob") == Policy(name="other")
    assert st.get(Plain, "user:alice") == Plain(n=7)
    assert st.get(Plain) == Plain(n=1)
    assert st.scopes(Policy) == ["user:alice", "user:bob"]

    st.set(Policy(max_count=9), "user:alice")  # replace
    assert st.get(Policy, "user:alice") == Policy(max_count=9)
    st.delete(Policy, "user:alice")
    assert st.get(Policy, "user:alice") is None
    assert st.get(Policy, "user:bob") == Policy(name="other")
    assert st.get(Plain, "user:alice") == Plain(n=7)
    st.delete(Policy, "never-set")  # deleting nothing is fine


def test_settings_survive_reopening(catalog_url) -> None:
    cat = Catalog(catalog_url)
    cat.settings.set(Policy(max_count=5), json.dumps(["user:alice", "alice"]))
    cat.close()
    cat = Catalog(catalog_url)
    try:
        assert cat.settings.get(Policy, json.dumps(["user:alice", "alice"])) == Policy(max_count=5)
    finally:
        cat.close()


def test_a_store_built_on_the_engine_alone(catalog) -> None:
    st = SettingsStore(catalog.engine)  # no legacy table: a legacy key is simply not found
    st.set(Plain(n=2), "x")
    assert catalog.settings.get(Plain, "x") == Plain(n=2)
    assert st.get(Plain, "y", legacy_key="plain:y") is None


def test_legacy_key_is_read_and_migrated(catalog) -> None:
    catalog.set_meta("redaction:user:alice", Policy(max_count=4).model_dump_json())
    st = catalog.settings
    assert st.get(Policy, "user:alice") is None  # without the legacy key: not looked up
    got = st.get(Policy, "user:alice", legacy_key="redaction:user:alice")
    assert got == Policy(max_count=4)
    assert catalog.get_meta("redaction:user:alice") is None  # moved, not copied
    assert st.get(Policy, "user:alice") == Policy(max_count=4)


def test_legacy_empty_policy_means_none(catalog) -> None:
    catalog.set_meta("retention:user:alice", "{}")  # what set_retention(vault, None) wrote
    assert catalog.settings.get(Policy, "user:alice", legacy_key="retention:user:alice") is None
    assert catalog.get_meta("retention:user:alice") is None


def test_new_value_wins_over_legacy_and_delete_removes_both(catalog) -> None:
    catalog.set_meta("p:s", Policy(name="old").model_dump_json())
    catalog.settings.set(Policy(name="new"), "s")
    assert catalog.settings.get(Policy, "s", legacy_key="p:s") == Policy(name="new")
    catalog.settings.delete(Policy, "s", legacy_key="p:s")
    assert catalog.settings.get(Policy, "s", legacy_key="p:s") is None  # the old one is gone too


def test_invalid_values_raise_store_error(catalog) -> None:
    catalog.set_meta("p:bad", '{"max_count": -1}')
    with pytest.raises(StoreError):
        catalog.settings.get(Policy, "bad", legacy_key="p:bad")


def test_concurrent_writers_of_one_setting(catalog) -> None:
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(5):
                catalog.settings.set(Plain(n=i * 10 + j), "shared")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert catalog.settings.get(Plain, "shared").n % 10 == 4
    assert catalog.settings.scopes(Plain) == ["shared"]


def test_legacy_data_dir_keeps_its_policies(tmp_path) -> None:
    """A data dir written before typed settings: every old key is still honoured."""
    from memos_agents.lifecycle import RetentionPolicy
    from memos_agents.redaction import RedactionPolicy
    from memos_agents.scheduler import SchedulerPolicy

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    old = Catalog(url)
    old.set_meta("redaction:user:alice", RedactionPolicy(phones=False).model_dump_json())
    old.set_meta("retention:user:alice", RetentionPolicy(max_count=2).model_dump_json())
    old.set_meta("retention:user:bob", "{}")
    old.set_meta("scheduler_policy", SchedulerPolicy(hot_min_access=5).model_dump_json())
    old.close()

    cat = Catalog(url)
    try:
        st = cat.settings
        red = st.get(RedactionPolicy, "user:alice", legacy_key="redaction:user:alice")
        assert red == RedactionPolicy(phones=False)
        ret = st.get(RetentionPolicy, "user:alice", legacy_key="retention:user:alice")
        assert ret == RetentionPolicy(max_count=2)
        assert st.get(RetentionPolicy, "user:bob", legacy_key="retention:user:bob") is None
        pol = st.get(SchedulerPolicy, "", legacy_key="scheduler_policy")
        assert pol == SchedulerPolicy(hot_min_access=5)
        assert st.get(RedactionPolicy, "user:alice") == RedactionPolicy(phones=False)
    finally:
        cat.close()


def test_a_legacy_data_dir_through_the_facade(data_dir, embedder) -> None:
    """Policies a data dir kept under the old composed keys still act after an upgrade."""
    from memos_agents import MemOS
    from memos_agents.lifecycle import RetentionPolicy
    from memos_agents.operator import TopicState
    from memos_agents.redaction import RedactionPolicy
    from memos_agents.scheduler import SchedulerPolicy

    with MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30) as mem:
        logs = mem.add([f"log line {i}" for i in range(3)], user_id="ops", vault="logs")
        cat = mem.vault.catalog  # what the old code wrote, byte for byte
        cat.set_meta("redaction:default", RedactionPolicy(name="legacy-v0").model_dump_json())
        cat.set_meta("retention:logs", RetentionPolicy(max_count=1).model_dump_json())
        cat.set_meta("scheduler_policy", SchedulerPolicy(hot_min_access=7).model_dump_json())
        topics = {"tids": [], "sizes": [], "labels": [], "generation": 5, "next_id": 3,
                  "n_total": 0, "n_clustered": 0, "sums": None}
        cat.set_meta(f"topics:{json.dumps(['work', 'zoe'])}", json.dumps(topics))

    with MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30) as mem:
        c = mem.add("Reach Ana at ana@example.org.", user_id="ana")[0]
        assert "[EMAIL]" in c.content
        assert {r.policy for r in c.governance.redactions} == {"legacy-v0"}
        assert mem.sweep()["archived"] == 2
        assert [mem.get(x.id).lifecycle.state.value for x in logs] == ["archived"] * 2 + ["active"]
        assert mem.scheduler.policy.hot_min_access == 7
        state = mem.vault.operator._state("work", "zoe")
        assert (state.generation, state.next_id) == (5, 3)
        moved = mem.vault.catalog.settings.get(TopicState, json.dumps(["work", "zoe"]))
        assert moved is not None and moved.generation == 5  # migrated into the settings table
        mem.set_redaction_policy("default", None)  # and the old key cannot come back
        assert "bo@example.org" in mem.add("bo@example.org", user_id="bo")[0].content
        mem.set_retention("logs", None)

    with MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30) as mem:
        assert "cy@example.org" in mem.add("cy@example.org", user_id="cy")[0].content
        assert mem.scheduler.policy.hot_min_access == 7
