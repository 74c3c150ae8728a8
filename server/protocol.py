"""OpenAI request models (chat + legacy completions) and their mapping onto `SamplingParams`.

Unknown fields are ignored, as OpenAI and vLLM do, and logged at warning with their names the first
time each name is seen (`warn_unknown_fields`). Fields that we recognise but cannot honour
(legacy `functions`, audio, `guided_grammar`, `suffix`, ...; JSON / regex / choice guided decoding is
supported, server/guided_request.py) are rejected with a 400
that names the parameter: `check_supported()` raises `InvalidRequest` for them. Nothing a client
sends is silently dropped when it would change the output.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import InvalidParameter
from engine.sampling_params import SamplingParams
from server.errors import InvalidRequest
from server.guided_request import GuideSpec, resolve_guide
from server.request_schema import EFFORTS, TEMPLATE_KWARGS, THINKING, doc, message_variants, prompt_or_messages


logger = logging.getLogger("v4serve.server")


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unknown_fields(self, prefix: str = "") -> list[str]:
        """Dotted names of the fields no model declares, here and in nested models ("messages[].foo")."""
        names = [prefix + k for k in (self.model_extra or {}) if k not in _KNOWN_EXTRAS]
        for name in type(self).model_fields:
            value = getattr(self, name)
            for v, sub in ((value, f"{prefix}{name}."),) if not isinstance(value, list) else \
                    ((v, f"{prefix}{name}[].") for v in value):
                if isinstance(v, OpenAIBaseModel):
                    names += [n for n in v.unknown_fields(sub) if n not in names]
        return names


_MAX_WARNED = 1024  # distinct unknown names remembered (a hostile client cannot flood the log)
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_unknown_fields(req: OpenAIBaseModel, route: str) -> None:
    """Log at warning, once per field name, the request fields that are ignored (vLLM logs them too)."""
    names = req.unknown_fields()
    if not names:
        return
    with _warned_lock:
        new = [n for n in names if n not in _warned]
        if not new or len(_warned) >= _MAX_WARNED:
            return
        _warned.update(new)
        full = len(_warned) >= _MAX_WARNED
    logger.warning("%s: ignoring unknown request fields: %s%s", route, ", ".join(sorted(new)),
                   " (no more unknown fields will be logged)" if full else "")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")  # None: any JSON value
    strict: bool | None = None  # the schema is always enforced


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ContentPart(OpenAIBaseModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=message_variants)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    def to_dict(self, index: int) -> dict[str, Any]:
        """Plain dict for the chat formatter; content parts are flattened to text."""
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise InvalidRequest(f"content part type {part.type!r} is not supported (text only)",
                                         param=f"messages[{index}].content")
                texts.append(part.text)
            content = "".join(texts)
        out: dict[str, Any] = {"role": self.role, "content": content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        reasoning = self.reasoning_content if self.reasoning_content is not None else self.reasoning
        if reasoning is not None:
            out["reasoning_content"] = reasoning
        return out


# known parameters we do not implement; a meaningful value is a 400 naming the parameter
_UNSUPPORTED = (
    "functions", "function_call", "audio", "prediction", "web_search_options", "guided_grammar",
    "guided_decoding_backend",
    "use_beam_search", "length_penalty",
    "documents", "chat_template", "logits_processors",
    "mm_processor_kwargs", "priority", "vllm_xargs", "kv_transfer_params")
_KNOWN_EXTRAS = frozenset(_UNSUPPORTED) | {"modalities"}  # handled by check_supported: not "unknown"


class SamplingFields(OpenAIBaseModel):
    """Sampling fields shared by chat and completions (OpenAI ones plus the vLLM extras)."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = Field(None, **doc(minLength=1, items={"minLength": 1}))
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, **doc(propertyNames={"pattern": "^[0-9]+$"},
                                                            additionalProperties={"minimum": -100, "maximum": 100}))
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    skip_special_tokens: bool = True
    stop_token_ids: list[int] | None = Field(None, **doc(items={"minimum": 0}))
    include_stop_str_in_output: bool | None = None
    allowed_token_ids: list[int] | None = Field(None, **doc(minItems=1, items={"minimum": 0}))
    bad_words: list[str] | None = Field(None, **doc(items={"pattern": "\\S"}))
    guided_choice: list[str] | None = Field(None, **doc(minItems=1, items={"minLength": 1}))
    # keep only the last k prompt tokens (left truncation); -1: the last max_model_len
    truncate_prompt_tokens: int | None = Field(None, ge=-1, **doc(**{"not": {"const": 0}}))
    # structured output (server/guided_request.py): OpenAI's response_format, vLLM's guided_json / _regex
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    structured_outputs: dict[str, Any] | None = None  # vLLM >= 0.10: {"json" | "regex" | "choice" | "json_object": ...}
    return_tokens_as_token_ids: bool | None = None  # logprob tokens as "token_id:{id}"
    prompt_logprobs: int | None = Field(None, ge=0, le=20)  # vLLM: top-k logprobs per prompt token

    def check_supported(self) -> None:
        """Parameters this server does not implement, and combinations of request fields. Sampling values
        are checked by `SamplingParams` (`sampling_params`), admission (empty prompt, context length,
        queue) by engine/admission.py."""
        extra = self.model_extra or {}
        for name in _UNSUPPORTED:
            if _is_set(extra.get(name)):
                raise InvalidRequest(f"parameter {name!r} is not supported by this server", param=name)
        modalities = extra.get("modalities")
        if modalities is not None and list(modalities) != ["text"]:
            raise InvalidRequest("only modalities=['text'] is supported", param="modalities")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
        if self.prompt_logprobs is not None and self.stream:
            raise InvalidRequest("prompt_logprobs is not available when stream is true", param="prompt_logprobs")
        if self.truncate_prompt_tokens == 0:
            raise InvalidRequest("truncate_prompt_tokens must be -1 or at least 1", param="truncate_prompt_tokens")

    def truncate_prompt(self, ids: list[int], max_model_len: int) -> list[int]:
        """vLLM's `truncate_prompt_tokens`: the last k prompt tokens (-1: the last max_model_len)."""
        k = self.truncate_prompt_tokens
        if k is None:
            return ids
        if k == -1:
            k = max_model_len
        if k > max_model_len:
            raise InvalidRequest(f"truncate_prompt_tokens ({k}) is greater than the maximum context length "
                                 f"({max_model_len})", param="truncate_prompt_tokens")
        return ids[-k:]

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def common_sampling_kwargs(self, guide: GuideSpec | None) -> dict[str, Any]:
        """Only the fields the client set; `SamplingParams` supplies its own defaults for the rest.
        `guide`: the request's resolved structured output (None: resolved here)."""
        kw: dict[str, Any] = {"n": self.n, "stop": self.stop_list(), "skip_special_tokens": self.skip_special_tokens}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p",
                     "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
                     "include_stop_str_in_output", "allowed_token_ids", "bad_words", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        if self.logit_bias:
            kw["logit_bias"] = dict(self.logit_bias)  # "token id" string keys; SamplingParams converts them
        kw.update((guide if guide is not None else resolve_guide(self)).fields)
        return kw

    def sampling_params(self, kw: dict[str, Any]) -> SamplingParams:
        """`SamplingParams(**kw)`; its InvalidParameter becomes a 400 naming the field when the client
        sent a field of that name (a value the server derived, e.g. from response_format, names none)."""
        try:
            return SamplingParams(**kw)
        except InvalidParameter as e:
            raise InvalidRequest(str(e), param=e.param if e.param in self.model_fields_set else None) from None


