"""Sampler: greedy/truncation equivalences, penalties, min_tokens, forced tokens, seeds, logprobs."""

import math

import pytest
import torch

from engine.sampler import Sampler, SamplingMetadata, gather_logprobs, make_generator, unpack_bits
from engine.sampling_params import SamplingParams

V = 32
EOS = 1
sampler = Sampler()


def run(logits, params, outputs=None, prompts=None, generators=None, eos=EOS):
    S = len(params)
    meta = SamplingMetadata.build(params, outputs or [[] for _ in range(S)], prompts or [[] for _ in range(S)],
                                  generators or [None] * S, eos, logits.shape[1], logits.device)
    return sampler(logits, meta), meta


def rand_logits(S, seed=0, vocab=V):
    return torch.randn(S, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_logits_untouched():
    logits = rand_logits(6)
    before = logits.clone()
    out, meta = run(logits, [SamplingParams(temperature=0.0)] * 6)
    assert meta.all_greedy and torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs() is None and torch.equal(logits, before)


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}, {"top_k": 1, "top_p": 0.5}])
def test_extreme_truncation_equals_greedy(kw):
    logits = rand_logits(8, seed=1)
    out, _ = run(logits, [SamplingParams(temperature=1.5, **kw)] * 8)
    assert torch.equal(out.token_ids, logits.argmax(-1))


def test_top_k_only_samples_from_top_k():
    logits = rand_logits(1, seed=2).expand(400, V).contiguous()
    out, meta = run(logits, [SamplingParams(top_k=3, temperature=5.0)] * 400)
    assert meta.top_p is None and meta.max_top_k == 3
    allowed = set(logits[0].topk(3).indices.tolist())
    got = set(out.token_ids.tolist())
    assert got <= allowed and len(got) == 3


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(300, 4).contiguous()
    out, _ = run(logits, [SamplingParams(top_p=0.7)] * 300)  # 0.5 < 0.7 <= 0.5 + 0.3
    assert set(out.token_ids.tolist()) == {0, 1}


def test_min_p_drops_tokens_below_fraction_of_max():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).expand(300, 4).contiguous()
    out, _ = run(logits, [SamplingParams(min_p=0.6)] * 300)  # keeps p >= 0.24
    assert set(out.token_ids.tolist()) == {0, 1}


def test_mixed_rows_each_use_their_own_settings():
    logits = rand_logits(4, seed=3)
    params = [SamplingParams(temperature=0), SamplingParams(top_k=1), SamplingParams(top_p=1e-6),
              SamplingParams(temperature=0.5, seed=1)]
    out, meta = run(logits, params)
    assert not meta.all_greedy and meta.greedy_rows.tolist() == [True, False, False, False]
    assert torch.equal(out.token_ids[:3], logits[:3].argmax(-1))


def test_min_tokens_masks_eos_and_stop_ids_even_with_ignore_eos():
    logits = torch.zeros(3, V)
    logits[:, EOS] = 100.0
    logits[:, 5] = 90.0
    logits[:, 7] = 80.0
    params = [SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5]),
              SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5], ignore_eos=True),
              SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5])]
    out, _ = run(logits, params, outputs=[[3], [3], [3, 4]])
    assert out.token_ids.tolist() == [7, 7, EOS]  # third row already has 2 tokens


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 1.0]])
    params = [SamplingParams(temperature=0, repetition_penalty=2.0)]
    meta = SamplingMetadata.build(params, [[1]], [[0]], [None], None, 5, "cpu")
    pen = Sampler._penalize(logits, meta)
    assert pen.tolist() == [[1.0, -4.0, 2.0, -2.0, 1.0]]


def test_frequency_and_presence_penalties_use_output_counts_only():
    logits = torch.zeros(1, 6)
    params = [SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=1.0)]
    meta = SamplingMetadata.build(params, [[2, 2, 3]], [[4, 4]], [None], None, 6, "cpu")
    assert meta.seen_mask is None  # no repetition penalty: no prompt table built
    pen = Sampler._penalize(logits, meta)
    assert pen.tolist() == [[0.0, 0.0, -2.0, -1.5, 0.0, 0.0]]


