"""SamplingParams: defaults, normalization, every validation rule, clone / with_updates."""

import pytest

from engine.sampling_params import MAX_LOGPROBS, SamplingParams


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.seed, p.max_tokens, p.min_tokens, p.stop, p.stop_token_ids) == (None, 16, 0, [], [])
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.logprobs is None and p.prompt_logprobs is None and p.thinking_budget is None
    assert p.skip_special_tokens and not p.ignore_eos and not p.include_stop_str_in_output
    assert not p.greedy and not p.needs_penalties


def test_normalization():
    p = SamplingParams(stop="###", top_k=-1, temperature=0, top_p=1, stop_token_ids=(5, 6))
    assert p.stop == ["###"] and p.top_k == 0 and p.stop_token_ids == [5, 6]
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)
    assert p.greedy
    assert SamplingParams(stop=None).stop == [] and SamplingParams(stop_token_ids=None).stop_token_ids == []
    assert SamplingParams(max_tokens=None).max_tokens is None


def test_valid_edges():
    SamplingParams(top_p=1e-9, min_p=1.0, presence_penalty=-2, frequency_penalty=2, repetition_penalty=1e-3,
                   logprobs=0, prompt_logprobs=MAX_LOGPROBS, min_tokens=16, max_tokens=16, seed=-5,
                   thinking_budget=0, thinking_end_token_id=7)
    SamplingParams(thinking_end_token_id=7)  # an end token without a budget is harmless


@pytest.mark.parametrize("kw, name", [
    ({"n": 0}, "n"), ({"n": 1.0}, "n"), ({"n": True}, "n"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": "1"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_p": -1}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"top_k": 1.5}, "top_k"), ({"top_k": True}, "top_k"),
    ({"min_p": -0.1}, "min_p"), ({"min_p": 1.1}, "min_p"),
    ({"seed": 1.0}, "seed"), ({"seed": False}, "seed"), ({"seed": "1"}, "seed"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": 2.0}, "max_tokens"),
    ({"min_tokens": -1}, "min_tokens"), ({"min_tokens": 17}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"stop": [""]}, "stop"), ({"stop": ""}, "stop"), ({"stop": [1]}, "stop"), ({"stop": 3}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"), ({"stop_token_ids": ["a"]}, "stop_token_ids"),
    ({"stop_token_ids": [True]}, "stop_token_ids"), ({"stop_token_ids": 5}, "stop_token_ids"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"presence_penalty": 2.1}, "presence_penalty"), ({"presence_penalty": -2.1}, "presence_penalty"),
    ({"frequency_penalty": 2.1}, "frequency_penalty"), ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"logprobs": -1}, "logprobs"), ({"logprobs": MAX_LOGPROBS + 1}, "logprobs"), ({"logprobs": True}, "logprobs"),
    ({"prompt_logprobs": -1}, "prompt_logprobs"), ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"skip_special_tokens": None}, "skip_special_tokens"),
    ({"include_stop_str_in_output": "yes"}, "include_stop_str_in_output"),
    ({"thinking_budget": -1, "thinking_end_token_id": 3}, "thinking_budget"),
    ({"thinking_budget": 10}, "thinking_budget"),
    ({"thinking_budget": 1.0, "thinking_end_token_id": 3}, "thinking_budget"),
    ({"thinking_end_token_id": -3}, "thinking_end_token_id"),
    ({"thinking_end_token_id": True}, "thinking_end_token_id"),
])
def test_invalid_values_name_the_parameter(kw, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kw)


def test_greedy_and_penalty_flags():
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-3).greedy
    assert SamplingParams(presence_penalty=0.5).needs_penalties
    assert SamplingParams(frequency_penalty=-0.5).needs_penalties
    assert SamplingParams(repetition_penalty=1.2).needs_penalties


def test_clone_is_deep():
    p = SamplingParams(stop=["a"], stop_token_ids=[1])
    q = p.clone()
    q.stop.append("b")
    q.stop_token_ids.append(2)
    assert p.stop == ["a"] and p.stop_token_ids == [1] and q == SamplingParams(stop=["a", "b"], stop_token_ids=[1, 2])


def test_with_updates_validates_and_copies():
    p = SamplingParams(temperature=0.7, stop=["x"])
    q = p.with_updates(temperature=0.0, stop="y")
    assert q.greedy and q.stop == ["y"] and p.temperature == 0.7 and p.stop == ["x"]
    with pytest.raises(ValueError, match="top_p"):
        p.with_updates(top_p=0)
    with pytest.raises(ValueError, match="unknown sampling parameter.*best_of"):
        p.with_updates(best_of=2)
