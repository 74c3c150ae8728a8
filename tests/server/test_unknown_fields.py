"""Unknown request fields are ignored (as vLLM does) and logged at warning, once per field name."""

from __future__ import annotations

import logging

from real_server import MODEL, USER

from server import protocol


def test_unknown_fields_ignored_and_logged_once(real, http, caplog):
    caplog.set_level(logging.WARNING, logger="v4serve.server")
    protocol._warned.discard("zz_top")
    protocol._warned.discard("messages[].zz_msg")
    body = {"model": MODEL, "messages": [{**USER[0], "zz_msg": 1}], "max_tokens": 2, "zz_top": {"a": 1}}
    for _ in range(3):
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
    hits = [rec.getMessage() for rec in caplog.records if "unknown request fields" in rec.getMessage()]
    assert len(hits) == 1 and "zz_top" in hits[0] and "messages[].zz_msg" in hits[0], hits
    assert hits[0].startswith("/v1/chat/completions")
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1, "zz_top": 1,
                                           "zz_other": True})
    assert r.status_code == 200
    hits = [rec.getMessage() for rec in caplog.records if "unknown request fields" in rec.getMessage()]
    assert len(hits) == 2 and "zz_other" in hits[1] and "zz_top" not in hits[1], hits
    # known-but-unsupported parameters are not "unknown": a 400 names them when set
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "priority": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_warning_set_is_bounded():
    req = protocol.CompletionRequest(prompt="x", **{f"f{i}": 1 for i in range(5)})
    saved = set(protocol._warned)
    try:
        protocol._warned.update(f"filler{i}" for i in range(protocol._MAX_WARNED))
        protocol.warn_unknown_fields(req, "/v1/completions")
        assert not any(f"f{i}" in protocol._warned for i in range(5))
    finally:
        protocol._warned.clear()
        protocol._warned.update(saved)