def test_penalties_only_touch_rows_that_ask():
    logits = torch.zeros(3, V)
    logits[:, 4] = 1.0
    logits[:, 6] = 0.9
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, presence_penalty=0.5),
              SamplingParams(temperature=0, repetition_penalty=2.0)]
    out, meta = run(logits, params, outputs=[[4], [4], [4]])
    assert meta.penalty_rows.tolist() == [1, 2] and meta.output_counts.shape == (2, V)
    assert out.token_ids.tolist() == [4, 6, 6]


def test_forced_thinking_end_token():
    think_end = 9
    logits = torch.zeros(4, V)
    logits[:, 3] = 50.0
    p = SamplingParams(temperature=0, thinking_budget=2, thinking_end_token_id=think_end, logprobs=1)
    outputs = [[3], [3, 3], [3, think_end, 3], [3, 3, 3, 3]]
    out, meta = run(logits, [p] * 4, outputs=outputs)
    assert meta.forced_rows.tolist() == [1, 3]
    assert out.token_ids.tolist() == [3, think_end, 3, think_end]
    raw = logits.log_softmax(-1)
    assert out.logprobs()[1][think_end] == pytest.approx(raw[1, think_end].item())
    assert 3 in out.logprobs()[1]  # the top-1 still reported
    # budget 0: the very first token is forced
    out, _ = run(logits[:1], [p.with_updates(thinking_budget=0, temperature=1.0)])
    assert out.token_ids.tolist() == [think_end]


def test_logprobs_are_raw_and_include_sampled_token():
    logits = rand_logits(3, seed=4)
    params = [SamplingParams(temperature=0, logprobs=3, repetition_penalty=1.5), SamplingParams(temperature=0),
              SamplingParams(temperature=0.1, logprobs=0, seed=3)]
    out, _ = run(logits, params, outputs=[[0, 1], [], []])
    raw = logits.log_softmax(-1)
    assert out.logprobs()[1] is None
    lp0 = out.logprobs()[0]
    top = raw[0].topk(3)
    assert set(top.indices.tolist()) <= set(lp0) and len(lp0) in (3, 4)
    for t, v in lp0.items():
        assert v == pytest.approx(raw[0, t].item())
    t2 = out.token_ids[2].item()
    assert out.logprobs()[2] == {t2: pytest.approx(raw[2, t2].item())}


def test_gather_logprobs_for_prompt_positions():
    lp = rand_logits(4, seed=5).log_softmax(-1)
    res = gather_logprobs(lp, torch.tensor([1, 2, 3, 4]), [2, 2, 2, 2])
    assert all(len(d) in (2, 3) and next(iter(d)) == t for d, t in zip(res, [1, 2, 3, 4]))


def test_seeded_rows_independent_of_batch_composition_and_position():
    target = rand_logits(1, seed=6)

    def sample_steps(position, batch, seed_others):
        g = make_generator(1234, "cpu")
        toks = []
        for step in range(12):
            logits = rand_logits(batch, seed=100 + step)
            logits[position] = target[0]
            params = [SamplingParams(temperature=0.8, top_p=0.9, seed=seed_others) for _ in range(batch)]
            params[position] = SamplingParams(temperature=1.3, seed=1234)
            gens = [make_generator(seed_others + i, "cpu") if seed_others else None for i in range(batch)]
            gens[position] = g
            out, _ = run(logits, params, generators=gens)
            toks.append(out.token_ids[position].item())
        return toks

    ref = sample_steps(0, 1, None)
    assert len(set(ref)) > 3  # really sampling
    assert sample_steps(3, 5, None) == ref
    assert sample_steps(1, 8, 77) == ref
    assert sample_steps(0, 2, 5) == ref


def test_temperature_sampling_matches_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    N = 8000
    logits = probs.log().expand(N, 4).contiguous()
    out, _ = run(logits, [SamplingParams(temperature=1.0)] * N)
    freq = torch.bincount(out.token_ids, minlength=4).float() / N
    assert torch.allclose(freq, probs, atol=0.02)
    # temperature 2 flattens: p ** (1/2), renormalized
    out, _ = run(logits, [SamplingParams(temperature=2.0)] * N)
    freq = torch.bincount(out.token_ids, minlength=4).float() / N
    flat = probs.sqrt() / probs.sqrt().sum()
    assert torch.allclose(freq, flat, atol=0.02)


