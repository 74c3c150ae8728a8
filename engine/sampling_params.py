"""`SamplingParams`: per-request decoding knobs with vLLM-compatible meaning, validated on creation.

This file only describes and checks the knobs. Applying them is the job of `engine/sampler.py` (logits
side: penalties, temperature, top-k/top-p/min-p, min_tokens masks, forced thinking end), of the
engine's per-token stop rules (`engine/sequence.py` token_stop / reached_length: EOS, stop token ids,
max_tokens) and of the detokenizer (stop strings). Every invalid value raises `InvalidParameter`
(a ValueError) whose message starts with the parameter's name and whose `param` holds it, so the
HTTP layer can turn it into a 400 naming the field. This is the one place sampling values are checked
(the request models only parse types and shapes).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidParameter

MAX_LOGPROBS = 20  # most top-k logprobs a request may ask for (per generated or prompt token)
GREEDY_EPS = 1e-5  # temperature below this samples greedily (vLLM's _SAMPLING_EPS)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """How to pick tokens for one request. Defaults match vLLM's `SamplingParams`."""

    n: int = 1  # independent samples (completions) per request
    temperature: float = 1.0  # 0 (below GREEDY_EPS) = greedy argmax
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]; 1 = disabled
    top_k: int = 0  # keep the k most likely tokens; 0 or -1 = disabled (stored as 0)
    min_p: float = 0.0  # drop tokens with prob < min_p * max prob, in [0, 1]; 0 = disabled
    seed: int | None = None  # per-request RNG seed: output independent of the rest of the batch
    max_tokens: int | None = 16  # generated tokens at most; None = up to max_model_len (engine resolves)
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many tokens were generated
    stop: list[str] = field(default_factory=list)  # stop strings (a single str is wrapped in a list)
    stop_token_ids: list[int] = field(default_factory=list)  # extra token ids that end the sequence
    ignore_eos: bool = False  # keep generating after EOS (benchmarks)
    presence_penalty: float = 0.0  # in [-2, 2]; subtracted once from every token already generated
    frequency_penalty: float = 0.0  # in [-2, 2]; subtracted per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # > 0; divides (multiplies if < 0) logits of prompt+output tokens
    logprobs: int | None = None  # top-k logprobs per generated token (0..20; 0 = sampled token only)
    prompt_logprobs: int | None = None  # top-k logprobs per prompt token (0..20)
    skip_special_tokens: bool = True  # drop special tokens from the detokenized text
    include_stop_str_in_output: bool = False  # keep the matched stop string at the end of the text
    # Reasoning budget: after `thinking_budget` generated tokens without `thinking_end_token_id`, the
    # next token is forced to `thinking_end_token_id` (V4's `</think>`). None = unlimited.
    thinking_budget: int | None = None
    thinking_end_token_id: int | None = None
    # OpenAI logit_bias: token id -> value in [-100, 100] added to that token's logit before sampling
    # (penalties, temperature, truncation); logprobs stay those of the raw logits
    logit_bias: dict[int, float] | None = None
    # vLLM allowed_token_ids: only these ids can be sampled (every other logit -> -inf); None = all
    allowed_token_ids: list[int] | None = None
    # vLLM bad_words: the last token of a word is banned whenever the output ends with the word's
    # other tokens (single-token words: always); the engine tokenizes them (with and without a
    # leading space) into bad_words_token_ids
    bad_words: list[str] = field(default_factory=list)
    bad_words_token_ids: list[list[int]] | None = None
    # vLLM guided_choice: the output is exactly one of these strings, then EOS; the engine tokenizes
    # them into choice_token_ids and the sampler allows only tokens that continue some choice
    guided_choice: list[str] | None = None
    choice_token_ids: list[list[int]] | None = None
    # Structured output (engine/guided/): the output matches a regex (fullmatch), a JSON schema, or
    # is any JSON object, then EOS. At most one of these and guided_choice.
    guided_regex: str | None = None
    guided_json: dict | str | None = None  # a JSON schema (dict, or its JSON text)
    guided_json_object: bool = False
    # a forced DSML tool call (chat tool_choice "required" / named): {"functions": [OpenAI function
    # objects], "one_call": bool}
    guided_tool_calls: dict | None = None
    # the grammar applies after this token is generated (a chat reply's `</think>`); None = at once
    guided_start_token_id: int | None = None
    # the compiled grammar (engine.guided.Grammar), filled by the engine or the server; shared, never
    # copied (it is immutable apart from its mask cache)
    guide: Any = None

    def __post_init__(self) -> None:
        try:
            self._normalize()
            self._validate()
        except InvalidParameter:
            raise
        except ValueError as e:  # every message starts with the parameter it is about
            first = str(e).split(" ", 1)[0]
            raise InvalidParameter(str(e), first if first in _FIELDS else None) from None

    def _normalize(self) -> None:
        """Accepted shorthands -> the canonical types (str stop -> list, "token id" keys -> int, ...)."""
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        elif isinstance(self.stop, (list, tuple)):
            self.stop = list(self.stop)
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        elif isinstance(self.stop_token_ids, (list, tuple)):
            self.stop_token_ids = list(self.stop_token_ids)
        if _is_number(self.temperature):
            self.temperature = float(self.temperature)
        for name in ("top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            if _is_number(getattr(self, name)):
                setattr(self, name, float(getattr(self, name)))
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.logit_bias, dict):  # JSON keys arrive as strings: "50256" -> 50256
            try:
                self.logit_bias = {int(k): v for k, v in self.logit_bias.items()} or None
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias keys must be token ids, got {list(self.logit_bias)[:5]}") from None
        if isinstance(self.allowed_token_ids, tuple):
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.bad_words is None:
            self.bad_words = []
        elif isinstance(self.bad_words, (list, tuple)):
            self.bad_words = list(self.bad_words)

    def _validate(self) -> None:
        def need_int(name: str, lo: int | None = None, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not _is_int(v):
                raise ValueError(f"{name} must be an integer{' or None' if optional else ''}, got {v!r}")
            if lo is not None and v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")

        def need_float(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if (v <= lo if lo_open else v < lo) or v > hi:
                raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")

        def need_bool(name: str) -> None:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

        need_int("n", 1)
        need_float("temperature", 0.0, math.inf)
        need_float("top_p", 0.0, 1.0, lo_open=True)
        need_int("top_k")
        if self.top_k < 0:
            raise ValueError(f"top_k must be -1 or 0 (disabled) or a positive integer, got {self.top_k}")
        need_float("min_p", 0.0, 1.0)
        need_int("seed", optional=True)
        need_int("max_tokens", 1, optional=True)
        need_int("min_tokens", 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if not isinstance(self.stop, list):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        if not isinstance(self.stop_token_ids, list):
            raise ValueError(f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                raise ValueError(f"stop_token_ids must hold non-negative integers, got {t!r}")
        need_bool("ignore_eos")
        need_float("presence_penalty", -2.0, 2.0)
        need_float("frequency_penalty", -2.0, 2.0)
        need_float("repetition_penalty", 0.0, math.inf, lo_open=True)
        for name in ("logprobs", "prompt_logprobs"):
            need_int(name, 0, optional=True)
            v = getattr(self, name)
            if v is not None and v > MAX_LOGPROBS:
                raise ValueError(f"{name} must be <= {MAX_LOGPROBS}, got {v}")
        need_bool("skip_special_tokens")
        need_bool("include_stop_str_in_output")
        need_int("thinking_budget", 0, optional=True)
        need_int("thinking_end_token_id", 0, optional=True)
        if self.thinking_budget is not None and self.thinking_end_token_id is None:
            raise ValueError("thinking_budget requires thinking_end_token_id (the token to force)")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(f"logit_bias must be a mapping of token id to bias, got {self.logit_bias!r}")
            for t, b in self.logit_bias.items():
                if t < 0:
                    raise ValueError(f"logit_bias token ids must be non-negative, got {t}")
                if not _is_number(b) or not -100.0 <= float(b) <= 100.0:
                    raise ValueError(f"logit_bias values must be numbers in [-100, 100], got {b!r} for token {t}")
        if not isinstance(self.bad_words, list) or not all(isinstance(w, str) and w.strip() for w in self.bad_words):
            raise ValueError(f"bad_words must be a list of non-empty strings, got {self.bad_words!r}")
        if self.bad_words_token_ids is not None and not all(
                isinstance(seq, list) and seq and all(_is_int(t) and t >= 0 for t in seq)
                for seq in self.bad_words_token_ids):
            raise ValueError(f"bad_words_token_ids must be non-empty lists of token ids, got {self.bad_words_token_ids!r}")
        if self.guided_choice is not None:
            if not isinstance(self.guided_choice, list) or not self.guided_choice or not all(
                    isinstance(c, str) and c for c in self.guided_choice):
                raise ValueError(f"guided_choice must be a non-empty list of non-empty strings, got {self.guided_choice!r}")
            if self.ignore_eos or self.min_tokens:
                raise ValueError("guided_choice ends the output with EOS after the choice: it cannot be combined "
                                 "with ignore_eos or min_tokens")
        guided = [name for name in ("guided_choice", "guided_regex", "guided_json", "guided_tool_calls")
                  if getattr(self, name) is not None]
        guided += ["guided_json_object"] if self.guided_json_object else []
        if len(guided) > 1:
            raise ValueError(f"at most one guided decoding mode per request, got {', '.join(guided)}")
        if self.guided_regex is not None and not isinstance(self.guided_regex, str):
            raise ValueError(f"guided_regex must be a string, got {self.guided_regex!r}")
        if self.guided_json is not None and not isinstance(self.guided_json, (dict, str)):
            raise ValueError(f"guided_json must be a JSON schema (object or string), got {self.guided_json!r}")
        need_bool("guided_json_object")
        tc = self.guided_tool_calls
        if tc is not None and not (isinstance(tc, dict) and isinstance(tc.get("functions"), list)
                                   and isinstance(tc.get("one_call"), bool)):
            raise ValueError(f"guided_tool_calls must be {{'functions': [...], 'one_call': bool}}, got {tc!r}")
        need_int("guided_start_token_id", 0, optional=True)
        if guided and guided != ["guided_choice"] and (self.ignore_eos or self.min_tokens):
            raise ValueError(f"{guided[0]} ends the output with EOS once it matches: it cannot be combined "
                             "with ignore_eos or min_tokens")
        if self.allowed_token_ids is not None:
            ids = self.allowed_token_ids
            if not isinstance(ids, list) or not ids or not all(_is_int(t) and t >= 0 for t in ids):
                raise ValueError(f"allowed_token_ids must be a non-empty list of token ids, got {ids!r}")

    def guide_spec(self) -> tuple[str, Any] | None:
        """(kind, spec) for `engine.guided.GuideCompiler.compile`, or None without a grammar."""
        if self.guided_regex is not None:
            return "regex", self.guided_regex
        if self.guided_json is not None:
            return "json", self.guided_json
        if self.guided_json_object:
            return "json_object", None
        if self.guided_tool_calls is not None:
            return "tool_calls", self.guided_tool_calls
        return None

    @property
    def greedy(self) -> bool:
        """True when the sampler takes the argmax (temperature 0)."""
        return self.temperature < GREEDY_EPS

    @property
    def needs_penalties(self) -> bool:
        """True when any of presence / frequency / repetition penalty changes logits."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def clone(self) -> SamplingParams:
        """A deep copy (lists are not shared)."""
        return copy.deepcopy(self)

    def with_updates(self, **changes: Any) -> SamplingParams:
        """A validated copy with `changes` applied; unknown names raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return dataclasses.replace(self.clone(), **changes)


_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
