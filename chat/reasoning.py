"""Resolve a request's reasoning controls to one of DeepSeek-V4's three modes.

Clients express the mode in three overlapping ways (serving.md §4.1), all accepted here:

* top-level `reasoning_effort` (OpenAI style): "none"/"minimal" -> Non-Think,
  "low"/"medium"/"high" -> Think High, "max"/"xhigh" -> Think Max;
* DeepSeek API `thinking: {"type": "enabled"|"disabled", "budget_tokens": N}` (a bare bool is
  read as enabled/disabled);
* vLLM/SGLang style `chat_template_kwargs: {"thinking" | "enable_thinking": bool,
  "reasoning_effort": str}`.

Any request field beats the server default; with neither, the mode is Think High (the V4 default,
as vLLM's tokenizer does). Signals that disagree are rejected with a ValueError naming both
parameters instead of silently picking one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ReasoningMode(enum.Enum):
    NON_THINK = "non_think"  # prompt ends `<｜Assistant｜></think>`; answer only
    THINK_HIGH = "think_high"  # prompt ends `<｜Assistant｜><think>`; reasoning then answer
    THINK_MAX = "think_max"  # Think High plus the Think-Max preamble after BOS


@dataclass(frozen=True)
class ReasoningConfig:
    """The resolved reasoning settings of one request."""

    mode: ReasoningMode
    budget_tokens: int | None = None  # cap on reasoning tokens (thinking modes only); None = no cap

    @property
    def thinking(self) -> bool:
        """Value for `encode_messages(thinking=...)` and the output parsers."""
        return self.mode is not ReasoningMode.NON_THINK

    def budget_params(self, think_end_id: int) -> dict[str, int]:
        """SamplingParams fields of the thinking budget (empty without one): the sampler forces
        `</think>` (think_end_id) after budget_tokens reasoning tokens."""
        if not self.thinking or self.budget_tokens is None:
            return {}
        return {"thinking_budget": self.budget_tokens, "thinking_end_token_id": think_end_id}

    @property
    def encoder_effort(self) -> str | None:
        """Value for `encode_messages(reasoning_effort=...)`: "max", "high" or None."""
        return {ReasoningMode.THINK_MAX: "max", ReasoningMode.THINK_HIGH: "high"}.get(self.mode)


_EFFORTS = {
    "none": ReasoningMode.NON_THINK, "minimal": ReasoningMode.NON_THINK,
    "low": ReasoningMode.THINK_HIGH, "medium": ReasoningMode.THINK_HIGH, "high": ReasoningMode.THINK_HIGH,
    "max": ReasoningMode.THINK_MAX, "xhigh": ReasoningMode.THINK_MAX,
}


def _effort_mode(value: Any, param: str) -> ReasoningMode:
    if not isinstance(value, str) or value.strip().lower() not in _EFFORTS:
        raise ValueError(f"{param}={value!r} is not a known reasoning effort; expected one of {', '.join(_EFFORTS)}")
    return _EFFORTS[value.strip().lower()]


def _agree(signals: list[tuple[str, Any]], what: str) -> tuple[str, Any] | None:
    """Return the first (param, value) signal, or raise if two of them disagree."""
    for param, value in signals[1:]:
        if value != signals[0][1]:
            raise ValueError(f"conflicting {what}: {signals[0][0]} and {param} disagree")
    return signals[0] if signals else None


def _parse_thinking(thinking: Any) -> tuple[bool | None, int | None]:
    """Read the DeepSeek `thinking` parameter into (enabled, budget_tokens)."""
    if thinking is None:
        return None, None
    if isinstance(thinking, bool):
        return thinking, None
    if not isinstance(thinking, dict):
        raise ValueError('thinking must be an object like {"type": "enabled"} or a boolean')
    kind = thinking.get("type")
    if kind not in ("enabled", "disabled"):
        raise ValueError(f'thinking.type must be "enabled" or "disabled", got {kind!r}')
    budget = thinking.get("budget_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        raise ValueError(f"thinking.budget_tokens must be a positive integer, got {budget!r}")
    return kind == "enabled", budget


def resolve_reasoning(reasoning_effort: str | None, thinking: dict | bool | None,
                      chat_template_kwargs: dict | None, server_default: str | None) -> ReasoningConfig:
    """Combine every reasoning control of a request into one ReasoningConfig.

    `server_default` is an effort string like the top-level one (e.g. "max" or "none"). It fills
    in whatever the request leaves open: with no request signal it is the mode; with only
    "thinking enabled" it picks the thinking level (Think High when it names none).
    """
    switches: list[tuple[str, bool]] = []  # explicit on/off signals
    efforts: list[tuple[str, ReasoningMode]] = []  # explicit effort levels
    enabled, budget = _parse_thinking(thinking)
    if enabled is not None:
        switches.append(("thinking", enabled))
    if reasoning_effort is not None:
        efforts.append(("reasoning_effort", _effort_mode(reasoning_effort, "reasoning_effort")))
    kwargs = chat_template_kwargs or {}
    if not isinstance(kwargs, dict):
        raise ValueError("chat_template_kwargs must be an object")
    for key in ("thinking", "enable_thinking"):
        if kwargs.get(key) is not None:
            if not isinstance(kwargs[key], bool):
                raise ValueError(f"chat_template_kwargs.{key} must be a boolean, got {kwargs[key]!r}")
            switches.append((f"chat_template_kwargs.{key}", kwargs[key]))
    if kwargs.get("reasoning_effort") is not None:
        param = "chat_template_kwargs.reasoning_effort"
        efforts.append((param, _effort_mode(kwargs["reasoning_effort"], param)))

    switch = _agree(switches, "thinking switches")
    effort = _agree(efforts, "reasoning efforts")
    if switch and effort and switch[1] != (effort[1] is not ReasoningMode.NON_THINK):
        state = "enables" if switch[1] else "disables"
        raise ValueError(f"conflicting reasoning controls: {switch[0]} {state} thinking "
                         f"but {effort[0]} selects {effort[1].value}")
    default = _effort_mode(server_default, "server default reasoning effort") if server_default else None

    if effort:
        mode = effort[1]
    elif switch:
        thinking_default = default not in (None, ReasoningMode.NON_THINK)
        mode = (default if thinking_default else ReasoningMode.THINK_HIGH) if switch[1] else ReasoningMode.NON_THINK
    else:
        mode = default or ReasoningMode.THINK_HIGH
    if budget is not None and mode is ReasoningMode.NON_THINK:
        raise ValueError("thinking.budget_tokens requires a thinking mode, but reasoning is disabled")
    return ReasoningConfig(mode=mode, budget_tokens=budget)