def test_masked_tokens_never_sampled():
    logits = torch.full((500, 8), -math.inf)
    logits[:, 2] = 0.0
    logits[:, 5] = 0.0
    out, _ = run(logits, [SamplingParams(temperature=1.0)] * 500)
    assert set(out.token_ids.tolist()) == {2, 5}


def test_metadata_validation_and_generator():
    with pytest.raises(ValueError, match="one entry per row"):
        SamplingMetadata.build([SamplingParams()], [], [[]], [None], EOS, V, "cpu")
    meta = SamplingMetadata.build([SamplingParams()], [[]], [[]], [None], EOS, V, "cpu")
    with pytest.raises(ValueError, match="float32"):
        sampler(torch.zeros(1, V, dtype=torch.float16), meta)
    with pytest.raises(ValueError, match=r"\[S=1, V\]"):
        sampler(torch.zeros(2, V), meta)
    a = torch.rand(5, generator=make_generator(2**70 + 3, "cpu"))
    b = torch.rand(5, generator=make_generator(2**70 + 3, "cpu"))
    assert torch.equal(a, b)


def test_unpack_bits_matches_numpy():
    import numpy as np
    packed = np.random.default_rng(0).integers(0, 256, (5, 125), dtype=np.uint8)
    for count in (1000, 997, 993):
        want = np.unpackbits(packed, axis=1, count=count).astype(bool)
        assert (unpack_bits(torch.from_numpy(packed), count).numpy() == want).all()


def _guided_case(device):
    import numpy as np
    V, eos = 20, 1
    grammar = np.zeros(V, dtype=bool)
    grammar[[3, 4, 5]] = True
    packed = np.packbits(grammar)
    short = np.packbits(np.eye(8, dtype=bool)[6])  # a grammar over the first 8 tokens only
    table = SamplingMetadata._guided_table(
        device, V, [0, 2, 5, 7, 8, 9], {2: [4, 9], 5: [9], 7: [3], 9: [6, 25]},
        {0: (packed, False), 5: (packed, False), 7: (packed, True), 8: (packed, True), 9: (short, False)}, eos)
    return table, eos


def test_guided_rows_mixed_with_allow_lists():
    """Grammar rows, allow-list rows and rows with both in one table; an empty intersection may end."""
    import numpy as np
    table, eos = _guided_case("cpu")
    rows = [set(np.flatnonzero(r.numpy()).tolist()) for r in table]
    # the allow-list bounds EOS too, unless nothing is left; ids >= V and bits past a grammar's vocabulary: no
    assert rows == [{3, 4, 5}, {4, 9}, {eos}, {3}, {eos, 3, 4, 5}, {6}]


