"""Model runner: turns the scheduler's chunks into one flat `ForwardBatch`, runs the model on the
cache-manager-owned state and returns logits only at the rows that need them.

Rows that need logits:
  * the last token of every chunk with `sample=True` (the next token is sampled from it);
  * every prompt position of chunks whose request asked for prompt logprobs.

Pure-decode steps (every chunk one sampling token, batch <= the largest bucket) replay a CUDA graph
when `capture_graphs` ran (engine/cuda_graph.py); mixed and prefill steps run the eager forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvcache.manager import KVCacheManager
from kvcache.prefix_cache import StateOps, apply_state_ops
from models.model import DeepseekV4
from models.state import ForwardBatch

from .async_step import DeviceTokens
from .cuda_graph import is_decode_step
from .h2d import h2d
from .local_executor import LocalExecutor
from .scheduler import SchedulerOutput


@dataclass
class RunnerOutput:
    sample_logits: torch.Tensor  # [S, V] fp32: one row per chunk with sample=True, in chunk order
    sample_chunk_idx: list[int]  # chunk index of each sample row
    # chunk index -> (first position p, logits [k, V] fp32 at positions p..p+k-1) for prompt logprobs
    prompt_logits: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    num_tokens: int = 0


@dataclass
class HostBatch:
    """One step's flat batch on the host: what `build_batch` copies to the device and what the
    tensor-parallel workers receive (`worker_step`)."""

    input_ids: list[int]  # flat token ids, sequences end to end (0 where the token is on the device)
    positions: list[int]  # absolute position of each flat token
    slot_ids: torch.Tensor  # [B] int64 (CPU): state slot of each sequence
    block_tables: torch.Tensor  # [B, W] int64 (CPU), -1 padded
    logits_indices: list[int]  # flat rows whose logits are computed
    query_start: list[int]  # [B + 1] flat offsets of each sequence's chunk
    context_lens: list[int]  # [B] tokens already in the cache before each chunk
    sample_rows: list[tuple[int, int]]  # (chunk idx, logits row) of each chunk that samples
    prompt_rows: list[tuple[int, int, int]]  # (chunk idx, first logits row, k) of prompt-logprob chunks

    def worker_step(self, ops: StateOps) -> dict:
        """The description a tensor-parallel worker builds its ForwardBatch from (engine/distributed),
        with this step's prefix-cache snapshot restores / saves."""
        return dict(input_ids=self.input_ids, positions=self.positions, slot_ids=self.slot_ids.numpy(),
                    block_tables=self.block_tables.numpy(), logits_indices=self.logits_indices,
                    query_start=self.query_start, context_lens=self.context_lens,
                    restores=ops.restores, saves=ops.saves)


