"""HCA attention for prefill-sized chunks: the compressed entries packed once per call, then read with plain
pointer math.

In `attention._sparse_attn_kernel` every key tile is gathered through the block table inside the loop, so
the tile's load waits for its table entry and is never software-pipelined (sm_90 SASS: LDG + STS, no
cp.async). An HCA query sees entries 0 .. (pos+1)//RATIO - 1 of its own sequence in order, so for a prefill
chunk the entries can be laid out contiguously first:

  _pack_entries_kernel  grid (sequences, entry tiles): sequence b's entries 0 .. n_b-1 (n_b = (context +
                        chunk) // RATIO, what its last chunk token sees), gathered through its block table and
                        dequantized once (FP8 entries) -> dense rows [sum n_b, D] in the dot dtype, sequence b
                        from row ebase[b]. One pass over the entries per call (1M-token prompt, HCA 128:
                        8,192 entries = 8 MB bf16 per call).
  _hca_prefill_kernel   the layout of `_sparse_attn_kernel` (one program = one token x all heads x one split
                        of its list [W window slots | entries]): the window slots as there (ring or chunk),
                        then the packed entries in a `tl.range(num_stages=STAGES)` loop whose loads depend
                        only on the loop index (cp.async-pipelined on sm_90).

Numerics: the same as `_sparse_attn_kernel` (entries in the dot dtype, scores and accumulator in fp32, base-2
online softmax, sink in the denominator); the twin is kernels/ref/attention.sparse_attention.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.attn_meta import AttnMeta

from .attn_tiles import _attend, _combine_kernel, _load_cols, _token_query, _window_ptr, _write_out

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
PACK_BLOCK = 32  # entries per packing program
STAGES = int(os.environ.get("V4_ATTN_HCA_STAGES", 3))  # software-pipeline stages of the entry loop
BLOCK_N = int(os.environ.get("V4_ATTN_HCA_BLOCK_N", 32))  # keys per tile


@triton.jit(do_not_specialize=["table_stride"],
            do_not_specialize_on_alignment=["tables_ptr", "nent_ptr", "ebase_ptr"])
def _pack_entries_kernel(pool_ptr, tables_ptr, nent_ptr, ebase_ptr, out_ptr, table_stride, ROW,
                         PB: tl.constexpr, D: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr,
                         FP8: tl.constexpr, BLOCK_E: tl.constexpr, DOT_DT: tl.constexpr):
    """Entries e0 .. e0+BLOCK_E-1 of sequence b -> dense rows ebase[b] + e (dequantized once). ROW (row pitch
    in elements) is a runtime argument: as a constexpr, Triton 3.6 carried the 16-byte alignment of every other
    row start (e % PB = 0) over to the 584-byte FP8 rows and issued misaligned 16-byte loads (sm_90)."""
    b = tl.program_id(0)
    e0 = tl.program_id(1) * BLOCK_E
    n = tl.load(nent_ptr + b)
    if e0 < n:
        e = e0 + tl.arange(0, BLOCK_E)
        ok = e < n
        blk = tl.load(tables_ptr + b.to(tl.int64) * table_stride + e // PB, mask=ok, other=0).to(tl.int64)
        ptr = pool_ptr + (blk * PB + e % PB) * ROW
        tile = _load_cols(ptr, ok, 0, D, NOPE, R, FP8, DOT_DT)  # [BE, D]
        dst = tl.load(ebase_ptr + b) + e.to(tl.int64)
        cols = tl.arange(0, D)
        tl.store(out_ptr + dst[:, None] * D + cols[None, :], tile.to(out_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit(do_not_specialize=["split_len"],
            do_not_specialize_on_alignment=["ebase_ptr", "tok_seq_ptr", "pos_ptr", "qstart_ptr", "ctx_ptr", "slot_ptr"])
def _hca_prefill_kernel(
    q_ptr, cur_ptr, ring_ptr, ent_ptr, ebase_ptr, tok_seq_ptr, pos_ptr, qstart_ptr, ctx_ptr, slot_ptr, sink_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr, cos_ptr, sin_ptr, H, split_len, sm_scale_log2, cs_stride,
    W: tl.constexpr, ROW: tl.constexpr, RATIO: tl.constexpr, NSPLIT: tl.constexpr, D: tl.constexpr,
    NOPE: tl.constexpr, R: tl.constexpr, FP8: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_DT: tl.constexpr, STAGES: tl.constexpr, ROPE_OUT: tl.constexpr = False,
):
    """Program (t, sp): token t, list positions [sp*split_len, ...) of [W window slots | entries]."""
    t = tl.program_id(0)
    sp = tl.program_id(1)
    b, pos, start, qs, slot, heads, hmask, q = _token_query(t, q_ptr, tok_seq_ptr, pos_ptr, ctx_ptr, qstart_ptr,
                                                            slot_ptr, H, BLOCK_H, D, DOT_DT)
    cols = tl.arange(0, D)
    total = W + (pos + 1) // RATIO
    lo = sp * split_len
    hi = tl.minimum(lo + split_len, total)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, D], tl.float32)
    offs = tl.arange(0, BLOCK_N)
    # window slots j < W: position p = pos-W+1+j, from the ring (before the chunk) or the chunk's own rows
    for j0 in range(lo, tl.minimum(hi, W), BLOCK_N):
        j = j0 + offs
        ptr, valid = _window_ptr(ring_ptr, cur_ptr, j, pos, start, qs, slot, W, ROW)
        valid = valid & (j < hi)
        kt = _load_cols(ptr, valid, 0, D, NOPE, R, FP8, DOT_DT)
        m_i, l_i, acc = _attend(q, kt, kt, valid, m_i, l_i, acc, sm_scale_log2, DOT_DT)
    # packed entries e = j - W, contiguous from row ebase[b]
    kb = tl.load(ebase_ptr + b)
    e_hi = hi - W
    for e0 in tl.range(tl.maximum(lo, W) - W, e_hi, BLOCK_N, num_stages=STAGES):
        e = e0 + offs
        ok = e < e_hi
        kt = tl.load(ent_ptr + (kb + e)[:, None] * D + cols[None, :], mask=ok[:, None], other=0.0).to(DOT_DT)
        m_i, l_i, acc = _attend(q, kt, kt, ok, m_i, l_i, acc, sm_scale_log2, DOT_DT)
    _write_out(m_i, l_i, acc, t, sp, 0, heads, hmask, H, sink_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
               cos_ptr, sin_ptr, cs_stride, NSPLIT, D, D, R, ROPE_OUT)


@torch.compiler.disable
def pack_entries(pool: torch.Tensor, meta: AttnMeta, ratio: int, d: int, nope: int, r: int, fp8: bool,
                 dtype: torch.dtype):
    """Every sequence's compressed entries its chunk can see -> (rows [n, d] in `dtype`, ebase [B] int64:
    sequence b's first row). Sizes from the host lists, offsets on the device (no sync)."""
    lay = meta.packed_layout(ratio)
    rows = torch.empty((max(lay.total, 1), d), dtype=dtype, device=pool.device)
    if lay.most:
        dot_dt = tl.float32 if dtype == torch.float32 else tl.bfloat16
        _pack_entries_kernel[(meta.num_seqs, triton.cdiv(lay.most, PACK_BLOCK))](
            pool, meta.block_tables, lay.counts, lay.base, rows, meta.block_tables.stride(0), ROW=pool.shape[2],
            PB=pool.shape[1], D=d, NOPE=nope, R=r, FP8=fp8, BLOCK_E=PACK_BLOCK, DOT_DT=dot_dt, num_warps=4)
    ebase = lay.base
    return rows, ebase


