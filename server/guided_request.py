"""Structured output on the HTTP API: OpenAI's `response_format` (json_object / json_schema),
vLLM's `guided_json` / `guided_regex` and its newer `structured_outputs` object (json, regex, choice,
json_object) -> the engine's guided-decoding fields, and the grammar
compiled off the event loop (a bad schema or pattern is a 400 naming the parameter).

In chat with thinking on, the grammar starts after `</think>`: it shapes the reply's content, not
its reasoning. Tool calls and a grammar do not mix (both decide the reply's text).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from engine.sampling_params import SamplingParams
from server.errors import InvalidRequest


def guided_param(req: Any) -> str | None:
    """The request parameter that asks for structured output (None: no grammar); more than one is a 400."""
    asks = []
    rf = req.response_format
    if rf is not None and rf.type != "text":
        asks.append("response_format")
    asks += [name for name in ("guided_json", "guided_regex", "guided_choice", "structured_outputs")
             if getattr(req, name) is not None]
    if len(asks) > 1:
        raise InvalidRequest(f"use one structured-output parameter per request, got {', '.join(asks)}", param=asks[1])
    return asks[0] if asks else None


@dataclass(frozen=True)
class GuideSpec:
    """The structured output one request asks for, resolved once (`resolve_guide`)."""

    param: str | None = None  # the request field that asked for it (named in a 400); None: no grammar
    # the SamplingParams guided_* fields it sets (guided_json / _regex / _choice / _json_object / _tool_calls)
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_choice(self) -> bool:
        """guided_choice: the grammar is the whole reply (no reasoning, no tools)."""
        return "guided_choice" in self.fields


def resolve_guide(req: Any) -> GuideSpec:
    """The request's structured-output parameters -> one GuideSpec (more than one is a 400)."""
    param = guided_param(req)
    return GuideSpec(param, MappingProxyType(_guided_fields(req, param)))


def _guided_fields(req: Any, param: str | None) -> dict[str, Any]:
    """SamplingParams fields for the request's grammar."""
    if param == "guided_choice":
        return {"guided_choice": req.guided_choice}
    if param == "guided_json":
        return {"guided_json": req.guided_json}
    if param == "guided_regex":
        return {"guided_regex": req.guided_regex}
    if param == "structured_outputs":
        return _structured_outputs(req.structured_outputs)
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


_SO_FIELDS = {"json": "guided_json", "regex": "guided_regex", "choice": "guided_choice",
              "json_object": "guided_json_object"}
_SO_ACCEPTED = {"disable_fallback", "disable_additional_properties"}  # what we do anyway


def _structured_outputs(so: dict[str, Any]) -> dict[str, Any]:
    """vLLM's `structured_outputs` object: exactly one of json / regex / choice / json_object."""
    set_keys = [k for k, v in so.items() if v not in (None, False)]
    unknown = [k for k in set_keys if k not in _SO_FIELDS and k not in _SO_ACCEPTED]
    if unknown:
        raise InvalidRequest(f"structured_outputs.{unknown[0]} is not supported (supported: json, regex, choice, "
                             "json_object)", param="structured_outputs")
    modes = [k for k in set_keys if k in _SO_FIELDS]
    if len(modes) != 1:
        raise InvalidRequest("structured_outputs needs exactly one of json, regex, choice, json_object"
                             + (f", got {', '.join(modes)}" if modes else ""), param="structured_outputs")
    key = modes[0]
    value = so[key]
    if key == "json_object":
        return {"guided_json_object": True}
    if key == "json":
        value = {} if value is True else value
    return {_SO_FIELDS[key]: value}


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
    except RecursionError:  # a hostile nesting depth fails this request only, as a 400
        raise InvalidRequest("the grammar is nested too deeply", param=param) from None
    return params.with_updates(guide=guide)
