"""Structured output on the HTTP API: OpenAI's `response_format` (json_object / json_schema) and
vLLM's `guided_json` / `guided_regex` -> the engine's guided-decoding fields, and the grammar
compiled off the event loop (a bad schema or pattern is a 400 naming the parameter).

In chat with thinking on, the grammar starts after `</think>`: it shapes the reply's content, not
its reasoning. Tool calls and a grammar do not mix (both decide the reply's text).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.sampling_params import SamplingParams
from server.errors import InvalidRequest


def guided_param(req: Any) -> str | None:
    """The request parameter that asks for structured output (None: no grammar); more than one is a 400."""
    asks = []
    rf = req.response_format
    if rf is not None and rf.type != "text":
        asks.append("response_format")
    asks += [name for name in ("guided_json", "guided_regex", "guided_choice") if getattr(req, name) is not None]
    if len(asks) > 1:
        raise InvalidRequest(f"use one structured-output parameter per request, got {', '.join(asks)}", param=asks[1])
    return asks[0] if asks else None


def guided_kwargs(req: Any) -> dict[str, Any]:
    """SamplingParams fields for the request's grammar (guided_choice is passed on by the caller)."""
    param = guided_param(req)
    if param == "guided_json":
        return {"guided_json": req.guided_json}
    if param == "guided_regex":
        return {"guided_regex": req.guided_regex}
    if param != "response_format":
        return {}
    rf = req.response_format
    if rf.type == "json_object":
        return {"guided_json_object": True}
    if rf.json_schema is None:
        raise InvalidRequest("response_format of type 'json_schema' needs a json_schema object",
                             param="response_format")
    schema = rf.json_schema.schema_
    if schema is False:
        raise InvalidRequest("response_format.json_schema.schema `false` matches nothing", param="response_format")
    return {"guided_json": schema if isinstance(schema, dict) else {}}  # None / true: any JSON value


async def attach_guide(engine: Any, params: SamplingParams, param: str | None) -> SamplingParams:
    """`params` with its grammar compiled (in a worker thread: large schemas take a while), so the
    engine loop never compiles; engines without a compiler (test doubles) compile nothing."""
    spec = params.guide_spec()
    compiler = getattr(engine, "guides", None)
    if spec is None or compiler is None or params.guide is not None:
        return params
    try:
        guide = await asyncio.to_thread(compiler.compile, *spec)
    except ValueError as e:
        raise InvalidRequest(str(e), param=param) from None
    return params.with_updates(guide=guide)
