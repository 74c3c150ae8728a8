"""Shared inputs and checks for the attention / indexer / compressor kernel tests (and the MoE tests' tiny
random experts + routing, `tiny_moe`).

`run_cases(op, scale)` compares the Triton kernel (kernels/triton) with its pure-torch twin
(kernels/ref) on random ragged batches and returns a list of (case name, max error, tolerance).
scale="tiny": shapes for the CPU interpreter (run in a subprocess with TRITON_INTERPRET=1, see
test_*_interp.py); scale="real": V4-Flash shapes on the GPU.
"""

from __future__ import annotations

import math

import torch

from models.state import ForwardBatch, batch_metadata

from kernels.ref import kv_fp8


def tiny_moe(n: int, d: int, inter: int, mode: str = "uniform", e: int = 8, k: int = 2):
    """Random fp32 x [n, d], expert stacks w1, w3 [e, inter, d] and w2 [e, d, inter] (* 0.15), and the top-k
    routing (route scale 1.5) of random logits, all from one generator seeded with n. mode: "uniform";
    "skewed" (experts 0/1 take everything, the rest stay empty); "empty" (only experts 0-2 chosen)."""
    from kernels.ref import routing as ref_routing
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g)
    w1, w3 = (torch.randn(e, inter, d, generator=g) * 0.15 for _ in range(2))
    w2 = torch.randn(e, d, inter, generator=g) * 0.15
    logits = torch.randn(n, e, generator=g)
    if mode == "skewed":
        logits[:, :2] += 5.0
    elif mode == "empty":
        logits[:, 3:] -= 30.0
    else:
        assert mode == "uniform", mode
    weights, ids = ref_routing.moe_route(logits, k, 1.5)
    return x, (w1, w3, w2), weights, ids


def make_meta(specs, block_size, device, seed=0, num_slots=None):
    """specs: list of (context_len, query_len). Scattered slots and block tables."""
    g = torch.Generator().manual_seed(seed)
    b = len(specs)
    nblk = [max(1, math.ceil((c + n) / block_size)) for c, n in specs]
    total = sum(nblk)
    perm = torch.randperm(total + 3, generator=g)[:total]
    width = max(nblk)
    tables = torch.full((b, width), -1, dtype=torch.long)
    o = 0
    for i, k in enumerate(nblk):
        tables[i, :k] = perm[o:o + k]
        o += k
    slots = torch.randperm(num_slots or (b + 2), generator=g)[:b]
    qs = [0]
    for _, n in specs:
        qs.append(qs[-1] + n)
    pos = torch.cat([torch.arange(c, c + n) for c, n in specs]) if qs[-1] else torch.zeros(0, dtype=torch.long)
    batch = ForwardBatch(input_ids=torch.zeros(qs[-1], dtype=torch.long, device=device), positions=pos.to(device),
                         slot_ids=slots.to(device), block_tables=tables.to(device),
                         logits_indices=torch.zeros(0, dtype=torch.long, device=device), query_start=qs,
                         context_lens=[c for c, _ in specs])
    return batch_metadata(batch), total + 3, (num_slots or (b + 2))


