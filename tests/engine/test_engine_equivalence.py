"""Continuous batching does not change greedy outputs.

A batch of mixed-length requests (several prompts longer than 2 blocks of 16 tokens) arriving at
different steps of a manually driven `LLMEngine` must produce exactly the tokens of
  * each request run alone, and
  * the transformers oracle's greedy continuation (full forward on prompt + generated, argmax over
    the ids the engine may sample: the tokenizer's vocabulary),
also with a tiny token budget (chunked prefill across block and compression boundaries) and with a
tiny cache (repeated recompute preemption). `kv.check_integrity()` runs after every step.
"""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from models.config import tiny_config
from models.loader import load_state_dict
from models.synthetic import write_synthetic_checkpoint

from tests.models.oracle import build_oracle, oracle_logits

BLOCK = 16
# Two schedules, each with CSA + HCA (one HCA ratio: the oracle supports one) and hash layers.
CONFIGS = {
    # Flash-like: sliding first, CSA/HCA(8) interleaved, top-k << eligible entries.
    "flash": dict(compress_ratios=(0, 4, 8, 4), index_topk=4, num_hash_layers=1),
    # Pro-like: HCA(16) first, 2 hash layers; the model vocab is larger than the tokenizer's, so the
    # runner masks ids past the tokenizer (compared to the oracle's argmax over the same ids).
    "pro": dict(compress_ratios=(16, 4, 0, 16), index_topk=2, num_hash_layers=2, vocab_size=1300),
}
PROMPT_LENS = [5, 37, 70, 20, 50, 33]  # 37, 50, 70: more than 2 blocks
MAX_TOKENS = [6, 5, 8, 9, 6, 7]
ARRIVE_AT_STEP = [0, 0, 1, 3, 4, 7]  # request i is added just before step ARRIVE_AT_STEP[i]


class Setup:
    def __init__(self, ckpt, prompts, tok_vocab, oracle_out):
        self.ckpt, self.prompts, self.tok_vocab, self.oracle_out = ckpt, prompts, tok_vocab, oracle_out


def make_engine(ckpt, **kw) -> LLMEngine:
    args = dict(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=8, max_num_batched_tokens=256,
                num_kv_blocks=64, block_size=BLOCK)
    args.update(kw)
    return LLMEngine(EngineArgs(**args))


def greedy(i: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS[i], ignore_eos=True)


@torch.no_grad()
def oracle_greedy(oracle, prompt: list[int], n: int, vocab: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(oracle_logits(oracle, ids)[-1, :vocab].argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request, tmp_path_factory) -> Setup:
    cfg = tiny_config(**CONFIGS[request.param])
    ckpt = tmp_path_factory.mktemp(f"eq_{request.param}")
    write_synthetic_checkpoint(cfg, ckpt, seed=3, quantize=False)
    from engine.tokenizer import Tokenizer

    tok_vocab = Tokenizer.from_dir(ckpt).vocab_size
    assert tok_vocab <= cfg.vocab_size
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(2, tok_vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]
    sd = {k: v for k, v in load_state_dict(ckpt).items() if not k.startswith("mtp.")}
    oracle = build_oracle(cfg, sd)
    ref = [oracle_greedy(oracle, p, MAX_TOKENS[i], tok_vocab) for i, p in enumerate(prompts)]
    return Setup(ckpt, prompts, tok_vocab, ref)


def drive(engine: LLMEngine, prompts, arrive_at: list[int], params) -> dict[str, list[int]]:
    """Add request i before step arrive_at[i]; step until all finished; check the cache every step."""
    done: dict[str, list[int]] = {}
    total_blocks = engine.kv.num_blocks
    step = 0
    while len(done) < len(prompts):
        for i, p in enumerate(prompts):
            if arrive_at[i] == step:
                engine.add_request(f"r{i}", p, params(i))
        for out in engine.step():
            if out.finished:
                assert out.request_id not in done
                assert out.outputs[0].finish_reason == "length"
                done[out.request_id] = out.outputs[0].token_ids
        engine.kv.check_integrity()
        step += 1
        assert step < 2000, "engine made no progress"
    assert not engine.has_unfinished()
    assert engine.kv.num_free_blocks == total_blocks
    assert engine.kv.num_free_slots == engine.kv.num_slots
    return done


def test_alone_matches_oracle(setup):
    eng = make_engine(setup.ckpt)
    for i, p in enumerate(setup.prompts):
        out = drive(eng, [p], [0], lambda _, i=i: greedy(i))
        assert out["r0"] == setup.oracle_out[i], f"request {i} (prompt {len(p)}) alone differs from the oracle"


MODES = {
    "staggered": dict(),
    # 7 tokens per step: prefill chunks straddle 4/8/16-token compression and 16-token block edges,
    # and decode tokens of running requests share steps with other requests' prefill chunks.
    "budget7": dict(max_num_batched_tokens=7),
    # 7 blocks = 112 tokens: the biggest request needs 5; concurrent ones preempt each other.
    "tiny_cache": dict(num_kv_blocks=7, max_num_batched_tokens=40),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_staggered_batch_matches_alone_and_oracle(setup, mode):
    eng = make_engine(setup.ckpt, **MODES[mode])
    out = drive(eng, setup.prompts, ARRIVE_AT_STEP, greedy)
    for i, p in enumerate(setup.prompts):
        assert out[f"r{i}"] == setup.oracle_out[i], f"{mode}: request {i} (prompt {len(p)}) differs"
    if mode == "tiny_cache":
        assert eng.scheduler.num_preemptions_total > 0
    stats = eng.stats()
    assert stats.num_requests == 0 and stats.num_running == 0 and stats.kv_cache_usage == 0.0
    assert stats.prompt_tokens_total == sum(PROMPT_LENS)
    assert stats.generation_tokens_total == sum(MAX_TOKENS)
