"""Speculative decoding keeps the sampled distribution (chi-square, fixed seeds), plus its
configuration surface: EngineArgs / LLM / CLI, errors, prefix caching, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.config import EngineArgs
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind
from engine.rejection_sampler import VerifyGroup, rejection_sample
from engine.sampler import SamplingMetadata
from engine.sampling_params import SamplingParams
from engine.spec_decode_config import SpeculativeConfig
from models.config import tiny_config
from models.synthetic import write_synthetic_checkpoint

SPEC2 = {"method": "mtp", "num_speculative_tokens": 2}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("specd")
    write_synthetic_checkpoint(tiny_config(compress_ratios=(0, 4, 8, 4)), out, seed=3, quantize=False)
    return out


def _chi2_two_sample(a: dict, b: dict) -> tuple[float, int]:
    """Two-sample chi-square statistic over the union of categories (sparse cells pooled) -> (stat, df)."""
    na, nb = sum(a.values()), sum(b.values())
    cells, pooled = [], [0, 0]
    for key in set(a) | set(b):
        x, y = a.get(key, 0), b.get(key, 0)
        if (x + y) * min(na, nb) / (na + nb) < 5:
            pooled[0] += x
            pooled[1] += y
        else:
            cells.append((x, y))
    if sum(pooled):
        cells.append(tuple(pooled))
    stat = 0.0
    for x, y in cells:
        tot = x + y
        for obs, n in ((x, na), (y, nb)):
            exp = tot * n / (na + nb)
            stat += (obs - exp) ** 2 / exp
    return stat, len(cells) - 1


def _critical(df: int, z: float = 3.09) -> float:
    """Chi-square quantile at p = 0.001 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_rejection_sampler_distribution_unit():
    """Emitted (first, second) tokens over 6000 seeded groups follow the target distributions."""
    V, G = 6, 6000
    gen = torch.Generator().manual_seed(0)
    row0 = torch.randn(V, generator=gen)
    row1 = torch.randn(V, generator=gen)
    logits = torch.stack([row0, row1, row1] * G)  # rows: target for d1, for d2 (after d1), bonus
    params = [SamplingParams(temperature=1.0)] * (3 * G)
    meta = SamplingMetadata.build(params, [[]] * (3 * G), [[1]] * (3 * G), [None] * (3 * G), None, V, "cpu")
    groups = [VerifyGroup(3 * g, [2, 4], torch.Generator().manual_seed(1000 + g)) for g in range(G)]
    res = rejection_sample(logits, meta, groups)
    p0, p1 = row0.softmax(-1), row1.softmax(-1)
    first = {t: 0 for t in range(V)}
    second = {t: 0 for t in range(V)}
    for r in res:
        first[r.tokens[0]] += 1
        if r.tokens[0] == 2:  # the second emitted token follows p1 whenever d1 was accepted
            second[r.tokens[1]] += 1
    for counts, p in ((first, p0), (second, p1)):
        n = sum(counts.values())
        stat = sum((counts[t] - n * p[t].item()) ** 2 / (n * p[t].item()) for t in range(V))
        assert stat < _critical(V - 1), (stat, counts, p)
    # the draft's acceptance rate is its target probability
    acc = sum(r.num_accepted >= 1 for r in res) / G
    assert abs(acc - p0[2].item()) < 4 * math.sqrt(p0[2].item() * (1 - p0[2].item()) / G)
    again = rejection_sample(logits, meta, [VerifyGroup(3 * g, [2, 4], torch.Generator().manual_seed(1000 + g))
                                            for g in range(G)])
    assert [r.tokens for r in again] == [r.tokens for r in res]  # seeded: reproducible