def _rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def attention_case(specs, *, h, c, r, w, ratio, topk, block_size, fp8, device, dtype, seed=0):
    from kernels.ref import attention as ra
    from kernels.triton import attention as ta
    meta, nblocks, nslots = make_meta(specs, block_size, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    n = meta.num_tokens
    q = torch.randn(n, h, c, generator=g).to(device, dtype)
    kv = torch.randn(n, c, generator=g).to(device)
    ring_vals = torch.randn(nslots, w, c, generator=g).to(device)
    pool_vals = torch.randn(nblocks, block_size // max(ratio, 1), c, generator=g).to(device) if ratio else None
    if fp8:
        ring = kv_fp8.pack_entry(ring_vals, r)
        kv_cur = kv_fp8.pack_entry(kv, r)
        pool = kv_fp8.pack_entry(pool_vals, r) if ratio else None
    else:
        ring, kv_cur = ring_vals.to(dtype), kv.to(dtype)
        pool = pool_vals.to(dtype) if ratio else None
    sink = torch.randn(h, generator=g).to(device)
    idx = None
    if ratio == 4 and topk:
        idx = torch.full((n, topk), -1, dtype=torch.int32)
        pos = meta.positions.cpu()
        for t in range(n):
            lim = (int(pos[t]) + 1) // ratio
            if lim:
                sel = torch.randperm(lim, generator=g)[:topk]
                idx[t, :sel.numel()] = sel.int()
        idx = idx[:, torch.randperm(topk, generator=g)].contiguous().to(device)
    scale = c ** -0.5
    ref = ra.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=ratio, scale=scale, rope_dim=r)
    out = {}
    for ns, ds in ((None, 1), (3, 1), (None, 2), (3, 2)):  # key splits x value-column slices
        key = ns if ds == 1 else f"{ns},dsplit={ds}"
        out[key] = ta.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=ratio, scale=scale,
                                       rope_dim=r, nsplit=ns, dsplit=ds, hca_packed=False)
    if ratio not in (0, 4):  # HCA through packed entries (triton/attention_hca.py), whole and split lists
        for ns in (None, 3):
            out[f"{ns},packed"] = ta.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=ratio,
                                                      scale=scale, rope_dim=r, nsplit=ns, hca_packed=True)
    # window store
    ring2 = ring.clone()
    ra.window_store(kv_cur, ring, meta)
    ta.window_store(kv_cur, ring2, meta)
    errs = {f"nsplit={k}": _rel(v, ref) for k, v in out.items()}
    errs["window_store"] = float((ring2 != ring).sum().item())
    if fp8:  # pack kernel == torch pack
        errs["pack"] = float((ta.kv_pack(kv, ring, r) != kv_fp8.pack_entry(kv, r)).sum().item())
    # the output's inverse RoPE in the kernels' output write (attention.ROPE_OUT), split lists and value slices
    # through _combine_kernel, against the twin's attention then rope
    ang = torch.randn(n, r // 2, generator=g).to(device) * 3
    rot = (ang.cos(), ang.sin())
    ref_rot = ra.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=ratio, scale=scale, rope_dim=r,
                                  out_rope=rot)
    for ns, ds, packed in ((None, 1, False), (3, 2, False), *(((3, 1, True),) if ratio not in (0, 4) else ())):
        v = ta.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=ratio, scale=scale, rope_dim=r,
                                out_rope=rot, rope_out=True, nsplit=ns, dsplit=ds, hca_packed=packed)
        errs[f"rope_out:{ns},dsplit={ds}{',packed' if packed else ''}"] = _rel(v, ref_rot)
    return errs


