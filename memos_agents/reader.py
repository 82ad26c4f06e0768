"""MemReader: turns messages and documents into memory drafts.

fast mode needs no model: one draft per message turn, documents split into chunks.
fine mode asks any LangChain chat model for the facts worth keeping.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from .cube import (
    MAX_ID_LEN,
    SourceKind,
    check_metadata,
    check_name,
    check_optional_text,
    check_text,
)
from .errors import ExtractionError, InvalidInput
from .llm import ask_structured, first_json, text_of_blocks, validate
from .text import concept_key, keyword_tokens, query_tokens

Mode = Literal["fast", "fine"]

MAX_TEXT = 100_000

_ENTITY_RE = re.compile(r"\b[A-Z][\w'’&-]*(?:\s+(?:of|de|da|van|von|the)?\s*[A-Z][\w'’&-]*)*")
_NOT_ENTITIES = frozenset(
    """
    i i'm i've i'd i'll a an the my our your his her their its we you he she they it this
    that these those there here what when where why how who which yes no ok okay oh hi hey
    hello thanks thank sure well so but and or if then also just really wow great good nice
    cool yeah yep nope please sorry congrats congratulations awesome amazing love haha lol
    btw today tomorrow yesterday last next first after before maybe actually anyway
    january february march april june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs
    fri sat
    definitely absolutely totally right true sounds glad happy hope let let's did do does is
    are was were have has had can could would should will shall may might must not don't
    can't won't
    summarize summarise list compare tell describe explain show give recall remind
    """.split()
)
_NUMBER_RE = re.compile(r"\d")
_FIRST_PERSON_RE = re.compile(r"\b(i|i'm|i've|my|me|we|our)\b", re.IGNORECASE)


class Message(BaseModel):
    """One conversation turn, normalised from dicts, LangChain messages or strings."""

    role: str = "user"
    content: str
    speaker: str | None = None
    id: str | None = None
    timestamp: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class MemoryDraft(BaseModel):
    """What the reader proposes to store; the vault turns drafts into MemCubes."""

    text: str
    source_kind: SourceKind
    source_refs: list[str] = Field(default_factory=list)
    speaker: str | None = None
    role: str | None = None
    valid_from: datetime | None = None
    entities: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    importance: float = Field(default=0.5, ge=0.0, le=1.0)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ExtractedFact(BaseModel):
    """A fact a chat model found in the conversation."""

    text: str = Field(description="the fact, one self-contained sentence in the third person")
    source_turns: list[int] = Field(
        default_factory=list, description="0-based indices of the turns the fact comes from"
    )
    entities: list[str] = Field(default_factory=list, description="people, places, things named")
    tags: list[str] = Field(default_factory=list, description="a few short topic tags")
    importance: float = Field(default=0.5, ge=0.0, le=1.0, description="0 trivial .. 1 vital")


class ExtractedFacts(BaseModel):
    facts: list[ExtractedFact] = Field(default_factory=list)


FINE_PROMPT = """Extract the facts worth remembering about the people in this conversation:
preferences, plans, events, relationships, possessions, places, dates. One self-contained
sentence per fact, naming people instead of using pronouns. Skip greetings and small talk.
Reply with JSON only, shaped as
{{"facts": [{{"text": "...", "source_turns": [0], "entities": ["..."], "tags": ["..."],
"importance": 0.5}}]}}.