def _is_set(value: Any) -> bool:
    return value not in (None, False, "", [], {})


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = Field(None, **doc(enum=[*EFFORTS, None]))
    thinking: bool | dict[str, Any] | None = Field(None, **doc(**THINKING))
    chat_template_kwargs: dict[str, Any] | None = Field(None, **doc(**TEMPLATE_KWARGS))
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # vLLM: the reply continues the last (assistant) message

    def check_supported(self) -> None:
        super().check_supported()  # continue_final_message: checked where the prompt is rendered
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs=true", param="top_logprobs")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice requires tools", param="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in self.tools}:
            raise InvalidRequest(f"tool_choice names unknown function {choice.function.name!r}", param="tool_choice")
        for i, m in enumerate(self.messages):
            if m.role == "tool" and not m.tool_call_id:
                raise InvalidRequest("tool messages need tool_call_id", param=f"messages[{i}].tool_call_id")

    def active_tools(self) -> list[dict[str, Any]] | None:
        """Tools rendered into the prompt: none for tool_choice='none', only the named one when forced."""
        if not self.tools or self.tool_choice == "none":
            return None
        tools = self.tools
        if isinstance(self.tool_choice, NamedToolChoice):
            tools = [t for t in tools if t.function.name == self.tool_choice.function.name]
        return [t.model_dump(exclude_none=True) for t in tools]

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.to_dict(i) for i, m in enumerate(self.messages)]

    def to_sampling_params(self, guide: GuideSpec | None = None, **engine_kw: Any) -> SamplingParams:
        """max_tokens None (not set) = the rest of the context, resolved at admission (engine/admission.py)."""
        kw = self.common_sampling_kwargs(guide)
        kw["max_tokens"] = self.max_completion_tokens or self.max_tokens
        if self.logprobs:
            kw["logprobs"] = self.top_logprobs or 0
        kw.update(engine_kw)
        return self.sampling_params(kw)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(**doc(
        minLength=1, minItems=1, items={"minLength": 1, "minimum": 0, "minItems": 1, "items": {"minimum": 0}}))
    max_tokens: int | None = Field(16, ge=1)  # OpenAI/vLLM default for legacy completions; null = fill context
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = Field(None, **doc(maxLength=0))  # not supported: a non-empty suffix is a 400
    best_of: int | None = Field(None, ge=1)

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise InvalidRequest("suffix is not supported by this server", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("best_of different from n is not supported", param="best_of")
        if self.stream and self.echo and self.logprobs is not None:
            raise InvalidRequest("echo with logprobs is not supported when streaming", param="echo")

    def prompts(self) -> list[str | list[int]]:
        """The batch: one entry per prompt, text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)

    def to_sampling_params(self, guide: GuideSpec | None = None, **engine_kw: Any) -> SamplingParams:
        """max_tokens null = the rest of the context, resolved at admission (engine/admission.py)."""
        kw = self.common_sampling_kwargs(guide)
        kw["max_tokens"] = self.max_tokens
        if self.logprobs is not None:
            kw["logprobs"] = self.logprobs
            if self.echo:
                kw["prompt_logprobs"] = max(kw.get("prompt_logprobs") or 0, self.logprobs)
        kw.update(engine_kw)
        return self.sampling_params(kw)


def check_continue_final(req: Any) -> None:
    """vLLM's continue_final_message: needs a final assistant message and add_generation_prompt off."""
    if not req.continue_final_message:
        return
    if "add_generation_prompt" in req.model_fields_set and req.add_generation_prompt:
        raise InvalidRequest("continue_final_message and add_generation_prompt cannot both be true",
                             param="continue_final_message")
    if not req.messages or req.messages[-1].role != "assistant":
        raise InvalidRequest("continue_final_message needs the last message to be from the assistant",
                             param="continue_final_message")


class TokenizeRequest(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=prompt_or_messages)

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, **doc(minItems=1))
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[Tool] | None = None
    response_format: ResponseFormat | None = None  # rendered into the prompt as in chat
    reasoning_effort: str | None = Field(None, **doc(enum=[*EFFORTS, None]))
    thinking: bool | dict[str, Any] | None = Field(None, **doc(**THINKING))
    chat_template_kwargs: dict[str, Any] | None = Field(None, **doc(**TEMPLATE_KWARGS))


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]
