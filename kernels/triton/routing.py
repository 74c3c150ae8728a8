"""Triton router tail (sqrt-softplus scores, bias top-k or tid2eid lookup, renorm, scaling) and the
token->expert block alignment consumed by the grouped GEMM (like fused_moe's moe_align_block_size)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ref.routing import max_aligned_sizes


@triton.jit(do_not_specialize_on_alignment=["tid_ptr", "tok_ptr"])
def _route_kernel(logits_ptr, bias_ptr, tid_ptr, tok_ptr, w_out_ptr, id_out_ptr, E, scale,
                  TOPK: tl.constexpr, KP: tl.constexpr, BLOCK_E: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HASH: tl.constexpr, RENORM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    emask = offs < E
    lg = tl.load(logits_ptr + row * E + offs, mask=emask, other=0.0).to(tl.float32)
    s = tl.sqrt(tl.maximum(lg, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(lg))))  # sqrt(softplus)
    kk = tl.arange(0, KP)
    kmask = kk < TOPK
    if HASH:
        tok = tl.load(tok_ptr + row).to(tl.int64)
        ids = tl.load(tid_ptr + tok * TOPK + kk, mask=kmask, other=0).to(tl.int32)
        lsel = tl.load(logits_ptr + row * E + ids, mask=kmask, other=0.0).to(tl.float32)
        w = tl.sqrt(tl.maximum(lsel, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(lsel))))
        w = tl.where(kmask, w, 0.0)
    else:
        sel = s
        if HAS_BIAS:
            sel = sel + tl.load(bias_ptr + offs, mask=emask, other=0.0).to(tl.float32)
        sel = tl.where(emask, sel, float("-inf"))
        ids = tl.zeros([KP], dtype=tl.int32)
        w = tl.zeros([KP], dtype=tl.float32)
        for j in tl.static_range(TOPK):
            best = tl.argmax(sel, axis=0)
            sj = tl.sum(tl.where(offs == best, s, 0.0), axis=0)
            ids = tl.where(kk == j, best.to(tl.int32), ids)
            w = tl.where(kk == j, sj, w)
            sel = tl.where(offs == best, float("-inf"), sel)
    if RENORM:
        w = w / (tl.sum(w, axis=0) + 1e-20)
    tl.store(w_out_ptr + row * TOPK + kk, w * scale, mask=kmask)
    tl.store(id_out_ptr + row * TOPK + kk, ids, mask=kmask)


def moe_route(logits, topk, routed_scaling, renorm=True, bias=None, tid2eid=None, input_ids=None):
    n, e = logits.shape
    logits = logits.float().contiguous()
    w = torch.empty(n, topk, dtype=torch.float32, device=logits.device)
    ids = torch.empty(n, topk, dtype=torch.int32, device=logits.device)
    if n == 0:
        return w, ids
    hashed = tid2eid is not None
    dummy = logits
    _route_kernel[(n,)](
        logits, bias.float().contiguous() if bias is not None else dummy,
        tid2eid.contiguous() if hashed else dummy, input_ids.contiguous() if hashed else dummy,
        w, ids, e, float(routed_scaling),
        TOPK=topk, KP=triton.next_power_of_2(topk), BLOCK_E=triton.next_power_of_2(e),
        HAS_BIAS=bias is not None, HASH=hashed, RENORM=renorm, num_warps=4 if e >= 256 else 1)
    return w, ids


@triton.jit(do_not_specialize=["P", "max_pad", "max_blocks"], do_not_specialize_on_alignment=["ids_ptr", "pos_ptr"])
def _align_kernel(ids_ptr, P, sorted_ptr, eids_ptr, npad_ptr, pos_ptr, E, max_pad, max_blocks,
                  BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr):
    """One program: histogram -> padded offsets -> block expert ids -> stable scatter of pair ids."""
    offs_e = tl.arange(0, BLOCK_E)
    offs_c = tl.arange(0, CHUNK)
    # sentinel fill
    for s0 in range(0, max_pad, CHUNK):
        o = s0 + offs_c
        tl.store(sorted_ptr + o, tl.zeros([CHUNK], dtype=tl.int32) + P, mask=o < max_pad)
    hist = tl.zeros([BLOCK_E], dtype=tl.int32)
    for c0 in range(0, P, CHUNK):
        o = c0 + offs_c
        e = tl.load(ids_ptr + o, mask=o < P, other=-1)
        hist += tl.sum((e[:, None] == offs_e[None, :]).to(tl.int32), axis=0)
    padded = (hist + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    cum = tl.cumsum(padded, axis=0)
    total = tl.sum(padded, axis=0)
    tl.store(pos_ptr + offs_e, cum - padded)
    tl.store(npad_ptr, total)
    ends = cum // BLOCK_M
    nblk = total // BLOCK_M
    for b0 in range(0, max_blocks, CHUNK):
        b = b0 + offs_c
        eid = tl.sum((ends[None, :] <= b[:, None]).to(tl.int32), axis=1)
        eid = tl.where(b < nblk, eid, -1)
        tl.store(eids_ptr + b, eid, mask=b < max_blocks)
    tl.debug_barrier()
    lower = offs_c[None, :] < offs_c[:, None]  # j < i
    for c0 in range(0, P, CHUNK):
        o = c0 + offs_c
        m = o < P
        e = tl.load(ids_ptr + o, mask=m, other=-1)
        rank = tl.sum(((e[:, None] == e[None, :]) & lower).to(tl.int32), axis=1)
        base = tl.load(pos_ptr + e, mask=m, other=0)
        tl.store(sorted_ptr + base + rank, o.to(tl.int32), mask=m)
        hch = tl.sum((e[:, None] == offs_e[None, :]).to(tl.int32), axis=0)
        tl.debug_barrier()
        cur = tl.load(pos_ptr + offs_e)
        tl.debug_barrier()
        tl.store(pos_ptr + offs_e, cur + hch)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["P", "max_pad", "fill_per"], do_not_specialize_on_alignment=["ids_ptr"])
def _align_count_kernel(ids_ptr, P, cnt_ptr, sorted_ptr, max_pad, fill_per, BLOCK_E: tl.constexpr,
                        CH: tl.constexpr):
    """Program g: expert histogram of pairs [g*CH, (g+1)*CH) -> cnt[g]; sentinel-fills its share of sorted."""
    g = tl.program_id(0)
    offs_c = tl.arange(0, CH)
    o = g * CH + offs_c
    m = o < P
    e = tl.load(ids_ptr + o, mask=m, other=0)
    hist = tl.sum((e[:, None] == tl.arange(0, BLOCK_E)[None, :]) & m[:, None], axis=0).to(tl.int32)
    tl.store(cnt_ptr + g * BLOCK_E + tl.arange(0, BLOCK_E), hist)
    lo = g * fill_per
    for s0 in range(lo, lo + fill_per, CH):
        f = s0 + offs_c
        tl.store(sorted_ptr + f, tl.zeros([CH], dtype=tl.int32) + P, mask=(f < max_pad) & (f < lo + fill_per))


@triton.jit(do_not_specialize=["P", "G", "max_blocks", "blk_per"], do_not_specialize_on_alignment=["ids_ptr"])
def _align_scatter_kernel(ids_ptr, P, G, cnt_ptr, sorted_ptr, eids_ptr, npad_ptr, max_blocks, blk_per,
                          BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, CH: tl.constexpr, GB: tl.constexpr):
    """Program g: totals and the prefix of chunks < g per expert from cnt (every program scans cnt itself:
    no inter-program sync), then the stable scatter of its chunk, its share of block expert ids, npad."""
    g = tl.program_id(0)
    offs_e = tl.arange(0, BLOCK_E)
    tot = tl.zeros([BLOCK_E], dtype=tl.int32)
    pre = tl.zeros([BLOCK_E], dtype=tl.int32)
    for r0 in range(0, G, GB):
        r = r0 + tl.arange(0, GB)
        t = tl.load(cnt_ptr + r[:, None] * BLOCK_E + offs_e[None, :], mask=(r < G)[:, None], other=0)
        tot += tl.sum(t, axis=0)
        pre += tl.sum(tl.where((r < g)[:, None], t, 0), axis=0)
    padded = (tot + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    cum = tl.cumsum(padded, axis=0)
    base = cum - padded + pre  # slot of this chunk's first pair of each expert
    offs_c = tl.arange(0, CH)
    o = g * CH + offs_c
    m = o < P
    e = tl.load(ids_ptr + o, mask=m, other=-1)
    lower = offs_c[None, :] < offs_c[:, None]  # j < i: stable rank within the chunk
    rank = tl.sum(((e[:, None] == e[None, :]) & lower).to(tl.int32), axis=1)
    dst = tl.sum(tl.where(e[:, None] == offs_e[None, :], base[None, :], 0), axis=1) + rank
    tl.store(sorted_ptr + dst, o.to(tl.int32), mask=m)
    total = tl.sum(padded, axis=0)
    if g == 0:
        tl.store(npad_ptr, total)
    ends = cum // BLOCK_M
    nblk = total // BLOCK_M
    b_lo = g * blk_per
    for b0 in range(b_lo, b_lo + blk_per, CH):
        b = b0 + offs_c
        eid = tl.sum((ends[None, :] <= b[:, None]).to(tl.int32), axis=1)
        eid = tl.where(b < nblk, eid, -1)
        tl.store(eids_ptr + b, eid, mask=(b < max_blocks) & (b < b_lo + blk_per))


# From this many pairs on, the parallel two-launch alignment; below, one program. Measured (bench moe_align,
# one H200, CUDA graph, 2026-12-02 session 3): parallel / one program 8.3 / 9.0 us at 6 pairs, 11.8 / 27.5 at
# 384, 11.9 / 39.8 at 768, 24.0 / 68.4 at 1,536 (block 16): the parallel kernels win at every decode size.
PARALLEL_PAIRS = 1


def moe_align(ids, num_experts, block_m, parallel=None):
    """Below PARALLEL_PAIRS pairs (or parallel=False): one program (`_align_kernel`). Otherwise two
    launches of G = ceil(pairs / CH) programs each: per-chunk histograms, then per-chunk scan + stable scatter.
    Same layout either way. No host sync: every size comes from the shapes (CUDA-graph safe)."""
    flat = ids.reshape(-1).to(torch.int32).contiguous()
    p = flat.numel()
    max_pad, max_blocks = max_aligned_sizes(p, num_experts, block_m)
    dev = ids.device
    sorted_ids = torch.empty(max_pad, dtype=torch.int32, device=dev)
    eids = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    npad = torch.empty(1, dtype=torch.int32, device=dev)
    block_e = triton.next_power_of_2(num_experts)
    if not (p >= PARALLEL_PAIRS if parallel is None else parallel):
        pos = torch.empty(block_e, dtype=torch.int32, device=dev)
        _align_kernel[(1,)](flat, p, sorted_ids, eids, npad, pos, num_experts, max_pad, max_blocks,
                            BLOCK_M=block_m, BLOCK_E=block_e, CHUNK=64, num_warps=8)
        return sorted_ids, eids, npad
    ch = 16 if p <= 16 else (64 if p <= 1024 else 256)
    groups = max(1, triton.cdiv(p, ch))
    cnt = torch.empty(groups, block_e, dtype=torch.int32, device=dev)
    fill_per = triton.cdiv(triton.cdiv(max_pad, groups), ch) * ch
    warps = 4 if ch <= 64 else 8
    _align_count_kernel[(groups,)](flat, p, cnt, sorted_ids, max_pad, fill_per, BLOCK_E=block_e, CH=ch,
                                   num_warps=warps)
    _align_scatter_kernel[(groups,)](flat, p, groups, cnt, sorted_ids, eids, npad, max_blocks,
                                     triton.cdiv(max_blocks, groups), BLOCK_M=block_m, BLOCK_E=block_e, CH=ch,
                                     GB=16, num_warps=warps)
    return sorted_ids, eids, npad
