"""What one fact says happened, and when, read without a model: speaker coreference ("I",
"my sister" -> the speaker and "Caroline's sister"), time phrases resolved against the date the
fact was said ("last Saturday" said on 8 May 2023 -> 6 May 2023), and the event phrase (the
clause that holds the time phrase, first person replaced by the speaker).

Time phrases are found by rules and resolved by `dateparser` (imported on first use) with the
fact's date as its relative base; phrases it does not know ("a few days ago", "this weekend",
"last night") are resolved by rules, and every result is widened to the span its unit names
(a week, a month, a year). Pure functions; `read_events` is the entry point.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

Grain = Literal["day", "week", "weekend", "month", "season", "year", "days"]

_FIRST_PERSON = re.compile(r"\b(?:i|me|my|mine|myself|we|us|our|ours)\b", re.IGNORECASE)
_RELATIONS = (
    "sister|sisters|brother|brothers|sibling|siblings|mom|mum|mother|dad|father|parents|"
    "kids|kid|children|child|son|sons|daughter|daughters|husband|wife|partner|spouse|"
    "boyfriend|girlfriend|fiance|fiancee|fiancé|fiancée|family|fam|grandma|grandmother|"
    "grandpa|grandfather|grandparents|aunt|uncle|cousin|cousins|niece|nephew|baby|friend|"
    "friends|bff|roommate|neighbor|neighbour|neighbors|boss|coworker|coworkers|colleague|"
    "colleagues|team|mentor|dog|dogs|cat|cats|pet|pets|puppy"
)
_MODIFIERS = "best|little|older|younger|big|old|new|oldest|youngest|eldest|late|two|three"
_POSSESSIVE = re.compile(
    rf"\b(?:my|our)\s+(?:(?P<mod>{_MODIFIERS})\s+)?(?P<role>{_RELATIONS})\b", re.IGNORECASE
)

_NUM = r"\d+|an?|one|two|three|four|five|six|seven|eight|nine|ten|a few|few|a couple of|several"
_UNIT = r"day|week|weekend|month|year"
_WEEKDAY = (r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
            r"mon|tues|tue|wed|thurs|thur|thu|fri|sat|sun")
_MONTH = (r"January|February|March|April|May|June|July|August|September|October|November|"
          r"December")
_SEASON = r"summer|winter|spring|fall|autumn"
_TIME_RE = re.compile(
    r"\b(?:"
    r"yesterday|today|tonight|tomorrow|last night|this (?:morning|afternoon|evening)"
    rf"|(?:last|next|this|past) (?:{_UNIT}|{_SEASON}|{_WEEKDAY})"
    rf"|(?:{_NUM}) (?:{_UNIT})s? (?:ago|from now|later)"
    rf"|in (?:{_NUM}) (?:{_UNIT})s"
    rf"|(?:[0-3]?\d(?:st|nd|rd|th)? (?:of )?(?:{_MONTH})|(?:{_MONTH}) [0-3]?\d(?:st|nd|rd|th)?)"
    r"(?:,? (?:19|20)\d\d)?"
    rf"|(?:in|on|since|during|by|until|early|late|mid|of) (?:{_MONTH})(?:,? (?:19|20)\d\d)?"
    rf"|(?:{_MONTH}),? (?:19|20)\d\d"
    r"|in (?:19|20)\d\d"
    r")\b",
    re.IGNORECASE,
)
_MONTH_CASE = re.compile(rf"\b(?:{_MONTH})\b")  # a month is a name: "May", never "may"
_FUTURE = re.compile(r"\b(?:will|going to|gonna|'ll|plan(?:ning)? to|can't wait|next|upcoming|"
                     r"from now|hope to|later|tomorrow|in \w+ (?:day|week|month|year)s)\b",
                     re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(r"[.!?;]+\s+|,\s+|\s+(?:but|so|because)\s+|"
                           r"\s+and\s+(?=(?:it|i|we|she|he|they|that|this|there)\b)",
                           re.IGNORECASE)
_SMALL = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "few": 3, "a few": 3,
          "a couple of": 2, "several": 4}
_SEASON_MONTHS = {"spring": (3, 5), "summer": (6, 8), "fall": (9, 11), "autumn": (9, 11),
                  "winter": (12, 2)}


class TimeSpan(BaseModel):
    """A time phrase of a fact and the days it names (both ends included)."""

    phrase: str
    start: date
    end: date
    grain: Grain = "day"

    def label(self) -> str:
        """The span as a person writes it: "6 May 2023", "1-7 May 2023", "June 2023",
        "June-August 2023", "2022"."""
        s, e = self.start, self.end
        if s == e:
            return f"{s.day} {s:%B %Y}"
        whole_months = s.day == 1 and e == _month_end(e)
        if whole_months and s.year == e.year and (s.month, e.month) == (1, 12):
            return str(s.year)
        if whole_months and (s.year, s.month) == (e.year, e.month):
            return f"{s:%B %Y}"
        if whole_months and s.year == e.year:
            return f"{s:%B}-{e:%B %Y}"
        if (s.year, s.month) == (e.year, e.month):
            return f"{s.day}-{e.day} {s:%B %Y}"
        return f"{s.day} {s:%b %Y} - {e.day} {e:%b %Y}"


class Relation(BaseModel):
    """An entity the speaker named by a possessive: "my sister" said by Caroline."""

    phrase: str
    entity: str  # "Caroline's sister"
    owner: str  # "Caroline"
    role: str  # "sister"


class FactEvents(BaseModel):
    """What `read_events` found in one fact."""

    entities: list[str] = Field(default_factory=list, description="the speaker, then relations")
    relations: list[Relation] = Field(default_factory=list)
    times: list[TimeSpan] = Field(default_factory=list)
    event: str | None = Field(default=None, description="what happened, at the first time")


_GREETING = (r"hey|hi|hello|thanks|thank you|wow|oh|yeah|yep|yes|no|aw+|congrats|"
             r"congratulations|sorry|bye|dear|ok|okay|haha|omg|whoa|woah|cheers|great|cool")


_BEFORE_NAME = re.compile(rf"(?:[,.!?;]\s*|\b(?:{_GREETING})\s*,?\s*)\Z", re.IGNORECASE)
_AFTER_NAME = re.compile(r"\s*(?:[,.!?;]|$)")


def _wordy(text: str, i: int) -> bool:
    """Whether `text[i]` is a word character (`\\w`); out of range is not."""
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] == "_")


def _mentions(text: str, low: str, name: str) -> list[int]:
    """Where `name` (lower case) stands in `text` (`low`: `text` lower-cased, as long) as a
    whole word, as `\\bname\\b` finds it ignoring case: start offsets, not overlapping."""
    out, pos, n = [], 0, len(name)
    while (i := low.find(name, pos)) >= 0:
        e = i + n
        if (_wordy(text, i - 1) != _wordy(text, i)) and (_wordy(text, e - 1) != _wordy(text, e)):
            out.append(i)
            pos = e
        else:
            pos = i + 1
    return out


def addressed(text: str, names: list[str]) -> set[str]:
    """The names in `names` that `text` uses only to address someone ("Hey Caroline!",
    "Thanks, Mel!", "..., Melanie."): a name set off by punctuation after the start of a
    sentence, a comma or a greeting, and never named otherwise. Found by string search and
    two fixed patterns (a pattern per name, compiled for every new name, was most of a
    write's reading at 1e5 facts)."""
    out: set[str] = set()
    low = text.lower()
    if len(low) != len(text):  # lower-casing moved offsets (rare letters): match per name
        return _addressed_by_pattern(text, names)
    for name in names:
        key = name.strip().lower()
        if not key or len(key) != len(name.strip()) or not (_wordy(key, 0)
                                                             and _wordy(key, len(key) - 1)):
            if _addressed_by_pattern(text, [name]):
                out.add(name)
            continue
        at = _mentions(text, low, key)
        if not at:
            continue
        n = len(key)
        vocative = sum(1 for i in at if _AFTER_NAME.match(text, i + n)
                       and (i == 0 or _BEFORE_NAME.search(text, max(0, i - 40), i)))
        possessive = any(low.startswith("'s", i + n) and not _wordy(text, i + n + 2)
                         for i in at)
        if vocative >= len(at) and not possessive:
            out.add(name)
    return out


def _addressed_by_pattern(text: str, names: list[str]) -> set[str]:
    """`addressed` by patterns compiled per name: for a text or name whose lower case changes
    its length, or a name that starts or ends with a mark."""
    out: set[str] = set()
    for name in names:
        esc = re.escape(name.strip())
        if not esc:
            continue
        every = len(re.findall(rf"\b{esc}\b", text, re.IGNORECASE))
        if not every:
            continue
        vocative = re.findall(rf"(?:^|[,.!?;]\s*|\b(?:{_GREETING})\s*,?\s*)\b{esc}\b"
                              r"(?=\s*(?:[,.!?;]|$))", text, re.IGNORECASE)
        if len(vocative) >= every and re.search(rf"\b{esc}'s\b", text, re.IGNORECASE) is None:
            out.add(name)
    return out


def coreference(text: str, speaker: str | None) -> tuple[list[str], list[Relation]]:
    """The entities a speaker's first person names: the speaker for "I / me / my", and
    "<speaker>'s <role>" for "my sister", "our kids", "my best friend"."""
    if not speaker or not speaker.strip():
        return [], []
    speaker = " ".join(speaker.split())
    relations: dict[str, Relation] = {}
    for m in _POSSESSIVE.finditer(text):
        role = " ".join(w.lower() for w in (m.group("mod"), m.group("role")) if w)
        entity = f"{speaker}'s {role}"
        relations.setdefault(entity.casefold(), Relation(phrase=m.group(0), entity=entity,
                                                         owner=speaker, role=role))
    said = bool(relations) or bool(_FIRST_PERSON.search(text))
    rels = list(relations.values())
    return ([speaker] if said else []) + [r.entity for r in rels], rels


def _month_end(d: date) -> date:
    nxt = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


def _week(d: date) -> tuple[date, date]:
    start = d - timedelta(days=d.weekday())
    return start, start + timedelta(days=6)


def _widen(day: date, grain: Grain) -> tuple[date, date]:
    """The span of `grain` around `day`."""
    if grain == "week":
        return _week(day)
    if grain == "weekend":
        sat = day + timedelta(days=(5 - day.weekday()) % 7) if day.weekday() < 5 else \
            day - timedelta(days=day.weekday() - 5)
        return sat, sat + timedelta(days=1)
    if grain == "month":
        return date(day.year, day.month, 1), _month_end(day)
    if grain == "year":
        return date(day.year, 1, 1), date(day.year, 12, 31)
    return day, day


def _grain(phrase: str) -> Grain:
    p = phrase.lower()
    if re.search(r"\bweekends?\b", p):
        return "weekend"
    if re.search(r"\bweeks?\b", p):
        return "week"
    if re.search(r"\bmonths?\b", p) or (re.fullmatch(rf"(?:\w+ )?(?:{_MONTH})(?:,? \d{{4}})?",
                                                    phrase) and not re.search(r"\d", p)):
        return "month"
    if re.fullmatch(rf"(?:\w+ )?(?:{_MONTH}),? \d{{4}}", phrase):
        return "month"
    if re.search(r"\byears?\b", p) or re.fullmatch(r"in \d{4}", p):
        return "year"
    return "day"


def _by_rule(phrase: str, base: date) -> tuple[date, date, Grain] | None:
    """The phrases `dateparser` does not know."""
    p = phrase.lower()
    if p == "last night":
        d = base - timedelta(days=1)
        return d, d, "day"
    if p in ("tonight", "this morning", "this afternoon", "this evening"):
        return base, base, "day"
    m = re.fullmatch(rf"(?P<n>a few|few|a couple of|several) (?P<u>{_UNIT})s? ago", p)
    if m:
        n = _SMALL[m.group("n")]
        step = {"day": 1, "week": 7, "weekend": 7, "month": 30, "year": 365}[m.group("u")]
        return base - timedelta(days=step * (n + 1)), base - timedelta(days=step * max(n - 1, 1)), \
            "days"
    m = re.fullmatch(rf"in (?P<n>{_NUM}) (?P<u>{_UNIT})s|(?P<n2>{_NUM}) (?P<u2>{_UNIT})s? "
                     r"(?:from now|later)", p)
    if m:
        n, unit = _SMALL.get(m.group("n") or m.group("n2"), 0), m.group("u") or m.group("u2")
        n = n or int(m.group("n") or m.group("n2"))
        step = {"day": 1, "week": 7, "weekend": 7, "month": 30, "year": 365}[unit]
        grain: Grain = "week" if unit == "weekend" else unit  # type: ignore[assignment]
        start, end = _widen(base + timedelta(days=step * n), grain)
        return start, end, grain
    m = re.fullmatch(rf"(?P<w>last|next|this|past) (?P<s>weekend|{_SEASON})", p)
    if m:
        return _season_or_weekend(m.group("w"), m.group("s"), base)
    return None


def _season_or_weekend(which: str, what: str, base: date) -> tuple[date, date, Grain]:
    if what == "weekend":
        shift = {"last": -7, "past": -7, "next": 7, "this": 0}[which]
        start, end = _widen(base + timedelta(days=shift), "weekend")
        if which in ("last", "past") and base.weekday() >= 5:
            start, end = _widen(base - timedelta(days=base.weekday() - 5 + 7), "weekend")
        return start, end, "weekend"
    first, last = _SEASON_MONTHS[what]
    year = base.year + {"last": -1, "past": -1, "next": 1, "this": 0}[which]
    if which in ("last", "past") and base.month > (last if first <= last else 2):
        year = base.year  # "last summer" said in December: this year's
    if which == "next" and base.month < first:
        year = base.year
    start = date(year if first <= last else year - 1, first, 1)
    return start, _month_end(date(year, last, 1)), "season"


def _parser_settings(base: datetime, future: bool) -> dict[str, Any]:
    return {"RELATIVE_BASE": base.replace(tzinfo=None), "RETURN_AS_TIMEZONE_AWARE": False,
            "PREFER_DATES_FROM": "future" if future else "past",
            "PREFER_DAY_OF_MONTH": "first"}


def resolve(phrase: str, said_at: datetime, future: bool = False) -> TimeSpan | None:
    """The days a time phrase names, said at `said_at`; None when neither rules nor
    `dateparser` read it as a time. `future`: the sentence speaks of what is to come (a bare
    "in June" is then the next June, else the last one)."""
    base = said_at.date()
    ruled = _by_rule(phrase, base)
    if ruled is not None:
        return TimeSpan(phrase=phrase, start=ruled[0], end=ruled[1], grain=ruled[2])
    text = re.sub(r"^(?:in|on|since|during|by|until|early|late|mid|of) ", "", phrase,
                  flags=re.IGNORECASE)
    grain = _grain(phrase)
    if grain == "year" and re.fullmatch(r"\d{4}", text):  # "in 2021"
        got: date | None = date(int(text), 1, 1)
    else:
        got = _dateparse(text, said_at, future)
    if got is None:
        return None
    start, end = _widen(got, grain)
    return TimeSpan(phrase=phrase, start=start, end=end, grain=grain)


_MONTH_NUMBER = {m.casefold(): i + 1 for i, m in enumerate(_MONTH.split("|"))}

# the day dateparser reads these as: the day said plus so many days, at any time of day, in
# any letter case, looking back or ahead (checked for every 5th day and three times of day of
# 2023/2024); computed here, not parsed
_DAYS_FROM = {"today": 0, "yesterday": -1, "tomorrow": 1, "last week": -7, "this week": 0,
              "next week": 7}
# a month or a year away from the one said, read to its grain (the phrase's month or year)
_MONTHS_FROM = {"last month": -1, "this month": 0, "next month": 1,
                "last year": -12, "this year": 0, "next year": 12}


_WEEKDAY = {d: i for i, d in enumerate(
    "monday tuesday wednesday thursday friday saturday sunday".split())}
_WEEKDAY_RE = re.compile(r"(?:(this|last|next) )?(" + "|".join(_WEEKDAY) + ")")
_MONTH_YEAR_RE = re.compile(rf"({_MONTH.lower()}),? (\d{{4}})")


def _weekday_of(text: str, said: date, future: bool) -> date | None:
    """The day "(this|last|next) <weekday>" names, as dateparser reads it: "this" the one of
    the week ahead (today's included), "last" / "next" the one before / after today, a bare
    weekday the one before or after today as the sentence looks back or ahead."""
    m = _WEEKDAY_RE.fullmatch(text)
    if m is None:
        return None
    which, ahead = m.group(1), (_WEEKDAY[m.group(2)] - said.weekday()) % 7
    if which == "this":
        return said + timedelta(days=ahead)
    if which == "next" or (which is None and future):
        return said + timedelta(days=ahead or 7)
    return said - timedelta(days=(7 - ahead) % 7 or 7)


def _month_of(name: str, said: date, future: bool) -> date | None:
    """The first day of the month a bare month name means, said on `said`: the last one
    (looking back: this month's when it is the month said) or the next one (looking ahead:
    next year's when it is the month said). What dateparser reads, but for its leap-year
    slip: "February" said on 29-31 January 2024, looking back, is February 2023, not 2020."""
    month = _MONTH_NUMBER.get(name.casefold())
    if month is None:
        return None
    if future:
        year = said.year if month > said.month else said.year + 1
    else:
        year = said.year if month <= said.month else said.year - 1
    return date(year, month, 1)


def _dateparse(text: str, said_at: datetime, future: bool) -> date | None:
    """The day `dateparser` reads `text` as, said at `said_at`: computed for days, weeks,
    months and years away, weekdays, month names with or without a year; parsed otherwise."""
    said, key = said_at.date(), text.casefold()
    if (days := _DAYS_FROM.get(key)) is not None:
        return said + timedelta(days=days)
    if (months := _MONTHS_FROM.get(key)) is not None:
        n = said.year * 12 + said.month - 1 + months
        return date(n // 12, n % 12 + 1, 1)
    if (month := _month_of(text, said, future)) is not None:
        return month
    if (day := _weekday_of(key, said, future)) is not None:
        return day
    if m := _MONTH_YEAR_RE.fullmatch(key):  # "May 2023", "May, 2023"
        return date(int(m.group(2)), _MONTH_NUMBER[m.group(1)], 1)
    import dateparser

    got = dateparser.parse(text, languages=["en"], settings=_parser_settings(said_at, future))
    return None if got is None else got.date()


def time_phrases(text: str) -> list[re.Match[str]]:
    """The time phrases of `text`, in order (a month is matched only when capitalised)."""
    out = []
    for m in _TIME_RE.finditer(text):
        months = re.findall(rf"\b(?:{_MONTH})\b", m.group(0), re.IGNORECASE)
        if months and not all(_MONTH_CASE.fullmatch(x) for x in months):
            continue
        out.append(m)
    return out


def event_phrase(text: str, phrase: str, speaker: str | None, words: int = 12) -> str:
    """The clause of `text` that holds `phrase`, without it, first person replaced by the
    speaker: "I went to a support group yesterday" -> "Caroline went to a support group"."""
    clause = _bare(next((c for c in _CLAUSE_SPLIT.split(text) if phrase in c), text), phrase)
    if len(clause.split()) < 4:  # too little left of the clause: the whole sentence
        clause = _bare(next((c for c in re.split(r"[.!?]+\s+", text) if phrase in c), text),
                       phrase)
    if speaker:
        clause = re.sub(r"\b(?:I'm)\b", f"{speaker} is", clause)
        clause = re.sub(r"\b(?:I've)\b", f"{speaker} has", clause)
        clause = re.sub(r"\b(?:I'll)\b", f"{speaker} will", clause)
        clause = re.sub(r"\bI\b", speaker, clause)
        clause = re.sub(r"\b[Mm]y\b", f"{speaker}'s", clause)
        clause = re.sub(r"\bme\b", speaker, clause)
    cut = clause.split()
    return " ".join(cut[:words]) + (" ..." if len(cut) > words else "")


_DANGLING = (r"(?:from|for|on|in|at|about|since|to|of|the|a|an|and|or|was|is|it|that|this|"
             r"just|so|but|until|by|hey|hi|wow|yeah|yes|oh|well|btw)")


def _bare(clause: str, phrase: str) -> str:
    """`clause` without the time phrase and the function words left dangling at its ends."""
    clause = re.sub(rf"\s*\b{re.escape(phrase)}\b\s*", " ", clause).strip(" ,.!?;:-")
    clause = re.sub(rf"^(?:{_DANGLING}\b[\s,!]*)+", "", clause, flags=re.IGNORECASE)
    return re.sub(rf"(?:[\s,]+\b{_DANGLING})+$", "", clause, flags=re.IGNORECASE).strip(" ,-")


def read_events(text: str, speaker: str | None, said_at: datetime | None) -> FactEvents:
    """Coreference, resolved times and the event phrase of one fact (times only when the
    date it was said is known)."""
    entities, relations = coreference(text, speaker)
    times: list[TimeSpan] = []
    if said_at is not None:
        future = bool(_FUTURE.search(text))
        for m in time_phrases(text):
            span = resolve(m.group(0), said_at, future=future)
            if span is not None and all(t.phrase != span.phrase for t in times):
                times.append(span)
    event = event_phrase(text, times[0].phrase, speaker) if times else None
    return FactEvents(entities=entities, relations=relations, times=times, event=event or None)


__all__ = ["FactEvents", "Relation", "TimeSpan", "coreference", "event_phrase", "read_events",
           "resolve", "time_phrases"]