def indexer_case(specs, *, hi, ci, topk, block_size, fp8, device, seed=0, row_tile=None, group_rows=1,
                 score_fp8=False, split_heads=False):
    """group_rows: rows per score program (the prefill grouping, forced here from the first row on; with
    score_fp8 the FP8 kernel's rows per program); score_fp8: the FP8 index scores (triton/indexer_fp8.py) in
    both implementations; an int m: the kernel's own per-sequence choice (indexer_fp8.fp8_sequences, here from
    chunks of m tokens on, on any device), the twin's FP8 rows for those sequences and bf16 rows for the rest.
    split_heads: the kernel as two tensor-parallel ranks would run it, each on half the heads, the partial score
    tiles summed by its reduce_scores hook (the second half's tiles recorded first), against the twin's all-heads
    selection."""
    from kernels.ref import indexer as ri
    from kernels.triton import indexer as ti
    from kernels.triton import indexer_fp8 as f8
    ti.SCORE_GROUP_ROWS, ti.SCORE_GROUP_MIN_ROWS = group_rows, (1 if group_rows > 1 else 512)
    f8.ROWS = group_rows
    meta, nblocks, _ = make_meta(specs, block_size, device, seed)
    g = torch.Generator().manual_seed(seed + 2)
    n = meta.num_tokens
    q = torch.randn(n, hi, ci, generator=g).to(device)
    wt = torch.randn(n, hi, generator=g).to(device)
    kvals = torch.randn(nblocks, block_size // 4, ci, generator=g).to(device)
    if fp8 == "fp4":  # MXFP4 keys (rotated)
        keys = kv_fp8.pack_index_key_fp4(kvals)
    else:
        keys = kv_fp8.pack_index_key(kvals) if fp8 else kvals
    if device != "cpu":
        q = q.bfloat16()  # the GPU kernel scores bf16 q (rotated for MXFP4 keys in bf16): the twin gets the same
        if not fp8:
            keys = keys.bfloat16()
    kf = "fp4" if fp8 == "fp4" else ("fp8" if fp8 else "dense")
    q = kv_fp8.rotate_for_keys(q, kf)  # MXFP4 keys are stored rotated: both indexers take q rotated too
    qs = meta.query_start_host
    if isinstance(score_fp8, bool):
        row_fp8 = [score_fp8] * n
        ref = ri.indexer_topk(q, wt, keys, meta, topk, key_format=kf, score_fp8=score_fp8)
        if split_heads:
            half, tiles = hi // 2, []
            ti.indexer_topk(q[:, half:], wt[:, half:], keys, meta, topk, key_format=kf, row_tile=row_tile,
                            score_fp8=score_fp8, reduce_scores=lambda t: tiles.append(t.clone()))
            other = iter(tiles)
            got = ti.indexer_topk(q[:, :half], wt[:, :half], keys, meta, topk, key_format=kf, row_tile=row_tile,
                                  score_fp8=score_fp8, reduce_scores=lambda t: t.add_(next(other)))
            assert next(other, None) is None and tiles
        else:
            got = ti.indexer_topk(q, wt, keys, meta, topk, key_format=kf, row_tile=row_tile, score_fp8=score_fp8)
    else:  # the per-sequence choice
        from kernels.triton import fp8_table
        keep = f8._ENV_MIN_ROWS, fp8_table._on_measured_gpu
        f8._ENV_MIN_ROWS, fp8_table._on_measured_gpu = str(score_fp8), (lambda rows: True)
        try:
            seq_fp8 = f8.fp8_sequences(q, meta)
            got = ti.indexer_topk(q, wt, keys, meta, topk, key_format=kf, row_tile=row_tile)
        finally:
            f8._ENV_MIN_ROWS, fp8_table._on_measured_gpu = keep
        assert any(seq_fp8) and not all(seq_fp8[b] for b in range(meta.num_seqs) if qs[b + 1] > qs[b]), seq_fp8
        row_fp8 = [seq_fp8[b] for b in range(meta.num_seqs) for _ in range(qs[b + 1] - qs[b])]
        ref8 = ri.indexer_topk(q, wt, keys, meta, topk, key_format=kf, score_fp8=True)
        ref = ri.indexer_topk(q, wt, keys, meta, topk, key_format=kf, score_fp8=False)
        pick = torch.tensor(row_fp8, device=ref.device)
        ref = torch.where(pick[:, None], ref8, ref)
    # compare selected sets; for near-ties accept equal score sums (the twin's scores)
    bad = 0
    for b in range(meta.num_seqs):
        s0, s1 = meta.query_start_host[b], meta.query_start_host[b + 1]
        e = (meta.context_lens_host[b] + s1 - s0) // 4
        if s1 == s0:
            continue
        from kernels.ref.attention import gather_entries
        rows = gather_entries(keys, meta.block_tables[b], e) if e else None
        for t in range(s0, s1):
            a = sorted(x for x in ref[t].tolist() if x >= 0)
            bsel = sorted(x for x in got[t].tolist() if x >= 0)
            if a == bsel:
                continue
            if len(a) != len(bsel) or len(set(bsel)) != len(bsel):
                bad += 1
                continue
            sc = ri.index_scores(q[t:t + 1], wt[t:t + 1], rows, ci, kf, row_fp8[t])[0]
            sa, sb = sc[a].sort().values, sc[bsel].sort().values
            # FP4 keys on the GPU: 5e-3 from when this check rotated its one row apart from the batched rotation
            # (q now comes rotated once for both; the tighter bound is not yet tried on a GPU)
            tol = 5e-3 if (fp8 == "fp4" and device != "cpu") else 1e-3
            if (sa - sb).abs().max() > tol * sc.abs().max():
                bad += 1
    return {"rows_mismatch": float(bad)}


def indexer_fp8_scores_case(specs, *, hi, ci, block_size, fp8, device, seed=0, rows=2):
    """The FP8 index scores themselves (triton/indexer_fp8.py pack + score kernels, one tile of every row, `rows`
    rows per program) vs the twin's index_scores(score_fp8=True), per sequence: max |diff| / max |twin score|."""
    from kernels.ref import indexer as ri
    from kernels.ref.attention import gather_entries
    from kernels.triton import indexer_fp8 as f8
    meta, nblocks, _ = make_meta(specs, block_size, device, seed)
    g = torch.Generator().manual_seed(seed + 5)
    n = meta.num_tokens
    q = torch.randn(n, hi, ci, generator=g).to(device)
    wt = torch.randn(n, hi, generator=g).to(device)
    kvals = (torch.randn(nblocks, block_size // 4, ci, generator=g) * 3).to(device)
    kf = "fp4" if fp8 == "fp4" else ("fp8" if fp8 else "dense")
    keys = {"fp4": kv_fp8.pack_index_key_fp4, "fp8": kv_fp8.pack_index_key}.get(kf, lambda x: x)(kvals)
    if device != "cpu":
        q = q.bfloat16()
        keys = keys if kf != "dense" else keys.bfloat16()
    q = kv_fp8.rotate_for_keys(q, kf).contiguous()
    e_cap = meta.max_seq_len // 4
    scores = torch.full((n, e_cap), float("nan"), device=device)
    kfmt = {"dense": 0, "fp8": 1, "fp4": 2}[kf]
    f8.scores_fp8(q, wt, f8.pack_keys(keys, meta, ci, 4, kfmt), meta, scores, 0, n, 4, 7, rows=rows)
    worst = 0.0
    for b, s0, s1, start in meta.chunks():
        e = (start + s1 - s0) // 4
        if e == 0:
            continue
        ref = ri.index_scores(q[s0:s1].float(), wt[s0:s1], gather_entries(keys, meta.block_tables[b], e), ci, kf,
                              True)
        limit = (meta.positions[s0:s1].long() + 1) // 4
        ok = torch.arange(e, device=device)[None, :] < limit[:, None]
        got = scores[s0:s1, :e]
        diff = torch.where(ok, got - ref, 0.0).abs().max()
        worst = max(worst, float(diff / ref.abs().max().clamp_min(1e-12)))
    return {"scores": worst}


def topk_case(rows, n_cols, topk, device, seed=0, reg_max=None):
    """Radix select alone on random fp32 rows (ratio=1, positions = n_cols-1); reg_max=0 forces the
    streaming (chunked) kernel."""
    from kernels.triton import indexer as ti
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, n_cols, generator=g).to(device)
    pos = torch.full((rows,), n_cols - 1, dtype=torch.int32, device=device)
    out = torch.full((rows, topk), -1, dtype=torch.int32, device=device)
    ti.topk_rows(scores, pos, out, 0, rows, topk, 1, reg_max=reg_max)
    ref = scores.topk(min(topk, n_cols), dim=1).indices.sort(1).values
    got = out.long().sort(1).values[:, -ref.shape[1]:] if n_cols >= topk else out.long().sort(1).values
    if n_cols < topk:
        return {"mismatch": float((got[:, -n_cols:] != torch.arange(n_cols, device=device)).sum().item())}
    return {"mismatch": float((got != ref).sum().item())}


def compressor_case(specs, *, c, r, ratio, overlap, block_size, fp8, index_key, device, seed=0):
    from kernels.ref import compressor as rc
    from kernels.triton import compressor as tc
    meta, nblocks, nslots = make_meta(specs, block_size, device, seed)
    kf = "fp4" if fp8 == "fp4" else ("fp8" if fp8 else "dense")  # the key store's format, named explicitly
    g = torch.Generator().manual_seed(seed + 3)
    coff = 2 if overlap else 1
    n = meta.num_tokens
    kv = torch.randn(n, coff * c, generator=g).to(device)
    sc = torch.randn(n, coff * c, generator=g).to(device)
    kt = torch.randn(nslots, coff * ratio, coff * c, generator=g).to(device)
    st = torch.randn(nslots, coff * ratio, coff * c, generator=g).to(device)
    normw = (1 + 0.1 * torch.randn(c, generator=g)).to(device)
    invf = (1.0 / (1000.0 ** (torch.arange(0, r, 2).float() / r))).to(device)
    per_block = block_size // ratio
    if fp8:
        row = kv_fp8.index_key_bytes(c, "fp4" if fp8 == "fp4" else "fp8") if index_key else kv_fp8.entry_bytes(c, r)
        pool = torch.zeros(nblocks, per_block, row, dtype=torch.uint8, device=device)
    else:
        pool = torch.zeros(nblocks, per_block, c, dtype=torch.float32, device=device)
    res = []
    for mod in (rc, tc):
        p, a, b = pool.clone(), kt.clone(), st.clone()
        mod.compress_and_store(kv, sc, a, b, normw, invf, p, meta, ratio=ratio, overlap=overlap, eps=1e-6,
                               index_keys=kf if index_key else None)
        res.append((p, a, b))
    (p0, a0, b0), (p1, a1, b1) = res
    if fp8:
        v0 = kv_fp8.read_keys(p0, c, kf) if index_key else kv_fp8.unpack_entry(p0, c, r)
        v1 = kv_fp8.read_keys(p1, c, kf) if index_key else kv_fp8.unpack_entry(p1, c, r)
        err = _rel(v1, v0)
        if fp8 == "fp4":  # byte-exact except where fp32 summation order flips a rounding tie
            err = float((p0 != p1).float().mean().item())
    else:
        err = _rel(p1, p0)
    return {"entries": err, "tails": float((a0 != a1).sum().item() + (b0 != b1).sum().item())}


# ---- CPU interpreter suites (run by test_*_interp.py in a TRITON_INTERPRET=1 subprocess) ------
# (case name, max allowed value). FP8 packing under the interpreter differs from torch in rounding
# (fp32->bf16 truncates, fp8 conversion rounds differently for a few values), so FP8-written
# entries get a loose tolerance here; the GPU tests check them tightly.

def interp_suite(op: str) -> list[tuple[str, float, float]]:
    dev, f32 = "cpu", torch.float32
    res: list[tuple[str, float, float]] = []

    def add(prefix, d, tols):
        for k, v in d.items():
            res.append((f"{prefix}:{k}", v, tols.get(k, 1e-5)))

    if op == "attention":
        specs = [(0, 3), (37, 1), (9, 6), (4, 0)]
        add("sliding", attention_case(specs, h=4, c=64, r=16, w=8, ratio=0, topk=0, block_size=16, fp8=False,
                                      device=dev, dtype=f32), {})
        add("csa", attention_case(specs, h=4, c=64, r=16, w=8, ratio=4, topk=4, block_size=16, fp8=False,
                                  device=dev, dtype=f32), {})
        add("hca", attention_case(specs, h=4, c=64, r=16, w=8, ratio=8, topk=0, block_size=16, fp8=False,
                                  device=dev, dtype=f32), {})
        # longer chunks: packed entries spanning several tiles and blocks, a chunk starting mid-window
        add("hca-fp8", attention_case([(0, 40), (21, 19), (70, 2)], h=4, c=128, r=64, w=8, ratio=2, topk=0,
                                      block_size=16, fp8=True, device=dev, dtype=f32), {"pack": 1e9})
        add("csa-fp8", attention_case(specs, h=4, c=128, r=64, w=8, ratio=4, topk=4, block_size=16, fp8=True,
                                      device=dev, dtype=f32), {"pack": 1e9})
    elif op == "attention-fp8":  # the FP8-entry cases alone (run under the kernels' switches, e.g. the rope-block load)
        specs = [(0, 3), (37, 1), (9, 6), (4, 0)]
        add("csa-fp8", attention_case(specs, h=4, c=128, r=64, w=8, ratio=4, topk=4, block_size=16, fp8=True,
                                      device=dev, dtype=f32), {"pack": 1e9})
        add("hca-fp8", attention_case([(0, 40), (21, 19), (70, 2)], h=4, c=128, r=64, w=8, ratio=2, topk=0,
                                      block_size=16, fp8=True, device=dev, dtype=f32), {"pack": 1e9})
    elif op == "indexer":
        add("dense", indexer_case([(0, 3), (37, 1), (60, 6), (3, 0)], hi=4, ci=32, topk=4, block_size=16, fp8=False,
                                  device=dev), {"rows_mismatch": 0})
        add("fp8-rowtile", indexer_case([(0, 3), (37, 1), (60, 6)], hi=4, ci=32, topk=4, block_size=16, fp8=True,
                                        device=dev, row_tile=4), {"rows_mismatch": 0})
        add("fp4-keys", indexer_case([(0, 3), (37, 1), (60, 6)], hi=4, ci=64, topk=4, block_size=16, fp8="fp4",
                                     device=dev), {"rows_mismatch": 0})
        # score programs of 2 rows: groups that straddle sequences and the tile end (row_tile 5)
        add("dense-rows2", indexer_case([(0, 3), (37, 1), (60, 6), (3, 0), (9, 5)], hi=4, ci=32, topk=4,
                                        block_size=16, fp8=False, device=dev, group_rows=2), {"rows_mismatch": 0})
        add("fp8-rows2-rowtile", indexer_case([(0, 3), (37, 1), (60, 6), (9, 5)], hi=4, ci=32, topk=4, block_size=16,
                                              fp8=True, device=dev, row_tile=5, group_rows=2), {"rows_mismatch": 0})
        add("fp4-rows2", indexer_case([(0, 3), (60, 6)], hi=4, ci=64, topk=4, block_size=16, fp8="fp4", device=dev,
                                      group_rows=2), {"rows_mismatch": 0})
        # FP8 index scores (prefill path) from each key format, 1 / 2 / 4 rows per program: groups that straddle
        # sequences and the tile end (row_tile 5)
        for kf, rows in ((False, 2), (True, 4), ("fp4", 1)):
            add(f"score-fp8-{kf}-rows{rows}", indexer_case([(0, 3), (37, 1), (60, 6), (3, 0), (9, 5)], hi=4,
                                                           ci=32 if kf != "fp4" else 64, topk=4, block_size=16, fp8=kf,
                                                           device=dev, row_tile=5, score_fp8=True, group_rows=rows),
                {"rows_mismatch": 0})
        # two tensor-parallel halves of the heads, partial score tiles summed by the reduce hook (bf16 and FP8 scores)
        for sf in (False, True):
            add(f"split-heads-score-fp8-{sf}", indexer_case([(0, 3), (37, 1), (60, 6), (9, 5)], hi=4, ci=32, topk=4,
                                                            block_size=16, fp8=True, device=dev, row_tile=5,
                                                            score_fp8=sf, split_heads=True), {"rows_mismatch": 0})
        # the per-sequence choice: chunks of >= 5 tokens in FP8, the others (decode-like rows) in bf16, in one call
        add("score-fp8-per-sequence", indexer_case([(0, 3), (37, 1), (60, 6), (3, 0), (9, 5), (20, 2)], hi=4, ci=32,
                                                   topk=4, block_size=16, fp8=True, device=dev, row_tile=5,
                                                   score_fp8=5), {"rows_mismatch": 0})
        for kf, rows in ((False, 1), (True, 2), ("fp4", 4)):
            add(f"scores-fp8-{kf}-rows{rows}", indexer_fp8_scores_case([(0, 3), (37, 1), (60, 6), (3, 0), (9, 5)],
                                                                       hi=4, ci=32 if kf != "fp4" else 64,
                                                                       block_size=16, fp8=kf, device=dev, rows=rows),
                {"scores": 1e-6})
        add("radix", topk_case(3, 700, 16, dev), {"mismatch": 0})
        add("radix-stream", topk_case(3, 700, 16, dev, reg_max=0), {"mismatch": 0})
        add("short", topk_case(2, 10, 16, dev), {"mismatch": 0})
        add("short-stream", topk_case(2, 10, 16, dev, reg_max=0), {"mismatch": 0})
    elif op == "compressor":
        add("csa", compressor_case([(0, 9), (37, 1), (6, 7)], c=64, r=16, ratio=4, overlap=True, block_size=16,
                                   fp8=False, index_key=False, device=dev), {"tails": 0})
        add("hca", compressor_case([(0, 9), (15, 1), (6, 11)], c=64, r=16, ratio=8, overlap=False, block_size=16,
                                   fp8=False, index_key=False, device=dev), {"tails": 0})
        add("csa-fp8", compressor_case([(0, 9), (39, 1), (6, 7)], c=128, r=64, ratio=4, overlap=True, block_size=16,
                                       fp8=True, index_key=False, device=dev), {"entries": 0.1, "tails": 0})
        add("key-fp8", compressor_case([(0, 9), (39, 1), (6, 7)], c=32, r=16, ratio=4, overlap=True, block_size=16,
                                       fp8=True, index_key=True, device=dev), {"entries": 0.1, "tails": 0})
        add("key-fp4", compressor_case([(0, 9), (39, 1), (6, 7)], c=64, r=16, ratio=4, overlap=True, block_size=16,
                                       fp8="fp4", index_key=True, device=dev), {"entries": 0.02, "tails": 0})
    elif op == "model":
        add("logits", model_logits_case(n_prefill=40, n_decode=4), {})
    return res


def model_logits_case(n_prefill: int, n_decode: int) -> dict:
    """Whole-model logits (fp32, CPU) with the Triton attention/indexer/compressor ops vs the torch
    twins: prefill through a reversed block table, then single-token decode steps (CSA ratio 4 with
    more eligible entries than top-k, HCA ratio 8, sliding layer)."""
    import kernels
    from models.config import tiny_config
    from models.state import single_sequence_batch
    from tests.models.oracle import our_model, random_state_dict

    cfg = tiny_config(compress_ratios=(0, 4, 8, 4), index_topk=8, head_dim=128, qk_rope_head_dim=64,
                      index_head_dim=64)
    model = our_model(cfg, random_state_dict(cfg, seed=1))
    n = n_prefill + n_decode
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(2))
    outs = {}
    kernels.set_backend("ref")
    try:
        for backend in ("ref", "triton"):
            kernels.set_attention_backend(backend)
            state = model.new_state(num_slots=2, num_blocks=20, block_size=16, kv_format="bf16")
            table = torch.arange(19, 9, -1)
            chunks = []
            for a, b in ((0, n_prefill), *((i, i + 1) for i in range(n_prefill, n))):
                chunks.append(model.compute_logits(model(single_sequence_batch(ids[a:b], a, table, slot=1), state)))
            outs[backend] = torch.cat(chunks)
    finally:
        kernels.set_attention_backend(None)
        kernels.set_backend("auto")
    ref, got = outs["ref"], outs["triton"]
    return {"rel": ((got - ref).norm() / ref.norm()).item()}


def run_interp_subprocess(op: str, timeout: int = 300, env_extra: dict | None = None) -> list[tuple[str, float, float]]:
    """Run interp_suite(op) in a fresh interpreter with TRITON_INTERPRET=1 (it must be set before
    triton compiles our @triton.jit functions, i.e. before kernels.triton.* is imported; a
    subprocess keeps it out of the pytest process, where GPU tests need the real compiler). env_extra: more
    environment for that process (the kernels' import-time switches)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(env_extra or {}))
    code = ("import json, sys; from tests.kernels.kernel_cases import interp_suite; "
            "print('RESULT', json.dumps(interp_suite(sys.argv[1])))")
    p = subprocess.run([sys.executable, "-c", code, op], cwd=root, env=env, capture_output=True, text=True,
                       timeout=timeout)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and line, f"interpreter run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return [tuple(x) for x in json.loads(line[-1][7:])]
