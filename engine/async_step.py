"""Async scheduling (the overlapped loop): what a launched step carries until the host processes it.

With `EngineArgs.async_scheduling` the engine launches step N+1's forward before it looks at step
N's sampled tokens (engine/llm_engine.py `step()`, vLLM's execute / sample split):

    step() call k:   schedule N+1 ─► launch N+1's forward (decode inputs = step N's tokens, on device)
                     process N: wait for N's tokens only, append, advance grammars, detokenize,
                                stop checks, free finished sequences, outputs   (device: N+1 forward)
                     sample N+1: host state now complete (grammar masks, penalties, min_tokens,
                                 thinking budget); left on the device with a non-blocking copy

A sequence sampled in step N has one *pending* token (`Sequence.num_pending_tokens`) until N is
processed: the scheduler counts it, so the sequence decodes again in N+1 at the pending token's
position, and the runner takes that input id from step N's device tensor (`DeviceTokens`). A
sequence found finished while processing N is not sampled in N+1 (its forward row is wasted, its
cache was freed when it finished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .h2d import h2d
from .sampler import logprob_dicts

if TYPE_CHECKING:
    from .request_state import RequestState, SampleState
    from .sequence import Sequence


@dataclass
class DeviceTokens:
    """Input tokens still on the device: the LAST input token of chunk `chunk_idx[k]` of the step is
    `token_ids[k]` (the host's token list does not have it yet; the runner writes it on the device)."""

    chunk_idx: list[int]  # chunk indices in SchedulerOutput.chunks, ascending
    token_ids: torch.Tensor  # [len(chunk_idx)] int64 on the runner's device


@dataclass
class LaunchedStep:
    """A step whose model forward and sampling were launched; the host has not looked at its tokens."""

    rows: list[tuple[RequestState, SampleState]]  # one per sampled row, in row order
    token_ids: torch.Tensor | None  # [S] int64 on the device: the sampled tokens (next step's inputs)
    host_tokens: torch.Tensor | None  # [S] int64 on the CPU, filled by a non-blocking copy (CUDA)
    ready: object | None  # torch.cuda.Event recorded after the copies; None: the host tensors are ready
    num_logprobs: list[int | None] | None  # per row: top-k logprobs asked (None: none); None: no row asked
    host_logprobs: torch.Tensor | None  # the rows' sampler.logprob_pack on the CPU, copied like the tokens
    row_of: dict[Sequence, int] = field(default_factory=dict)  # sampled sequence -> its row

    @classmethod
    def start(cls, rows, token_ids: torch.Tensor | None, num_logprobs: list[int | None] | None = None,
              logprobs: torch.Tensor | None = None) -> "LaunchedStep":
        """Start the device -> host copies of the sampled tokens (and the sampler's logprob pack) right
        behind the sampler's kernels, so waiting for them later does not wait for anything launched
        afterwards."""
        host = host_lp = ready = None
        if token_ids is not None:
            if token_ids.device.type == "cuda":  # pinned staging buffers, non-blocking
                host_lp = logprobs.to("cpu", non_blocking=True) if logprobs is not None else None
                host = token_ids.to("cpu", non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(torch.cuda.current_stream(token_ids.device))
            else:
                host, host_lp = token_ids, logprobs
        row_of = {s.seq: j for j, (_, s) in enumerate(rows)}
        return cls(rows, token_ids, host, ready, num_logprobs, host_lp, row_of)

    def tokens(self) -> list[int]:
        """The sampled tokens on the host (waits for this step's sampling only)."""
        if self.host_tokens is None:
            return []
        if self.ready is not None:
            self.ready.synchronize()
        return self.host_tokens.tolist()

    def logprobs(self) -> list[dict[int, float] | None] | None:
        """Per row {token: logprob} (sampled token + top-k) or None, as SamplerOutput.logprobs() gives
        them; call after tokens()."""
        if self.num_logprobs is None:
            return None
        return logprob_dicts(self.host_logprobs.numpy(), self.num_logprobs)

    def device_tokens(self, chunks, device: torch.device) -> DeviceTokens | None:
        """Inputs of the next step that are this step's samples: chunks of sequences with a pending token."""
        idx, rows = [], []
        for i, c in enumerate(chunks):
            if c.seq.num_pending_tokens:
                idx.append(i)
                rows.append(self.row_of[c.seq])  # KeyError = a pending token of an older step: a bug
        if not idx:
            return None
        if rows == list(range(self.token_ids.shape[0])):  # every row, in order (steady decode)
            return DeviceTokens(idx, self.token_ids)
        src = h2d(torch.tensor(rows, dtype=torch.long), device)
        return DeviceTokens(idx, self.token_ids.index_select(0, src))