@pytest.mark.gpu
def test_guided_table_on_cuda_equals_cpu_without_syncing():
    """CUDA: the packed table crosses in one pinned, non-blocking copy (no sync) and equals the CPU table."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        table, _ = _guided_case("cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(table.cpu(), _guided_case("cpu")[0])


def test_gather_logprobs_ranks():
    g = torch.Generator().manual_seed(0)
    lps = torch.randn(6, 50, generator=g).log_softmax(-1)
    ids = torch.tensor([0, 7, 49, 3, 3, 21])
    ranks: list[int] = []
    out = gather_logprobs(lps, ids, [2, 0, None, 5, 1, 3], ranks)
    order = lps.argsort(dim=-1, descending=True)
    assert ranks == [int((order[i] == ids[i]).nonzero()) + 1 for i in range(6)]
    assert out[2] is None and len(ranks) == 6  # ranks for every row, logprob dicts where asked


def test_logit_bias_moves_the_choice_and_leaves_logprobs_raw():
    logits = rand_logits(3, seed=4)
    top = logits.argmax(-1)
    low = logits.argmin(-1)
    params = [SamplingParams(temperature=0, logit_bias={str(int(low[0])): 100.0}, logprobs=0),  # str keys (JSON)
              SamplingParams(temperature=0, logit_bias={int(top[1]): -100.0}),
              SamplingParams(temperature=0)]
    out, meta = run(logits, params)
    assert out.token_ids[0] == low[0]  # the least likely token, pushed up
    second = logits[1].clone()
    second[top[1]] = float("-inf")
    assert out.token_ids[1] == second.argmax() and out.token_ids[2] == top[2]
    raw = logits.log_softmax(-1)
    assert abs(out.logprobs()[0][int(low[0])] - raw[0, low[0]].item()) < 1e-5  # raw model logprob
    assert meta.bias_rows.tolist() == [0, 1]


def test_allowed_token_ids_restrict_sampling():
    logits = torch.zeros(2, V)
    params = [SamplingParams(temperature=1.0, seed=1, allowed_token_ids=[3, 9]), SamplingParams(temperature=1.0)]
    seen = set()
    for s in range(40):
        gens = [make_generator(s, "cpu"), None]
        out, _ = run(logits, params, generators=gens)
        seen.add(int(out.token_ids[0]))
    assert seen == {3, 9}
    # greedy with an allow-list picks the best allowed token, even against a strong unlisted one
    logits = rand_logits(1, seed=2)
    allowed = [int(i) for i in logits[0].argsort()[:3]]  # the three least likely tokens
    out, _ = run(logits, [SamplingParams(temperature=0, allowed_token_ids=allowed)])
    assert int(out.token_ids[0]) == max(allowed, key=lambda t: float(logits[0, t]))


@pytest.mark.parametrize("kw", [{"logit_bias": {5: 101}}, {"logit_bias": {-1: 1.0}}, {"logit_bias": {"x": 1.0}},
                                {"logit_bias": {5: float("nan")}}, {"allowed_token_ids": []},
                                {"allowed_token_ids": [-2]}, {"allowed_token_ids": "3"}])
def test_bias_and_allow_list_validation(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_bad_words_ban_the_last_token_after_the_prefix():
    logits = torch.zeros(3, V)
    logits[:, 7] = 10.0  # the favourite
    logits[:, 8] = 5.0
    p = SamplingParams(temperature=0, bad_words_token_ids=[[7], [3, 4, 8]])
    q = SamplingParams(temperature=0, bad_words_token_ids=[[3, 4, 8]])
    out, _ = run(logits, [p, q, q], outputs=[[1, 2], [9, 3, 4], [3, 9]])
    # row 0: the single-token bad word 7 is always banned -> 8; rows 1-2 only ban 8 (after 3, 4): 7 stays
    assert out.token_ids.tolist() == [8, 7, 7]
    logits = logits[:2].clone()
    logits[:, 7] = 0.0  # now 8 is the favourite
    out, _ = run(logits, [q, q], outputs=[[9, 3, 4], [3, 4, 9]])
    assert out.token_ids.tolist()[0] != 8 and out.token_ids.tolist()[1] == 8  # banned only right after 3, 4


def test_guided_choice_allows_only_continuations_then_eos():
    logits = rand_logits(4, seed=7)
    choices = [[5, 6], [5, 7, 8], [9]]
    p = SamplingParams(temperature=1.0, seed=1, choice_token_ids=choices)
    outs = [[], [5], [5, 7], [5, 6]]
    for _ in range(20):  # sampled rows: every draw is one of the continuations
        out, meta = run(logits, [p] * 4, outputs=outs, generators=[make_generator(_, "cpu")] * 4)
        got = out.token_ids.tolist()
        assert got[0] in (5, 9) and got[1] in (6, 7) and got[2] == 8 and got[3] == EOS
    allowed = meta.allowed_mask.nonzero().tolist()
    assert [t for r, t in allowed if r == 0] == [5, 9]
    # allowed_token_ids intersect the choices
    q = SamplingParams(temperature=0, choice_token_ids=choices, allowed_token_ids=[9, 11])
    out, _ = run(logits[:1], [q])
    assert out.token_ids.tolist() == [9]
    for kw in ({"guided_choice": []}, {"guided_choice": ["a", ""]}, {"guided_choice": ["a"], "ignore_eos": True},
               {"guided_choice": ["a"], "min_tokens": 1}):
        with pytest.raises(ValueError):
            SamplingParams(**kw)