Conversation (turn index: speaker: text):
{conversation}
"""


_WORD_RE = re.compile(r"[A-Za-z][\w'’&-]*")
_CONTRACTION_RE = re.compile(r"\w+['’](?:re|ve|ll|d|m|t)$")
# words a name does not end with: a dangling particle, or the speaker ("Fri I", "Now I'm")
_NOT_LAST = frozenset({"of", "de", "da", "van", "von", "the",
                       "i", "i'm", "i've", "i'd", "i'll", "i’m", "i’ve", "i’d", "i’ll"})
_SENTENCE_ENDS = frozenset(".!?…:;\n")


def _opens_sentence(text: str, i: int) -> bool:
    """Whether the word at `i` is the first of a sentence: of the text, or after . ! ? : ; or a
    line break; what is neither a letter, a digit nor a comma before it (spaces, quotes,
    brackets, emoji) does not count."""
    j = i - 1
    while j >= 0 and i - j <= 16:
        ch = text[j]
        if ch in _SENTENCE_ENDS:
            return True
        if ch.isalnum() or ch == ",":
            return False
        j -= 1
    return j < 0


class Casing:
    """How words are written across a batch of texts: the words seen capitalised where no
    sentence opens (names by their use) and the words seen in lower case (common words)."""

    def __init__(self, texts: Sequence[str], names: Sequence[str] = ()) -> None:
        self.names: set[str] = {_base(w) for n in names for w in n.casefold().split()}
        self.common: set[str] = set()
        for text in texts:
            for m in _WORD_RE.finditer(text):
                word = m.group(0)
                if word[0].islower():
                    self.common.add(word.casefold())
                elif not _opens_sentence(text, m.start()):
                    self.names.add(_base(word.casefold()))


def _base(word: str) -> str:
    """A lower-case word without its possessive "'s" or quotes."""
    return word[:-2] if word.endswith(("'s", "’s")) else word.strip("'’")


def _opener_kept(word: str, rest: int, casing: Casing | None) -> bool:
    """Whether the capitalised word opening a sentence is part of a name: never a stop word or
    a pronoun's contraction ("You're"); with a batch's `casing`, always if the batch writes it
    capitalised mid-sentence, never if it writes it in lower case, and a lone word ending in
    "-ing" ("Seeing", "Dancing") only by that evidence."""
    low = word.casefold().strip("'’")
    base = _base(low)
    if base in _STOP_WORDS or _CONTRACTION_RE.match(low):
        return False
    if casing is None or base in casing.names:
        return True
    return low not in casing.common and (rest > 0 or not low.endswith("ing"))


def extract_entities(text: str, casing: Casing | None = None) -> list[str]:
    """Proper-noun phrases, found without a model: capitalised runs that are not stop words. A
    capitalised word that opens a sentence is kept only by `_opener_kept` ("Keep", "Anything",
    "You're" are not names)."""
    seen: dict[str, str] = {}
    for m in _ENTITY_RE.finditer(text):
        words = m.group(0).split()
        if _opens_sentence(text, m.start()) and not _opener_kept(words[0], len(words) - 1, casing):
            words.pop(0)
        while words and words[0].casefold().strip("'’") in _NOT_ENTITIES:
            words.pop(0)
        while words and words[-1].casefold() in _NOT_LAST:
            words.pop()
        phrase = " ".join(words).strip("'’-&")
        if phrase.endswith(("'s", "’s")):
            phrase = phrase[:-2]
        if len(phrase) > 1 and phrase.casefold() not in _NOT_ENTITIES:
            seen.setdefault(phrase.casefold(), phrase)
    return list(seen.values())


def estimate_importance(text: str, entities: Sequence[str]) -> float:
    """A cheap prior: named things, numbers and first-person statements matter; chit-chat less."""
    words = len(text.split())
    score = 0.4
    if entities:
        score += 0.15
    if _NUMBER_RE.search(text):
        score += 0.1
    if _FIRST_PERSON_RE.search(text):
        score += 0.1
    if words >= 12:
        score += 0.1
    if words < 4:
        score -= 0.2
    return round(min(1.0, max(0.05, score)), 2)


def _as_datetime(value: Any, what: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidInput(f"{what} is not a valid POSIX time: {value!r}") from exc
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInput(f"{what} is not an ISO date/time: {value[:80]!r}") from exc
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise InvalidInput(f"{what} must be a datetime, a number or an ISO string")


_KNOWN_KEYS = {"role", "content", "name", "speaker", "id", "timestamp", "created_at"}


def _message_of_dict(raw: dict[str, Any], index: int) -> Message:
    if "content" not in raw:
        raise InvalidInput(f"message {index} has no 'content'")
    content = raw["content"]
    if not isinstance(content, str):
        raise InvalidInput(f"message {index}: content must be a string")
    role = raw.get("role", "user")
    if not isinstance(role, str):
        raise InvalidInput(f"message {index}: role must be a string")
    speaker = raw.get("speaker") or raw.get("name")
    if speaker is not None and not isinstance(speaker, str):
        raise InvalidInput(f"message {index}: speaker must be a string")
    msg_id = raw.get("id")
    return _make_message(
        index,
        role=role,
        content=content,
        speaker=speaker,
        id=None if msg_id is None else str(msg_id),
        timestamp=_as_datetime(
            raw.get("timestamp", raw.get("created_at")), f"message {index} timestamp"
        ),
        metadata={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
    )


def _make_message(index: int, **fields: Any) -> Message:
    from pydantic import ValidationError

    try:
        return Message(**fields)
    except ValidationError as exc:
        raise InvalidInput(f"message {index} is not a valid message: {exc}") from exc


def _message_of(raw: Any, index: int) -> Message:
    if isinstance(raw, Message):
        return raw
    if isinstance(raw, str):
        return _make_message(index, content=raw)
    if isinstance(raw, dict):
        return _message_of_dict(raw, index)
    if hasattr(raw, "content") and hasattr(raw, "type"):  # LangChain BaseMessage
        if not isinstance(raw.content, str | list | tuple):
            raise InvalidInput(f"message {index}: content must be a string or a list of blocks")
        content = raw.content if isinstance(raw.content, str) else text_of_blocks(raw.content)
        role = {"human": "user", "ai": "assistant"}.get(raw.type, raw.type)
        return _make_message(
            index,
            role=role,
            content=content,
            speaker=getattr(raw, "name", None),
            id=getattr(raw, "id", None),
        )
    raise InvalidInput(
        f"message {index} must be a dict, a string or a LangChain message, "
        f"got {type(raw).__name__}"
    )


def normalise_message(raw: Any, index: int) -> Message:
    """Accepts a dict (role/content[, name|speaker, id, timestamp]), a LangChain message, or str.
    Every field that reaches a draft is checked here, before anything is written: content (not
    empty, at most MAX_TEXT characters), speaker (a name), id and role (at most MAX_ID_LEN
    characters), metadata (JSON values); none may hold NUL or lone surrogates."""
    msg = _message_of(raw, index)
    what = f"message {index}"
    if not msg.content.strip():
        raise InvalidInput(f"{what} is empty")
    if len(msg.content) > MAX_TEXT:
        raise InvalidInput(f"{what} is longer than {MAX_TEXT} characters")
    check_text(msg.content, f"{what} content")
    if msg.speaker is not None:
        check_name(msg.speaker, f"{what} speaker")
    check_optional_text(msg.id, f"{what} id", MAX_ID_LEN)
    check_optional_text(msg.role, f"{what} role", MAX_ID_LEN)
    check_metadata(msg.metadata, f"{what} metadata")
    return msg


class MemReader:
    """Reads conversations and documents into memory drafts."""

    def __init__(self, llm: Any = None, chunk_size: int = 1000, chunk_overlap: int = 150) -> None:
        self.llm = llm
        self.use_llm_for_intent = llm is not None
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    def read_messages(self, messages: Sequence[Any], mode: Mode = "fast") -> list[MemoryDraft]:
        if isinstance(messages, str | dict) or not isinstance(messages, Sequence):
            messages = [messages]
        if not messages:
            raise InvalidInput("no messages given")
        msgs = [normalise_message(m, i) for i, m in enumerate(messages)]
        if mode == "fast":
            casing = Casing([m.content for m in msgs], [m.speaker for m in msgs if m.speaker])
            return [self._draft_of(m, casing) for m in msgs]
        if mode == "fine":
            return self._extract(msgs)
        raise InvalidInput(f"mode must be 'fast' or 'fine', got {mode!r}")

    def read_intent(self, query: str, now: datetime | None = None) -> MemoryIntent:
        """The `MemoryIntent` of a query (rules; plus the chat model's reading if one is set
        and `use_llm_for_intent` is on)."""
        return read_intent(query, now, self.llm if self.use_llm_for_intent else None)

    def read_document(self, text: str, source: str | None = None) -> list[MemoryDraft]:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("document text must be a non-empty string")
        check_text(text, "document")
        check_optional_text(source, "document source", MAX_ID_LEN)
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap
        )
        drafts = []
        casing = Casing([text])
        for i, chunk in enumerate(splitter.split_text(text)):
            entities = extract_entities(chunk, casing)
            drafts.append(
                MemoryDraft(
                    text=chunk,
                    source_kind=SourceKind.document,
                    source_refs=[f"{source or 'document'}#chunk{i}"],
                    entities=entities,
                    importance=estimate_importance(chunk, entities),
                    metadata={"chunk": i},
                )
            )
        return drafts

    @staticmethod
    def _draft_of(m: Message, casing: Casing) -> MemoryDraft:
        entities = extract_entities(m.content, casing)
        if m.speaker and m.speaker.casefold() not in {e.casefold() for e in entities}:
            entities.insert(0, m.speaker)
        return MemoryDraft(
            text=m.content,
            source_kind=SourceKind.message,
            source_refs=[m.id] if m.id else [],
            speaker=m.speaker,
            role=m.role,
            valid_from=m.timestamp,
            entities=entities,
            importance=estimate_importance(m.content, entities),
            metadata=m.metadata,
        )

    def _extract(self, msgs: list[Message]) -> list[MemoryDraft]:
        if self.llm is None:
            raise InvalidInput("fine mode needs a chat model: MemOS.open(..., llm=<chat model>)")
        convo = "\n".join(f"{i}: {m.speaker or m.role}: {m.content}" for i, m in enumerate(msgs))
        prompt = FINE_PROMPT.format(conversation=convo)
        facts = self._ask(prompt, len(msgs))
        when = max((m.timestamp for m in msgs if m.timestamp), default=None)
        drafts = []
        for f in facts.facts:
            text = re.sub(r"^\s*\d+\s*[:.]\s*", "", f.text).strip()  # "3: ": a prompt index
            if not text:
                continue
            _check_fact(f)
            turns = [i for i in f.source_turns if 0 <= i < len(msgs)]
            refs = [msgs[i].id for i in turns if msgs[i].id]
            said = " ".join([text, *(msgs[i].content for i in turns)]).casefold()
            named = [e for e in dict.fromkeys(f.entities) if e.strip() and e.casefold() in said]
            drafts.append(
                MemoryDraft(
                    text=text,
                    source_kind=SourceKind.extraction,
                    source_refs=refs,
                    speaker=msgs[turns[0]].speaker if turns else None,
                    valid_from=max(
                        (msgs[i].timestamp for i in turns if msgs[i].timestamp), default=when
                    ),
                    entities=named or extract_entities(text),  # only names that were said
                    tags=[t for t in dict.fromkeys(f.tags) if any(c.isalnum() for c in t)],
                    importance=f.importance,
                    metadata={"source_turns": turns},
                )
            )
        return drafts

    def _ask(self, prompt: str, turns: int) -> ExtractedFacts:
        """The chat model's facts: its structured output, asked for under a schema bounded to
        this conversation (every field present, turn indices that exist, short texts, a few
        names and tags), else the first JSON value of its reply."""
        about = {k: f.description for k, f in ExtractedFact.model_fields.items()}
        name = Annotated[str, Field(min_length=1, max_length=40)]

        class Fact(ExtractedFact):
            text: str = Field(min_length=1, max_length=200, description=about["text"])
            source_turns: list[Literal[tuple(range(turns))]] = Field(  # type: ignore[valid-type]
                min_length=1, max_length=3, description=about["source_turns"]
            )
            entities: list[name] = Field(max_length=3, description=about["entities"])
            tags: list[name] = Field(max_length=3, description=about["tags"])
            importance: Literal[0.1, 0.3, 0.5, 0.7, 0.9] = Field(description=about["importance"])

        class Facts(ExtractedFacts):  # at most about 150 tokens a fact
            facts: list[Fact] = Field(max_length=max(2, turns))  # type: ignore[assignment]

        return ask_structured(
            self.llm, prompt, ExtractedFacts, shape=_facts_shape, starts="{[", bounded=Facts
        )


def _check_fact(fact: ExtractedFact) -> None:
    """A chat model's fact holds no NUL or lone surrogates (they cannot be stored)."""
    try:
        check_text(fact.text, "extracted fact", MAX_TEXT)
        for t in [*fact.tags, *fact.entities]:
            check_optional_text(t, "extracted tag or entity", MAX_ID_LEN)
    except InvalidInput as exc:
        raise ExtractionError(f"chat model reply cannot be stored: {exc}") from exc


