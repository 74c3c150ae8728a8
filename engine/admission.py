"""The admission rule: may a request of n samples join the queue, and with how many tokens to generate.

One function, called with live counts by `Scheduler.admit` (engine thread, authoritative) and with the
last published counts by `AsyncLLM.check_request` (the HTTP side's early 400 / 429, before streaming).
The HTTP layer itself checks no limit: protocol.py parses, SamplingParams validates values, this
decides admission.
"""

from __future__ import annotations

from .errors import EmptyPromptError, InvalidParameter, QueueFullError, RequestTooLongError


def admit(prompt_len: int, max_tokens: int | None, n: int, *, max_model_len: int, kv_capacity: int | None,
          num_waiting: int, max_queued: int | None, min_tokens: int = 0) -> int:
    """-> the request's max_tokens (None: the rest of the context). Raises EmptyPromptError (a ValueError),
    ValueError (max_tokens < 1), RequestTooLongError (past max_model_len, or more than the KV cache holds) or
    QueueFullError (the cap counts waiting sequences: n samples need n places); InvalidParameter
    when min_tokens exceeds the max_tokens resolved here."""
    if prompt_len == 0:
        raise EmptyPromptError("the prompt is empty")
    if max_tokens is None:  # the rest of the context
        if prompt_len >= max_model_len:
            raise RequestTooLongError.for_lengths(max_model_len, prompt_len, None)
        max_tokens = max_model_len - prompt_len
        if min_tokens > max_tokens:  # (SamplingParams checks min_tokens against an explicit max_tokens)
            raise InvalidParameter(f"min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens}: the rest of "
                                   f"the context)", "min_tokens")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    total = prompt_len + max_tokens
    if total > max_model_len:
        raise RequestTooLongError.for_lengths(max_model_len, prompt_len, max_tokens)
    if kv_capacity is not None and total > kv_capacity:
        raise RequestTooLongError(
            f"The KV cache can hold at most {kv_capacity} tokens. However, you requested {total} tokens "
            f"({prompt_len} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    if max_queued is not None and num_waiting + n > max_queued:
        raise QueueFullError(f"the server is overloaded: {num_waiting} sequences are already waiting "
                             f"(max_queued_requests={max_queued}); retry later")
    return max_tokens