def test_rejection_sampler_one_host_copy_and_fixed_rows(monkeypatch):
    """Greedy, forced (thinking budget), seeded and unseeded random rows in one verify: exactly one
    device -> host read (no per-row reads of the greedy / forced rows); greedy rows follow the argmax,
    a forced row emits its forced token."""
    V = 8
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(9, V, generator=gen)
    g_greedy = SamplingParams(temperature=0.0)
    g_rand = SamplingParams(temperature=1.0, seed=7)
    g_free = SamplingParams(temperature=1.0)
    forced = SamplingParams(temperature=1.0, thinking_budget=0, thinking_end_token_id=5)
    params = [g_greedy] * 3 + [g_rand] * 3 + [g_free] * 2 + [forced]
    outs = [[]] * 8 + [[]]
    meta = SamplingMetadata.build(params, outs, [[1]] * 9, [None] * 9, None, V, "cpu")
    am = logits.argmax(-1).tolist()
    groups = [VerifyGroup(0, [am[0], (am[1] + 1) % V], None), VerifyGroup(3, [1, 2], torch.Generator().manual_seed(3)),
              VerifyGroup(6, [3], None), VerifyGroup(8, [], None)]
    reads = []
    for name in ("tolist", "cpu", "item"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=orig, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1])
    res = rejection_sample(logits, meta, groups)
    monkeypatch.undo()
    assert reads == ["cpu", "tolist"], reads
    assert res[0].tokens == [am[0], am[1]] and res[0].num_accepted == 1  # greedy: d1 accepted, d2 rejected
    assert res[3].tokens == [5]  # forced
    assert len(res[1].tokens) >= 1 and len(res[2].tokens) >= 1


def test_engine_sampled_distribution_matches(ckpt):
    """Token frequencies (first two tokens, 5-token vocabulary via allowed_token_ids) with and without
    speculation agree; drafts are forced inside the vocabulary so both paths (accept / residual) run."""
    allowed = [10, 11, 12, 13, 14]
    params = SamplingParams(temperature=1.5, max_tokens=3, seed=1234, n=320, allowed_token_ids=allowed,
                            ignore_eos=True)
    prompt = [5, 6, 7, 8, 9, 21]

    def dist(spec):
        eng = LLMEngine(EngineArgs(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=64,
                                   max_num_batched_tokens=512, num_kv_blocks=128, block_size=16,
                                   speculative_config=spec))
        if spec:
            eng.spec.draft_hook = lambda seq, pos, d: [allowed[(pos + j) % 2] for j in range(len(d))]
        eng.add_request("r", prompt, params, output_kind=OutputKind.FINAL_ONLY)
        out = None
        while eng.has_unfinished():
            for o in eng.step():
                out = o
        counts: dict = {}
        for o in out.outputs:
            key = tuple(o.token_ids[:2])
            counts[key] = counts.get(key, 0) + 1
        return counts, eng

    base, _ = dist(None)
    spec, eng = dist(SPEC2)
    st = eng.spec.stats
    assert 0 < st.num_accepted_tokens < st.num_draft_tokens
    stat, df = _chi2_two_sample(base, spec)
    assert df >= 5 and stat < _critical(df), (stat, df, base, spec)


def test_config_parsing_and_errors(ckpt, tmp_path):
    assert SpeculativeConfig.parse(None) is None and SpeculativeConfig.parse({}) is None
    assert SpeculativeConfig.parse('{"method": "mtp", "num_speculative_tokens": 3}').num_speculative_tokens == 3
    for bad in ({"method": "mtp", "num_speculative_tokens": 0}, {"method": "mtp", "num_speculative_tokens": 5},
                {"method": "eagle", "num_speculative_tokens": 1}, {"method": "mtp"}, "{nope",
                {"method": "mtp", "num_speculative_tokens": 1, "draft_model": "x"}):
        with pytest.raises(ValueError, match="speculative_config"):
            SpeculativeConfig.parse(bad)
    with pytest.raises(ValueError, match="async_scheduling"):
        EngineArgs(model=str(ckpt), speculative_config=SPEC2, async_scheduling=True).validate()
    assert EngineArgs(model=str(ckpt), speculative_config=SPEC2).resolve_async_scheduling(torch.device("cuda")) is False
    # off by default: the MTP block is not even built
    eng = LLMEngine(EngineArgs(model=str(ckpt), device="cpu", dtype="float32", num_kv_blocks=16, block_size=16))
    assert eng.spec is None and len(eng.model.mtp) == 0 and eng.stats().spec_decode is None
    # a checkpoint without MTP weights: the error names the missing tensors
    write_synthetic_checkpoint(tiny_config(compress_ratios=(0, 4, 8, 4)), tmp_path, seed=3, include_mtp=False)
    args = dict(model=str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=16, block_size=16,
                speculative_config=SPEC2)
    with pytest.raises(Exception, match="MTP"):
        LLMEngine(EngineArgs(**args))
    cfg = json.loads((tmp_path / "config.json").read_text())  # config declares the block, weights lack it
    cfg.update(num_nextn_predict_layers=1, compress_ratios=cfg["compress_ratios"] + [0])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match=r"missing MTP tensors .*mtp\.0\.attn\.wq_a\.weight"):
        LLMEngine(EngineArgs(**args))


