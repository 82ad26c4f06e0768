"""Recipe 4: activation memory — the same answer, faster.

A user's memories are turned into a KV cache once (`build_activation`), stored as an
activation cube. Answering with that cube gives token-for-token the same greedy reply as
sending the memories as prompt text, but the model skips re-reading them: compare the
time-to-first-token (TTFT) of both ways. Runs the packaged SmolLM2 in the local model process.

    python cookbook/04_activation_memory.py [--dir ./.memos-cookbook]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memos_agents import MemOS

FACTS = [
    "Ines was born in Coimbra in 1991 and moved to Lisbon in 2015.",
    "Ines works as a marine biologist at the Oceanarium.",
    "Ines has a grey cat called Pimenta who hates the vacuum cleaner.",
    "Ines is learning the cello and practises every Tuesday evening.",
    "Ines's favourite dish is bacalhau com natas; she avoids coriander.",
    "Ines plans a diving trip to the Azores in September.",
] * 6


def main(data_dir: Path) -> None:
    with MemOS.open(data_dir) as mem:
        cubes = mem.add(FACTS, user_id="ines")
        activation = mem.build_activation(cubes, user_id="ines")
        print(f"activation cube {activation.id}: {activation.metadata.get('tokens')} tokens cached")
        question = "What is the name of Ines's cat?"
        as_text = mem.generate(question, user_id="ines", memories=cubes, max_tokens=24)
        as_kv = mem.generate(question, user_id="ines", activation=activation, max_tokens=24)
        print(f"as prompt text: TTFT {as_text.ttft_s:.3f}s  -> {as_text.text!r}")
        print(f"as activation:  TTFT {as_kv.ttft_s:.3f}s  -> {as_kv.text!r}")
        print(f"cached prompt tokens reused: {as_kv.cached_tokens}")
        assert as_kv.text == as_text.text  # identical greedy output
        mem.stop_model()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    main(ap.parse_args().dir)
