"""Exact top-k of many long indexer rows (long-prompt prefill): sample, filter, select in registers.

indexer._topk_kernel streams a long row five times (four 8-bit radix histogram passes, one compaction);
at 1M context that is 17.4 s of a prompt on an H200, bound by the histograms. Here one program handles
a row (persistently: program p takes rows p, p + G, ...) in three stages:

  sample  SAMPLE entries of the row in registers: SAMPLE/SEG runs of SEG contiguous entries (one 32-byte
          sector for SEG 8) spread evenly over [0, limit), so a trend along the row (recent entries
          scoring higher) does not bias it. Radix select (the same 4 levels) of the sample's R-th largest
          ordered key T_sub, R = min(K, ceil(r^2)), r = (Z + sqrt(Z^2 + 4 K SAMPLE / limit)) / 2: the
          row count at or above T_sub is about R limit / SAMPLE with a relative spread 1/sqrt(R), so
          this R puts K at Z standard deviations below the expected count (and ~2-4K candidates at K 512).
  filter  stream the row once, compacting every entry with key >= T_sub (id and score) into this
          program's scratch row in index order (tl.cumsum + a running count); the count goes on past CAP.
  select  if K <= count <= CAP: radix select of the exact K-th key T among the candidates (registers),
          then entries with key > T and the lowest-index ties == T, written as _topk_kernel writes them.
          Otherwise (a distribution the sample misjudged: ties, isolated spikes) the program runs
          _topk_kernel's streaming passes over the whole row instead (a runtime branch; still exact).

Why it is exact: if at least K entries of the row have key >= T_sub, the row's K-th largest key T is
>= T_sub, so every entry with key >= T (all of the top K and every tie at T) is a candidate, and the
candidates keep index order; selecting among them therefore yields the same T, the same set of entries
above it and the same lowest-index ties, in the same slots as _topk_kernel (slot order: entries > T in
index order, then the ties). The count check makes the guarantee independent of how good the sample was
(with R = K it always holds: the K-th largest of a subset is <= the K-th largest of the row). Rows with
limit <= SAMPLE are selected in registers directly (the IN_REG path); rows with limit <= K list
0..limit-1 then -1, as in indexer.topk_rows.

Scratch is [G, CAP] int32 + fp32 for G = min(rows, PROGRAMS_PER_SM x SMs) programs (bounded whatever the
tile), written and read back by the same program (tl.debug_barrier orders the warps). No host syncs: the
launch is CUDA-graph safe.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import ordered_key, select_digit
from .device_info import num_sms

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Interpreter sizes are tiny so that the CPU tests exercise every stage on rows of a few hundred entries.
SAMPLE = 256 if INTERPRET else int(os.environ.get("V4_TOPK_PF_SAMPLE", 8192))  # sampled entries (registers)
SEG = 8  # contiguous entries per sampled run (8 fp32 = one 32-byte sector)
CAP = 256 if INTERPRET else int(os.environ.get("V4_TOPK_PF_CAP", 4096))  # candidates selected in registers
BLOCK = 64 if INTERPRET else int(os.environ.get("V4_TOPK_PF_BLOCK", 4096))  # streamed entries per step
WARPS = 4 if INTERPRET else int(os.environ.get("V4_TOPK_PF_WARPS", 16))
PROGRAMS_PER_SM = int(os.environ.get("V4_TOPK_PF_PER_SM", 1))
SAMPLE_Z = 6.0  # standard deviations between K and the expected candidate count (see the docstring)
# use_prefill: rows this variant is meant for (filled from GPU measurements; bench `topk_prefill`)
PREFILL_MIN_ROWS = 132  # fewer long rows go to topk_long's split (one row per SM is not enough work)
PREFILL_MIN_ECAP = 8192  # shorter rows fit indexer's in-register kernel (REG_TOPK_MAX)
NOINLINE = not INTERPRET and os.environ.get("V4_TOPK_PF_NOINLINE", "0") == "1"


@triton.jit
def _radix_kth(key, ok, need):
    """The need-th largest ordered key among `ok` (four 8-bit levels) -> (T, how many ties at T to take)."""
    prefix = tl.zeros([], tl.uint32)
    pmask = tl.zeros([], tl.uint32)
    bins = tl.arange(0, 256)
    for level in tl.static_range(4):
        shift = 24 - 8 * level
        hist = tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=ok & ((key & pmask) == prefix))
        need, prefix, pmask = select_digit(hist, need, prefix, pmask, shift, bins)
    return prefix, need


@triton.jit
def _emit(ids, key, ok, thr, need, orow, K: tl.constexpr):
    """Write ids with key > thr (index order, slots 0..) then the first `need` ties == thr after them."""
    gt = ok & (key > thr)
    eq = ok & (key == thr)
    rank_eq = tl.cumsum(eq.to(tl.int32), 0) - 1
    tl.store(orow + tl.cumsum(gt.to(tl.int32), 0) - 1, ids, mask=gt)
    tl.store(orow + (K - need) + rank_eq, ids, mask=eq & (rank_eq < need))


@triton.jit(noinline=NOINLINE)
def _stream_topk(srow, orow, limit, K: tl.constexpr, BLOCK: tl.constexpr):
    """Fallback: indexer._topk_kernel's streaming passes over the whole row (same output)."""
    offs = tl.arange(0, BLOCK)
    prefix = tl.zeros([], tl.uint32)
    pmask = tl.zeros([], tl.uint32)
    need = tl.full([], K, tl.int32)
    bins = tl.arange(0, 256)
    for level in tl.static_range(4):
        shift = 24 - 8 * level
        hist = tl.zeros([256], tl.int32)
        for e0 in range(0, limit, BLOCK):
            e = e0 + offs
            ok = e < limit
            key = ordered_key(tl.load(srow + e, mask=ok, other=0.0))
            hist += tl.histogram(((key >> shift) & 255).to(tl.int32), 256, mask=ok & ((key & pmask) == prefix))
        need, prefix, pmask = select_digit(hist, need, prefix, pmask, shift, bins)
    cnt_gt = tl.zeros([], tl.int32)
    cnt_eq = tl.zeros([], tl.int32)
    for e0 in range(0, limit, BLOCK):
        e = e0 + offs
        ok = e < limit
        key = ordered_key(tl.load(srow + e, mask=ok, other=0.0))
        gt = (ok & (key > prefix)).to(tl.int32)
        eq = ok & (key == prefix)
        rank_eq = cnt_eq + tl.cumsum(eq.to(tl.int32), 0) - 1
        tl.store(orow + cnt_gt + tl.cumsum(gt, 0) - 1, e, mask=gt != 0)
        tl.store(orow + (K - need) + rank_eq, e, mask=eq & (rank_eq < need))
        cnt_gt += tl.sum(gt, 0)
        cnt_eq += tl.sum(eq.to(tl.int32), 0)


