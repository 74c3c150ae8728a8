"""Offline API in the ecosystem's shape: `LLM(model_dir).generate(prompts, params)` and `.chat(...)`."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import torch

from .config import EngineArgs
from .llm_engine import LLMEngine
from .outputs import OutputKind, RequestOutput
from .sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str | torch.dtype = "auto",
                 max_num_seqs: int = 64, max_num_batched_tokens: int | None = None, max_model_len: int | None = None,
                 num_kv_blocks: int | None = None, kv_cache_memory: int | None = None, enforce_eager: bool = False,
                 enable_prefix_caching: bool = True, **kwargs: Any):
        fields = {f.name for f in dataclasses.fields(EngineArgs) if f.init}
        for k in kwargs:
            if k not in fields:
                raise TypeError(f"LLM() got an unexpected keyword argument {k!r}")
        # every field through the constructor: __post_init__ parses speculative_config
        args = EngineArgs(model=model, device=device, dtype=dtype, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                          num_kv_blocks=num_kv_blocks, kv_cache_memory=kv_cache_memory, enforce_eager=enforce_eager,
                          enable_prefix_caching=enable_prefix_caching, **kwargs)
        self.engine = LLMEngine(args)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: str | list[int] | Sequence[str | list[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. Prompts are strings or token-id lists."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if params is None:
            params = SamplingParams()
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        ids = [f"offline-{next(self._ids)}" for _ in prompts]
        added = []
        try:
            for rid, prompt, p in zip(ids, prompts, plist):
                self.engine.add_request(rid, prompt, p, output_kind=OutputKind.FINAL_ONLY)
                added.append(rid)
        except Exception:
            for rid in added:
                self.engine.abort_request(rid)
            raise
        results: dict[str, RequestOutput] = {}
        while len(results) < len(ids):
            for out in self.engine.step():  # FINAL_ONLY: finished outputs only
                results[out.request_id] = out
        return [results[r] for r in ids]

    def chat(self, messages: list[dict] | list[list[dict]], params: SamplingParams | None = None, *,
             reasoning_effort: str | None = None, thinking: dict | bool | None = None,
             tools: list[dict] | None = None) -> list[RequestOutput]:
        """Render conversations with the V4 chat format (same code as the HTTP server) and generate."""
        from chat.encoder import SpecialTokens, render_messages
        from chat.reasoning import resolve_reasoning

        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        rc = resolve_reasoning(reasoning_effort, thinking, None, None)
        # content never becomes a special token (Tokenizer.encode_segments)
        prompts = [self.tokenizer.encode_segments(render_messages(c, thinking=rc.thinking,
                                                                  reasoning_effort=rc.encoder_effort, tools=tools))
                   for c in convs]
        p = params or SamplingParams(max_tokens=256)
        budget = rc.budget_params(SpecialTokens.from_tokenizer(self.tokenizer).think_end_id)
        if budget:
            p = p.with_updates(**budget)
        return self.generate(prompts, p)
