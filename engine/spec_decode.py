"""MTP speculative decoding (issue 13): one engine step = verify forward + rejection sampling +
rollback + MTP drafting, synchronous (no overlapped loop, no CUDA graphs while it is on).

Per sequence that decodes with drafts d_1..d_k' (k' <= k, drafted by the previous step):

  1. verify: the pending token x_P and the drafts run as one chunk at positions P..P+k'; every row
     gives target logits. The state rows the draft positions P+1..P+k' write are saved first
     (kvcache/spec_rollback.py) and their blocks allocated.
  2. rejection sampling (engine/rejection_sampler.py) -> a accepted drafts + one target token.
  3. rollback: rows of positions P+a+1..P+k' are put back, blocks past the computed tokens are
     returned (`KVCacheManager.shrink`); `num_computed_tokens` advances by 1 + a.
  4. the emitted tokens are appended one by one through the engine's `_append` (detokenizer, stop
     strings, EOS, max_tokens: identical to appending them in separate steps).
  5. MTP catch-up: the MTP block (models/mtp.py) runs over every chunk's computed positions t with
     the main model's streams X_t and the next token x_{t+1} (its own window ring gets row t),
     then chains k-1 more single-token passes from its own output streams to draft the next
     step's k tokens; the ring rows the chain wrote are put back at once (they were guesses).

Prefill chunks (any chunking) run unchanged plus the catch-up. A decode chunk gets no drafts when
its prompt logprobs are wanted, when its slot's prefix-cache snapshot is saved after this forward
(the snapshot must not see drafts), or when no budget / block is left; it then decodes one token.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from kvcache.prefix_cache import apply_state_ops
from kvcache.spec_rollback import RowLog
from models.mtp import allocate_mtp_state, check_mtp, mtp_forward

from .h2d import h2d
from .outputs import OutputKind, RequestOutput
from .rejection_sampler import VerifyGroup, greedy_verify, plain_greedy, rejection_sample
from .sampler import SamplingMetadata, gather_logprobs
from .scheduler import SchedulerOutput
from .sequence import SequenceStatus
from .spec_decode_batch import MtpRow, make_batch, plan_verify
from .spec_decode_graph_step import graph_step

log = logging.getLogger("v4serve.spec_decode")


@dataclass
class SpecDecodeStats:
    """Counters with vLLM's meanings (vllm:spec_decode_*_total)."""

    num_drafts: int = 0  # verify rows that carried at least one draft token
    num_draft_tokens: int = 0  # draft tokens verified
    num_accepted_tokens: int = 0  # draft tokens accepted
    accepted_per_pos: list[int] = field(default_factory=list)  # [k]: accepted drafts at position j