def _facts_shape(data: Any) -> Any:
    return {"facts": data} if isinstance(data, list) else data


def parse_facts_json(text: str) -> ExtractedFacts:
    """Read the first JSON object or array in a model reply (code fences allowed)."""
    return validate(ExtractedFacts, first_json(text, "{["), _facts_shape)


# ---------------------------------------------------------------------------------------------
# Text helpers shared by the operator (organise) and the router (retrieve): keyword tokens,
# keyphrase concepts, and time expressions. No model: regexes, a stop list and Snowball stems.

_CHAT_WORDS = frozenset(
    """
    hey hi hello bye wow woah whoa woohoo yay aww yeah yes yep nope oh ok okay thanks thank
    great good nice cool awesome remember appreciate appreciated agree agreed believe gotta
    wanna plus
    amazing love lol haha glad happy sure really totally super pretty lot lots things thing
    stuff kind sort way time day today guess feel feeling felt think thought know knew hope
    tell told said say glad sounds sound looks look looking wonderful fantastic incredible
    congrats congratulations sorry mean means bit little big new old right wanted want wants
    going gonna got get gets make makes made did does doing done just like also even still
    much many more most always never ever something anything everything someone everyone
    yesterday tomorrow tonight week weeks weekend month months year years ago days morning
    evening night recently lately currently later soon went gone goes happened happen ask asked
    heard hear given give gave took take taken came come comes told let lets tried try trying
    seen see saw watch keep kept found find started start via wish wished share shared check
    bring brought put using used use getting having doing being stay stayed named called
    live lives lived living
    """.split()
)
_PHRASE_SPLIT = re.compile(r"[^\w'’ -]+|\s-\s|\b\d+\b")