@triton.jit(noinline=NOINLINE)
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
    t_sub, _unused = _radix_kth(skey, soffs < SAMPLE, rank)
    return t_sub


@triton.jit(noinline=NOINLINE)
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


@triton.jit(noinline=NOINLINE)
def _select_candidates(cid, cval, count, orow, K: tl.constexpr, CAP: tl.constexpr):
    """The top-K of the count (K <= count <= CAP) candidates in cid/cval -> orow, as _topk_kernel orders them."""
    coffs = tl.arange(0, CAP)
    okc = coffs < count
    ids = tl.load(cid + coffs, mask=okc, other=0, cache_modifier=".cg")
    key = ordered_key(tl.load(cval + coffs, mask=okc, other=0.0, cache_modifier=".cg"))
    thr, need = _radix_kth(key, okc, tl.full([], K, tl.int32))
    _emit(ids, key, okc, thr, need, orow, K)


@triton.jit(noinline=NOINLINE)
def _select_row(srow, limit, orow, K: tl.constexpr, SAMPLE: tl.constexpr):
    """K < limit <= SAMPLE: the whole row in registers, one exact select (indexer's IN_REG path)."""
    soffs = tl.arange(0, SAMPLE)
    ok = soffs < limit
    key = ordered_key(tl.load(srow + soffs, mask=ok, other=0.0))
    thr, need = _radix_kth(key, ok, tl.full([], K, tl.int32))
    _emit(soffs, key, ok, thr, need, orow, K)


