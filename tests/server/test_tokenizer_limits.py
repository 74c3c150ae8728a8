"""Tokenizer limits: a prompt over the limit raises TooManyTokens with its exact length and never
builds the id list; under it, the ids equal the unlimited ones; the server turns it into the vLLM
too-long 400 with the true token count."""

from __future__ import annotations

import pytest
from real_server import MODEL, expect_error

from engine.tokenizer import TooManyTokens


def test_limit_counts_exactly(real):
    tok = real.tok
    segs = [("<｜begin▁of▁sentence｜><｜User｜>", True), ("hello world " * 300, False),
            ("<｜Assistant｜></think>", True)]
    full = tok.encode_segments(segs)
    assert tok.encode_segments(segs, limit=len(full)) == full
    for limit in (0, 1, 5, len(full) // 2, len(full) - 1):
        with pytest.raises(TooManyTokens) as e:
            tok.encode_segments(segs, limit=limit)
        assert e.value.num_tokens == len(full)
    text = "lorem ipsum " * 5000  # long enough for the GIL-free path
    ids = tok.encode(text, add_special_tokens=True)
    assert tok.encode(text, add_special_tokens=True, limit=len(ids)) == ids
    with pytest.raises(TooManyTokens) as e:
        tok.encode(text, add_special_tokens=True, limit=len(ids) - 1)
    assert e.value.num_tokens == len(ids)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_too_long_prompt_reports_true_length(real, http, route):
    text = "lorem ipsum " * 3000
    body = {"model": MODEL, "max_tokens": 4}
    body.update({"messages": [{"role": "user", "content": text}]} if "chat" in route else {"prompt": text})
    n = http.post("/tokenize", json={k: v for k, v in body.items() if k != "max_tokens"}).json()["count"]
    err = expect_error(http.post(route, json=body), 400)
    assert f"{n + 4} tokens ({n} in the messages" in err["message"], (n, err)