# scikit-learn's English stop list (`sklearn.feature_extraction.text.ENGLISH_STOP_WORDS`, 318
# words, unchanged since 0.x), copied: importing scikit-learn for it took ~3 s of the first
# write or query of a process
_ENGLISH_STOP_WORDS = frozenset(
    """
    a about above across after afterwards again against all almost alone along already also
    although always am among amongst amoungst amount an and another any anyhow anyone anything
    anyway anywhere are around as at back be became because become becomes becoming been before
    beforehand behind being below beside besides between beyond bill both bottom but by call
    can cannot cant co con could couldnt cry de describe detail do done down due during each eg
    eight either eleven else elsewhere empty enough etc even ever every everyone everything
    everywhere except few fifteen fifty fill find fire first five for former formerly forty
    found four from front full further get give go had has hasnt have he hence her here
    hereafter hereby herein hereupon hers herself him himself his how however hundred i ie if
    in inc indeed interest into is it its itself keep last latter latterly least less ltd made
    many may me meanwhile might mill mine more moreover most mostly move much must my myself
    name namely neither never nevertheless next nine no nobody none noone nor not nothing now
    nowhere of off often on once one only onto or other others otherwise our ours ourselves out
    over own part per perhaps please put rather re same see seem seemed seeming seems serious
    several she should show side since sincere six sixty so some somehow someone something
    sometime sometimes somewhere still such system take ten than that the their them themselves
    then thence there thereafter thereby therefore therein thereupon these they thick thin
    third this those though three through throughout thru thus to together too top toward
    towards twelve twenty two un under until up upon us very via was we well were what whatever
    when whence whenever where whereafter whereas whereby wherein whereupon wherever whether
    which while whither who whoever whole whom whose why will with within without would yet you
    your yours yourself yourselves
    """.split()
)
_STOP_WORDS = _ENGLISH_STOP_WORDS | _CHAT_WORDS | _NOT_ENTITIES


