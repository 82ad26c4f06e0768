"""What the graph carries without a model: speaker coreference, times resolved against the
date a fact was said, event phrases, cross-session entity chains, and topics a person reads
(through `MemOS.open` on the real embedded stores and the real embedder)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memos_agents import MemOS
from memos_agents.cli import app
from memos_agents.events import addressed, coreference, read_events, resolve

SAID = datetime(2023, 5, 8, 13, 56)  # a Monday


@pytest.mark.parametrize(
    ("phrase", "start", "end"),
    [
        ("yesterday", date(2023, 5, 7), date(2023, 5, 7)),  # dateparser
        ("last Saturday", date(2023, 5, 6), date(2023, 5, 6)),
        ("last week", date(2023, 5, 1), date(2023, 5, 7)),
        ("two weeks ago", date(2023, 4, 24), date(2023, 4, 30)),
        ("next month", date(2023, 6, 1), date(2023, 6, 30)),
        ("in May", date(2023, 5, 1), date(2023, 5, 31)),
        ("last year", date(2022, 1, 1), date(2022, 12, 31)),
        ("a few days ago", date(2023, 5, 4), date(2023, 5, 6)),  # rules: dateparser fails
        ("last weekend", date(2023, 5, 6), date(2023, 5, 7)),
        ("last night", date(2023, 5, 7), date(2023, 5, 7)),
        ("in two weeks", date(2023, 5, 22), date(2023, 5, 28)),
    ],
)
def test_relative_dates_resolve_against_the_day_said(phrase: str, start: date, end: date) -> None:
    span = resolve(phrase, SAID)
    assert span is not None and (span.start, span.end) == (start, end), span


def test_a_phrase_that_is_not_a_date_is_left_alone() -> None:
    ev = read_events("I may go, you may like it; to be honest it was so good.", "Ann", SAID)
    assert ev.times == [] and ev.event is None
    # a bare month is read in the sentence's tense
    assert resolve("in June", SAID).start == date(2022, 6, 1)
    assert resolve("in June", SAID, future=True).start == date(2023, 6, 1)


def test_event_phrase_and_coreference() -> None:
    ev = read_events("I went to a LGBTQ support group yesterday and it was so powerful.",
                     "Caroline", SAID)
    assert ev.event == "Caroline went to a LGBTQ support group"
    assert ev.times[0].label() == "7 May 2023"
    names, rels = coreference("My sister and my kids went camping with me.", "Melanie")
    assert names == ["Melanie", "Melanie's sister", "Melanie's kids"]
    assert {(r.owner, r.role) for r in rels} == {("Melanie", "sister"), ("Melanie", "kids")}
    assert coreference("The weather is nice.", "Melanie") == ([], [])


def test_a_name_a_turn_only_addresses_is_not_a_mention() -> None:
    names = ["Caroline", "Mel", "Melanie"]
    assert addressed("Hey Caroline! How have you been?", names) == {"Caroline"}
    assert addressed("Thanks, Mel! I loved it.", names) == {"Mel"}
    assert addressed("That's great news, Caroline!", names) == {"Caroline"}
    assert addressed("Wow, Melanie, I went hiking with Caroline.", names) == {"Melanie"}
    assert addressed("I went with Melanie.", names) == set()
    assert addressed("I told Mel, she laughed.", names) == set()
    assert addressed("Melanie's kids are fun, Caroline.", names) == {"Caroline"}


def test_addressed_by_string_search_reads_as_the_patterns_do() -> None:
    """`addressed` finds names by string search and two fixed patterns, not a pattern per
    name: on random sentences of names, greetings, possessives and punctuation it gives what
    the per-name patterns give (case, word boundaries, names with marks or odd letters)."""
    import random

    from memos_agents.events import _addressed_by_pattern

    rng = random.Random(5)
    names = ["Mel", "Melanie", "Ann-Marie", "Jr.", "O'Neil", "Zoë", "İlkay", "Mel_2"]
    pieces = [*names, "mel", "MELANIE", "hey", "Thanks", "wow", ",", ", ", "!", ".", "?", ";",
              " ", "  ", "'s", "'s dog", "I went with", "and", "Melanies", "xMel", "…", "\n"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(1, 9)))
        assert addressed(text, names) == _addressed_by_pattern(text, names), text


def test_the_graph_does_not_link_a_turn_to_the_person_it_addresses(mem: MemOS) -> None:
    mem.add([{"role": "user", "speaker": "Caroline", "content": "Thanks, Melanie! I adopted "
              "a dog with Jon.", "timestamp": "2023-05-08T13:56:00"}], user_id="conv-y")
    mem.vault.operator.flush()
    (cube,) = mem.list(user_id="conv-y")
    assert "Melanie" not in cube.organisation.entities
    assert {"Caroline", "Jon"} <= set(cube.organisation.entities)
    rows = mem.vault.graph._read(
        "MATCH (f:Fact)-[:MENTIONS]->(e:Entity) WHERE f.user_id = $u RETURN e.norm",
        {"u": "conv-y"})
    assert "melanie" not in {r[0] for r in rows}


def _conversation(mem: MemOS, user: str = "conv-x") -> None:
    sessions = [
        ("2023-05-08T13:56:00", [
            ("Caroline", "I went to a LGBTQ support group yesterday and it was so powerful."),
            ("Melanie", "That's great! I took my kids to a pottery workshop last Saturday."),
            ("Caroline", "My sister is visiting next month, we want to go hiking."),
            ("Melanie", "Hiking sounds fun. My kids love the mountains and the lake."),
        ]),
        ("2023-06-20T10:00:00", [
            ("Melanie", "My kids painted a sunset at the pottery studio two weeks ago!"),
            ("Caroline", "Wow! I started volunteering at the LGBTQ center last week."),
            ("Melanie", "Pottery class is my favourite, the glaze colors are amazing."),
            ("Caroline", "My sister loved the hiking trip, the mountain trail was steep."),
        ]),
    ]
    for i, (when, turns) in enumerate(sessions):
        mem.add([{"role": "user", "speaker": s, "content": t, "timestamp": when}
                 for s, t in turns], user_id=user, session_id=f"s{i}")
    mem.vault.operator.flush()


def test_graph_holds_coreference_times_and_cross_session_links(mem: MemOS) -> None:
    _conversation(mem)
    graph = mem.vault.graph
    rows = graph._read(
        "MATCH (f:Fact)-[:MENTIONS]->(e:Entity) WHERE f.user_id = $u AND f.text CONTAINS "
        "'pottery workshop' RETURN f.event_start, f.event_phrase, f.event, collect(e.norm)",
        {"u": "conv-x"})
    (start, phrase, event, names), = rows
    assert phrase == "last Saturday" and event.startswith("Melanie took Melanie's kids")
    assert datetime.fromtimestamp(start, UTC).date() == date(2023, 5, 6)
    assert {"melanie", "melanie's kids"} <= set(names)
    owners = graph._read("MATCH (a:Entity)-[r:OF]->(b:Entity) WHERE a.user_id = $u "
                         "RETURN a.name, r.role, b.name", {"u": "conv-x"})
    assert ["Melanie's kids", "kids", "Melanie"] in owners
    assert ["Caroline's sister", "sister", "Caroline"] in owners
    # the second session's "my sister" links back to the first one's, not within a session
    chain = graph._read("MATCH (a:Fact)-[r:SAME_ENTITY]->(b:Fact) WHERE a.user_id = $u "
                        "RETURN r.entity, a.session_id, b.session_id", {"u": "conv-x"})
    assert ["caroline's sister", "s1", "s0"] in chain
    assert all(a != b for _, a, b in chain)
    counts = graph.organisation_counts("default", "conv-x")
    assert counts["events"] >= 4 and counts["same_entity"] >= 2 and counts["entity_of"] >= 2
    # the cube keeps the resolved time where the retrieval side reads it
    cube = next(c for c in mem.list(user_id="conv-x") if "pottery workshop" in c.content)
    assert cube.metadata["when"][0] == {"phrase": "last Saturday", "start": "2023-05-06",
                                         "end": "2023-05-06",
                                         "event": "Melanie took Melanie's kids to a pottery "
                                                  "workshop"}


def test_topic_labels_are_not_stop_word_like(mem: MemOS) -> None:
    _conversation(mem)
    op = mem.vault.operator
    op.recluster("default", "conv-x")
    tree = op.hierarchy("default", "conv-x")
    words = {w.casefold() for t in tree.topics for w in t.label.replace("/", " ").split()}
    assert words and not words & {"wow", "great", "amazing", "sounds", "fun", "that's", "it"}
    assert words & {"pottery", "hiking", "kids", "lgbtq", "sister", "mountain", "trail",
                    "support", "group", "studio", "class", "glaze", "center"}


def test_graph_cli_shows_entities_and_dated_events(mem: MemOS, data_dir: Path) -> None:
    _conversation(mem)
    mem.close()
    out = CliRunner().invoke(app, ["graph", "--user", "conv-x", "--dir", str(data_dir)],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "entities:" in out.stdout and "Melanie's kids" in out.stdout
    assert "event 6 May 2023: Melanie took Melanie's kids to a pottery workshop" in out.stdout


def test_a_reader_sees_no_event_or_entity_of_hidden_facts(mem: MemOS) -> None:
    said = "2023-05-08T10:00:00"
    mem.add([{"role": "user", "speaker": "Alice", "timestamp": said,
              "content": "I flew to Zanzibar with my sister yesterday."}], user_id="alice")
    mem.add([{"role": "user", "speaker": "Alice", "timestamp": said,
              "content": "I played chess in the park yesterday."}], user_id="alice",
            visibility="shared")
    mem.grant_role("default", "user:bob", "reader")
    full = mem.graph(user_id="alice").render()
    assert "Zanzibar" in full and "Alice's sister" in full
    seen = mem.as_principal("user:bob").graph(user_id="alice").render()
    assert "Zanzibar" not in seen and "sister" not in seen
    assert "event 7 May 2023: Alice played chess in the park" in seen
