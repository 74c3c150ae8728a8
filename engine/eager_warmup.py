"""Eager-path warm-up before serving: the kernel variants of prompt and mixed steps compiled at start-up.

A decode step replays a CUDA graph whose kernels were compiled at capture; a step with prompt tokens runs the
eager forward, and its kernels pick tile configs, split counts and block sizes from the step's row count (the
block linear's row buckets, the mHC split bucket, `moe_align`'s BLOCK_M, the MoE tile config per pairs per
expert, the index top-k block from the candidate count). The first step of each bucket compiles its variants,
0.2-1.5 s each on an H200, while the requests in that step (and every decoding sequence beside them) wait:
session 12's server met 1-3 of them per 256 requests after a 256-request warm-up. This runs prompts of
~1.9x-spaced lengths from 13 tokens up to the token budget, and one longer than the budget (its second chunk
has context), each alone through the engine's own step loop (a prompt step, then a graph decode step), so
every row bucket's variants are compiled before the engine reports ready. Long contexts past the budget
(larger index top-k blocks) still compile on first use.

The prompts are random token ids under request ids `__warmup-<i>`; afterwards the engine drops their prefix
cache entries and zeroes its token and step counters (LLMEngine.__init__), so metrics start from serving.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger("v4serve.engine")

FIRST_LEN = 13  # the shortest warm-up prompt (odd: no length is a multiple of 16 by construction)
GROWTH = 1.9  # each next prompt ~1.9x longer: every power-of-two row bucket gets at least one step


def warmup_prompt_lens(budget: int, max_model_len: int) -> list[int]:
    """Prompt lengths: FIRST_LEN x GROWTH^k (odd) below `budget`, the budget itself, and budget + budget / 3 (two
    chunks, the second with context), each capped to max_model_len - 2 (room for the two generated tokens)."""
    lens, n = [], FIRST_LEN
    while n < budget:
        lens.append(n)
        n = int(n * GROWTH) | 1
    lens += [budget, budget + budget // 3]
    cap = max_model_len - 2
    return sorted({min(x, cap) for x in lens if min(x, cap) >= 1})


def run_eager_warmup(engine, lens: list[int], seed: int = 0) -> dict:
    """Each prompt of `lens` alone through `engine` (max 2 new tokens, greedy). A prompt the KV cache cannot
    hold is skipped; a prompt still unfinished after its step allowance is aborted and the warm-up stops (a
    warning, never a hang). -> {"prompts": run, "steps": engine steps, "s": seconds}."""
    from .sampling_params import SamplingParams

    vocab = max(2, min(engine.tokenizer.vocab_size, engine.model_config.vocab_size))
    g = torch.Generator().manual_seed(seed)
    budget = engine.scheduler.config.max_num_batched_tokens
    t0, steps, done = time.monotonic(), 0, 0
    for i, n in enumerate(lens):
        if engine.kv.num_blocks_needed(n + 2) > engine.kv.num_free_blocks:
            continue
        rid = f"__warmup-{i}"
        ids = torch.randint(vocab // 4, max(vocab // 4 + 1, vocab - vocab // 8), (n,), generator=g).tolist()
        engine.add_request(rid, ids, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
        allowance = n // budget + 8
        while engine.has_unfinished() and allowance:
            engine.step()
            steps += 1
            allowance -= 1
        if engine.has_unfinished():
            engine.abort_request(rid)
            for _ in range(4):  # an overlapped engine finishes its launched step
                if not engine.has_unfinished():
                    break
                engine.step()
            log.warning("eager warm-up stopped: a %d-token prompt did not finish in its steps", n)
            break
        done += 1
    return {"prompts": done, "steps": steps, "s": round(time.monotonic() - t0, 2)}