def stop_words() -> frozenset[str]:
    """English and chat stop words: never a concept or a name on their own."""
    return _STOP_WORDS


def extract_concepts(text: str, limit: int = 5, entities: Sequence[str] | None = None) -> list[str]:
    """Keyphrases, RAKE style: runs of content words between stop words and punctuation
    (1-3 words, longest first). Names (`entities`, default: those found in `text`) are entities,
    not concepts, and split phrases like stop words do."""
    names = extract_entities(text) if entities is None else entities
    stop = stop_words() | {w.lower() for e in names for w in e.split()}
    found: dict[str, tuple[float, str]] = {}
    for chunk in _PHRASE_SPLIT.split(text):
        run: list[str] = []
        for raw in [*chunk.split(), ""]:
            word = raw.strip("'’-").lower()
            if word.endswith(("'s", "’s")):
                word = word[:-2]
            if (not word or word in stop or not word.isalpha() or len(word) < 3
                    or word.endswith("ly")):
                if run:
                    for phrase in _split_run(run):
                        key = concept_key(phrase)
                        score = len(phrase.split()) + sum(len(w) for w in phrase.split()) / 20
                        if key and (key not in found or found[key][0] < score):
                            found[key] = (score, phrase)
                run = []
            else:
                run.append(word)
    ranked = sorted(found.values(), key=lambda sp: -sp[0])
    return [p for _, p in ranked[:limit]]


def _split_run(run: list[str]) -> list[str]:
    """A run of content words as phrases: a trailing past-tense word ("painting dried") is a
    verb, not part of the phrase; runs longer than 3 words split in pairs."""
    while len(run) > 1 and run[-1].endswith("ed"):
        run = run[:-1]
    if len(run) <= 3:
        return [" ".join(run)]
    return [" ".join(run[i : i + 2]) for i in range(0, len(run), 2)]


# time expressions -------------------------------------------------------------------------

_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
            ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
            ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
            ("december", "dec"),
        ]
    )
    for m in names
}
_MONTH = r"(?P<month>January|February|March|April|May|June|July|August|September|October|" \
    r"November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_UNIT_DAYS = {"day": 1, "week": 7, "weekend": 7, "month": 30, "year": 365}
