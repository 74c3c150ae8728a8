"""Model runner: turns the scheduler's chunks into one flat `ForwardBatch`, runs the model on the
cache-manager-owned state and returns logits only at the rows that need them.

Rows that need logits:
  * the last token of every chunk with `sample=True` (the next token is sampled from it);
  * every prompt position of chunks whose request asked for prompt logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvcache.manager import KVCacheManager
from models.model import DeepseekV4
from models.state import ForwardBatch

from .async_step import DeviceTokens
from .scheduler import SchedulerOutput


@dataclass
class RunnerOutput:
    sample_logits: torch.Tensor  # [S, V] fp32: one row per chunk with sample=True, in chunk order
    sample_chunk_idx: list[int]  # chunk index of each sample row
    # chunk index -> (first position p, logits [k, V] fp32 at positions p..p+k-1) for prompt logprobs
    prompt_logits: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    num_tokens: int = 0


class ModelRunner:
    def __init__(self, model: DeepseekV4, kv: KVCacheManager, device: torch.device, valid_vocab: int,
                 executor=None):
        self.model = model
        self.executor = executor  # engine.distributed.executor.TPExecutor (tensor parallel) or None
        self.kv = kv
        self.device = device
        self.vocab = model.cfg.vocab_size
        self.valid_vocab = min(valid_vocab, self.vocab)  # ids past the tokenizer are never sampled

    def build_batch(self, out: SchedulerOutput, want_prompt: list[bool],
                    device_tokens: DeviceTokens | None = None) -> tuple[ForwardBatch, list, list]:
        """-> (batch, sample rows [(chunk idx, flat row)], prompt rows [(chunk idx, first flat row, k)]).
        `device_tokens` (async scheduling): chunks whose last input token is only on the device."""
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
            if i in on_device:  # the host list lacks its last token (pending): written on the device below
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
        dev = self.device
        slot_ids, tables = self.kv.slot_tensor(seq_ids), self.kv.block_table_tensor(seq_ids)
        if self.executor is not None:  # the workers run the same forward on this description
            self.executor.send_step(dict(input_ids=ids, positions=positions, slot_ids=slot_ids.numpy(),
                                         block_tables=tables.numpy(), logits_indices=logit_rows,
                                         query_start=query_start, context_lens=context_lens))
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True),
            positions=torch.tensor(positions, dtype=torch.long).to(dev, non_blocking=True),
            slot_ids=slot_ids.to(dev),
            block_tables=tables.to(dev),
            logits_indices=torch.tensor(logit_rows, dtype=torch.long).to(dev, non_blocking=True),
            query_start=query_start,
            context_lens=context_lens,
        )
        if device_tokens is not None:
            last = torch.tensor([query_start[i + 1] - 1 for i in device_tokens.chunk_idx], dtype=torch.long)
            batch.input_ids.index_copy_(0, last.to(dev, non_blocking=True), device_tokens.token_ids)
        return batch, sample_rows, prompt_rows

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, want_prompt: list[bool],
                device_tokens: DeviceTokens | None = None) -> RunnerOutput:
        """`device_tokens`: async scheduling's inputs still on the device (engine/async_step.py)."""
        if self.executor is None:
            return self._execute(out, want_prompt, device_tokens)
        if device_tokens is not None:
            raise ValueError("tensor-parallel workers need every input id on the host (no async scheduling)")
        with self.executor.guard():  # a dead worker / failed collective -> EngineDeadError
            return self._execute(out, want_prompt)

    def _execute(self, out: SchedulerOutput, want_prompt: list[bool],
                 device_tokens: DeviceTokens | None = None) -> RunnerOutput:
        batch, sample_rows, prompt_rows = self.build_batch(out, want_prompt, device_tokens)
        if batch.logits_indices.numel() == 0:
            self.model(batch, self.kv.state)  # prefill chunk that samples nothing: only fills the cache
            return RunnerOutput(torch.empty(0, self.vocab), [], {}, batch.num_tokens)
        logits = self.model.compute_logits(self.model(batch, self.kv.state))
        sample_idx = torch.tensor([r for _, r in sample_rows], dtype=torch.long, device=logits.device)
        prompt = {i: (out.chunks[i].start, logits[r:r + k]) for i, r, k in prompt_rows}
        sample_logits = logits.index_select(0, sample_idx)
        if self.valid_vocab < self.vocab:
            sample_logits[:, self.valid_vocab:] = float("-inf")
        return RunnerOutput(sample_logits, [i for i, _ in sample_rows], prompt, batch.num_tokens)
