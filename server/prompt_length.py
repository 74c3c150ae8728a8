"""The prompt-length rule of the OpenAI endpoints, in one place (chat: server/chat_plan.py, legacy
completions: server/serving_completion.py).

Without `truncate_prompt_tokens` a prompt must leave room for one generated token: tokenizing stops
counting ids past max_model_len - 1 (the id list of a huge prompt is never built) and the request is
a 400 `RequestTooLongError` with the exact count. With it the whole prompt is tokenized and the
request keeps its last k tokens (`truncate_prompt` in server/protocol.py). Other length limits are
admission's (engine/admission.py).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from engine.errors import RequestTooLongError
from engine.tokenizer import TooManyTokens

T = TypeVar("T")


def encode_within_limit(req: Any, max_model_len: int, max_tokens: int | None, encode: Callable[[int | None], T]) -> T:
    """`encode(limit)` (a tokenizer call that raises TooManyTokens past `limit` ids) under the rule above;
    `max_tokens`: the request's, named in the error."""
    limit = None if req.truncate_prompt_tokens is not None else max_model_len - 1
    try:
        return encode(limit)
    except TooManyTokens as e:
        raise RequestTooLongError.for_lengths(max_model_len, e.num_tokens, max_tokens) from None
