"""Every cookbook recipe runs, offline, on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memos_agents.graph.falkordb_server import stop_server

COOKBOOK = Path(__file__).resolve().parents[1] / "cookbook"
SLOW = {"05_parameter_memory.py", "07_memory_moves.py"}  # LoRA training: minutes on 2 cores
RECIPES = [
    pytest.param(p.name, marks=pytest.mark.slow) if p.name in SLOW else p.name
    for p in sorted(COOKBOOK.glob("[0-9][0-9]_*.py"))
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs(recipe: str, tmp_path: Path) -> None:
    d = tmp_path / "memos"
    try:
        out = subprocess.run(
            [sys.executable, str(COOKBOOK / recipe), "--dir", str(d)],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    finally:
        stop_server(d / "graph")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