class SpecDecoder:
    def __init__(self, engine, num_speculative_tokens: int):
        self.model = model = engine.model
        check_mtp(model)
        self.k = num_speculative_tokens
        self.kv = kv = engine.kv
        self.device = engine.device
        rows = kv.num_slots + (kv.pad_slot is not None)
        self.mtp_state = allocate_mtp_state(model.cfg, rows, engine.dtype, self.device, kv.kv_format)
        self.ratios = list(model.cfg.compress_ratios)
        self.valid_vocab = engine.runner.valid_vocab
        self.drafts: dict[str, tuple[int, list[int]]] = {}  # seq_id -> (pending position P, drafts for P+1..)
        self.mtp_pos: dict[str, int] = {}  # seq_id -> positions the MTP ring holds (catch-up ran up to)
        self.stats = SpecDecodeStats(accepted_per_pos=[0] * self.k)
        # test hook: (seq, P, drafts) -> drafts actually verified (forced acceptance / rejection)
        self.draft_hook: Callable | None = None
        self.max_num_seqs, self.max_model_len = engine.args.max_num_seqs, engine.max_model_len
        self.executor = engine.executor  # tensor parallel: workers mirror every model pass (spec_decode_tp.py)
        self.graphs = None  # engine/spec_decode_graphs.py: pure-decode steps as two CUDA graphs
        self.timer = None  # engine/spec_decode_timing.StepTimer: graph-step breakdown (bench/spec.py)
        if (self.device.type == "cuda" and not engine.args.enforce_eager and kv.pad_slot is not None
                and self.executor is None):
            try:
                self.enable_graphs()
            except Exception as e:  # noqa: BLE001 - speculation still works eagerly
                log.warning("speculative CUDA graphs unavailable, verify steps run eagerly: %s", e)
                self.graphs = None

    def enable_graphs(self, capture: bool | None = None, buckets: list[int] | None = None,
                      names: tuple[str, ...] | None = None) -> None:
        """Build (and on CUDA capture) the pure-decode graphs (capture=False: the same static buffers run
        eagerly, CPU tests; names: a subset of greedy / verify + draft, default all)."""
        from .spec_decode_graphs import SpecGraphs

        self.graphs = SpecGraphs(self.model, self.kv, self.mtp_state, self.device, k=self.k,
                                 max_num_seqs=self.max_num_seqs, max_model_len=self.max_model_len,
                                 valid_vocab=self.valid_vocab, capture=capture, buckets=buckets, names=names)
        try:  # every bucket's kernel variants compiled side by side first (engine/graph_warmup.py)
            from .graph_warmup import precompile_buckets

            precompile_buckets(self.graphs)
        except Exception as e:  # noqa: BLE001 - the capture below compiles them serially instead
            log.warning("speculative graphs: parallel pre-capture compile failed (%s); compiling serially", e)
        self.graphs.capture()

    def check_integrity(self, eng) -> None:
        """After a step: no sequence holds blocks for rejected draft positions (at most the blocks of its
        tokens, cached ones aside), and drafts are kept only for live sequences at their pending token."""
        kv = self.kv
        for seq in eng.scheduler.running:
            if kv.has(seq.seq_id):
                held = len(kv.block_table(seq.seq_id))
                need = kv.num_blocks_needed(max(seq.num_tokens, seq.num_computed_tokens))
                assert held <= max(need, kv._get(seq.seq_id).num_hashed), (
                    f"{seq.seq_id!r} holds {held} blocks for {seq.num_tokens} tokens (draft blocks not returned)")
            entry = self.drafts.get(seq.seq_id)
            assert entry is None or entry[0] <= seq.num_tokens - 1, f"stale drafts of {seq.seq_id!r}"
        live = set(eng.scheduler._seqs)
        assert set(self.drafts) <= live, f"drafts of finished sequences: {sorted(set(self.drafts) - live)}"

    # ---- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, eng, sched: SchedulerOutput) -> list[RequestOutput]:
        chunks = sched.chunks
        states = [eng.requests[c.seq.request_id] for c in chunks]
        want_prompt = [st.prompt_logprobs is not None and c.start < c.seq.num_prompt_tokens
                       and c.seq.sample_index == 0 for st, c in zip(states, chunks)]
        now = time.monotonic()
        for st in states:
            st.mark("first_scheduled", now)
        kv = self.kv
        ops = kv.take_state_ops()
        if self.graphs is not None and not ops:
            out = graph_step(self, eng, sched, states, want_prompt)
            if out is not None:
                return out
        drafts = self._take_drafts(eng, sched, want_prompt, {slot for slot, _, _ in ops.saves})
        plan = plan_verify(chunks, want_prompt, drafts)
        with self.executor.guard() if self.executor is not None else contextlib.nullcontext():
            return self._eager_step(eng, sched, states, want_prompt, drafts, plan, ops)

    def _eager_step(self, eng, sched, states, want_prompt, drafts, plan, ops) -> list[RequestOutput]:
        kv, chunks, ex = self.kv, sched.chunks, self.executor
        items = [(i, kv.slot(chunks[i].seq.seq_id), kv.block_table(chunks[i].seq.seq_id),
                  list(range(chunks[i].start + 1, chunks[i].start + 1 + len(d)))) for i, d in drafts.items()]
        row_log = RowLog()
        row_log.save_positions(kv.state.layers, self.ratios, kv.block_size, items)
        batch = make_batch(kv, self.device, plan.ids, plan.positions, plan.query_start, plan.context_lens,
                           plan.seq_ids, plan.logit_rows)
        if ex is not None:  # tensor parallel: the workers run the same verify (engine/spec_decode_tp.py)
            ex.send_step(self._host(plan.ids, plan.positions, plan.query_start, plan.context_lens, plan.seq_ids,
                                    plan.logit_rows, restores=ops.restores, saves=ops.saves, spec_streams=1,
                                    spec_save_items=items))

        def forward():
            return self.model(batch, kv.state, return_streams=True)

        if ops:
            hidden, streams = apply_state_ops(kv.state, kv.prefix.tensors, ops.restores, ops.saves, forward)
        else:
            hidden, streams = forward()
        logits = self.model.compute_logits(hidden) if hidden.shape[0] else None
        if logits is not None and self.valid_vocab < logits.shape[1]:
            logits[:, self.valid_vocab:] = float("-inf")
        eng._count_prompt_tokens(sched, states)
        eng._record_prompt_logprobs(states, {i: (chunks[i].start, logits[r:r + k]) for i, r, k in plan.prompt_rows})
        results = self._verify(eng, plan, states, chunks, logits)
        eng.scheduler.update_after_step(sched)
        reject_from = [0] * len(chunks)
        for i in drafts:
            reject_from[i] = chunks[i].start + 1 + results[i][0].num_accepted
        self._count(drafts, results)
        if ex is not None:
            ex.send_step(reject_from, kind="spec_restore")
        row_log.restore(reject_from)
        outputs = self._append(eng, states, chunks, results)
        self._draft(eng, plan, chunks, results, streams)
        return outputs

    def _count(self, drafts: dict[int, list[int]], results) -> None:
        st = self.stats
        for i, d in drafts.items():
            a = results[i][0].num_accepted
            st.num_drafts += 1
            st.num_draft_tokens += len(d)
            st.num_accepted_tokens += a
            for j in range(a):
                st.accepted_per_pos[j] += 1

    def _take_drafts(self, eng, sched: SchedulerOutput, want_prompt: list[bool], saving: set[int]
                     ) -> dict[int, list[int]]:
        """chunk index -> drafts to verify (blocks allocated for them; within the token budget). Slots in
        `saving` get a prefix-cache snapshot after this forward: they verify nothing (it must not see drafts)."""
        kv, out = self.kv, {}
        spare = eng.scheduler.config.max_num_batched_tokens - sched.num_batched_tokens
        bs = kv.block_size
        for i, c in enumerate(sched.chunks):
            seq = c.seq
            entry = self.drafts.get(seq.seq_id)
            if (entry is None or spare <= 0 or not c.sample or c.num_tokens != 1 or want_prompt[i]
                    or entry[0] != c.start or c.start != seq.num_tokens - 1):
                continue
            if saving and kv.slot(seq.seq_id) in saving:
                continue
            left = min(seq.max_tokens - seq.num_output_tokens, eng.max_model_len - seq.num_tokens)
            n = min(len(entry[1]), left - 1, spare)
            if n > 0 and not kv.allocate(seq.seq_id, c.start + 1 + n):
                n = min(n, len(kv.block_table(seq.seq_id)) * bs - c.start - 1)
            d = entry[1][:max(n, 0)]
            if self.draft_hook is not None and d:
                d = list(self.draft_hook(seq, c.start, d))[:len(d)]
            if d:
                out[i] = d
                spare -= len(d)
        return out

    def _verify(self, eng, plan, states, chunks, logits) -> dict[int, tuple]:
        """Rejection sampling of every sampling chunk -> chunk -> (VerifyResult, logprob dicts | None)."""
        if not plan.sample_rows:
            return {}
        groups, owner, rows = [], [], []
        for i, first in plan.sample_rows.items():
            c = chunks[i]
            d = plan.drafts.get(i, [])
            groups.append(VerifyGroup(len(rows), d, states[i].samples[c.seq.sample_index].generator))
            owner.append(i)
            rows += range(first, first + len(d) + 1)
        sample_logits = logits.index_select(0, h2d(torch.tensor(rows, dtype=torch.long), logits.device))
        if all(plain_greedy(states[i].params, chunks[i].seq) for i in owner):
            res = greedy_verify(sample_logits, groups)  # no logits processing: skip the metadata
        else:
            params, outs, prompts, guides = [], [], [], []
            for i in owner:  # row j sees the output extended by d_1..d_j (and a grammar cursor past them)
                st, c = states[i], chunks[i]
                d = plan.drafts.get(i, [])
                cursor = st.samples[c.seq.sample_index].guide
                for j in range(len(d) + 1):
                    if j and cursor is not None:
                        cursor = copy.copy(cursor)
                        cursor.advance(d[j - 1])
                    params.append(st.params)
                    outs.append(c.seq.output_token_ids + d[:j] if j else c.seq.output_token_ids)
                    prompts.append(c.seq.prompt_token_ids)
                    guides.append(cursor)
            meta = SamplingMetadata.build(params, outs, prompts, [None] * len(params), eng.tokenizer.eos_token_id,
                                          eng.model_config.vocab_size, logits.device, guides=guides)
            res = rejection_sample(eng.sampler.process(sample_logits, meta), meta, groups)
        want = [(i, r, states[i].params.logprobs) for i, r in zip(owner, res) if states[i].params.logprobs is not None]
        lps: dict[int, list] = {}
        if want:  # the target's raw logprobs of every emitted token, one gather for the step
            rows_lp = [row for _, r, _ in want for row in r.rows]
            toks = [t for _, r, _ in want for t in r.tokens]
            nums = [n for _, r, n in want for _ in r.tokens]
            dev = sample_logits.device
            raw = sample_logits.index_select(0, h2d(torch.tensor(rows_lp, dtype=torch.long), dev)).log_softmax(-1)
            flat = gather_logprobs(raw, h2d(torch.tensor(toks, dtype=torch.long), dev), nums)
            off = 0
            for i, r, _ in want:
                lps[i] = flat[off:off + len(r.tokens)]
                off += len(r.tokens)
        return {i: (r, lps.get(i)) for i, r in zip(owner, res)}

    def _append(self, eng, states, chunks, results) -> list[RequestOutput]:
        now = time.monotonic()
        changed = {}
        for i, (r, lps) in results.items():
            st, c = states[i], chunks[i]
            s = st.samples[c.seq.sample_index]
            seq = s.seq
            if seq.is_finished:
                continue
            st.mark("first_token", now)
            if seq.status is SequenceStatus.RUNNING and r.num_accepted:
                seq.num_computed_tokens += r.num_accepted  # the accepted draft positions are computed
            for j, tok in enumerate(r.tokens):
                if seq.is_finished:
                    break
                if lps is not None and s.logprobs is not None:
                    s.logprobs.append(lps[j])
                eng._append(st, s, tok)
            if not seq.is_finished and self.kv.has(seq.seq_id):
                self.kv.shrink(seq.seq_id, seq.num_tokens)
            changed[st.request_id] = st
        outputs = []
        for rid, st in changed.items():
            if st.finished:
                eng.requests.pop(rid, None)
                outputs.append(st.make_output())
            elif st.output_kind is not OutputKind.FINAL_ONLY:
                outputs.append(st.make_output())
        return outputs

    # ---- drafting --------------------------------------------------------------------------
    def _draft(self, eng, plan, chunks, results, streams) -> None:
        """MTP catch-up over every chunk's computed positions, then k-1 chained draft passes."""
        rows: list[MtpRow] = []
        for i, c in enumerate(chunks):
            seq = c.seq
            if seq.is_finished or seq.status is not SequenceStatus.RUNNING:
                self.drafts.pop(seq.seq_id, None)
                continue
            n = c.num_tokens + (results[i][0].num_accepted if i in results else 0)
            if c.start + n + 1 > seq.num_tokens:
                continue  # defensive: the next token is not known
            rows.append(MtpRow(seq.seq_id, c.start, plan.query_start[i], seq.tokens(c.start + 1, c.start + n + 1),
                               c.sample))
        live = {c.seq.seq_id for c in chunks}
        for table in (self.drafts, self.mtp_pos):
            for sid in [s for s in table if s not in live and s not in eng.scheduler._seqs]:
                del table[sid]
        if not rows:
            return
        kv, dev = self.kv, self.device
        ring = self.mtp_state["window"]
        zero = []  # a chunk the MTP ring did not follow up to (prefix-cache hit): its window rows -> 0, so
        for r in rows:  # drafts never depend on what the slot held before (deterministic seeded runs)
            if r.start > 0 and self.mtp_pos.get(r.seq_id) != r.start:
                slot, W = kv.slot(r.seq_id), ring.shape[1]
                zero += [(slot, p % W) for p in range(max(0, r.start - W + 1), r.start)]
            self.mtp_pos[r.seq_id] = r.start + len(r.next_ids)
        if zero:
            zt = h2d(torch.tensor(zero, dtype=torch.long), dev)
            ring[zt[:, 0], zt[:, 1]] = 0
        ids, pos, qs, cl, sids, flat, last = [], [], [0], [], [], [], []
        for r in rows:
            n = len(r.next_ids)
            ids += r.next_ids
            pos += range(r.start, r.start + n)
            flat += range(r.flat, r.flat + n)
            qs.append(len(ids))
            cl.append(r.start)
            sids.append(r.seq_id)
            if r.draft:
                last.append(len(ids) - 1)
        batch = make_batch(kv, dev, ids, pos, qs, cl, sids, last)
        ex = self.executor
        if ex is not None:
            ex.send_step(self._host(ids, pos, qs, cl, sids, last, flat=flat, zero_rows=zero), kind="spec_mtp")
        x = streams.index_select(0, h2d(torch.tensor(flat, dtype=torch.long), dev))
        x, hidden = mtp_forward(self.model, x, batch.input_ids, batch, self.mtp_state)
        drafting = [r for r in rows if r.draft]
        if not drafting:
            return
        tok = self._argmax(hidden)  # [S] on the device: the chain feeds it back without a host copy
        x = x[batch.logits_indices]
        pending = [r.start + len(r.next_ids) for r in drafting]  # P: the pending token's position
        out = [tok]
        if self.k > 1:
            row_log = RowLog()
            sd = [r.seq_id for r in drafting]
            items = [(b, kv.slot(s), [], list(range(p, p + self.k - 1))) for b, (s, p) in enumerate(zip(sd, pending))]
            row_log.save_positions([self.mtp_state], [0], kv.block_size, items)
            for j in range(1, self.k):
                host_ids = out[-1].tolist() if ex is not None else [0] * len(sd)  # TP: workers need the ids
                args = (host_ids, [p + j - 1 for p in pending], list(range(len(sd) + 1)),
                        [p + j - 1 for p in pending], sd, list(range(len(sd))))
                b = make_batch(kv, dev, *args)
                b.input_ids = out[-1]
                if ex is not None:
                    ex.send_step(self._host(*args, chain=1, save_items=items if j == 1 else None), kind="spec_mtp")
                x, hidden = mtp_forward(self.model, x, b.input_ids, b, self.mtp_state)
                out.append(self._argmax(hidden))
            if ex is not None:
                ex.send_step(len(sd), kind="spec_mtp_restore")
            row_log.restore([0] * len(sd))
        drafts = torch.stack(out, dim=1).tolist()  # one device -> host copy
        for r, p, d in zip(drafting, pending, drafts):
            self.drafts[r.seq_id] = (p, d)

    def _host(self, ids, pos, qs, cl, sids, rows, **extra) -> dict:
        """A batch description for the tensor-parallel workers (engine/spec_decode_tp.py)."""
        return dict(input_ids=ids, positions=pos, slot_ids=self.kv.slot_tensor(sids).numpy(),
                    block_tables=self.kv.block_table_tensor(sids).numpy(), logits_indices=rows, query_start=qs,
                    context_lens=cl, **extra)

    def _argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """Greedy drafts (tensor parallel: the gathered logits are on rank 0, where this runs)."""
        return self.model.compute_logits(hidden)[:, :self.valid_vocab].argmax(dim=-1)