_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "few": 3, "couple of": 2, "several": 4,
}
_ABS_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b",
        rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b",
        r"\b(?P<year>(?:19|20)\d\d)-(?P<mnum>[01]\d)-(?P<day>[0-3]\d)\b",
        rf"\b{_MONTH},?\s+{_YEAR}\b",
        rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\b(?!,?\s+(?:19|20)\d\d)",
        rf"\b{_MONTH}\s+{_DAY}\b(?!,?\s+(?:19|20)\d\d)(?!\d)",
        rf"\b(?:in|during|of|since|before|after|until|by)\s+{_MONTH}\b(?!\s+{_DAY})",
        rf"\b(?:in|during|of|since|before|after|until|by)\s+{_YEAR}\b",
    )
]
_REL_RE = re.compile(
    r"\b(?P<rel>yesterday|today|tonight|this morning|this afternoon|this evening|recently|lately|"
    r"(?P<which>last|this|next|past|previous)\s+(?P<unit>day|week|weekend|month|year)|"
    r"(?P<num>\d+|an?|one|two|three|four|five|six|seven|eight|nine|ten|few|couple of|several)"
    r"\s+(?P<unit2>day|week|month|year)s?\s+ago)\b",
    re.IGNORECASE,
)
_BOUND_RE = re.compile(r"\b(?P<dir>before|after|since|until|till|prior to)\s+(?P<what>[^?.,;!]+)",
                       re.IGNORECASE)


class TimeRange(BaseModel):
    """When the memories sought were true: [start, end), either side open."""

    start: datetime | None = None
    end: datetime | None = None
    expression: str = ""
    anchor: str | None = Field(
        default=None, description="an event the range is relative to ('before the trip')"
    )
    direction: Literal["before", "after"] | None = None
    relative: bool = Field(default=False, description="relative to now ('last week')")
    yearless: bool = Field(default=False, description="a month or day without a year")

    def contains(self, t: datetime | None) -> bool:
        if t is None:
            return False
        return (self.start is None or t >= self.start) and (self.end is None or t < self.end)

    def bounds(self) -> tuple[float, float]:
        """[start, end) as POSIX timestamps, an open side infinite."""
        return (self.start.timestamp() if self.start else -math.inf,
                self.end.timestamp() if self.end else math.inf)


