"""CUDA graphs for pure-decode speculative steps: every sequence verifies exactly k drafts (q = k+1
tokens; a sequence with fewer real drafts pads with dummies the host never accepts).

Two graphs per batch bucket Bp (padding rows decode at positions 0..k in the cache manager's scratch
slot / block, like engine/cuda_graph.py):

  verify   stage -> ids/positions/slots/tables; save the rows positions P+1..P+k will write
           (StaticRowLog); main forward over Bp*q tokens with the streams kept; LM head on every row
  draft    stage2 -> next ids, accepted count a, reject bound P+a+1; restore the rejected rows; save the
           MTP ring rows of positions P..P+2k; MTP catch-up over all q rows (rows past a are garbage,
           causally invisible to rows <= a) and put back its ring rows past P+a; k-1 chained passes
           at P+a+j from row a's streams; put back the rows past P+a again; -> drafts [Bp, k]

Between them the host runs rejection sampling (engine/rejection_sampler.py, eager: per-request
generators) and learns a. On CPU (or capture=False) the same static-buffer bodies run eagerly, which is
how they are tested against the eager speculative path without a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from kvcache.spec_rollback import StaticRowLog
from models.mtp import mtp_forward
from models.state import AttnMeta, ForwardBatch

from .graph_buckets import BucketGraphs, pinned_int64

log = logging.getLogger("v4serve.spec_graphs")


def _meta_batch(ids, pos, pos32, ctx32, slots32, tables, qs, tok_seq, rows, bp, q, max_seq_len) -> ForwardBatch:
    qs_host = list(range(0, bp * q + 1, q))
    ctx_host = [0] * bp
    meta = AttnMeta(query_start=qs, context_lens=ctx32, slot_ids=slots32, block_tables=tables, tok_seq=tok_seq,
                    positions=pos32, query_start_host=qs_host, context_lens_host=ctx_host, max_query_len=q,
                    max_seq_len=max_seq_len)
    return ForwardBatch(input_ids=ids, positions=pos, slot_ids=slots32, block_tables=tables, logits_indices=rows,
                        query_start=qs_host, context_lens=ctx_host, meta=meta)


@dataclass
class _Bucket:
    size: int
    verify: ForwardBatch  # q tokens per sequence
    catchup: ForwardBatch  # same layout and meta, next ids, logits at row a
    chain: ForwardBatch  # 1 token per sequence
    graphs: dict = field(default_factory=dict)  # "verify" / "draft" -> CUDAGraph once captured
    out: dict = field(default_factory=dict)  # verify + draft graphs: logits, streams, saved, drafts
    gout: dict = field(default_factory=dict)  # the greedy graph's own: ..., result


class SpecGraphs(BucketGraphs):
    graph_names = ("verify", "draft", "greedy")

    def __init__(self, model, kv, mtp_state: dict, device: torch.device, *, k: int, max_num_seqs: int,
                 max_model_len: int, valid_vocab: int, capture: bool | None = None, buckets: list[int] | None = None,
                 names: tuple[str, ...] | None = None):
        if kv.pad_slot is None:
            raise ValueError("speculative CUDA graphs need the cache manager's padding row")
        if names is not None:  # capture only these (bench: "greedy"); the others' sections run eagerly
            if not names or set(names) - set(self.graph_names) or ("draft" in names) != ("verify" in names):
                raise ValueError(f"graph names must be 'greedy' and/or the pair 'verify', 'draft', got {names}")
            self.graph_names = tuple(n for n in type(self).graph_names if n in names)
        self.model, self.kv, self.mtp_state, self.k = model, kv, mtp_state, k
        self.q = q = k + 1
        self._init_buckets(device, max_num_seqs, capture, buckets)
        bmax = self.max_bs
        self.vocab, self.valid_vocab = model.cfg.vocab_size, valid_vocab
        self.max_seq_len = max_model_len + 2 * k
        self.width = max(1, -(-(max_model_len + k + 1) // kv.block_size))
        i64, i32 = dict(dtype=torch.int64, device=device), dict(dtype=torch.int32, device=device)
        nq = bmax * q
        self.stage = torch.zeros(2 * nq + bmax + bmax * self.width, **i64)
        self.stage2 = torch.zeros(nq + 2 * bmax, **i64)
        self.ids, self.pos, self.next_ids = (torch.zeros(nq, **i64) for _ in range(3))
        self.pos32 = torch.zeros(nq, **i32)
        self.ctx = torch.zeros(bmax, **i64)
        self.ctx32 = torch.zeros(bmax, **i32)
        self.slots = torch.full((bmax,), kv.pad_slot, **i64)
        self.slots32 = torch.full((bmax,), kv.pad_slot, **i32)
        self.tables = torch.full((bmax, self.width), -1, **i32)
        self.tables[:, 0] = kv.pad_block
        self.acc = torch.zeros(bmax, **i64)
        self.bound = torch.zeros(bmax, **i64)
        self.last = torch.zeros(bmax, **i64)
        self.c_ids = torch.zeros(bmax, **i64)
        self.c_pos = torch.zeros(bmax, **i64)
        self.c_pos32 = torch.zeros(bmax, **i32)
        self.qs = torch.arange(0, nq + 1, q, **i32)
        self.tok_seq = torch.arange(bmax, **i32).repeat_interleave(q)
        self.all_rows = torch.arange(nq, **i64)
        self.c_qs = torch.arange(bmax + 1, **i32)
        self.c_tok = torch.arange(bmax, **i32)
        self.c_rows = torch.arange(bmax, **i64)
        self.cols = torch.arange(q, **i64)
        cfg = model.cfg
        self.main_log = StaticRowLog(kv.state.layers, list(cfg.compress_ratios), kv.block_size, k)
        self.mtp_log = StaticRowLog([mtp_state], [0], kv.block_size, 2 * k + 1)
        self.buckets = {b: self._bucket(b) for b in self.sizes}
        self.num_steps = 0  # graph steps (verify or verify_greedy)
        self.num_greedy_steps = 0  # of which one-graph greedy steps

    def _bucket(self, bp: int) -> _Bucket:
        q, n = self.q, bp * self.q
        v = _meta_batch(self.ids[:n], self.pos[:n], self.pos32[:n], self.ctx32[:bp], self.slots32[:bp],
                        self.tables[:bp], self.qs[:bp + 1], self.tok_seq[:n], self.all_rows[:n], bp, q,
                        self.max_seq_len)
        c = ForwardBatch(input_ids=self.next_ids[:n], positions=self.pos[:n], slot_ids=self.slots32[:bp],
                         block_tables=self.tables[:bp], logits_indices=self.last[:bp], query_start=v.query_start,
                         context_lens=v.context_lens, meta=v.meta)
        ch = _meta_batch(self.c_ids[:bp], self.c_pos[:bp], self.c_pos32[:bp], self.c_pos32[:bp], self.slots32[:bp],
                         self.tables[:bp], self.c_qs[:bp + 1], self.c_tok[:bp], self.c_rows[:bp], bp, 1,
                         self.max_seq_len)
        return _Bucket(bp, v, c, ch)

    # ---- bodies (what the graphs run), as named sections (graph_buckets.py) --------------------
    def _sections(self, bk: _Bucket, name: str, out: dict):
        if name == "verify":
            return self._verify_sections(bk, out)
        if name == "draft":
            return self._draft_sections(bk, out)
        acc, res = self._greedy_sections(bk, out)
        return self._verify_sections(bk, out) + acc + self._draft_sections(bk, out)[1:] + res

    def captures(self, name: str) -> bool:
        """Graph `name` replays (or, capture off, its static-buffer body runs like a replay would)."""
        return name in self.graph_names

    def _out(self, bk: _Bucket, name: str) -> dict:
        return bk.gout if name == "greedy" else bk.out

    def _greedy_sections(self, bk: _Bucket, out: dict):
        """Greedy acceptance on the device (every row plain greedy: raw argmax, no logprobs): row j of a
        sequence accepts d_{j+1} while argmax_j == d_{j+1} (real drafts only: their count nd is staged in
        stage2's acc field); the accepted drafts equal the argmaxes, so the emitted tokens are argmax_0..a
        and the catch-up's next ids argmax_j (j <= a; rows past a repeat argmax_a, never used)."""
        bp, q, k = bk.size, self.q, self.k
        n = bp * q

        def accept():
            am = out["logits"].argmax(dim=-1).view(bp, q)
            nd = self.stage2[n:n + bp]
            match = (am[:, :k] == self.ids[:n].view(bp, q)[:, 1:]) & (self.cols[:k].view(1, k) < nd.view(bp, 1))
            a = match.long().cumprod(dim=1).sum(dim=1)
            self.acc[:bp].copy_(a)
            torch.add(self.ctx[:bp] + 1, a, out=self.bound[:bp])
            nxt = torch.where(self.cols.view(1, q) <= a.view(bp, 1), am, am.gather(1, a.view(bp, 1)))
            self.next_ids[:n].copy_(nxt.view(-1))
            out["am"] = am

        def result():
            out["result"] = torch.cat([out["am"].view(-1), self.acc[:bp], out["drafts"].view(-1)])

        return [("accept", accept)], [("result", result)]

    def _verify_sections(self, bk: _Bucket, out: dict):
        bp, q = bk.size, self.q
        n = bp * q
        st = self.stage

        def stage():
            self.ids[:n].copy_(st[0:n])
            self.pos[:n].copy_(st[n:2 * n])
            self.pos32[:n].copy_(st[n:2 * n])
            self.slots[:bp].copy_(st[2 * n:2 * n + bp])
            self.slots32[:bp].copy_(st[2 * n:2 * n + bp])
            self.ctx[:bp].copy_(self.pos[:n].view(bp, q)[:, 0])
            self.ctx32[:bp].copy_(self.ctx[:bp])

        def save():
            out["saved"] = self.main_log.save(self.slots[:bp], self.ctx[:bp] + 1, self.tables[:bp])

        def forward():
            out["hidden"], out["streams"] = self.model(bk.verify, self.kv.state, return_streams=True)

        def head():
            logits = self.model.compute_logits(out["hidden"])
            if self.valid_vocab < self.vocab:
                logits[:, self.valid_vocab:] = float("-inf")
            out["logits"] = logits

        return [("stage", stage), ("rowlog_save", save), ("forward", forward), ("lm_head", head)]

    def _draft_sections(self, bk: _Bucket, out: dict):
        bp, q, k = bk.size, self.q, self.k
        n = bp * q
        st2 = self.stage2

        def stage():
            self.next_ids[:n].copy_(st2[0:n])
            self.acc[:bp].copy_(st2[n:n + bp])
            self.bound[:bp].copy_(st2[n + bp:n + 2 * bp])

        def restore():
            self.main_log.restore(out["saved"], self.bound[:bp])

        def mtp_save():
            out["mtp_saved"] = self.mtp_log.save(self.slots[:bp], self.ctx[:bp], self.tables[:bp])
            torch.add(self.c_rows[:bp] * q, self.acc[:bp], out=self.last[:bp])
            out["keep_to"] = self.ctx[:bp] + self.acc[:bp] + 1

        def catchup():
            out["x"], out["mtp_hidden"] = mtp_forward(self.model, out["streams"], self.next_ids[:n], bk.catchup,
                                                      self.mtp_state)

        def catchup_head():
            out["tok"] = [self._argmax(out["mtp_hidden"])]
            out["h"] = out["x"].index_select(0, self.last[:bp])

        def mtp_restore():  # rows past P+a: the chain must read the old window there
            self.mtp_log.restore(out["mtp_saved"], out["keep_to"])

        def chain(j):
            def fn():
                self.c_ids[:bp].copy_(out["tok"][-1])
                torch.add(self.ctx[:bp] + j, self.acc[:bp], out=self.c_pos[:bp])
                self.c_pos32[:bp].copy_(self.c_pos[:bp])
                if not self.capture_enabled:  # host mirror for the torch twins (eager runs only)
                    bk.chain.context_lens[:] = self.c_pos[:bp].tolist()
                out["h"], out["mtp_hidden"] = mtp_forward(self.model, out["h"], self.c_ids[:bp], bk.chain,
                                                          self.mtp_state)
            return fn

        def chain_head():
            out["tok"].append(self._argmax(out["mtp_hidden"]))

        def finish():
            self.mtp_log.restore(out["mtp_saved"], out["keep_to"])
            out["drafts"] = torch.stack(out["tok"], dim=1)

        secs = [("stage", stage), ("rowlog_restore", restore), ("mtp_rowlog_save", mtp_save),
                ("mtp_catchup", catchup), ("mtp_head", catchup_head), ("mtp_rowlog_restore", mtp_restore)]
        for j in range(1, k):
            secs += [(f"mtp_chain{j}", chain(j)), (f"mtp_chain{j}_head", chain_head)]
        return secs + [("mtp_rowlog_restore2", finish)]

    def _argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)[:, :self.valid_vocab].argmax(dim=-1)

    # ---- capture / run -----------------------------------------------------------------------
    def capture(self) -> float:
        if not self.capture_enabled:
            return 0.0
        super().capture()
        log.info("captured %d speculative (k=%d) CUDA-graph pairs (batch buckets %s) in %.1fs", len(self.sizes),
                 self.k, self.sizes, self.capture_s)
        return self.capture_s

    def _fill_idle(self, bp: int, gen: torch.Generator | None = None) -> None:
        q = self.q
        ids = [] if gen is None else torch.randint(0, self.valid_vocab, (bp * q,), generator=gen).tolist()
        b = len(ids) // q
        self._fill(bp, ids, list(range(q)) * b, [self.kv.pad_slot] * b,
                   torch.full((b, 1), self.kv.pad_block, dtype=torch.int64))
        self._fill2(bp, ids, [0] * b, [1] * b)

    def _fill(self, bp: int, ids: list[int], positions: list[int], slots: list[int], tables: torch.Tensor) -> None:
        """ONE host -> device copy: ids [Bp*q], positions [Bp*q], slots [Bp], the B x width table rows.
        Padding sequences: token 0 at positions 0..k in the scratch slot."""
        q, n = self.q, len(ids)
        nq = bp * q
        b, w = tables.shape
        size = 2 * nq + bp + b * w
        host_t = pinned_int64(size, self.device)
        h = host_t.numpy()
        h[0:n], h[n:nq] = ids, 0
        h[nq:nq + n] = positions
        h[nq + n:2 * nq] = list(range(q)) * (bp - n // q)
        h[2 * nq:2 * nq + len(slots)], h[2 * nq + len(slots):2 * nq + bp] = slots, self.kv.pad_slot
        h[2 * nq + bp:size] = tables.reshape(-1).numpy()
        self.stage[:size].copy_(host_t, non_blocking=True)
        if b:
            self.tables[:b, :w].copy_(self.stage[2 * nq + bp:size].view(b, w))
            self.tables[:b, w:] = -1
        bk = self.buckets[bp]
        bk.verify.context_lens[:] = [positions[i * q] for i in range(b)] + [0] * (bp - b)

    def _fill2(self, bp: int, next_ids: list[int], acc: list[int], bound: list[int]) -> None:
        nq, n, b = bp * self.q, len(next_ids), len(acc)
        host_t = pinned_int64(nq + 2 * bp, self.device)
        h = host_t.numpy()
        h[0:n], h[n:nq] = next_ids, 0
        h[nq:nq + b], h[nq + b:nq + bp] = acc, 0
        h[nq + bp:nq + bp + b], h[nq + bp + b:nq + 2 * bp] = bound, 0
        self.stage2[:host_t.numel()].copy_(host_t, non_blocking=True)

    @torch.inference_mode()
    def verify(self, ids: list[int], positions: list[int], slots: list[int], tables: torch.Tensor) -> torch.Tensor:
        """B sequences x q tokens -> logits [B*q, V] (a view of the graph's buffer)."""
        b = len(slots)
        bp = self.bucket_for(b)
        bk = self.buckets[bp]
        self._fill(bp, ids, positions, slots, tables)
        self._run(bk, "verify")
        self._bp = bp
        self.num_steps += 1
        return bk.out["logits"][:b * self.q]

    @torch.inference_mode()
    @torch.inference_mode()
    def verify_greedy(self, ids: list[int], positions: list[int], slots: list[int], tables: torch.Tensor,
                      num_drafts: list[int], timer=None) -> tuple[list[list[int]], list[int], list[list[int]]]:
        """Verify + device-side greedy acceptance + drafting in one graph and ONE device -> host copy.
        -> (argmax rows [B][q], accepted drafts [B], next drafts [B][k])."""
        b, q, k = len(slots), self.q, self.k
        bp = self.bucket_for(b)
        bk = self.buckets[bp]
        self._fill(bp, ids, positions, slots, tables)
        self._fill2(bp, [], num_drafts, [0] * b)  # acc field = number of real drafts
        self._run(bk, "greedy")
        self.num_steps += 1
        self.num_greedy_steps += 1
        if timer is not None:
            timer.event("v1")
            timer.host("verify_fill")
        host = bk.gout["result"].tolist()
        am, acc, dr = host[:bp * q], host[bp * q:bp * q + b], host[bp * q + bp:]
        return [am[i * q:(i + 1) * q] for i in range(b)], acc, [dr[i * k:(i + 1) * k] for i in range(b)]

    @torch.inference_mode()
    def draft(self, next_ids: list[int], acc: list[int], first_pos: list[int], timer=None) -> list[list[int]]:
        """After `verify`: restore rejected rows, MTP catch-up + chain -> k drafts per sequence."""
        bp = self._bp
        bk = self.buckets[bp]
        b = len(acc)
        bound = [p + 1 + a for p, a in zip(first_pos, acc)]
        self._fill2(bp, next_ids, acc, bound)
        self._run(bk, "draft")
        if timer is not None:
            timer.event("d1")
            timer.host("draft_fill")
        return bk.out["drafts"][:b].tolist()
