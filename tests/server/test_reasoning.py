"""Mapping of reasoning_effort / thinking / chat_template_kwargs / server default to V4 modes."""

import pytest

from chat.reasoning import ReasoningConfig, ReasoningMode, resolve_reasoning

NON, HIGH, MAX = ReasoningMode.NON_THINK, ReasoningMode.THINK_HIGH, ReasoningMode.THINK_MAX


def mode(effort=None, thinking=None, kwargs=None, default=None):
    return resolve_reasoning(effort, thinking, kwargs, default).mode


@pytest.mark.parametrize("effort, expected", [
    ("none", NON), ("minimal", NON), ("low", HIGH), ("medium", HIGH), ("high", HIGH),
    ("max", MAX), ("xhigh", MAX), ("MAX", MAX),
])
def test_top_level_effort(effort, expected):
    assert mode(effort) is expected
    assert mode(kwargs={"reasoning_effort": effort}) is expected


def test_defaults():
    assert mode() is HIGH  # V4 default when nothing is said
    assert mode(default="max") is MAX
    assert mode(default="none") is NON
    assert mode("high", default="none") is HIGH  # request beats server default
    assert mode(thinking={"type": "disabled"}, default="max") is NON


def test_deepseek_thinking_param():
    assert mode(thinking={"type": "enabled"}) is HIGH
    assert mode(thinking={"type": "enabled"}, default="max") is MAX  # default fills the level
    assert mode(thinking={"type": "enabled"}, default="none") is HIGH
    assert mode(thinking={"type": "disabled"}) is NON
    assert mode(thinking=True) is HIGH and mode(thinking=False) is NON
    assert mode("max", {"type": "enabled"}) is MAX
    cfg = resolve_reasoning(None, {"type": "enabled", "budget_tokens": 2048}, None, None)
    assert cfg == ReasoningConfig(HIGH, 2048)
    assert cfg.thinking and cfg.encoder_effort == "high"
    assert resolve_reasoning("max", None, None, None).encoder_effort == "max"
    assert resolve_reasoning("none", None, None, None).encoder_effort is None


def test_chat_template_kwargs():
    assert mode(kwargs={"thinking": False}) is NON
    assert mode(kwargs={"enable_thinking": True}) is HIGH
    assert mode(kwargs={"thinking": True, "reasoning_effort": "max"}) is MAX
    assert mode("max", kwargs={"thinking": True}) is MAX
    assert mode(kwargs={"thinking": False}, default="max") is NON


@pytest.mark.parametrize("effort, thinking, kwargs, names", [
    ("max", {"type": "disabled"}, None, ("thinking", "reasoning_effort")),
    ("none", {"type": "enabled"}, None, ("thinking", "reasoning_effort")),
    (None, {"type": "enabled"}, {"thinking": False}, ("thinking", "chat_template_kwargs.thinking")),
    ("max", None, {"reasoning_effort": "none"}, ("reasoning_effort", "chat_template_kwargs.reasoning_effort")),
    (None, None, {"thinking": True, "enable_thinking": False},
     ("chat_template_kwargs.thinking", "chat_template_kwargs.enable_thinking")),
    ("high", None, {"thinking": False}, ("chat_template_kwargs.thinking", "reasoning_effort")),
])
def test_conflicts_name_both_params(effort, thinking, kwargs, names):
    with pytest.raises(ValueError) as err:
        resolve_reasoning(effort, thinking, kwargs, None)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("effort, thinking, kwargs, default, match", [
    ("turbo", None, None, None, "reasoning_effort='turbo'"),
    (None, None, {"reasoning_effort": 3}, None, "chat_template_kwargs.reasoning_effort"),
    (None, None, None, "ultra", "server default"),
    (None, {"type": "on"}, None, None, "thinking.type"),
    (None, "yes", None, None, "thinking must be"),
    (None, {"type": "enabled", "budget_tokens": 0}, None, None, "positive integer"),
    (None, {"type": "enabled", "budget_tokens": True}, None, None, "positive integer"),
    (None, {"type": "disabled", "budget_tokens": 100}, None, None, "budget_tokens requires"),
    ("none", {"type": "enabled", "budget_tokens": 100}, None, None, "conflicting"),
    (None, {"type": "enabled", "budget_tokens": 100}, None, None, None),  # valid
    (None, None, {"thinking": "true"}, None, "must be a boolean"),
])
def test_invalid_values(effort, thinking, kwargs, default, match):
    if match is None:
        assert resolve_reasoning(effort, thinking, kwargs, default).budget_tokens == 100
        return
    with pytest.raises(ValueError, match=match):
        resolve_reasoning(effort, thinking, kwargs, default)


def test_budget_with_default_non_think_is_rejected():
    with pytest.raises(ValueError, match="budget_tokens requires"):
        resolve_reasoning(None, {"type": "disabled", "budget_tokens": 5}, None, "max")
