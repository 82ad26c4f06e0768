"""MemReader: fast mode without a model, fine mode through a LangChain chat model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage

from memos_agents.cube import SourceKind
from memos_agents.errors import ExtractionError, InvalidInput
from memos_agents.formats import read_batches
from memos_agents.reader import MemReader, extract_entities

LOCOMO = Path(__file__).resolve().parents[1] / "bench" / "data" / "locomo" / "locomo_dev.json"


def test_fast_mode_one_draft_per_turn_keeps_speaker_time_and_ids() -> None:
    drafts = MemReader().read_messages(
        [
            {
                "role": "user",
                "speaker": "Alice",
                "content": "I moved to Lisbon in May.",
                "id": "m1",
                "timestamp": "2023-05-08T13:56:00",
            },
            HumanMessage(content="My dog Miso loves Cascais.", id="m2"),
            AIMessage(content="Nice!"),
        ]
    )
    assert [d.text for d in drafts] == [
        "I moved to Lisbon in May.",
        "My dog Miso loves Cascais.",
        "Nice!",
    ]
    assert drafts[0].speaker == "Alice" and drafts[0].source_refs == ["m1"]
    assert drafts[0].valid_from is not None and drafts[0].valid_from.year == 2023
    assert drafts[1].role == "user" and drafts[2].role == "assistant"
    assert "Lisbon" in drafts[0].entities and "Alice" in drafts[0].entities
    assert {"Miso", "Cascais"} <= set(drafts[1].entities)
    assert all(d.source_kind is SourceKind.message for d in drafts)
    assert drafts[2].importance < drafts[0].importance


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [{"role": "user"}],
        [{"content": "   "}],
        [{"content": 3}],
        [42],
        [{"content": "x" * 100_001}],
    ],
)
def test_bad_messages_are_rejected(bad) -> None:
    with pytest.raises(InvalidInput):
        MemReader().read_messages(bad)


def test_entities_skip_sentence_starters() -> None:
    ents = extract_entities("Yesterday I met Caroline at the LGBTQ support group in New York City.")
    assert "Yesterday" not in ents and "I" not in ents
    assert {"Caroline", "New York City"} <= set(ents)


def test_documents_become_overlapping_chunks() -> None:
    text = "\n\n".join(f"Paragraph {i} talks about Lisbon and the sea. " * 8 for i in range(10))
    drafts = MemReader(chunk_size=400, chunk_overlap=50).read_document(text, source="notes.md")
    assert len(drafts) > 5
    assert all(len(d.text) <= 400 for d in drafts)
    assert drafts[3].source_refs == ["notes.md#chunk3"]
    assert all(d.source_kind is SourceKind.document for d in drafts)


def test_fine_mode_parses_json_from_a_chat_model() -> None:
    reply = json.dumps(
        {
            "facts": [
                {
                    "text": "Alice moved to Lisbon in May 2023.",
                    "source_turns": [0],
                    "entities": ["Alice", "Lisbon"],
                    "tags": ["home"],
                    "importance": 0.9,
                },
                {"text": "Alice's dog is called Miso.", "source_turns": [0, 7]},
            ]
        }
    )
    llm = FakeListChatModel(responses=[f"Sure! ```json\n{reply}\n```"])
    drafts = MemReader(llm=llm).read_messages(
        [
            {
                "role": "user",
                "speaker": "Alice",
                "content": "I moved to Lisbon in May; my dog is Miso.",
                "id": "m1",
            }
        ],
        mode="fine",
    )
    assert [d.text for d in drafts] == [
        "Alice moved to Lisbon in May 2023.",
        "Alice's dog is called Miso.",
    ]
    assert (
        drafts[0].source_refs == ["m1"]
        and drafts[0].tags == ["home"]
        and drafts[0].importance == 0.9
    )
    assert drafts[1].source_refs == ["m1"]  # out-of-range turn 7 dropped
    assert "Miso" in drafts[1].entities and drafts[0].source_kind is SourceKind.extraction


@pytest.mark.parametrize("reply", ["I found nothing", '{"facts": [{"nope": 1}]}', "{broken"])
def test_fine_mode_bad_model_output_is_an_extraction_error(reply: str) -> None:
    with pytest.raises(ExtractionError):
        MemReader(llm=FakeListChatModel(responses=[reply])).read_messages(
            ["hello there"], mode="fine"
        )


def test_fine_mode_without_model_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="chat model"):
        MemReader().read_messages(["hello"], mode="fine")


def test_locomo_format_keeps_dia_ids_and_session_dates() -> None:
    batches = list(read_batches(LOCOMO))
    assert batches[0].user_id == "conv-26" and batches[0].session_id == "session_1"
    first = batches[0].messages[0]
    assert first["id"] == "D1:1" and first["speaker"] == "Caroline"
    assert first["timestamp"] is not None
    total = sum(len(b.messages) for b in batches)
    assert total > 600
    assert any("[shares an image:" in m["content"] for b in batches for m in b.messages)


def test_jsonl_format_groups_by_user_and_session(tmp_path: Path) -> None:
    f = tmp_path / "chat.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(m)
            for m in [
                {"role": "user", "content": "hi", "user_id": "a", "session_id": "1"},
                {"role": "assistant", "content": "hello", "user_id": "a", "session_id": "1"},
                {"role": "user", "content": "yo", "user_id": "b", "session_id": "9"},
            ]
        )
    )
    batches = list(read_batches(f))
    assert [(b.user_id, b.session_id, len(b.messages)) for b in batches] == [
        ("a", "1", 2),
        ("b", "9", 1),
    ]
    assert batches[0].messages[0]["id"] == "chat.jsonl:1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "ok"}\nnot json\n')
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:2"):
        list(read_batches(bad))


# --- hostile fields: refused, naming the field, before anything reaches a draft -------------

NUL, SURROGATE = "a\x00b", "a\ud800b"


def _shapes(field: str, value: object) -> list[object]:
    """The same hostile value in every message shape the reader accepts that can carry it."""
    base: dict[str, object] = {"role": "user", "content": "hello there", "id": "m1"}
    shapes: list[object] = [{**base, field: value}]
    if field == "content":
        shapes += [value, [value], HumanMessage(content=value), AIMessage(content=[value])]
    if field in ("id", "name"):
        shapes.append(HumanMessage(content="hello there", **{field: value}))
    if field == "speaker":
        shapes.append(HumanMessage(content="hello there", name=value))
    return shapes


@pytest.mark.parametrize("field", ["content", "id", "speaker", "name", "role"])
@pytest.mark.parametrize("value", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_nul_and_surrogates_are_refused_in_every_field_and_shape(field: str, value: str) -> None:
    label = "speaker" if field == "name" else field
    for shape in _shapes(field, value):
        msgs = shape if isinstance(shape, list) else [{"content": "fine turn"}, shape]
        with pytest.raises(InvalidInput, match=label) as err:
            MemReader().read_messages(msgs)
        assert "message" in str(err.value), shape


@pytest.mark.parametrize("value", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_hostile_metadata_keys_and_values_are_refused(value: str) -> None:
    for msg in (
        {"content": "hello", "extra": value},
        {"content": "hello", value: "x"},
        {"content": "hello", "deep": {"list": [1, {"k": value}]}},
    ):
        with pytest.raises(InvalidInput, match="metadata"):
            MemReader().read_messages([msg])


@pytest.mark.parametrize(
    "msg",
    [
        {"content": "hello", "extra": object()},
        {"content": "hello", "extra": b"bytes"},
        {"content": "hello", 3: "int key"},
        {"content": "hello", "timestamp": float("nan")},
        {"content": "hello", "timestamp": 10**20},
        {"content": "hello", "timestamp": "not a date \ud800"},
        {"content": "hello", "id": "x" * 257},
        {"content": "hello", "role": "r" * 257},
        {"content": "hello", "speaker": "s" * 257},
    ],
    ids=["object", "bytes", "int-key", "nan-time", "huge-time", "bad-iso", "long-id",
         "long-role", "long-speaker"],
)
def test_other_unstorable_fields_are_invalid_input(msg: dict) -> None:
    with pytest.raises(InvalidInput):
        MemReader().read_messages([msg])


def test_deep_metadata_is_refused() -> None:
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["d"] = {}
        node = node["d"]
    with pytest.raises(InvalidInput, match="deeper"):
        MemReader().read_messages([{"content": "hello", "deep": deep}])


def test_valid_unusual_text_passes_unchanged() -> None:
    text = "RTL \u202eevil\u202c, zero\u200bwidth, e\u0301, 🎉, quotes ' \" \\ and\nnewlines"
    (d,) = MemReader().read_messages(
        [{"content": text, "id": "'; DROP TABLE x; --", "speaker": "Zoë 🎉", "k": text}]
    )
    assert d.text == text and d.source_refs == ["'; DROP TABLE x; --"]
    assert d.speaker == "Zoë 🎉" and d.metadata == {"k": text}


@pytest.mark.parametrize("value", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_documents_with_nul_or_surrogates_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="document"):
        MemReader().read_document(f"some text {value} more")
    with pytest.raises(InvalidInput, match="source"):
        MemReader().read_document("some text", source=f"file{value}.txt")


def test_fine_mode_facts_that_cannot_be_stored_are_an_extraction_error() -> None:
    reply = json.dumps({"facts": [{"text": "Alice has a \u0000 secret"}]})
    reader = MemReader(llm=FakeListChatModel(responses=[reply]))
    with pytest.raises(ExtractionError, match="NUL"):
        reader.read_messages([{"content": "Alice has a secret"}], mode="fine")


def test_concept_stop_list_is_scikit_learns_without_importing_it() -> None:
    """The English stop list is a copy of scikit-learn's (importing scikit-learn for it took
    seconds of a process's first write); reading concepts does not import it."""
    import subprocess
    import sys

    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from memos_agents.reader import _ENGLISH_STOP_WORDS

    assert frozenset(ENGLISH_STOP_WORDS) == _ENGLISH_STOP_WORDS
    code = ("import sys; from memos_agents.reader import extract_concepts; "
            "extract_concepts('the sunset painting dried overnight'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_words_opening_a_sentence_are_read_by_their_use_in_the_batch() -> None:
    said = [
        ("Mel", "Keep going! Anything new with Luna?"),
        ("Jon", "Luna is asleep. You're kind, seeing it. Bye Mel!"),
        ("Jon", "Seeing the Grand Canyon was great."),
        ("Mel", "Painting is fun. It's Shia Labeouf! Dancing too."),
        ("Mel", "Charlotte's Web is on my list; painting too."),
    ]
    msgs = [{"role": "user", "speaker": who, "content": text} for who, text in said]
    drafts = MemReader().read_messages(msgs)
    ents = [set(d.entities) for d in drafts]
    assert ents[0] == {"Mel", "Luna"}  # "Keep", "Anything": stop words opening a sentence
    assert ents[1] == {"Jon", "Luna", "Mel"}  # a lone opener: a name seen mid-sentence
    assert ents[2] == {"Jon", "Grand Canyon"}  # "Seeing": a lower-case word elsewhere
    assert ents[3] == {"Mel", "Shia Labeouf"}  # "Dancing": a lone "-ing" word, no evidence
    assert ents[4] == {"Mel", "Charlotte's Web"}  # a run whose opener is never lower case
    # no evidence either way: a name opening the only message is still a name
    alone = MemReader().read_messages([{"role": "user", "content": "Priya got the job! Oof."}])
    assert alone[0].entities == ["Priya", "Oof"]
    # a speaker's first name is a name by use: "Sterling Lee" speaks, "Sterling" opens
    both = MemReader().read_messages([
        {"role": "user", "speaker": "Sterling Lee", "content": "Thanks for the tip."},
        {"role": "user", "speaker": "Bo", "content": "Sterling helped a lot. Dancing too."},
    ])
    assert both[1].entities == ["Bo", "Sterling"]


def test_entities_of_one_text_keep_a_lone_opener_unless_a_stop_word() -> None:
    assert extract_entities("Caroline's hobbies? Anything else?") == ["Caroline"]
    assert extract_entities("Keep it up. You're great, Jon I guess. Fri?") == ["Jon"]
    assert extract_entities("Thanks! 😊 Keep going, Jon. (Anything new?)") == ["Jon"]
