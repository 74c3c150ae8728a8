"""What `v4serve serve` tells the operator once it is ready: the reasoning default (thinking is on
unless the server or the request turns it off) and, as the last start-up line, where to connect and
what fits: URL, served model name, max model length, KV capacity in tokens and in full-length
sequences; on a GPU, where compiled kernels are cached (the first start compiles them all)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chat.reasoning import ReasoningMode, resolve_reasoning


def reasoning_default_line(default_effort: str | None) -> str:
    """One line on the server's reasoning default and how to change it per request / server-wide."""
    mode = resolve_reasoning(None, None, None, default_effort).mode
    if mode is ReasoningMode.NON_THINK:
        return (f"thinking is OFF by default (--default-reasoning-effort {default_effort}); turn it on per request "
                'with "reasoning_effort": "high" (or "max"), or "thinking": {"type": "enabled"}')
    level = "Think Max" if mode is ReasoningMode.THINK_MAX else "Think High"
    return (f"thinking is ON by default ({level}, as in DeepSeek's API): replies carry reasoning_content, then "
            'content, and max_tokens covers both; turn it off per request with "reasoning_effort": "none" '
            '(or "thinking": {"type": "disabled"}, or "chat_template_kwargs": {"thinking": false}), '
            "or server-wide with --default-reasoning-effort none")


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def kv_capacity(engine: Any) -> tuple[int, float]:
    """(KV cache capacity in tokens, how many sequences of max_model_len tokens it holds at once).
    Full-length sequences are counted in whole blocks, as the cache allocates them."""
    kv = engine.engine.kv
    tokens = kv.num_blocks * kv.block_size
    blocks_per_seq = -(-engine.max_model_len // kv.block_size)
    return tokens, kv.num_blocks / blocks_per_seq


def ready_line(engine: Any, served_model_name: str, host: str, port: int) -> str:
    """The last start-up line. `engine`: a started AsyncLLM."""
    tokens, seqs = kv_capacity(engine)
    return (f"ready: {base_url(host, port)}/v1 serving model {served_model_name!r}, max_model_len "
            f"{engine.max_model_len:,}, KV cache {tokens:,} tokens = {seqs:.2f} full-length sequences "
            f"(at most {engine.engine.args.max_num_seqs} sequences run at once: --max-num-seqs)")


def kernel_cache_dir() -> Path:
    """Where Triton keeps compiled kernels: $TRITON_CACHE_DIR, else Triton's default ~/.triton/cache."""
    env = os.environ.get("TRITON_CACHE_DIR")
    return Path(env) if env else Path.home() / ".triton" / "cache"


def kernel_cache_line(device: str) -> str | None:
    """One start-up line on the compiled-kernel cache (None on CPU, where no kernel is compiled). A start
    with an empty cache compiles every kernel variant the CUDA-graph capture needs (minutes on one
    H200); later starts load them from the cache, so it belongs on a persistent volume."""
    if not device.startswith("cuda"):
        return None
    path = kernel_cache_dir()
    entries = sum(1 for _ in path.iterdir()) if path.is_dir() else 0
    state = (f"{entries:,} cached kernels: start-up reuses them" if entries else
             "empty: this start compiles every kernel variant (slow once); keep the directory on a persistent "
             "volume (TRITON_CACHE_DIR) so restarts reuse it")
    return f"compiled-kernel cache {path}: {state}"
