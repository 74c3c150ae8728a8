"""The seeded random-word workload of the online benchmark (bench/serve.py), shared with the offline
one (bench/throughput.py --serve-workload) so both runs see the same prompts and output lengths.

A prompt is `n` words drawn from a fixed list (about one token each); a conversation is its user
turns and one output length for each of its requests.
"""

from __future__ import annotations

import random

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact model server token cache layer query batch stream "
         "window kernel block queue latency memory").split()


WARMUP_SEED_OFFSET = 1000  # --warmup-prompts (bench.serve, bench.throughput): the same workload, other prompts

def make_prompt(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def conversations(seed: int, num: int, input_len: tuple[int, int], output_len: tuple[int, int],
                  turns: int = 1) -> list[tuple[list[str], int]]:
    """Per conversation: its `turns` user turns (input_len: MIN, MAX words each) and the output length
    (MIN, MAX tokens) of each of its requests. Seeded: every run and every server gets the same list."""
    rng = random.Random(seed)
    return [([make_prompt(rng, rng.randint(*input_len)) for _ in range(turns)], rng.randint(*output_len))
            for _ in range(num)]