@triton.jit
def _prefill_topk_kernel(scores_ptr, pos_ptr, out_ptr, cid_ptr, cval_ptr, count_ptr, row0, n_rows, score_stride,
                         out_stride, K: tl.constexpr, RATIO: tl.constexpr, SAMPLE: tl.constexpr, SEG: tl.constexpr,
                         CAP: tl.constexpr, BLOCK: tl.constexpr, Z: tl.constexpr, COUNTS: tl.constexpr):
    """Program p: rows p, p + G, ... of the tile; scratch row p of cid/cval. COUNTS: store each row's
    candidate count (its limit when it fit the sample) at count[r] (tests, benchmark: fallback rate)."""
    pid = tl.program_id(0)
    cid = cid_ptr + pid.to(tl.int64) * CAP
    cval = cval_ptr + pid.to(tl.int64) * CAP
    n_prog = tl.num_programs(0)
    for i in tl.range(0, tl.cdiv(n_rows - pid, n_prog), disable_licm=True):  # (tensor row index in the interpreter too)
        r = pid + i * n_prog
        t = row0 + r
        limit = ((tl.load(pos_ptr + t) + 1) // RATIO).to(tl.int32)
        orow = out_ptr + t.to(tl.int64) * out_stride
        srow = scores_ptr + r.to(tl.int64) * score_stride
        count = limit
        if limit <= K:
            for k0 in range(0, K, BLOCK):
                kk = k0 + tl.arange(0, BLOCK)
                tl.store(orow + kk, tl.where(kk < limit, kk, -1), mask=kk < K)
        elif limit <= SAMPLE:
            _select_row(srow, limit, orow, K, SAMPLE)
        else:
            t_sub = _sample_threshold(srow, limit, K, SAMPLE, SEG, Z)
            tl.debug_barrier()  # every warp has read the previous row's candidates before they are overwritten
            count = _filter(srow, limit, t_sub, cid, cval, CAP, BLOCK)
            tl.debug_barrier()  # every warp's candidates are written before any warp reads them back
            if (count >= K) & (count <= CAP):  # >= K candidates: T >= t_sub, every top-K entry is among them
                _select_candidates(cid, cval, count, orow, K, CAP)
            else:
                _stream_topk(srow, orow, limit, K, BLOCK)
        if COUNTS:
            tl.store(count_ptr + r, count)


def sampled_entries(limit: int, sample: int | None = None) -> torch.Tensor:
    """Host mirror of the entries _sample_threshold reads from a row of limit > sample entries (tests craft
    rows that defeat the sample with it)."""
    sample = sample or SAMPLE
    runs = sample // SEG
    starts = torch.tensor([(j * limit // runs) // SEG * SEG for j in range(runs)])
    return (starts[:, None] + torch.arange(SEG)[None, :]).reshape(-1)


def use_prefill(n_rows: int, e_cap: int, topk: int) -> bool:
    """Many rows (at least PREFILL_MIN_ROWS) longer than PREFILL_MIN_ECAP, with k <= CAP / 2 and k <= SAMPLE."""
    return n_rows >= PREFILL_MIN_ROWS and e_cap > PREFILL_MIN_ECAP and 2 * topk <= CAP and topk <= SAMPLE


def topk_rows_prefill(scores: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, row0: int, n_rows: int,
                      topk: int, ratio: int, *, sample: int | None = None, cap: int | None = None,
                      block: int | None = None, programs: int | None = None,
                      counts: torch.Tensor | None = None) -> None:
    """Same contract as indexer.topk_rows (and the same output, order and tie choice as its _topk_kernel):
    top-k of scores[r, :(pos[row0+r]+1)//ratio] -> out[row0+r, :topk], -1 in unused slots, for r < n_rows.
    sample / cap / block / programs override the module sizes (tests); counts (int32 [>= n_rows]) receives
    each row's candidate count (a row fell back to the streaming passes when count < k or count > cap)."""
    sample, cap, block = sample or SAMPLE, cap or CAP, block or BLOCK
    for name, v in (("sample", sample), ("cap", cap), ("block", block)):
        if v & (v - 1) or v < SEG:
            raise ValueError(f"prefill top-k: {name} must be a power of two >= {SEG}, got {v}")
    if topk > cap or topk > sample:
        raise ValueError(f"prefill top-k needs k <= cap and k <= sample, got k={topk}, cap={cap}, sample={sample}")
    if n_rows <= 0:
        return
    g = max(1, min(n_rows, programs or num_sms(scores.device) * PROGRAMS_PER_SM))
    cid = torch.empty((g, cap), dtype=torch.int32, device=scores.device)
    cval = torch.empty((g, cap), dtype=torch.float32, device=scores.device)
    _prefill_topk_kernel[(g,)](scores, positions, out, cid, cval, cid if counts is None else counts, row0, n_rows,
                               scores.stride(0), out.stride(0), K=topk, RATIO=ratio, SAMPLE=sample, SEG=SEG, CAP=cap,
                               BLOCK=block, Z=SAMPLE_Z, COUNTS=counts is not None, num_warps=WARPS)
