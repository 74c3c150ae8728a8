"""A pure-decode speculative step through the CUDA graphs of engine/spec_decode_graphs.py.

Taken when every scheduled chunk is a one-token decode with drafts ready, no prompt logprobs, no
prefix-cache slot-state snapshot / restore in this step (the caller checks), the token budget holds
B x (k+1) and blocks for k more positions are free; otherwise the eager speculative step runs
(engine/spec_decode.py). Sequences with fewer than k real drafts (near max_tokens / max_model_len) pad
with dummy drafts that are never offered to the rejection sampler; their positions are rolled back like
rejected ones. Every row plain greedy without logprobs: the one greedy graph (acceptance on the device);
otherwise the verify graph, host rejection sampling, the draft graph.
"""

from __future__ import annotations

from .scheduler import SchedulerOutput
from .sequence import SequenceStatus
from .rejection_sampler import VerifyResult, plain_greedy
from .spec_decode_batch import VerifyPlan


def graph_step(spec, eng, sched: SchedulerOutput, states, want_prompt: list[bool]):
    """-> outputs, or None (nothing done but block allocations, which the eager step's shrink undoes)."""
    g, kv, k = spec.graphs, spec.kv, spec.k
    if spec.timer is not None:
        spec.timer.begin()
    chunks = sched.chunks
    if g is None or g.k != k or len(chunks) > g.max_bs:
        return None
    if eng.scheduler.config.max_num_batched_tokens - sched.num_batched_tokens < len(chunks) * k:
        return None
    ready = []
    for i, c in enumerate(chunks):
        seq = c.seq
        entry = spec.drafts.get(seq.seq_id)
        if (entry is None or not c.sample or c.num_tokens != 1 or want_prompt[i] or entry[0] != c.start
                or c.start != seq.num_tokens - 1):
            return None
        ready.append(entry[1])
    for c in chunks:
        if not kv.allocate(c.seq.seq_id, c.start + 1 + k):
            return None
    drafts: dict[int, list[int]] = {}
    ids, pos, slots = [], [], []
    for i, c in enumerate(chunks):
        seq = c.seq
        left = min(seq.max_tokens - seq.num_output_tokens, eng.max_model_len - seq.num_tokens)
        d = ready[i][:max(0, min(k, left - 1))]
        if spec.draft_hook is not None and d:
            d = list(spec.draft_hook(seq, c.start, d))[:len(d)]
        if d:
            drafts[i] = d
        ids += [seq.token_at(c.start)] + d + [0] * (k - len(d))
        pos += range(c.start, c.start + k + 1)
        slots.append(kv.slot(seq.seq_id))
    tm = spec.timer  # engine/spec_decode_timing.py (bench only)
    tables = kv.block_table_tensor([c.seq.seq_id for c in chunks])
    if tm is not None:
        tm.host("plan")
        tm.event("v0")
    if g.captures("greedy") and all(plain_greedy(st.params, c.seq) and st.params.logprobs is None
                                    for st, c in zip(states, chunks)):
        # greedy acceptance on the device: verify + accept + draft in one graph, one device -> host copy
        am, acc, new = g.verify_greedy(ids, pos, slots, tables, [len(drafts.get(i, ())) for i in range(len(chunks))],
                                       timer=tm)
        results = {i: (VerifyResult(am[i][:a + 1], list(range(i * (k + 1), i * (k + 1) + a + 1)), a), None)
                   for i, a in enumerate(acc)}
        spec._count(drafts, results)
        if tm is not None:
            tm.host("draft_wait")
        return _finish(spec, eng, sched, states, chunks, results, acc, new)
    logits = g.verify(ids, pos, slots, tables)
    if tm is not None:
        tm.event("v1")
        tm.host("verify_fill")
    plan = VerifyPlan(drafts=drafts)
    plan.sample_rows = {i: i * (k + 1) for i in range(len(chunks))}
    results = spec._verify(eng, plan, states, chunks, logits)
    if tm is not None:
        tm.host("rejection")
    spec._count(drafts, results)
    acc, next_ids = [], []
    for i in range(len(chunks)):
        r = results[i][0]
        a = r.num_accepted
        nxt = drafts.get(i, [])[:a] + [r.tokens[-1]]
        next_ids += nxt + [nxt[-1]] * (k + 1 - len(nxt))
        acc.append(a)
    if tm is not None:
        tm.event("d0")
    new = g.draft(next_ids, acc, [c.start for c in chunks], timer=tm)
    if tm is not None:
        tm.host("draft_wait")
    return _finish(spec, eng, sched, states, chunks, results, acc, new)


def _finish(spec, eng, sched, states, chunks, results, acc, new):
    """Scheduler update, emitted tokens appended, next drafts kept."""
    tm = spec.timer
    eng.scheduler.update_after_step(sched)
    outputs = spec._append(eng, states, chunks, results)
    for i, c in enumerate(chunks):
        seq = c.seq
        if seq.is_finished or seq.status is not SequenceStatus.RUNNING:
            spec.drafts.pop(seq.seq_id, None)
        else:
            spec.drafts[seq.seq_id] = (c.start + 1 + acc[i], new[i])
            spec.mtp_pos[seq.seq_id] = c.start + 1 + acc[i]
    if tm is not None:
        tm.end()
    return outputs
