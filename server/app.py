"""The FastAPI application: OpenAI routes, vLLM-style utility routes, auth, request ids, metrics.

`create_app(engine, ...)` works with any object that implements the `AsyncLLM` interface
(`engine/async_engine.py`); tests pass a fake. The engine is started in the background from the
lifespan hook, so `/health` answers 503 while it warms up and 200 once `engine.is_ready`; shutdown
(SIGTERM/SIGINT through uvicorn) stops the engine, which aborts in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager, suppress
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from chat.encoder import SpecialTokens
from server.errors import (APIError, InvalidRequest, check_text, error_body, error_response,
                           install_exception_handlers, to_api_error)
from server.limits import DEFAULT_MAX_REQUEST_BODY_BYTES, BodySizeLimitMiddleware, OffLoopJSONRoute
from server.metrics import HttpMetricsMiddleware, ServerMetrics
from server.openapi import (ChatCompletionResponse, CompletionResponse, DetokenizeResponse, ModelCard, ModelList,
                            TokenizeResponse, VersionResponse, install_openapi, responses)
from server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest,
                             warn_unknown_fields)
from server.request_log import ErrorLogMiddleware
from server.chat_plan import tokenize_chat
from server.serving_chat import create_chat_completion
from server.serving_common import ServerState
from server.serving_completion import create_completion
from server.shutdown import DEFAULT_SHUTDOWN_TIMEOUT_S, Drain, DrainMiddleware

logger = logging.getLogger("v4serve.server")
_OPEN_PATHS = ("/health", "/metrics", "/version")


def _version() -> str:
    try:
        return version("v4serve")
    except PackageNotFoundError:
        return "0.1.0"


class RequestIdAuthMiddleware:
    """Pure ASGI: echo or mint `X-Request-Id` on every response; enforce the bearer key; turn an
    unexpected exception raised before the response started into the JSON 500 envelope here, so
    the answer still carries the request id and the keep-alive connection survives (Starlette's
    outermost error middleware re-raises to the server, which then drops the connection)."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:256] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def _send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        path = scope.get("path", "")
        if self.api_key is not None and not path.startswith(_OPEN_PATHS) and path != "/":
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if auth != f"Bearer {self.api_key}":
                resp = JSONResponse(error_body(401, "Invalid or missing API key (use 'Authorization: Bearer <key>')"),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, _send)
                return
        try:
            await self.app(scope, receive, _send)
        except Exception as exc:
            if started:  # mid-body failure: nothing left to answer with
                raise
            err = to_api_error(exc, path)  # logs the traceback of anything unclassified
            await error_response(err)(scope, receive, _send)


