"""Errors the engine raises to its callers; the HTTP layer maps each one to a status code."""

from __future__ import annotations


class RequestTooLongError(ValueError):
    """Prompt (plus requested completion) does not fit the model's context window (HTTP 400)."""

    @classmethod
    def for_lengths(cls, max_model_len: int, prompt_len: int, max_tokens: int | None) -> "RequestTooLongError":
        """The vLLM wording that clients and gateways pattern-match on."""
        if max_tokens is None:
            return cls(f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                       f"{prompt_len} input tokens. Please reduce the length of the input messages.")
        return cls(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                   f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in the completion). "
                   f"Please reduce the length of the messages or completion.")


class EmptyPromptError(ValueError):
    """The request has no prompt tokens (HTTP 400 naming the route's prompt field)."""


class InvalidParameter(ValueError):
    """A sampling parameter has an invalid value; `param` names it (None: a combination of several)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(Exception):
    """Admission control refused the request because the waiting queue is full (HTTP 429)."""


class EngineDeadError(RuntimeError):
    """The engine loop has died; no request can be served any more (HTTP 503)."""
