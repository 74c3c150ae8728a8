"""`v4serve` console script: `v4serve serve [MODEL_DIR] [options]`.

Builds `EngineArgs` -> `AsyncLLM.from_engine_args` -> `create_app` -> uvicorn. Without MODEL_DIR
the built-in demo model is served on the CPU. SIGTERM/SIGINT start the bounded shutdown
(server/shutdown.py): new requests get 503, those in flight run for --shutdown-timeout seconds and
are then aborted, the engine stops and the process exits 0. An engine that dies exits 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

_EFFORTS = ("none", "minimal", "low", "medium", "high", "max", "xhigh")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("v4serve")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.1.0+source"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`serve --help` shows every default: "(default: X)" after each help text that does not say
    its default in words already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        value = action.default
        if isinstance(value, bool):
            value = "on" if value else "off"
        return f"{text} (default: {str(value).replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    from kernels import kv_format  # the KV formats' one registry

    parser = argparse.ArgumentParser(prog="v4serve", description="OpenAI-compatible server for DeepSeek-V4 models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="Serve a model over HTTP (OpenAI API, /metrics, /health).",
                       description="Serve a model over HTTP (OpenAI API, /metrics, /health).",
                       formatter_class=DefaultsHelpFormatter)
    s.add_argument("model", nargs="?", default=None, metavar="MODEL_DIR",
                   help="checkpoint directory (config.json, *.safetensors, tokenizer.json) (default: the built-in "
                        "tiny demo model, random weights)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    s.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run the model")
    s.add_argument("--dtype", default="auto", help="activation dtype: auto, float32, bfloat16 or float16")
    s.add_argument("--served-model-name", default=None,
                   help="model name clients must send (default: the checkpoint directory name; demo-model-v1 for the "
                        "demo)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/*, /tokenize and /detokenize (default: no key, "
                        "open)")
    s.add_argument("--max-model-len", type=int, default=None,
                   help="context length cap, prompt + completion (default: the model's max_position_embeddings, "
                        "capped by what the KV cache holds)")
    s.add_argument("--max-num-seqs", type=int, default=64, help="most sequences decoded in one step")
    s.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="token budget of one engine step (default: 8192 on a CUDA GPU with >= 70 GiB other than an "
                        "A100, 2048 on smaller GPUs and on CPU, as vLLM's server)")
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of free GPU memory used for the KV cache after the weights")
    s.add_argument("--kv-cache-memory", type=int, default=None,
                   help="KV cache size in bytes (default: --gpu-memory-utilization on GPU, 256 MiB on CPU)")
    s.add_argument("--kv-cache-dtype", default="auto", choices=kv_format.CLI_CHOICES, help=kv_format.cli_help())
    s.add_argument("--block-size", type=int, default=None,
                   help="tokens per KV block (a multiple of every compression ratio; default: smallest >= 64)")
    s.add_argument("--scheduler-delay-factor", type=float, default=0.0,
                   help="while sequences run, hold a new prompt until the oldest waiting one has waited this many "
                        "times the last prompt step's duration, so close arrivals share one prefill step (vLLM's "
                        "flag; default 0: admit at the next step)")
    s.add_argument("--max-queued-requests", type=int, default=None,
                   help="waiting sequences (n per request) beyond this are refused with HTTP 429 (default: unbounded)")
    s.add_argument("--default-reasoning-effort", default=None, choices=_EFFORTS,
                   help="reasoning mode when a request names none: none = Non-Think (thinking off), high = Think "
                        "High, max = Think Max (default: high, thinking on, as DeepSeek's API)")
    s.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs to shard the model over")
    s.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="overlapped loop: schedule and launch the next step while the GPU runs this one "
                        "(default: on with CUDA and tensor parallel size 1, off on CPU)")
    s.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs: decode steps run the eager forward (start-up skips the capture)")
    s.add_argument("--eager-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="start-up runs prompts of ~2x-spaced lengths up to the token budget once, compiling the "
                        "prompt steps' kernel variants before serving (default: on with CUDA, off on CPU)")
    s.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='speculative decoding with the checkpoint\'s MTP block, e.g. \'{"method": "mtp", '
                        '"num_speculative_tokens": 2}\' (k = 1..4; loads the MTP weights; steps run synchronously '
                        'and without CUDA graphs) (default: off)')
    s.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the KV cache of shared prompt prefixes (exact: block hashes + slot-state snapshots)")
    s.add_argument("--max-request-body-bytes", type=int, default=16 << 20,
                   help="larger request bodies are refused with HTTP 413 (default 16 MiB)")
    s.add_argument("--shutdown-timeout", type=float, default=20.0,
                   help="on SIGTERM: seconds the requests in flight may still run before they are aborted "
                        "(new requests get 503; the process exits 0 about a second after)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="server log verbosity")
    return parser


def engine_args(ns: argparse.Namespace):
    """EngineArgs from the parsed flags (imported lazily: torch is slow to import for --help)."""
    from engine.config import EngineArgs

    args = EngineArgs(model=ns.model, device=ns.device, dtype=ns.dtype, max_num_seqs=ns.max_num_seqs,
                      max_num_batched_tokens=ns.max_num_batched_tokens, max_model_len=ns.max_model_len,
                      gpu_memory_utilization=ns.gpu_memory_utilization, kv_cache_memory=ns.kv_cache_memory,
                      block_size=ns.block_size, kv_cache_dtype=ns.kv_cache_dtype,
                      max_queued_requests=ns.max_queued_requests, tensor_parallel_size=ns.tensor_parallel_size,
                      scheduler_delay_factor=ns.scheduler_delay_factor,
                      served_model_name=ns.served_model_name, enforce_eager=ns.enforce_eager,
                      eager_warmup=ns.eager_warmup,
                      enable_prefix_caching=ns.enable_prefix_caching,
                      async_scheduling=ns.async_scheduling, speculative_config=ns.speculative_config,
                      usage="server")
    args.validate()
    return args


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(ns: argparse.Namespace) -> int:
    import asyncio

    import uvicorn

    from engine.async_engine import AsyncLLM
    from server.app import create_app
    from server.shutdown import GracefulServer
    from server.startup_log import kernel_cache_line, ready_line, reasoning_default_line

    configure_logging(ns.log_level)
    log = logging.getLogger("v4serve")
    args = engine_args(ns)
    engine = AsyncLLM.from_engine_args(args, defer_load=True)  # weights load behind /health 503
    name = ns.served_model_name or engine.model_name
    failed: list[BaseException] = []

    def engine_failed(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    announcing: list[asyncio.Task] = []

    def engine_ready() -> None:  # on the event loop, once the weights are loaded
        announcing.append(asyncio.get_running_loop().create_task(announce()))

    async def announce() -> None:
        while not server.started and not server.should_exit:  # uvicorn logs its own lines first
            await asyncio.sleep(0.05)
        if server.started and not server.should_exit:
            log.info("%s", reasoning_default_line(ns.default_reasoning_effort))
            log.info("%s", ready_line(engine, name, ns.host, ns.port))

    app = create_app(engine, served_model_name=name, api_key=ns.api_key,
                     default_reasoning_effort=ns.default_reasoning_effort,
                     on_engine_failure=engine_failed,
                     on_engine_ready=engine_ready, max_request_body_bytes=ns.max_request_body_bytes,
                     shutdown_timeout=ns.shutdown_timeout)
    log.info("serving %s on http://%s:%d (loading the model: /health answers 503 until it is ready)",
             name, ns.host, ns.port)
    cache_line = kernel_cache_line(str(args.resolve_device()))
    if cache_line:
        log.info("%s", cache_line)
    server = GracefulServer(uvicorn.Config(app, host=ns.host, port=ns.port, log_level=ns.log_level,
                                           access_log=False, timeout_graceful_shutdown=1), app.state.drain)
    stopped_by: list[int] = []
    previous = _absorb_stop_signals(server, stopped_by)
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        log.error("the engine failed: %s", failed[0])
        return 1
    if not server.started and not stopped_by:
        log.error("the HTTP server did not start")
        return 3  # uvicorn.run's STARTUP_FAILURE
    if stopped_by:
        log.info("stopped by %s", signal.Signals(stopped_by[0]).name)
    return 0


def _absorb_stop_signals(server, record: list[int]) -> dict:
    """After a graceful shutdown uvicorn re-raises the SIGTERM/SIGINT it caught on the handler that
    was installed before it started; with the default ones that kills the process (exit -15) or
    raises KeyboardInterrupt. Install handlers that record the signal and ask the server to exit
    (in case it arrives before uvicorn installs its own), so a stop signal ends `serve` normally
    and the process exits 0. Returns the handlers to restore."""
    def absorb(signum, _frame) -> None:
        record.append(signum)
        server.should_exit = True

    return {sig: signal.signal(sig, absorb) for sig in (signal.SIGINT, signal.SIGTERM)}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "serve":
        try:
            rc = serve(ns)
        except (ValueError, OSError) as e:  # bad flags, unreadable or missing checkpoint files
            print(f"v4serve: error: {e}", file=sys.stderr)
            return 2
        if argv is None:  # the program itself: skip torch's seconds-long interpreter teardown, so a
            _exit_now(rc)  # stop signal ends the process within --shutdown-timeout + ~1 s
        return rc
    return 2


def _exit_now(rc: int) -> None:
    """Everything is stopped and logged: flush and leave without the interpreter's teardown."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
