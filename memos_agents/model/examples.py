"""Training examples for parameter memory, made from plaintext facts without a model.

Each fact is split by templates into subject, verb, relation and key span ("Alice plays the
| cello | on Sundays": subject "Alice", verb "plays", key "cello", tail "on Sundays"). Training
asks for the key span in several question forms (direct, echo, cloze, indirect), answered with
the fact and with the key span alone, in the chat the facade sends (the default system prompt).
`probes` / `held_out` ask with other forms, never used in training, to check that an adapter
learned the facts rather than the prompts. With `llm=`, paraphrases it writes are added.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from ..cube import MemCube
from .protocol import memory_messages

COPULAS = {"is", "are", "was", "were", "am"}
MODALS = {"can", "could", "will", "would", "should", "may", "might", "must"}
DETERMINERS = {"the", "a", "an", "his", "her", "their", "my", "our", "its", "your", "this"}
PREPOSITIONS = {"to", "in", "at", "on", "of", "for", "with", "from", "as", "by", "about", "into"}
TIME_WORDS = re.compile(
    r"^(mondays?|tuesdays?|wednesdays?|thursdays?|fridays?|saturdays?|sundays?|weekends?|"
    r"mornings?|evenings?|nights?|days?|weeks?|months?|years?|today|tonight|daily|weekly|"
    r"january|february|march|april|may|june|july|august|september|october|november|"
    r"december|\d{1,4})$",
    re.IGNORECASE,
)
TIME_LEAD = {"on", "every", "each", "at", "in", "since", "during", "last", "next", "this"}


@dataclass(frozen=True)
class FactParts:
    """A fact split for templates; `key` is the span an answer must contain."""

    fact: str
    subject: str
    verb: str
    relation: str  # words between the verb and the key span
    key: str
    tail: str  # a trailing time phrase ("on Sundays"), or ""

    @property
    def stem(self) -> str:
        return _join(self.subject, self.verb, self.relation)

    def direct(self) -> str | None:
        """'What does Alice play on Sundays?', or None where the verb has no sure base form."""
        v = self.verb.casefold()
        if v in COPULAS or v in MODALS:
            return _q("What", self.verb, self.subject, self.relation, self.tail)
        base = _base(v)
        if base is None:
            return None
        return _q("What", "does", self.subject, base, self.relation, self.tail)

    def cloze(self) -> str:
        return self.fact.replace(self.key, "___", 1)


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _q(*parts: str) -> str:
    return _join(*parts) + "?"


def _base(verb: str) -> str | None:
    """The base form of a third-person present verb ('brews' -> 'brew'), else None."""
    if verb in {"has", "does", "goes"}:
        return {"has": "have", "does": "do", "goes": "go"}[verb]
    if not verb.endswith("s") or verb.endswith("ss"):
        return None
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes", "zes")):
        return verb[:-2]
    return verb[:-1]


def _is_verb(words: list[str], i: int) -> bool:
    w = words[i]
    low = w.casefold()
    if low in COPULAS or low in MODALS or low in {"has", "have", "had"}:
        return True
    if not w.islower() or words[i - 1].casefold() in DETERMINERS or low.endswith("'s"):
        return False
    return low.endswith("ed") or (low.endswith("s") and not low.endswith("ss"))


def _split_tail(words: list[str]) -> tuple[list[str], list[str]]:
    """Predicate words, and a trailing time phrase ('on Sundays', 'every Tuesday')."""
    if len(words) >= 3 and TIME_WORDS.match(words[-1]) and words[-2].casefold() in TIME_LEAD:
        return words[:-2], words[-2:]
    return words, []


def _key(pred: list[str], subject: str) -> int:
    """Where the key span starts in the predicate: its last proper-noun run, else the words
    after its last preposition, else the predicate after leading determiners."""
    caps = [i for i, w in enumerate(pred) if w[:1].isupper() and w not in subject]
    if caps:
        start = caps[-1]
        while start - 1 in caps:
            start -= 1
        return start
    preps = [i for i, w in enumerate(pred[:-1]) if w.casefold() in PREPOSITIONS]
    start = preps[-1] + 1 if preps else 0
    while start < len(pred) - 1 and pred[start].casefold() in DETERMINERS:
        start += 1
    return start


def parse(fact: str, speaker: str | None = None) -> FactParts | None:
    """Subject, verb, relation, key span and tail of a one-clause fact; None if not found. A
    first-person fact is told of `speaker` ('I play chess' -> 'Ann plays chess')."""
    text = " ".join(fact.split()).rstrip(".!")
    if speaker and re.match(r"(?i)^(i|my)\b", text):
        text = re.sub(r"^(?:I am|I'm)\b", f"{speaker} is", text)
        text = re.sub(r"^I (\w+)", lambda m: f"{speaker} {m.group(1)}s", text)
        text = re.sub(r"^(?i:my)\b", f"{speaker}'s", text)
    words = text.split()
    verb = next((i for i in range(1, len(words)) if _is_verb(words, i)), None)
    if verb is None or verb >= len(words) - 1:
        return None
    pred, tail = _split_tail(words[verb + 1 :])
    subject = " ".join(words[:verb])
    start = _key(pred, subject)
    relation = pred[:start]
    while relation and relation[-1].casefold() in DETERMINERS:
        relation.pop()
    key = " ".join(pred[start:]).strip(",;:")
    if len(key) < 2:
        return None
    return FactParts(text + ".", subject, words[verb], " ".join(relation), key, " ".join(tail))


# question forms: training and held-out never share one
Form = Callable[[FactParts], str | None]
TRAIN_FORMS: dict[str, Form] = {
    "direct": FactParts.direct,
    "echo": lambda p: _q(p.stem, "what", p.tail),
    "cloze": lambda p: f"Complete the sentence: {p.cloze()}",
    "tell": lambda p: _join("Tell me what", p.stem, p.tail) + ".",
    "about": lambda p: _q("What do you know about", p.subject),
}
HELD_OUT_FORMS: dict[str, Form] = {
    "remember": lambda p: _q("Do you remember what", p.stem, p.tail),
    "remind": lambda p: (d := p.direct()) and f"Remind me, {d[0].lower()}{d[1:]}",
    "gap": lambda p: f"Which words are missing here? {p.cloze()}",
}


class Paraphrases(BaseModel):
    """Questions a chat model writes for one fact, each answered by its key span."""

    key: str = Field(description="the shortest words of the fact that answer the questions")
    questions: list[str] = Field(max_length=6, description="different ways to ask for the key")


def _llm_questions(llm: Any, parts: FactParts) -> list[str]:
    from ..errors import ExtractionError
    from ..llm import ask_structured

    prompt = (
        f"Fact: {parts.fact}\nAnswer: {parts.key}\n"
        'Write up to 6 different questions whose answer is the Answer, as JSON {"key": '
        '"...", "questions": ["..."]}.'
    )
    try:
        got = ask_structured(llm, prompt, Paraphrases)
    except ExtractionError:
        return []
    return [q.strip() for q in got.questions if q.strip() and parts.key not in q]


def _chat(question: str, answer: str) -> dict[str, Any]:
    messages = memory_messages([], [{"role": "user", "content": question}])
    return {"messages": messages, "completion": answer}


def _parts(cubes: Sequence[MemCube]) -> list[FactParts | None]:
    return [parse(c.content, c.provenance.speaker) for c in cubes]


def _shared_subjects(parts: Sequence[FactParts | None]) -> set[str]:
    seen: dict[str, int] = {}
    for p in parts:
        if p is not None:
            seen[p.subject.casefold()] = seen.get(p.subject.casefold(), 0) + 1
    return {s for s, n in seen.items() if n > 1}


def questions(
    parts: FactParts, forms: dict[str, Form], shared: set[str] = frozenset()
) -> dict[str, str]:
    """Form name -> question for one fact (an 'about' question only for a subject no other
    fact shares: it would be ambiguous)."""
    out = {name: form(parts) for name, form in forms.items()}
    if parts.subject.casefold() in shared:
        out.pop("about", None)
    return {name: q for name, q in out.items() if q}


def training_examples(cubes: Sequence[MemCube], llm: Any = None) -> list[dict[str, Any]]:
    """Each fact as plain text, and its training questions, each answered with the fact and
    with the key span; a fact the templates cannot split is asked for by its entities."""
    out: list[dict[str, Any]] = []
    parts = _parts(cubes)
    shared = _shared_subjects(parts)
    for cube, p in zip(cubes, parts, strict=True):
        fact = " ".join(cube.content.split())
        out.append({"text": fact})
        if p is None:
            out += [_chat(f"What do you know about {e}?", fact) for e in cube.organisation.entities]
            continue
        qs = list(questions(p, TRAIN_FORMS, shared).values())
        if llm is not None:
            qs += _llm_questions(llm, p)
        for q in qs:
            out += [_chat(q, p.fact), _chat(q, p.key + ".")]
    return out


@dataclass(frozen=True)
class Probe:
    """A held-out question for one fact: recalled if the greedy answer contains `key`."""

    index: int  # the fact's position among the cubes
    form: str
    question: str
    key: str
    fact: str


def probes(cubes: Sequence[MemCube]) -> list[Probe]:
    """Questions in the held-out forms, for the facts the templates can split."""
    out: list[Probe] = []
    parts = _parts(cubes)
    for i, p in enumerate(parts):
        if p is not None:
            for form, q in questions(p, HELD_OUT_FORMS).items():
                out.append(Probe(i, form, q, p.key, p.fact))
    return out


def held_out(cubes: Sequence[MemCube]) -> list[dict[str, Any]]:
    """The held-out questions as scoring items, each with its fact as the answer."""
    return [_chat(p.question, p.fact) for p in probes(cubes)]
