"""The published `/openapi.json`: request models from protocol.py (with the constraints the server
enforces at run time), the response models below, and the bounds known only once the engine exists
(served model name, vocabulary size, max_model_len), so generated clients and schema fuzzers
(schemathesis, in CI) send what the server accepts and expect what it answers."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str  # class-like name: BadRequestError, NotFoundError, ...
    param: str | None  # the request field at fault, when one is
    code: int  # the HTTP status


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # a JSON object as text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None  # thinking modes: the reasoning before `</think>`
    reasoning: str | None = None  # the same, under vLLM's newer name
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "tool_calls", "abort"] | None
    stop_reason: int | str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None  # cached_tokens
    completion_tokens_details: dict[str, int] | None = None  # reasoning_tokens (chat)


class ChatCompletionResponse(BaseModel):
    """Non-streaming answer; with `stream: true` the body is `text/event-stream` of
    `chat.completion.chunk` objects ending with `data: [DONE]`."""
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: list[Any] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "abort"] | None
    stop_reason: int | str | None = None
    prompt_logprobs: list[Any] | None = None


class CompletionResponse(BaseModel):
    """Non-streaming answer; with `stream: true` the body is `text/event-stream` of `text_completion`
    chunks ending with `data: [DONE]`."""
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    prompt: str  # the prompt text that was tokenized (the rendered chat prompt for messages)


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class VersionResponse(BaseModel):
    version: str


_ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model"),
    (413, "request body too large"), (429, "request queue full"), (503, "starting, shutting down or stopped"))}


def responses(model: type[BaseModel] | None, *, stream: bool = False) -> dict[int | str, Any]:
    """`responses=` of a route: its 200 model (plus the event stream when it streams) and the errors."""
    ok: dict[str, Any] = {"description": "success"}
    if model is not None:
        ok["model"] = model
    if stream:
        ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    return {200: ok, **_ERRORS}


def install_openapi(app: FastAPI, served_model_name: str, engine: Any) -> None:
    """Make `app.openapi()` add the run-time bounds to FastAPI's generated schema (built once, on first use)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            _bound(schema, served_model_name, engine.tokenizer.vocab_size, engine.max_model_len)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _bound(schema: dict[str, Any], name: str, vocab: int, max_model_len: int) -> None:
    models = schema.get("components", {}).get("schemas", {})
    token_id = {"minimum": 0, "maximum": vocab - 1}
    digits = max(1, len(str(vocab - 1)) - 1)  # every id with this many digits is in the vocabulary
    for model in models.values():
        props = model.get("properties", {})
        if "model" in props:  # only the served model (or none / "") is accepted
            props["model"] = {"enum": [name, "", None], "default": None, "title": "Model"}
        for key in ("allowed_token_ids", "stop_token_ids", "tokens"):
            if key in props:
                props[key].setdefault("items", {}).update(token_id)
        if "prompt" in props and "items" in props["prompt"]:  # completions: token-id prompts
            props["prompt"]["items"].update(token_id)
            props["prompt"]["items"]["items"].update(token_id)
        if "logit_bias" in props:
            props["logit_bias"]["propertyNames"] = {"pattern": f"^[0-9]{{1,{digits}}}$"}
        for key in ("max_tokens", "max_completion_tokens"):
            if key in props:  # the prompt takes at least one position
                props[key]["maximum"] = max_model_len - 1
        if "truncate_prompt_tokens" in props:
            props["truncate_prompt_tokens"]["maximum"] = max_model_len
    for param in schema.get("paths", {}).get("/v1/models/{model}", {}).get("get", {}).get("parameters", []):
        if param.get("name") == "model":
            param["schema"] = {"type": "string", "enum": [name]}