def create_app(engine, *, served_model_name: str, api_key: str | None = None,
               default_reasoning_effort: str | None = None,
               on_engine_failure=None, on_engine_ready=None,
               max_request_body_bytes: int | None = DEFAULT_MAX_REQUEST_BODY_BYTES,
               shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> FastAPI:
    """`on_engine_failure(exc)`: called when the engine fails to start or dies later (the CLI stops
    the server and exits non-zero); `app.state.drain`: the bounded shutdown (`server/shutdown.py`);
    `on_engine_ready()`: called on the event loop once it is ready (the CLI logs the start-up summary)."""
    metrics = ServerMetrics(engine.stats, served_model_name)
    try:
        special = SpecialTokens.from_tokenizer(engine.tokenizer)
    except ValueError as e:  # chat is refused with a clear 400; completions still work
        special = e
    drain = Drain(engine, shutdown_timeout)
    state = ServerState(engine=engine, served_model_name=served_model_name, metrics=metrics,
                        default_reasoning_effort=default_reasoning_effort, special=special, drain=drain)
    startup: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        async def start() -> None:
            try:
                engine.on_death = died
                await engine.start()
                startup["started"] = True
                logger.info("engine ready: serving %s", served_model_name)
                if on_engine_ready is not None:
                    on_engine_ready()
            except Exception as e:
                startup["error"] = e
                logger.exception("engine failed to start")
                if on_engine_failure is not None:
                    on_engine_failure(e)
        def died(exc: BaseException) -> None:  # an engine step raised: in-flight requests have their error
            logger.error("the engine died (%s): /health answers 503, the server stops", exc)
            if on_engine_failure is not None:
                on_engine_failure(exc)

        task = asyncio.create_task(start())
        try:
            yield
        finally:
            task.cancel()
            with suppress(BaseException):
                await task
            logger.info("shutting down: stopping the engine")
            await engine.shutdown()

    app = FastAPI(title="v4serve", version=_version(), lifespan=lifespan)
    app.router.route_class = OffLoopJSONRoute  # before the routes: big JSON bodies decode in a thread
    install_openapi(app, served_model_name, engine)
    app.state.v4, app.state.drain = state, drain
    install_exception_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_body_bytes)
    app.add_middleware(DrainMiddleware, drain=drain)  # 503 while shutting down; counts requests in flight
    app.add_middleware(RequestIdAuthMiddleware, api_key=api_key)
    app.add_middleware(ErrorLogMiddleware)  # outside the auth middleware: sees its 401s and 500s
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)

    def check_model(model: str | None) -> None:
        if model not in (None, "", served_model_name):
            raise APIError(404, f"The model `{model}` does not exist.", param="model")

    def unavailable_reason() -> str:
        """Why the engine is not ready: failed start, stopped (died or shutting down), or still starting."""
        if "error" in startup:
            return f"the engine failed to start: {startup['error']}"
        if startup.get("started"):
            return "the engine is not running (it stopped after an internal error or is shutting down)"
        return "engine is starting up, retry later"

    def check_capacity() -> None:
        if not engine.is_ready:
            raise APIError(503, unavailable_reason())

    @app.post("/v1/chat/completions", responses=responses(ChatCompletionResponse, stream=True))
    async def chat_completions(req: ChatCompletionRequest, raw_request: Request):
        check_model(req.model)
        check_capacity()
        return await create_chat_completion(state, req, raw_request)

    @app.post("/v1/completions", responses=responses(CompletionResponse, stream=True))
    async def completions(req: CompletionRequest, raw_request: Request):
        check_model(req.model)
        check_capacity()
        return await create_completion(state, req, raw_request)

    def model_card() -> dict:
        return {"id": served_model_name, "object": "model", "created": int(time.time()), "owned_by": "v4serve",
                "root": served_model_name, "parent": None, "max_model_len": engine.max_model_len}

    @app.get("/v1/models", responses=responses(ModelList))
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}", responses=responses(ModelCard))
    async def model(model: str):
        check_model(model)
        return model_card()

    @app.get("/health", responses=responses(None))
    async def health():
        if engine.is_ready:
            return Response(status_code=200)
        return JSONResponse(error_body(503, unavailable_reason()), status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/version", responses=responses(VersionResponse))
    async def server_version():
        return {"version": _version()}

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache():
        """vLLM's route: drop every cached block no running request holds (behind --api-key)."""
        if not engine.is_ready:
            raise APIError(503, unavailable_reason())
        dropped = await engine.reset_prefix_cache()
        logger.info("prefix cache reset: %d cached blocks dropped", dropped)
        return Response(status_code=200)

    @app.post("/tokenize", responses=responses(TokenizeResponse))
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        warn_unknown_fields(req, "/tokenize")
        tok = engine.tokenizer
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequest("give exactly one of prompt or messages", param="prompt")
        if req.messages is not None:
            if isinstance(state.special, Exception):
                raise InvalidRequest(f"this model's tokenizer cannot do chat ({state.special})", param="messages")
            prompt, tokens, _ = await asyncio.to_thread(tokenize_chat, state, req)
            if req.add_special_tokens:  # the post-processor's additions (e.g. BOS), before the template's
                tokens = tok.encode("", add_special_tokens=True) + tokens
        else:  # completions semantics: the caller owns the template, special-token text is special
            prompt = req.prompt
            add = True if req.add_special_tokens is None else req.add_special_tokens
            tokens = await asyncio.to_thread(lambda: tok.encode(check_text(prompt, "prompt"), add))  # both O(len)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_model_len, "prompt": prompt}

    @app.post("/detokenize", responses=responses(DetokenizeResponse))
    async def detokenize(req: DetokenizeRequest):
        check_model(req.model)
        warn_unknown_fields(req, "/detokenize")
        tok = engine.tokenizer

        def decode() -> str:  # millions of ids take a while: off the event loop
            bad = [t for t in req.tokens if not 0 <= t < tok.vocab_size]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is out of range [0, {tok.vocab_size})", param="tokens")
            return tok.decode(req.tokens, skip_special_tokens=False)
        return {"prompt": await asyncio.to_thread(decode)}

    return app