def test_llm_kwarg_cli_and_prefix_caching(ckpt):
    """LLM(speculative_config=...) with prefix caching: a repeated prompt hits the cache and the
    greedy tokens equal a plain engine's; the CLI flag reaches EngineArgs."""
    from server.cli import build_parser, engine_args

    ns = build_parser().parse_args(["serve", str(ckpt), "--speculative-config",
                                    '{"method": "mtp", "num_speculative_tokens": 3}'])
    assert engine_args(ns).spec_config == SpeculativeConfig("mtp", 3)
    prompt = torch.randint(2, 400, (45,), generator=torch.Generator().manual_seed(9)).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    kw = dict(device="cpu", dtype="float32", num_kv_blocks=32, block_size=16, max_num_batched_tokens=16)
    plain = LLM(str(ckpt), enable_prefix_caching=False, **kw).generate([prompt], params)[0].outputs[0].token_ids
    llm = LLM(str(ckpt), speculative_config=SPEC2, **kw)
    ref = prompt + plain
    llm.engine.spec.draft_hook = lambda seq, pos, d: [ref[pos + 1 + j] if pos + 1 + j < len(ref) else 3
                                                      for j in range(len(d))]
    first = llm.generate([prompt], params)[0]
    second = llm.generate([prompt], params)[0]
    assert first.outputs[0].token_ids == plain and second.outputs[0].token_ids == plain
    assert second.num_cached_tokens > 0
    st = llm.engine.stats().spec_decode
    assert st.num_accepted_tokens > 0 and sum(st.accepted_per_pos) == st.num_accepted_tokens
    llm.engine.kv.check_integrity()


def test_metrics_exported_only_when_on():
    from prometheus_client import generate_latest

    from engine.llm_engine import EngineStats
    from engine.spec_decode import SpecDecodeStats
    from server.metrics import ServerMetrics

    sd = SpecDecodeStats(num_drafts=7, num_draft_tokens=14, num_accepted_tokens=9, accepted_per_pos=[6, 3])
    on = generate_latest(ServerMetrics(lambda: EngineStats(1, 0, 0.1, 0, 5, 5, 1, spec_decode=sd), "m").registry)
    text = on.decode()
    for line in ('vllm:spec_decode_num_drafts_total{model_name="m"} 7.0',
                 'vllm:spec_decode_num_draft_tokens_total{model_name="m"} 14.0',
                 'vllm:spec_decode_num_accepted_tokens_total{model_name="m"} 9.0',
                 'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="0"} 6.0',
                 'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="1"} 3.0'):
        assert line in text, line
    off = generate_latest(ServerMetrics(lambda: EngineStats(1, 0, 0.1, 0, 5, 5, 1), "m").registry).decode()
    assert "spec_decode" not in off


def test_prefix_hit_drafts_do_not_depend_on_slot_history(ckpt):
    """After a prefix-cache hit the MTP ring has not seen the cached positions: its window rows there are
    zeroed, so the drafts (and seeded outputs) do not depend on what the slot held before."""
    P = torch.randint(2, 400, (40,), generator=torch.Generator().manual_seed(4)).tolist()
    W = torch.randint(2, 400, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    Y = P + [17, 18, 19]  # the drafting row (42) still sees window positions 27..31 (not computed here)
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)

    def drafts_after_hit(history):
        eng = LLMEngine(EngineArgs(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=1, num_kv_blocks=32,
                                   block_size=16, max_num_batched_tokens=64, speculative_config=SPEC2,
                                   prefix_snapshot_interval=16))
        for n, prompt in enumerate(history):
            eng.add_request(f"h{n}", prompt, one)
            while eng.has_unfinished():
                eng.step()
        eng.add_request("y", Y, SamplingParams(temperature=0.7, seed=3, max_tokens=4, ignore_eos=True))
        while "y#0" not in eng.spec.drafts:
            eng.step()
        assert eng.requests["y"].samples[0].seq.num_cached_tokens == 32
        return eng.spec.drafts["y#0"]

    assert drafts_after_hit([P]) == drafts_after_hit([P, W])
