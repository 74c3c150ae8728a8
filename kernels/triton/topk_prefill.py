"""Exact top-k of many long indexer rows (long-prompt prefill): sample, filter, select in registers.

indexer._topk_kernel streams a long row five times (four 8-bit radix histogram passes, one compaction);
at 1M context that was 17.4 s of a prompt on an H200 (a profile; what limits the kernel was not measured).
Here a long row is read about once, in three launches:

  sample    grid (rows,): SAMPLE entries of the row in registers, SAMPLE/SEG runs of SEG contiguous
            entries (one 32-byte sector for SEG 8) spread evenly over [0, limit), so a trend along the row
            (recent entries scoring higher) does not bias it. Radix select (the same four 8-bit levels) of
            the sample's R-th largest ordered key T_sub, R = min(K, ceil(r^2)) with
            r = (Z + sqrt(Z^2 + 4 K SAMPLE / limit)) / 2: the number of row entries at or above T_sub is
            about R limit / SAMPLE with a relative spread 1/sqrt(R), and this R puts K at Z spreads below
            it (~2K candidates at K 512 and 256K entries). Rows of <= SAMPLE entries are finished here
            (one exact select in registers, indexer's IN_REG path); rows of <= K list 0..limit-1, -1.
  filter +  grid (G,), program p takes rows p, p + G, ...: stream the row once, compacting every entry with
  select    key >= T_sub (id, score) into the program's scratch row in index order (tl.cumsum + a running
            count that goes on past CAP); if K <= count <= CAP, radix select of the exact K-th key T among
            the candidates in registers, then the entries with key > T and the lowest-index ties == T,
            in the slots _topk_kernel gives them.
  fallback  grid (rows,): rows whose count was < K or > CAP (ties, a sample the distribution fooled) run
            _topk_kernel's streaming passes over the whole row (exact); every other program exits at once.

Why it is exact: if at least K entries of the row have key >= T_sub, the row's K-th largest key T is
>= T_sub, so every entry with key >= T (the top K and every tie at T) is a candidate, and candidates keep
index order; selecting among them yields the same T, the same entries above it and the same lowest-index
ties, in the same slots as _topk_kernel (entries > T in index order, then the ties). The count check makes
this independent of how good the sample was (with R = K it always holds: the K-th largest of a subset is
<= the K-th largest of the row); a row that fails it goes to the fallback.

Three launches rather than one persistent kernel: with the sample select and the fallback's passes in the
same row loop as filter + select, ptxas spilled ~200 bytes a thread at 16 warps (128 registers); apart, no
kernel spills (tests/kernels/test_topk_prefill_compile.py). Scratch is [G, CAP] int32 + fp32 with
G = min(rows, PROGRAMS_PER_SM x SMs), bounded whatever the tile; each program writes and reads back its own
row (tl.debug_barrier orders the warps). No host syncs: the launches are CUDA-graph safe.

Measured (H200, 2048 rows of a prefill chunk, k 512; bench `topk_prefill`, 2026-12-02), this three-launch
form against the streaming kernel: 2172 -> 1189 us at 32K entries, 9846 -> 2743 us at 131K, 19763 -> 4765 us
at 262K (1.8x / 3.6x / 4.1x; randn and ramp rows, outputs identical, no fallback rows); the 1M-token prompt
77.2 -> 58.0 s. (An earlier one-kernel form: 1.6x / 3.0x / 3.6x.)
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import emit_topk, ordered_key, radix_kth, stream_topk
from .device_info import num_sms

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Interpreter sizes are tiny so that the CPU tests exercise every stage on rows of a few hundred entries.
SAMPLE = 256 if INTERPRET else int(os.environ.get("V4_TOPK_PF_SAMPLE", 8192))  # sampled entries (registers)
SEG = 8  # contiguous entries per sampled run (8 fp32 = one 32-byte sector)
CAP = 256 if INTERPRET else int(os.environ.get("V4_TOPK_PF_CAP", 4096))  # candidates selected in registers
BLOCK = 64 if INTERPRET else int(os.environ.get("V4_TOPK_PF_BLOCK", 4096))  # streamed entries per step
WARPS = 4 if INTERPRET else int(os.environ.get("V4_TOPK_PF_WARPS", 16))  # sample and filter + select kernels
FALLBACK_WARPS = 4 if INTERPRET else 8  # the streaming passes, as indexer.topk_rows runs them
PROGRAMS_PER_SM = int(os.environ.get("V4_TOPK_PF_PER_SM", 1))  # 16 warps x 128 registers: one CTA per SM
# the filter's slots from an atomic counter instead of a block-wide scan (the candidates then sorted by id in
# the select): on (one H200, session 10: bench topk_prefill 2,727 -> 2,124 us at 131,072 entries a row and
# 4,752 -> 3,337 us at 262,144, exact; the 1M-token prompt 31,091 -> 32,105 tok/s); V4_TOPK_PF_ATOMIC=0: the scan
ATOMIC = os.environ.get("V4_TOPK_PF_ATOMIC", "1") == "1"
SAMPLE_Z = 6.0  # spreads between K and the expected candidate count (see the docstring)
# use_prefill: rows this variant is meant for (set by design, not swept: bench `topk_prefill` measured 2,048-row tiles)
PREFILL_MIN_ROWS = 132  # fewer long rows go to topk_long's split (one row per SM is not enough work)
PREFILL_MIN_ECAP = 8192  # shorter rows fit indexer's in-register kernel (REG_TOPK_MAX)


@triton.jit
def _sample_threshold(srow, limit, K: tl.constexpr, SAMPLE: tl.constexpr, SEG: tl.constexpr, Z: tl.constexpr):
    """Ordered key of the rank-R largest of the row's sample (limit > SAMPLE). Run j of SEG entries starts
    at floor(j * limit / runs) rounded down to a multiple of SEG: runs are >= SEG apart since
    limit > SAMPLE, so the SAMPLE entries are distinct and below limit."""
    RUNS: tl.constexpr = SAMPLE // SEG
    soffs = tl.arange(0, SAMPLE)
    seg = soffs // SEG
    # floor(j * limit / runs) in int32 without overflow (a 64-bit division spilled registers)
    start = (seg * (limit // RUNS) + seg * (limit % RUNS) // RUNS) // SEG * SEG
    skey = ordered_key(tl.load(srow + start + soffs % SEG))
    root = 0.5 * (Z + tl.sqrt(Z * Z + (4.0 * K * SAMPLE) / limit.to(tl.float32)))
    rank = tl.minimum(tl.ceil(root * root).to(tl.int32), K)
    t_sub, _unused = radix_kth(skey, soffs < SAMPLE, rank)
    return t_sub


@triton.jit
def _filter(srow, limit, t_sub, cid, cval, CAP: tl.constexpr, BLOCK: tl.constexpr):
    """Compact every entry with key >= t_sub (id, score) into cid/cval in index order (the first CAP of
    them) -> how many there are (counting on past CAP)."""
    offs = tl.arange(0, BLOCK)
    count = tl.zeros([], tl.int32)
    for e0 in range(0, limit, BLOCK):
        e = e0 + offs
        ok = e < limit
        x = tl.load(srow + e, mask=ok, other=0.0)
        hit = (ok & (ordered_key(x) >= t_sub)).to(tl.int32)
        slot = count + tl.cumsum(hit, 0) - 1
        keep = (hit != 0) & (slot < CAP)
        tl.store(cid + slot, e, mask=keep)
        tl.store(cval + slot, x, mask=keep)
        count += tl.sum(hit, 0)
    return count


@triton.jit
def _filter_atomic(srow, limit, t_sub, cid, cval, cnt, CAP: tl.constexpr, BLOCK: tl.constexpr):
    """_filter without the block-wide scan: each candidate takes its slot from an atomic counter (`cnt`, this
    program's, zeroed here), so the first CAP candidates land in arbitrary order (_select_candidates sorts them
    by id) -> how many there are (counting on past CAP)."""
    offs = tl.arange(0, BLOCK)
    tl.atomic_xchg(cnt, 0)
    tl.debug_barrier()  # the zero is in place before any warp adds to it
    one = tl.full([BLOCK], 1, tl.int32)
    ptrs = cnt + tl.zeros([BLOCK], tl.int32)
    for e0 in range(0, limit, BLOCK):
        e = e0 + offs
        ok = e < limit
        x = tl.load(srow + e, mask=ok, other=0.0)
        hit = ok & (ordered_key(x) >= t_sub)
        slot = tl.atomic_add(ptrs, one, mask=hit, sem="relaxed")
        keep = hit & (slot < CAP)
        tl.store(cid + slot, e, mask=keep)
        tl.store(cval + slot, x, mask=keep)
    tl.debug_barrier()  # every warp's adds are done
    return tl.atomic_add(cnt, 0)  # read at L2, where the adds went


@triton.jit
def _select_candidates(cid, cval, count, orow, K: tl.constexpr, CAP: tl.constexpr, UNORDERED: tl.constexpr):
    """The top-K of the count (K <= count <= CAP) candidates in cid/cval -> orow, as _topk_kernel orders them;
    -> whether it wrote the row. UNORDERED (the atomic filter's candidates, in any order): the entries with key
    >= T are compacted into cid as words (id, or id + 2^30 for a tie == T) and sorted (CAP/4 of them at most:
    sorts of CAP and CAP/2 spilled registers at 16 warps); the first K words are _topk_kernel's row. More than
    CAP/4 at or above T (ties at T beyond CAP/4 - K, or K > CAP/4) -> not written (the caller sends the row to
    the fallback)."""
    coffs = tl.arange(0, CAP)
    okc = coffs < count
    ids = tl.load(cid + coffs, mask=okc, other=0, cache_modifier=".cg")
    key = ordered_key(tl.load(cval + coffs, mask=okc, other=0.0, cache_modifier=".cg"))
    thr, need = radix_kth(key, okc, tl.full([], K, tl.int32))
    if UNORDERED:
        SORT: tl.constexpr = CAP // 4
        sel = okc & (key >= thr)
        n_sel = tl.sum(sel.to(tl.int32), 0)
        done = n_sel <= SORT
        if done:
            slot = tl.cumsum(sel.to(tl.int32), 0) - 1
            tl.debug_barrier()  # every warp has its candidates in registers before cid is overwritten
            tl.store(cid + slot, tl.where(key > thr, ids, ids + (1 << 30)), mask=sel)
            tl.debug_barrier()
            soffs = tl.arange(0, SORT)
            word = tl.load(cid + soffs, mask=soffs < n_sel, other=0x7FFFFFFF, cache_modifier=".cg")
            word = tl.sort(word, 0)  # ids above T ascending, then the ties ascending, then the empty slots
            tl.store(orow + soffs, word & ((1 << 30) - 1), mask=soffs < K)
    else:
        emit_topk(ids, key, okc, thr, need, orow, K)
        done = tl.full([], 1, tl.int1)
    return done


@triton.jit
def _select_row(srow, limit, orow, K: tl.constexpr, SAMPLE: tl.constexpr):
    """K < limit <= SAMPLE: the whole row in registers, one exact select (indexer's IN_REG path)."""
    soffs = tl.arange(0, SAMPLE)
    ok = soffs < limit
    key = ordered_key(tl.load(srow + soffs, mask=ok, other=0.0))
    thr, need = radix_kth(key, ok, tl.full([], K, tl.int32))
    emit_topk(soffs, key, ok, thr, need, orow, K)


@triton.jit
def _row(pos_ptr, row0, r, RATIO: tl.constexpr):
    """-> (token t, eligible entries limit) of tile row r."""
    t = row0 + r
    return t, ((tl.load(pos_ptr + t) + 1) // RATIO).to(tl.int32)


@triton.jit(do_not_specialize=["row0", "score_stride", "out_stride"], do_not_specialize_on_alignment=["pos_ptr"])
def _sample_kernel(scores_ptr, pos_ptr, out_ptr, thr_ptr, count_ptr, row0, score_stride, out_stride,
                   K: tl.constexpr, RATIO: tl.constexpr, SAMPLE: tl.constexpr, SEG: tl.constexpr,
                   BLOCK: tl.constexpr, Z: tl.constexpr):
    """Program r: a row of <= SAMPLE entries is finished (count[r] = limit); a longer one gets thr[r] = T_sub."""
    r = tl.program_id(0)
    t, limit = _row(pos_ptr, row0, r, RATIO)
    orow = out_ptr + t.to(tl.int64) * out_stride
    srow = scores_ptr + r.to(tl.int64) * score_stride
    if limit <= K:
        for k0 in range(0, K, BLOCK):
            kk = k0 + tl.arange(0, BLOCK)
            tl.store(orow + kk, tl.where(kk < limit, kk, -1), mask=kk < K)
    elif limit <= SAMPLE:
        _select_row(srow, limit, orow, K, SAMPLE)
    else:
        t_sub = _sample_threshold(srow, limit, K, SAMPLE, SEG, Z)
        tl.store(thr_ptr + r, t_sub.to(tl.int32, bitcast=True))
    if limit <= SAMPLE:
        tl.store(count_ptr + r, limit)


@triton.jit(do_not_specialize=["row0", "n_rows", "score_stride", "out_stride"],
            do_not_specialize_on_alignment=["pos_ptr"])
def _filter_select_kernel(scores_ptr, pos_ptr, out_ptr, thr_ptr, count_ptr, cid_ptr, cval_ptr, cnt_ptr, row0,
                          n_rows, score_stride, out_stride, K: tl.constexpr, RATIO: tl.constexpr,
                          SAMPLE: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr, ATOMIC: tl.constexpr):
    """Program p: the rows p, p + G, ... longer than SAMPLE, through scratch row p (ATOMIC: slots from the
    counter cnt[p] instead of a scan); count[r] = candidates."""
    pid = tl.program_id(0)
    cid = cid_ptr + pid.to(tl.int64) * CAP
    cval = cval_ptr + pid.to(tl.int64) * CAP
    n_prog = tl.num_programs(0)
    for i in range(0, tl.cdiv(n_rows - pid, n_prog)):
        r = pid + i * n_prog  # (a tensor, also under the interpreter)
        t, limit = _row(pos_ptr, row0, r, RATIO)
        if limit > SAMPLE:
            srow = scores_ptr + r.to(tl.int64) * score_stride
            t_sub = tl.load(thr_ptr + r).to(tl.uint32, bitcast=True)
            tl.debug_barrier()  # every warp has read the previous row's candidates before they are overwritten
            if ATOMIC:
                count = _filter_atomic(srow, limit, t_sub, cid, cval, cnt_ptr + pid, CAP, BLOCK)
            else:
                count = _filter(srow, limit, t_sub, cid, cval, CAP, BLOCK)
            tl.debug_barrier()  # every warp's candidates are written before any warp reads them back
            if (count >= K) & (count <= CAP):  # >= K candidates: T >= t_sub, every top-K entry is among them
                done = _select_candidates(cid, cval, count, out_ptr + t.to(tl.int64) * out_stride, K, CAP, ATOMIC)
                if not done:  # the atomic form's tie overflow: the streaming passes take the row
                    count = CAP + 1
            tl.store(count_ptr + r, count)


@triton.jit(do_not_specialize=["row0", "score_stride", "out_stride"], do_not_specialize_on_alignment=["pos_ptr"])
def _fallback_kernel(scores_ptr, pos_ptr, out_ptr, count_ptr, row0, score_stride, out_stride, K: tl.constexpr,
                     RATIO: tl.constexpr, SAMPLE: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr):
    """Program r: if row r was sampled and its candidates did not fit [K, CAP], the streaming passes."""
    r = tl.program_id(0)
    t, limit = _row(pos_ptr, row0, r, RATIO)
    if limit > SAMPLE:
        count = tl.load(count_ptr + r)
        if (count < K) | (count > CAP):
            stream_topk(scores_ptr + r.to(tl.int64) * score_stride, out_ptr + t.to(tl.int64) * out_stride, limit,
                         K, BLOCK)


def sampled_entries(limit: int, sample: int | None = None) -> torch.Tensor:
    """Host mirror of the entries _sample_threshold reads from a row of limit > sample entries (tests craft
    rows that defeat the sample with it)."""
    sample = sample or SAMPLE
    runs = sample // SEG
    starts = torch.tensor([(j * limit // runs) // SEG * SEG for j in range(runs)])
    return (starts[:, None] + torch.arange(SEG)[None, :]).reshape(-1)


# indexer.topk_rows dispatches here when ENABLED (on: measured on the H200, 2026-12-02, docs/benchmarks.md session 5:
# bench `topk_prefill` 1.8x / 3.6x / 4.1x the streaming kernel at 32K / 131K / 262K entries, the 1M-token prompt
# 77.2 -> 58.0 s); V4_TOPK_PREFILL=0 turns it off (bench A/B).
ENABLED = os.environ.get("V4_TOPK_PREFILL", "1") != "0"


def use_prefill(n_rows: int, e_cap: int, topk: int) -> bool:
    """Many rows (at least PREFILL_MIN_ROWS) longer than PREFILL_MIN_ECAP, with k <= CAP / 2 and k <= SAMPLE."""
    return n_rows >= PREFILL_MIN_ROWS and e_cap > PREFILL_MIN_ECAP and 2 * topk <= CAP and topk <= SAMPLE


def topk_rows_prefill(scores: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, row0: int, n_rows: int,
                      topk: int, ratio: int, *, sample: int | None = None, cap: int | None = None,
                      block: int | None = None, programs: int | None = None,
                      counts: torch.Tensor | None = None, atomic: bool | None = None) -> None:
    """Same contract as indexer.topk_rows (and the same output, order and tie choice as its _topk_kernel):
    top-k of scores[r, :(pos[row0+r]+1)//ratio] -> out[row0+r, :topk], -1 in unused slots, for r < n_rows.
    sample / cap / block / programs override the module sizes (tests); counts (int32 [>= n_rows]) receives
    each row's candidate count (a row fell back to the streaming passes when count < k or count > cap);
    atomic overrides ATOMIC (the filter's slots from a counter, then a sort by id)."""
    sample, cap, block = sample or SAMPLE, cap or CAP, block or BLOCK
    for name, v in (("sample", sample), ("cap", cap), ("block", block)):
        if v & (v - 1) or v < SEG:
            raise ValueError(f"prefill top-k: {name} must be a power of two >= {SEG}, got {v}")
    if topk > cap or topk > sample:
        raise ValueError(f"prefill top-k needs k <= cap and k <= sample, got k={topk}, cap={cap}, sample={sample}")
    if n_rows <= 0:
        return
    dev = scores.device
    g = max(1, min(n_rows, programs or num_sms(dev) * PROGRAMS_PER_SM))
    thr = torch.empty(n_rows, dtype=torch.int32, device=dev)
    counts = torch.empty(n_rows, dtype=torch.int32, device=dev) if counts is None else counts
    cid = torch.empty((g, cap), dtype=torch.int32, device=dev)
    cval = torch.empty((g, cap), dtype=torch.float32, device=dev)
    cnt = torch.empty(g, dtype=torch.int32, device=dev)  # the atomic filter's per-program counter
    args = (scores, positions, out)
    strides = (scores.stride(0), out.stride(0))
    _sample_kernel[(n_rows,)](*args, thr, counts, row0, *strides, K=topk, RATIO=ratio, SAMPLE=sample, SEG=SEG,
                              BLOCK=block, Z=SAMPLE_Z, num_warps=WARPS)
    _filter_select_kernel[(g,)](*args, thr, counts, cid, cval, cnt, row0, n_rows, *strides, K=topk, RATIO=ratio,
                                SAMPLE=sample, CAP=cap, BLOCK=block, ATOMIC=ATOMIC if atomic is None else atomic,
                                num_warps=WARPS)
    _fallback_kernel[(n_rows,)](*args, counts, row0, *strides, K=topk, RATIO=ratio, SAMPLE=sample, CAP=cap,
                                BLOCK=block, num_warps=FALLBACK_WARPS)