def _month_range(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _latest_year(month: int, day: int | None, now: datetime) -> int:
    """The year of the latest (month, day) not after `now`."""
    if (month, day or 1) <= (now.month, now.day):
        return now.year
    return now.year - 1


def _absolute(text: str, now: datetime) -> tuple[datetime, datetime, str, bool] | None:
    for pat in _ABS_PATTERNS:
        m = pat.search(text)
        if not m:
            continue
        g = m.groupdict()
        if (g.get("month") and g["month"] == "May") or (g.get("month") and g["month"] != "may"):
            pass
        month = (
            int(g["mnum"]) if g.get("mnum") else _MONTHS.get((g.get("month") or "").lower())
        )
        day = int(g["day"]) if g.get("day") else None
        year = int(g["year"]) if g.get("year") else None
        if day is not None and not 1 <= day <= 31:
            continue
        try:
            yearless = year is None
            if month and day:
                year = year or _latest_year(month, day, now)
                start = datetime(year, month, day, tzinfo=UTC)
                return start, start + timedelta(days=1), m.group(0), yearless
            if month:
                year = year or _latest_year(month, None, now)
                return (*_month_range(year, month), m.group(0), yearless)
            if year:
                return (
                    datetime(year, 1, 1, tzinfo=UTC),
                    datetime(year + 1, 1, 1, tzinfo=UTC),
                    m.group(0),
                    False,
                )
        except ValueError:
            continue
    return None


def _relative(text: str, now: datetime) -> tuple[datetime | None, datetime, str] | None:
    m = _REL_RE.search(text)
    if not m:
        return None
    rel = m.group("rel").lower()
    day0 = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if rel == "yesterday":
        return day0 - timedelta(days=1), day0, m.group(0)
    if rel in ("today", "tonight") or (rel.startswith("this ") and not m.group("unit")):
        return day0, day0 + timedelta(days=1), m.group(0)
    if rel in ("recently", "lately"):
        return now - timedelta(days=30), now + timedelta(seconds=1), m.group(0)
    if m.group("unit2"):
        raw = m.group("num").lower()
        n = int(raw) if raw.isdigit() else _NUMBER_WORDS.get(raw, 1)
        span = _UNIT_DAYS[m.group("unit2").lower()]
        center = day0 - timedelta(days=n * span)
        slack = timedelta(days=max(1, span // 2 + (span > 1)))
        return center - slack, center + slack + timedelta(days=1), m.group(0)
    start, end = _calendar_range(m.group("which").lower(), m.group("unit").lower(), day0, now)
    return start, end, m.group(0)


def _calendar_range(
    which: str, unit: str, day0: datetime, now: datetime
) -> tuple[datetime, datetime]:
    """The span of "last/this/next day|week|weekend|month|year" around `day0`."""
    if unit == "day":
        return day0 - timedelta(days=1), day0 + timedelta(days=1)
    if unit in ("week", "weekend"):
        week0 = day0 - timedelta(days=day0.weekday())
        offset = {"this": 0, "next": 7}.get(which, -7)
        return week0 + timedelta(days=offset), week0 + timedelta(days=offset + 7)
    if unit == "month":
        first = day0.replace(day=1)
        if which == "this":
            return _month_range(first.year, first.month)
        if which == "next":
            nxt = _month_range(first.year, first.month)[1]
            return _month_range(nxt.year, nxt.month)
        prev = first - timedelta(days=1)
        return _month_range(prev.year, prev.month)
    year = now.year + {"this": 0, "next": 1}.get(which, -1)
    return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)


def parse_time_range(text: str, now: datetime | None = None) -> TimeRange | None:
    """The time range a query asks about, read without a model: dates ("in May 2023",
    "on 8 May, 2023", "2023-05-08"), relative phrases ("yesterday", "last week", "3 days ago")
    and bounds ("before June 2023", "after the trip": an event to resolve against memory)."""
    now = now or datetime.now(UTC)
    bound = _BOUND_RE.search(text)
    if bound:
        direction = "before" if bound.group("dir").lower() in ("before", "until", "till",
                                                                  "prior to") else "after"
        what = bound.group("what").strip()
        absolute = _absolute(bound.group(0), now)
        relative = None if absolute else _relative(what, now)
        if absolute or relative:
            start, end = (absolute or relative)[:2]  # type: ignore[index]
            flags = {"relative": relative is not None,
                     "yearless": bool(absolute and absolute[3])}
            if direction == "before":
                return TimeRange(end=start, expression=bound.group(0), direction="before",
                                 **flags)
            return TimeRange(start=end if bound.group("dir").lower() == "after" else start,
                             expression=bound.group(0), direction="after", **flags)
        words = what.split()
        anchor = " ".join(words[:6]).strip()
        if anchor and not re.match(r"^(that|this|it|then|now)$", anchor, re.IGNORECASE):
            return TimeRange(expression=bound.group(0), anchor=anchor, direction=direction)
    absolute = _absolute(text, now)
    if absolute is not None:
        start, end, expr, yearless = absolute
        return TimeRange(start=start, end=end, expression=expr, yearless=yearless)
    relative = _relative(text, now)
    if relative is None:
        return None
    start, end, expr = relative
    return TimeRange(start=start, end=end, expression=expr, relative=True)


# query intent -------------------------------------------------------------------------------

AnswerKind = Literal[
    "time", "person", "place", "number", "reason", "manner", "yes_no", "thing", "any"
]
_KIND_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^\s*(when|what (time|date|day|year|month))\b|\bhow long ago\b", re.I), "time"),
    (re.compile(r"^\s*(who|whom|whose)\b", re.I), "person"),
    (re.compile(r"^\s*where\b", re.I), "place"),
    (re.compile(r"\bhow (many|much|often|long|old)\b", re.I), "number"),
    (re.compile(r"^\s*why\b", re.I), "reason"),
    (re.compile(r"^\s*how\b", re.I), "manner"),
    (re.compile(r"^\s*(is|are|was|were|do|does|did|can|could|would|will|has|have|had|should)\b",
                re.I), "yes_no"),
    (re.compile(r"^\s*(what|which)\b", re.I), "thing"),
]
Operation = Literal["lookup", "list", "compare", "summarize"]
_OPERATION_RULES: list[tuple[re.Pattern[str], Operation]] = [
    (re.compile(r"^\s*(summari[sz]e|recap|describe|give (me )?(an? )?(summary|overview|recap)"
                r"|tell me (everything|all|about))\b|\bwhat (has|have) \w+( \w+)? been up to\b",
                re.I), "summarize"),
    (re.compile(r"\bcompare\b|\bboth\b|\bin common\b|\bdiffer(ence|ent)?\b|\bversus\b"
                r"|\bhow (has|have|did) .{1,40} change", re.I), "compare"),
    (re.compile(r"^\s*(list|name)\b|\ball (the|of)\b|\b(what|which) (kinds?|types?|sorts?) of\b"
                r"|\bin what ways\b|^\s*(what|which) \w+(s|es|ies)\b (has|have|does|do|did|are)"
                r"\b|^\s*(where|who) (has|have)\b", re.I), "list"),
]
_RECENT_RE = re.compile(r"\b(recent(ly)?|latest|last time|lately|currently|now|these days)\b",
                        re.I)


class MemoryIntent(BaseModel):
    """What a query asks of memory, as the router uses it."""

    query: str
    content: str = Field(default="", description="the query without its time expression")
    keywords: list[str] = Field(default_factory=list, description="stemmed BM25 terms")
    entities: list[str] = Field(default_factory=list, description="people, places, names")
    concepts: list[str] = Field(default_factory=list, description="keyphrases")
    time: TimeRange | None = None
    answer_kind: AnswerKind = "any"
    operation: Operation = Field(
        default="lookup", description="what is done with the answer: one fact (lookup), every "
        "instance (list), instances across sessions side by side (compare), an overview")
    wants_recent: bool = False
    source: Literal["rules", "llm"] = "rules"


def read_operation(query: str) -> Operation:
    """What the query asks memory to do: list, compare, summarize, else look one thing up."""
    for pat, op in _OPERATION_RULES:
        if pat.search(query):
            return op
    return "lookup"


class _LLMIntent(BaseModel):
    entities: list[str] = Field(default_factory=list)
    concepts: list[str] = Field(default_factory=list)
    time_start: str | None = Field(default=None, description="ISO date, or null")
    time_end: str | None = Field(default=None, description="ISO date (exclusive), or null")
    answer_kind: str = "any"
    operation: str = "lookup"


INTENT_PROMPT = """Read this question to a memory store. Reply with JSON only:
{{"entities": [names of people, places, things], "concepts": [2-4 short topic keyphrases],
"time_start": ISO date or null, "time_end": ISO date or null,
"answer_kind": one of time|person|place|number|reason|manner|yes_no|thing|any,
"operation": one of lookup|list|compare|summarize}}.
Today is {today}.
Question: {query}
"""


def read_intent(query: str, now: datetime | None = None, llm: Any = None) -> MemoryIntent:
    """The `MemoryIntent` of `query`: rules always; a chat model, when given, adds what it
    reads (its entities/concepts are merged, its time range used when the rules found none)."""
    now = now or datetime.now(UTC)
    kind: str = "any"
    for pat, k in _KIND_RULES:
        if pat.search(query):
            kind = k
            break
    time = parse_time_range(query, now)
    # what is asked about, without when ("in May 2023"); an event anchor ("after the race")
    # stays: it often names what the answer is about
    content = query
    if time is not None and time.expression and time.anchor is None:
        content = " ".join(re.sub(re.escape(time.expression), " ", query, count=1).split())
    content = content if keyword_tokens(content) else query
    intent = MemoryIntent(
        query=query,
        content=content,
        keywords=query_tokens(content),
        entities=extract_entities(query),
        concepts=extract_concepts(content),
        time=time,
        answer_kind=kind,  # type: ignore[arg-type]
        operation=read_operation(query),
        wants_recent=bool(_RECENT_RE.search(query)),
    )
    if llm is None:
        return intent
    try:
        data = ask_structured(llm, INTENT_PROMPT.format(today=now.date().isoformat(), query=query),
                        _LLMIntent)
    except ExtractionError:
        return intent
    intent.source = "llm"
    intent.entities = list(dict.fromkeys([*intent.entities, *data.entities]))
    intent.concepts = list(dict.fromkeys([*intent.concepts, *data.concepts]))
    if intent.time is None and (data.time_start or data.time_end):
        with contextlib.suppress(InvalidInput):
            intent.time = TimeRange(
                start=_as_datetime(data.time_start, "time_start"),
                end=_as_datetime(data.time_end, "time_end"),
                expression="(chat model)",
            )
    kinds = AnswerKind.__args__  # type: ignore[attr-defined]
    if data.answer_kind in kinds and intent.answer_kind == "any":
        intent.answer_kind = data.answer_kind  # type: ignore[assignment]
    if data.operation in Operation.__args__ and intent.operation == "lookup":  # type: ignore[attr-defined]
        intent.operation = data.operation  # type: ignore[assignment]
    return intent