def hca_prefill_attention(q, kv_cur, ring, pool, meta: AttnMeta, sink, *, ratio: int, scale: float, fp8: bool,
                          nope: int, rope_dim: int, nsplit: int, block_n: int | None = None,
                          stages: int | None = None, out_rope=None) -> torch.Tensor:
    """`attention.sparse_attention` for an HCA layer (pool, no top-k) through packed entries; the caller
    (attention.sparse_attention) has checked the formats and chosen nsplit. out_rope: (cos, sin) fp32
    contiguous [N, rope_dim / 2], the output inverse-roped in its write."""
    n_tok, h, c = q.shape
    out = torch.empty_like(q)
    w, row = ring.shape[1], ring.shape[2]
    dot_dt = tl.float32 if (INTERPRET or q.dtype == torch.float32) else tl.bfloat16
    rows, ebase = pack_entries(pool, meta, ratio, c, nope, rope_dim, fp8,
                               torch.float32 if dot_dt == tl.float32 else torch.bfloat16)
    bn = block_n or (16 if INTERPRET else BLOCK_N)
    max_total = w + meta.max_seq_len // ratio
    split_len = triton.cdiv(triton.cdiv(max_total, nsplit), bn) * bn
    if nsplit > 1:
        part_acc = torch.empty((n_tok, nsplit, h, c), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((n_tok, nsplit, h, 2), dtype=torch.float32, device=q.device)
    else:
        part_acc = part_ml = out
    sink32 = sink.float().contiguous()
    fuse = out_rope is not None
    cos, sin = out_rope if fuse else (sink32, sink32)
    _hca_prefill_kernel[(n_tok, nsplit)](
        q.contiguous(), kv_cur, ring, rows, ebase, meta.tok_seq, meta.positions, meta.query_start, meta.context_lens,
        meta.slot_ids, sink32, out, part_acc, part_ml, cos, sin, h, split_len, scale * 1.4426950408889634,
        cos.stride(0) if fuse else 0, W=w, ROW=row, RATIO=ratio, NSPLIT=nsplit, D=c, NOPE=nope, R=rope_dim, FP8=fp8,
        BLOCK_H=max(16, triton.next_power_of_2(h)), BLOCK_N=bn, DOT_DT=dot_dt,
        STAGES=1 if INTERPRET else (stages or STAGES), ROPE_OUT=fuse, num_warps=8)
    if nsplit > 1:
        _combine_kernel[(n_tok, h)](part_acc, part_ml, sink32, out, h, cos, sin, cos.stride(0) if fuse else 0,
                                    NSPLIT=nsplit, NS_P2=triton.next_power_of_2(nsplit), D=c, R=rope_dim,
                                    ROPE_OUT=fuse, num_warps=4)
    return out


# Packed HCA entries where the chunk's tokens share them: the packing pass reads and writes every entry once,
# the kernel then reads each entry once per token that sees it, so it pays from an entry-weighted mean query
# length of a few tokens (prefill chunks), never for decode (1 token per sequence; CUDA graphs never pack).
# Measured on the H200 (docs/benchmarks.md, session 7): one 8,192-token chunk at 1M context 53.6 -> 36.4 ms
# (BLOCK_N 32, 3 stages), the 1M-token prompt +13 % with 2 stages. Other GPU classes keep the gathering kernel
# until measured (160 KB of shared memory per program). V4_ATTN_HCA_PACK_MIN_QUERY=<tokens> sets the threshold
# (A/B switch, read once at import; 0 = off).
PACK_MIN_QUERY: int | None = 16
_ENV_MIN_QUERY = os.environ.get("V4_ATTN_HCA_PACK_MIN_QUERY")


def use_packed_hca(meta: AttnMeta, ratio: int, q: torch.Tensor) -> bool:
    """Whether an HCA layer's attention over this batch (host lists of `meta`) takes the packed entries:
    sum_b q_len_b * n_b >= PACK_MIN_QUERY * sum_b n_b (n_b entries sequence b's chunk sees), on the measured GPU
    class, outside CUDA-graph capture."""
    from .fp8_table import _on_measured_gpu

    lo = PACK_MIN_QUERY if _ENV_MIN_QUERY is None else (int(_ENV_MIN_QUERY) or None)
    if lo is None or meta.max_query_len < lo or not _on_measured_gpu(q):
        return False
    if q.is_cuda and torch.cuda.is_current_stream_capturing():  # host lists are not the replayed batch
        return False
    qs, cl = meta.query_start_host, meta.context_lens_host
    shared = entries = 0
    for b in range(len(cl)):
        n_q = qs[b + 1] - qs[b]
        n_b = (cl[b] + n_q) // ratio if n_q else 0
        shared += n_q * n_b
        entries += n_b
    return entries > 0 and shared >= lo * entries