class ModelRunner:
    def __init__(self, model: DeepseekV4, kv: KVCacheManager, device: torch.device, valid_vocab: int,
                 executor=None):
        self.model = model
        # runs every eager step: LocalExecutor (one process, the default) or the tensor-parallel
        # engine.distributed.executor.TPExecutor
        self.executor = executor if executor is not None else LocalExecutor(model)
        self.kv = kv
        self.device = device
        self.vocab = model.cfg.vocab_size
        self.valid_vocab = min(valid_vocab, self.vocab)  # ids past the tokenizer are never sampled
        self.graphs = None  # engine.cuda_graph.DecodeGraphs once capture_graphs() ran
        self._state_ops = StateOps()  # this step's snapshot restores / saves (the TP workers get them too)
        self.num_graph_steps = 0  # decode steps served by the static-buffer (graph) path

    def capture_graphs(self, max_num_seqs: int, max_model_len: int, capture: bool | None = None,
                       buckets: list[int] | None = None) -> float:
        """Build the static decode buffers and capture one CUDA graph per batch bucket (capture=False:
        the same padded static-buffer path runs eagerly, as on CPU). -> capture seconds."""
        from .cuda_graph import DecodeGraphs
        from .graph_warmup import precompile_buckets

        if self.executor.multi_process:
            raise ValueError("CUDA-graph decode is single-process only (tensor parallel runs eager)")
        self.graphs = DecodeGraphs(self.model, self.kv, self.device, max_num_seqs=max_num_seqs,
                                   max_model_len=max_model_len, valid_vocab=self.valid_vocab, capture=capture,
                                   buckets=buckets)
        precompile_s = precompile_buckets(self.graphs)  # kernel variants of all buckets, compiled side by side
        with torch.inference_mode():
            return precompile_s + self.graphs.capture()

    def host_batch(self, out: SchedulerOutput, want_prompt: list[bool],
                   device_tokens: DeviceTokens | None = None) -> HostBatch:
        """The flat batch of one scheduled step, on the host. `device_tokens` (async scheduling): chunks
        whose last input token is only on the device (a 0 stands in for it here)."""
        on_device = set(device_tokens.chunk_idx) if device_tokens is not None else ()
        ids: list[int] = []
        positions: list[int] = []
        query_start = [0]
        context_lens: list[int] = []
        seq_ids: list[str] = []
        sample_rows, prompt_rows, logit_rows = [], [], []
        for i, c in enumerate(out.chunks):
            seq = c.seq
            base = len(ids)
            ids.extend(seq.tokens(c.start, c.start + c.num_tokens))
            if i in on_device:  # the host list lacks its last token (pending): written on the device later
                ids.append(0)
            positions.extend(range(c.start, c.start + c.num_tokens))
            query_start.append(len(ids))
            context_lens.append(c.start)
            seq_ids.append(seq.seq_id)
            if want_prompt[i]:
                # positions p in [start, prompt_len-1) predict prompt token p+1
                k = min(c.start + c.num_tokens, seq.num_prompt_tokens - 1) - c.start
                if k > 0:
                    prompt_rows.append((i, len(logit_rows), k))
                    logit_rows.extend(range(base, base + k))
            if c.sample:
                sample_rows.append((i, len(logit_rows)))
                logit_rows.append(len(ids) - 1)
        return HostBatch(ids, positions, self.kv.slot_tensor(seq_ids), self.kv.block_table_tensor(seq_ids),
                         logit_rows, query_start, context_lens, sample_rows, prompt_rows)

    def build_batch(self, out: SchedulerOutput, want_prompt: list[bool],
                    device_tokens: DeviceTokens | None = None) -> tuple[ForwardBatch, HostBatch]:
        """-> (the step's ForwardBatch on the device, its host description). No side effect: running it
        is the executor's (`_execute`)."""
        host = self.host_batch(out, want_prompt, device_tokens)
        batch = ForwardBatch(
            input_ids=self._h2d(torch.tensor(host.input_ids, dtype=torch.long)),
            positions=self._h2d(torch.tensor(host.positions, dtype=torch.long)),
            slot_ids=self._h2d(host.slot_ids),
            block_tables=self._h2d(host.block_tables),
            logits_indices=self._h2d(torch.tensor(host.logits_indices, dtype=torch.long)),
            query_start=host.query_start,
            context_lens=host.context_lens,
        )
        if device_tokens is not None:
            last = torch.tensor([host.query_start[i + 1] - 1 for i in device_tokens.chunk_idx], dtype=torch.long)
            batch.input_ids.index_copy_(0, self._h2d(last), device_tokens.token_ids)
        return batch, host

    def _h2d(self, t: torch.Tensor) -> torch.Tensor:
        """Host -> device without waiting for the step in flight: pinned staging (cached by torch's host
        allocator until the copy ran), then a non-blocking copy."""
        return h2d(t, self.device)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, want_prompt: list[bool],
                device_tokens: DeviceTokens | None = None) -> RunnerOutput:
        """`device_tokens`: async scheduling's inputs still on the device (engine/async_step.py)."""
        # prefix caching: slot snapshots restored before this forward / saved after it (kvcache/snapshots.py)
        self._state_ops = ops = self.kv.take_state_ops()
        if device_tokens is not None and self.executor.multi_process:
            raise ValueError("tensor-parallel workers need every input id on the host (no async scheduling)")
        with self.executor.guard():  # tensor parallel: a dead worker / failed collective -> EngineDeadError
            return self._around(ops, lambda: self._execute(out, want_prompt, device_tokens))

    def _around(self, ops, forward):
        if not ops:
            return forward()
        return apply_state_ops(self.kv.state, self.kv.prefix.tensors, ops.restores, ops.saves, forward)

    def _execute(self, out: SchedulerOutput, want_prompt: list[bool],
                 device_tokens: DeviceTokens | None = None) -> RunnerOutput:
        g = self.graphs
        if g is not None and len(out.chunks) <= g.max_bs and is_decode_step(out.chunks, want_prompt):
            return self._execute_graph(out, device_tokens)
        batch, host = self.build_batch(out, want_prompt, device_tokens)
        hidden = self.executor.forward(batch, self.kv.state, host, self._state_ops)
        sample_rows, prompt_rows = host.sample_rows, host.prompt_rows
        if batch.logits_indices.numel() == 0:  # prefill chunk that samples nothing: only fills the cache
            return RunnerOutput(torch.empty(0, self.vocab), [], {}, batch.num_tokens)
        logits = self.model.compute_logits(hidden)
        sample_idx = self._h2d(torch.tensor([r for _, r in sample_rows], dtype=torch.long))  # no stream sync
        prompt = {i: (out.chunks[i].start, logits[r:r + k]) for i, r, k in prompt_rows}
        sample_logits = logits.index_select(0, sample_idx)
        if self.valid_vocab < self.vocab:
            sample_logits[:, self.valid_vocab:] = float("-inf")
        return RunnerOutput(sample_logits, [i for i, _ in sample_rows], prompt, batch.num_tokens)

    def _execute_graph(self, out: SchedulerOutput, device_tokens: DeviceTokens | None = None) -> RunnerOutput:
        """Pure decode through the static buffers (graph replay on CUDA). `sample_logits` is a view of
        the graph's output buffer: valid until the next execute()."""
        seq_ids = [c.seq.seq_id for c in out.chunks]
        on_device = set(device_tokens.chunk_idx) if device_tokens is not None else ()
        ids = [0 if i in on_device else c.seq.token_at(c.start) for i, c in enumerate(out.chunks)]
        positions = [c.start for c in out.chunks]
        slots = [self.kv.slot(s) for s in seq_ids]
        logits = self.graphs.run(ids, positions, slots, self.kv.block_table_tensor(seq_ids), device_tokens)
        self.num_graph_steps += 1
        n = len(ids)
        return RunnerOutput(logits, list(range(n)), {}, n)
