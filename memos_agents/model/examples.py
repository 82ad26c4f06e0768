"""Training examples for parameter memory, made from plaintext facts without a model.

Each fact becomes a plain statement (language-modelling on the fact itself) and a few chat turns
that ask for it: by the people and things it names, and generically. `held_out` gives other
phrasings of the same questions, to check that an adapter learned the facts rather than the
prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..cube import MemCube

ENTITY_QUESTIONS = (
    "What do you know about {e}?",
    "Tell me about {e}.",
    "What do you remember about {e}?",
)
GENERIC_QUESTIONS = (
    "What is something you remember?",
    "Tell me one thing you know.",
    "Share a fact from your memory.",
)
HELD_OUT_ENTITY = ("Can you recall anything regarding {e}?", "Any facts on {e}?")
HELD_OUT_GENERIC = ("Recall a fact, please.",)


def _entities(cube: MemCube) -> list[str]:
    seen: list[str] = []
    for e in cube.organisation.entities:
        if e and e.casefold() not in {s.casefold() for s in seen}:
            seen.append(e)
    return seen[:2]


def training_examples(cubes: Sequence[MemCube]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, cube in enumerate(cubes):
        fact = cube.content.strip()
        out.append({"text": fact})
        for e in _entities(cube):
            for q in ENTITY_QUESTIONS[:2]:
                out.append(
                    {"messages": [{"role": "user", "content": q.format(e=e)}], "completion": fact}
                )
        q = GENERIC_QUESTIONS[i % len(GENERIC_QUESTIONS)]
        out.append({"messages": [{"role": "user", "content": q}], "completion": fact})
    return out


def held_out(cubes: Sequence[MemCube]) -> list[dict[str, Any]]:
    """Questions phrased unlike any training example, each with its fact as the answer."""
    out: list[dict[str, Any]] = []
    for cube in cubes:
        fact = cube.content.strip()
        ents = _entities(cube)
        qs = [q.format(e=ents[0]) for q in HELD_OUT_ENTITY] if ents else list(HELD_OUT_GENERIC)
        out += [{"messages": [{"role": "user", "content": q}], "completion": fact} for q in qs]
    return out
