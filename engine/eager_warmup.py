"""Eager-path warm-up before serving: the kernel variants of prompt and mixed steps compiled at start-up.

A decode step replays a CUDA graph whose kernels were compiled at capture; a step with prompt tokens runs the
eager forward, and its kernels pick tile configs, split counts and block sizes from the step's row count (the
block linear's row buckets, the mHC split bucket, `moe_align`'s BLOCK_M, the MoE tile config per pairs per
expert, the index top-k block from the candidate count). The first step of each bucket compiles its variants,
0.2-1.5 s each on an H200, while the requests in that step (and every decoding sequence beside them) wait:
session 12's server met 1-3 of them per 256 requests after a 256-request warm-up. This runs prompts of
~1.9x-spaced lengths from 13 tokens up to the token budget, and one longer than the budget (its second chunk
has context), each alone through the engine's own step loop (a prompt step, then a graph decode step), then
a crowd of short prompts (a many-sequence prompt step, then a mixed step of decoders + new prompts), so each
row bucket's variants are compiled before the engine reports ready. Long contexts past the budget (larger
index top-k blocks) still compile on first use.

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
    """Each prompt of `lens` alone through `engine` (max 2 new tokens, greedy), then the crowd (`_crowd`). A
    prompt the KV cache cannot hold is skipped; requests still unfinished after their step allowance are
    aborted and the warm-up stops (a warning, never a hang).
    -> {"prompts": single prompts run, "crowd": sequences in the crowd (0: none), "steps": engine steps, "s"}."""
    vocab = max(2, min(engine.tokenizer.vocab_size, engine.model_config.vocab_size))
    g = torch.Generator().manual_seed(seed)
    budget = engine.scheduler.config.max_num_batched_tokens

    def ids(n: int) -> list[int]:
        return torch.randint(vocab // 4, max(vocab // 4 + 1, vocab - vocab // 8), (n,), generator=g).tolist()

    t0, steps, done = time.monotonic(), [0], 0
    for i, n in enumerate(lens):
        if engine.kv.num_blocks_needed(n + 2) > engine.kv.num_free_blocks:
            continue
        if not _run(engine, {f"__warmup-{i}": (ids(n), 2)}, n // budget + 8, steps):
            return {"prompts": done, "crowd": 0, "steps": steps[0], "s": round(time.monotonic() - t0, 2)}
        done += 1
    crowd = _crowd(engine, budget, ids, steps)
    return {"prompts": done, "crowd": crowd, "steps": steps[0], "s": round(time.monotonic() - t0, 2)}


def _crowd(engine, budget: int, ids, steps: list[int]) -> int:
    """Many sequences at once, as a server meets them: half of max_num_seqs (up to 32) short prompts sharing
    half the budget, and once they decode, as many new ones beside them -- a many-sequence prompt step, then a
    mixed step (decoders + prompts: the MoE and routing variants of that row count, the per-sequence paths of
    the compressor and indexer). Fewer sequences when the cache is small; none below 2. -> sequences run."""
    half = min(32, engine.scheduler.config.max_num_seqs // 2)
    length = max(13, (budget // max(1, 2 * half)) | 1)
    length = min(length, engine.max_model_len - 8)
    while half >= 1 and (2 * half > engine.kv.num_free_slots
                         or 2 * half * engine.kv.num_blocks_needed(length + 8) > engine.kv.num_free_blocks):
        half //= 2
    if half < 1 or length < 1:
        return 0
    first = {f"__warmup-a{i}": (ids(length), 8) for i in range(half)}
    sch = engine.scheduler
    for rid, (toks, n_out) in first.items():
        engine.add_request(rid, toks, _params(n_out))
    allowance = 8
    while allowance and (sch.waiting or any(q.num_computed_tokens < q.num_prompt_tokens for q in sch.running)):
        engine.step()
        steps[0] += 1
        allowance -= 1
    second = {f"__warmup-b{i}": (ids(length), 2) for i in range(half)}
    return 2 * half if _run(engine, second, 24, steps, first) else 0


def _params(max_tokens: int):
    from .sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def _run(engine, reqs: dict, allowance: int, steps: list[int], running: dict | None = None) -> bool:
    """Add `reqs` ({id: (token ids, max new tokens)}) and step until nothing is unfinished, at most `allowance`
    steps; past it, abort them (and `running`'s) and warn. -> finished in time."""
    for rid, (toks, n_out) in reqs.items():
        engine.add_request(rid, toks, _params(n_out))
    while engine.has_unfinished() and allowance:
        engine.step()
        steps[0] += 1
        allowance -= 1
    if not engine.has_unfinished():
        return True
    for rid in [*reqs, *(running or {})]:
        engine.abort_request(rid)
    for _ in range(4):  # an overlapped engine finishes its launched step
        if not engine.has_unfinished():
            break
        engine.step()
    log.warning("eager warm-up stopped: %d requests did not finish in their steps", len(reqs))
    return False
