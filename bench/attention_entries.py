"""bench/kernels.py entries for issue 5: sparse attention (decode CSA/HCA/SWA, bf16 and FP8 entries,
split-K), lightning indexer (score + radix top-k; top-k alone vs torch.topk), compress-and-store
(decode), and chunked prefill at 128K context. Registered into bench/kernels.py's REGISTRY by
`install(register, bench_ms)`; each entry takes the bench Ctx (ceilings measured in the same run)
and emits rows with us, TBps / TFLOPs and % of the measured ceilings."""

from __future__ import annotations

import math

import torch

H, C, R, W, TOPK, BS = 64, 512, 64, 128, 512, 256


def _emit(ctx, op, us, bytes_=0.0, flops=0.0, **kw):
    r = dict(bench=op, us=us, **kw)
    if bytes_:
        r["TBps"] = bytes_ / us / 1e6
        r["pct_hbm"] = 100 * bytes_ / us / 1e3 / ctx.hbm_gbps
    if flops:
        r["TFLOPs"] = flops / us / 1e6
        r["pct_mm"] = 100 * flops / us / 1e6 / ctx.bf16_tflops
    return ctx.emit(**r)


def _chunk_meta(n_ctx: int, chunk: int, n_blocks: int, g, dev: str = "cuda"):
    """AttnMeta of one sequence's last `chunk` tokens of an n_ctx-token prompt over n_blocks shuffled blocks
    (the long-prompt prefill benches) -> (meta, positions)."""
    from models.state import ForwardBatch, batch_metadata
    start = n_ctx - chunk
    batch = ForwardBatch(input_ids=torch.zeros(chunk, dtype=torch.long, device=dev),
                         positions=torch.arange(start, n_ctx, device=dev),
                         slot_ids=torch.zeros(1, dtype=torch.long, device=dev),
                         block_tables=torch.randperm(n_blocks, device=dev, generator=g)[None],
                         logits_indices=torch.zeros(1, dtype=torch.long, device=dev),
                         query_start=[0, chunk], context_lens=[start])
    return batch_metadata(batch), batch.positions


def _decode_setup(b, ctx_len, ratio, fp8, seed=0, topk=TOPK):
    """b decode tokens, each at position ctx_len-1 of its own sequence; random entries and tables."""
    from kernels.ref import kv_fp8
    from models.state import ForwardBatch, batch_metadata
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(seed)
    nb_seq = math.ceil(ctx_len / BS)
    tables = torch.randperm(b * nb_seq, device=dev, generator=g).view(b, nb_seq)
    batch = ForwardBatch(input_ids=torch.zeros(b, dtype=torch.long, device=dev),
                         positions=torch.full((b,), ctx_len - 1, device=dev), slot_ids=torch.arange(b, device=dev),
                         block_tables=tables, logits_indices=torch.arange(b, device=dev),
                         query_start=list(range(b + 1)), context_lens=[ctx_len - 1] * b)
    meta = batch_metadata(batch)
    row_b = kv_fp8.entry_bytes(C, R) if fp8 else C

    def rnd(*shape):
        if fp8:
            t = torch.randint(0, 120, shape, dtype=torch.uint8, device=dev)  # finite e4m3
            t[..., 448:576] = torch.randn(*shape[:-1], 64, device=dev).bfloat16().view(torch.uint8)
            t[..., 576:583] = 123  # UE8M0 scale 2^-4
            return t
        return torch.randn(*shape, device=dev, dtype=torch.bfloat16, generator=g)

    ring = rnd(b, W, row_b)
    kv_cur = rnd(b, row_b)
    pool = rnd(b * nb_seq, BS // ratio, row_b) if ratio else None
    q = torch.randn(b, H, C, device=dev, dtype=torch.bfloat16, generator=g)
    sink = torch.randn(H, device=dev)
    idx = None
    if ratio == 4:
        n_ent = ctx_len // 4
        idx = torch.stack([torch.randperm(n_ent, device=dev, generator=g)[:topk] for _ in range(b)]).int()
    return meta, q, kv_cur, ring, pool, idx, sink, row_b


def _torch_attention(q, keys, sink):
    """Gather-then-dense baseline on bf16 keys [B, L, C] (gathered)."""
    s = torch.einsum("bhc,blc->bhl", q, keys).float() * C ** -0.5
    s = torch.cat((s, sink[None, :, None].expand(s.shape[0], -1, 1)), -1)
    p = torch.softmax(s, -1)[..., :-1].to(q.dtype)
    return torch.einsum("bhl,blc->bhc", p, keys)


def install(register, bench_ms):
    def us_of(fn, graph=True, rep=100):
        return bench_ms(fn, graph=graph, rep=rep) * 1e3

    @register("attention")
    def bench_attention(ctx):
        from kernels.triton import attention as ta
        # CSA cost is ~independent of the context (window + top-512): the full batch sweep at 32K, and
        # 8K / 128K / 1M at batch 1 and 64 where it fits in 16M context tokens
        cases = [("csa", 4, b, n) for b in (1, 8, 64, 256) for n in (8192, 32768, 131072, 1 << 20)
                 if n == 32768 or (b in (1, 64) and b * n <= (16 << 20))]
        cases += [("hca", 128, b, n) for b in (1, 8, 64, 256) for n in (8192, 131072, 1 << 20) if b * n <= (64 << 20)]
        cases += [("swa", 0, b, 8192) for b in (64, 256)]
        for kind, ratio, b, n_ctx in cases:
            for fp8 in (False, True):
                meta, q, kv_cur, ring, pool, idx, sink, row_b = _decode_setup(b, n_ctx, ratio, fp8)
                n_ent = W + (TOPK if ratio == 4 else (n_ctx // ratio if ratio else 0))
                fl = 4 * H * C * n_ent * b
                by = n_ent * row_b * (1 if fp8 else 2) * b + q.numel() * 4

                def fn():
                    return ta.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=ratio, scale=C ** -0.5,
                                               rope_dim=R)
                try:
                    us = us_of(fn)
                except Exception as e:  # noqa: BLE001
                    ctx.emit(bench=f"attn_decode_{kind}", batch=b, context=n_ctx, fp8=fp8, error=repr(e)[:200])
                    continue
                _emit(ctx, f"attn_decode_{kind}", us, by, fl, batch=b, context=n_ctx, fp8=fp8, entries=n_ent,
                      nsplit=ta._num_splits(b, n_ent, 32))
                if not fp8 and b * n_ent <= 256 * 640:
                    keys_all = torch.randn(b, n_ent, C, device="cuda", dtype=torch.bfloat16)
                    gidx = torch.randint(0, n_ent, (b, n_ent), device="cuda")
                    us_t = us_of(lambda: _torch_attention(
                        q, torch.gather(keys_all, 1, gidx[..., None].expand(-1, -1, C)), sink))
                    _emit(ctx, f"torch_attn_decode_{kind}", us_t, by, fl, batch=b, context=n_ctx, fp8=False)
        for sfp8 in (False, True):  # tile sweep on the compute-bound CSA shape (batch 64)
            meta, q, kv_cur, ring, pool, idx, sink, _ = _decode_setup(64, 32768, 4, sfp8)
            for bn in (16, 32):
                for nw in (4, 8):
                    for ns in (0, 1):
                        try:
                            us = us_of(lambda: ta.sparse_attention(q, kv_cur, ring, pool, idx, meta, sink, ratio=4,
                                                                   scale=C ** -0.5, rope_dim=R, block_n=bn,
                                                                   num_warps=nw, nsplit=ns or None))
                            _emit(ctx, "attn_decode_csa_sweep", us, 0, 4 * H * C * 640 * 64, batch=64, fp8=sfp8,
                                  block_n=bn, warps=nw, nsplit=ns or "auto")
                        except Exception as e:  # noqa: BLE001
                            ctx.emit(bench="attn_decode_csa_sweep", block_n=bn, warps=nw, error=repr(e)[:200])

    @register("indexer")
    def bench_indexer(ctx):
        from kernels.triton import indexer as ti
        g = torch.Generator(device="cuda").manual_seed(0)
        for b in (1, 8, 64, 256):
            for n_ctx in (8192, 32768, 131072):
                if b * n_ctx > (16 << 20):
                    continue
                meta, *_ = _decode_setup(b, n_ctx, 0, False)
                n_ent = n_ctx // 4
                nb = b * math.ceil(n_ctx / BS)
                q = torch.randn(b, 64, 128, device="cuda", dtype=torch.bfloat16, generator=g)
                w = torch.randn(b, 64, device="cuda", generator=g)
                for fp8 in (False, True, "fp4"):
                    if fp8 == "fp4":  # MXFP4 rows: 64 code bytes + 4 UE8M0 scales
                        keys = torch.randint(0, 256, (nb, BS // 4, 68), dtype=torch.uint8, device="cuda")
                        keys[..., 64:] = 120
                    elif fp8:
                        keys = torch.randint(0, 120, (nb, BS // 4, 132), dtype=torch.uint8, device="cuda")
                        keys[..., 128:] = torch.full((nb, BS // 4, 1), 0.01, device="cuda").view(torch.uint8)
                    else:
                        keys = torch.randn(nb, BS // 4, 128, device="cuda", dtype=torch.bfloat16, generator=g)
                    kf = "fp4" if fp8 == "fp4" else ("fp8" if fp8 else "dense")
                    # (MXFP4 keys: q's Hadamard rotation runs in the queries' RoPE kernel since session 10, not here)
                    us = us_of(lambda: ti.indexer_topk(q, w, keys, meta, TOPK, key_format=kf))
                    _emit(ctx, "indexer_score_topk", us, b * n_ent * keys.shape[-1] * keys.element_size(),
                          2 * 64 * 128 * n_ent * b, batch=b, context=n_ctx, fp8=fp8)
                scores = torch.randn(b, n_ent, device="cuda", generator=g)
                out = torch.empty(b, TOPK, dtype=torch.int32, device="cuda")
                pos = torch.full((b,), n_ctx - 1, dtype=torch.int32, device="cuda")
                us_k = us_of(lambda: ti.topk_rows(scores, pos, out, 0, b, TOPK, 4))
                us_t = us_of(lambda: torch.topk(scores, TOPK, dim=-1))
                _emit(ctx, "indexer_topk_only", us_k, b * n_ent * 4, 0, batch=b, context=n_ctx, torch_topk_us=us_t,
                      speedup_vs_torch=us_t / us_k)

    @register("compressor")
    def bench_compressor(ctx):
        from kernels.triton import compressor as tc
        for b in (1, 8, 64, 256):
            for name, ratio, overlap, c, key in (("csa_main", 4, True, 512, False),
                                                 ("csa_indexer", 4, True, 128, True),
                                                 ("hca_main", 128, False, 512, False)):
                for fp8 in (False, True):
                    meta, *_ = _decode_setup(b, 4096, 0, False)  # position 4095: every sequence closes an entry
                    coff = 2 if overlap else 1
                    kv = torch.randn(b, coff * c, device="cuda")
                    sc = torch.randn(b, coff * c, device="cuda")
                    kt = torch.randn(b, coff * ratio, coff * c, device="cuda")
                    st = torch.randn(b, coff * ratio, coff * c, device="cuda")
                    nw = torch.ones(c, device="cuda")
                    invf = torch.rand(32, device="cuda")
                    nb = b * math.ceil(4096 / BS)
                    rowb = (132 if key else 584) if fp8 else c
                    pool = torch.zeros(nb, BS // ratio, rowb, device="cuda",
                                       dtype=torch.uint8 if fp8 else torch.bfloat16)
                    us = us_of(lambda: tc.compress_and_store(kv, sc, kt, st, nw, invf, pool, meta, ratio=ratio,
                                                             overlap=overlap, eps=1e-6,
                                                             index_keys=("fp8" if fp8 else "dense") if key else None))
                    _emit(ctx, f"compress_store_decode_{name}", us, b * coff * ratio * coff * c * 4 * 2, 0, batch=b,
                          fp8=fp8)

    @register("prefill_attention")
    def bench_prefill(ctx):
        """Chunked prefill: the last 4096 tokens of a 128K prompt, one sequence (CSA attention +
        indexer; HCA attention). tokens/s = chunk / time."""
        from kernels.triton import attention as ta
        from kernels.triton import indexer as ti
        n_ctx, chunk, dev = 131072, 4096, "cuda"
        start = n_ctx - chunk
        g = torch.Generator(device=dev).manual_seed(0)
        nb = n_ctx // BS
        meta, _ = _chunk_meta(n_ctx, chunk, nb, g)
        q = torch.randn(chunk, H, C, device=dev, dtype=torch.bfloat16, generator=g)
        kv_cur = torch.randn(chunk, C, device=dev, dtype=torch.bfloat16, generator=g)
        ring = torch.randn(1, W, C, device=dev, dtype=torch.bfloat16, generator=g)
        sink = torch.randn(H, device=dev)
        iq = torch.randn(chunk, 64, 128, device=dev, dtype=torch.bfloat16, generator=g)
        iw = torch.randn(chunk, 64, device=dev, generator=g)
        keys = torch.randn(nb, BS // 4, 128, device=dev, dtype=torch.bfloat16, generator=g)
        pool4 = torch.randn(nb, BS // 4, C, device=dev, dtype=torch.bfloat16, generator=g)
        pool128 = torch.randn(nb, BS // 128, C, device=dev, dtype=torch.bfloat16, generator=g)
        us_i = us_of(lambda: ti.indexer_topk(iq, iw, keys, meta, TOPK, key_format="dense"), graph=False, rep=300)
        n_avg = (start + chunk / 2) / 4
        _emit(ctx, "prefill128k_indexer", us_i, 0, 2 * 64 * 128 * n_avg * chunk, chunk=chunk,
              tok_per_s=chunk / us_i * 1e6, score_rows_per_tile=ti.SCORE_BUDGET_BYTES // (4 * n_ctx // 4))
        idx = ti.indexer_topk(iq, iw, keys, meta, TOPK, key_format="dense")
        us_a = us_of(lambda: ta.sparse_attention(q, kv_cur, ring, pool4, idx, meta, sink, ratio=4, scale=C ** -0.5,
                                                 rope_dim=R), graph=False, rep=300)
        _emit(ctx, "prefill128k_csa_attention", us_a, 0, 4 * H * C * (W + TOPK) * chunk, chunk=chunk,
              tok_per_s=chunk / us_a * 1e6)
        us_h = us_of(lambda: ta.sparse_attention(q, kv_cur, ring, pool128, None, meta, sink, ratio=128,
                                                 scale=C ** -0.5, rope_dim=R), graph=False, rep=300)
        _emit(ctx, "prefill128k_hca_attention", us_h, 0, 4 * H * C * (W + n_ctx / 128) * chunk, chunk=chunk,
              tok_per_s=chunk / us_h * 1e6)
        ctx.emit(bench="prefill128k_csa_attn_plus_indexer", us=us_a + us_i, chunk=chunk,
                 tok_per_s=chunk / (us_a + us_i) * 1e6)

    @register("hca_prefill")
    def bench_hca_prefill(ctx):
        """HCA attention of one prefill chunk (the last `chunk` tokens of a prompt at 128K and 1M, one
        sequence, ratio 128, 128-token blocks as the engine uses at this model), bf16 entries: the gathering
        kernel (attention._sparse_attn_kernel) against the packed entries (attention_hca: pack + pipelined
        kernel; configs BN:STAGES from V4_ATTN_HCA_SWEEP, default the module's)."""
        import os

        from kernels.triton import attention as ta
        from kernels.triton import attention_hca as hca
        dev, bs = "cuda", 128
        g = torch.Generator(device=dev).manual_seed(0)
        sweep = os.environ.get("V4_ATTN_HCA_SWEEP")
        cfgs = ([tuple(int(x) for x in c.split(":")) for c in sweep.split(",")] if sweep else
                [(hca.BLOCK_N, hca.STAGES)])
        for n_ctx, chunk in ((131072, 8192), (1048576, 8192)):
            start = n_ctx - chunk
            nb = n_ctx // bs
            meta, _ = _chunk_meta(n_ctx, chunk, nb, g)
            q = torch.randn(chunk, H, C, device=dev, dtype=torch.bfloat16, generator=g)
            kv_cur = torch.randn(chunk, C, device=dev, dtype=torch.bfloat16, generator=g)
            ring = torch.randn(1, W, C, device=dev, dtype=torch.bfloat16, generator=g)
            sink = torch.randn(H, device=dev)
            pool = torch.randn(nb, 1, C, device=dev, dtype=torch.bfloat16, generator=g)
            flops = 4 * H * C * (W + (start + chunk / 2) / 128) * chunk
            def gather():
                return ta.sparse_attention(q, kv_cur, ring, pool, None, meta, sink, ratio=128, scale=C ** -0.5,
                                           rope_dim=R, hca_packed=False)
            us = us_of(gather, graph=False, rep=10)
            ref = gather()
            _emit(ctx, "hca_prefill_gather", us, 0, flops, context=n_ctx, chunk=chunk)
            us_p = us_of(lambda: hca.pack_entries(pool, meta, 128, C, C, 0, False, torch.bfloat16), graph=False,
                         rep=10)
            for bn, st in cfgs:
                def packed():
                    return hca.hca_prefill_attention(q, kv_cur, ring, pool, meta, sink, ratio=128, scale=C ** -0.5,
                                                     fp8=False, nope=C, rope_dim=0, nsplit=1, block_n=bn, stages=st)
                us8 = us_of(packed, graph=False, rep=10)
                out = packed()
                _emit(ctx, "hca_prefill_packed", us8, 0, flops, context=n_ctx, chunk=chunk, block_n=bn, stages=st,
                      pack_us=us_p, speedup=us / us8,
                      max_rel_diff=((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item())
            del q, kv_cur, pool, ref
            torch.cuda.empty_cache()

    @register("indexer_prefill")
    def bench_indexer_prefill(ctx):
        """The indexer at long-prompt prefill, per row tile: T consecutive tokens of one sequence ending at the
        context length scored against its ctx/4 keys (dense bf16), rows per score program 1 vs 2
        (indexer.SCORE_ROWS_CHOICES, env V4_IDX_ROWS) and the FP8 index scores (indexer_fp8: key packing + score
        kernel, env V4_IDX_FP8_ROWS / _BLOCK_E / _STAGES / _WARPS, or a sweep of
        configs V4_IDX_FP8_SWEEP), then the tile's top-512 with the streaming kernel, at
        T = 256 (what SCORE_BUDGET_BYTES gives at 1M) and larger tiles (V4_IDX_SCORE_MB). The sampled top-k
        against the streaming one: entry `topk_prefill` (bench/topk_entries.py)."""
        import os

        from kernels.triton import indexer as ti
        from kernels.triton import indexer_fp8 as f8
        from kernels.triton import topk_prefill as tp
        dev = "cuda"
        g = torch.Generator(device=dev).manual_seed(0)
        # FP8 score configs rows:block_e:stages:warps (V4_IDX_FP8_SWEEP="2:64:3:4,4:64:3:8"); default the shipped one
        sweep = os.environ.get("V4_IDX_FP8_SWEEP")
        fp8_cfgs = ([tuple(int(x) for x in c.split(":")) for c in sweep.split(",")] if sweep else
                    [(f8.ROWS, f8.BLOCK_E, f8.STAGES, f8.WARPS)])
        for n_ctx in (262144, 1048576):
            nb = n_ctx // BS
            keys = torch.randn(nb, BS // 4, 128, device=dev, dtype=torch.bfloat16, generator=g)
            for rows in (256, 1024, 2048):
                start = n_ctx - rows
                meta, positions = _chunk_meta(n_ctx, rows, nb, g)
                q = torch.randn(rows, 64, 128, device=dev, dtype=torch.bfloat16, generator=g)
                w = torch.randn(rows, 64, device=dev, generator=g)
                scores = torch.empty(rows, n_ctx // 4, device=dev)
                flops = 2 * 64 * 128 * rows * (start + rows / 2) / 4
                # only e < (pos+1)//4 is written (the rest of the buffer is stale): compare there
                written = (torch.arange(n_ctx // 4, device=dev)[None, :]
                           < torch.div(positions + 1, 4, rounding_mode="floor")[:, None])

                def rel_diff(a, b):
                    return ((a - b).abs().masked_fill(~written, 0).max()
                            / b.abs().masked_fill(~written, 0).max()).item()
                ref = None
                for r in ti.SCORE_ROWS_CHOICES:
                    os.environ["V4_IDX_ROWS"] = str(r)
                    try:
                        us = us_of(lambda: ti.indexer_scores(q, w, keys, meta, scores, 0, rows, 4, "dense"),
                                   graph=False, rep=10)
                        ti.indexer_scores(q, w, keys, meta, scores, 0, rows, 4, "dense")
                    finally:
                        os.environ.pop("V4_IDX_ROWS", None)
                    diff = 0.0 if ref is None else rel_diff(scores, ref)
                    ref = scores.clone() if ref is None else ref
                    _emit(ctx, "indexer_prefill_score", us, 0, flops, context=n_ctx, rows=rows, rows_per_prog=r,
                          max_rel_diff_vs_r1=diff)
                # FP8 index scores (triton/indexer_fp8.py): the per-call key packing, then the score tile
                us_p = us_of(lambda: f8.pack_keys(keys, meta, 128, 4, 0), graph=False, rep=10)
                packed = f8.pack_keys(keys, meta, 128, 4, 0)
                for cfg in fp8_cfgs:
                    kw = dict(zip(("rows", "block_e", "stages", "warps"), cfg))
                    us8 = us_of(lambda: f8.scores_fp8(q, w, packed, meta, scores, 0, rows, 4, ti.SCORE_PROGRAMS,
                                                      **kw), graph=False, rep=10)
                    f8.scores_fp8(q, w, packed, meta, scores, 0, rows, 4, ti.SCORE_PROGRAMS, **kw)
                    _emit(ctx, "indexer_prefill_score_fp8", us8, 0, flops, context=n_ctx, rows=rows, pack_us=us_p,
                          rows_per_prog=cfg[0], block_e=cfg[1], stages=cfg[2], warps=cfg[3],
                          max_rel_diff_vs_bf16=rel_diff(scores, ref))
                del packed
                out = torch.empty(rows, TOPK, dtype=torch.int32, device=dev)
                keep, tp.ENABLED = tp.ENABLED, False  # the streaming kernel, whatever V4_TOPK_PREFILL says
                try:
                    us_s = us_of(lambda: ti.topk_rows(scores, meta.positions, out, 0, rows, TOPK, 4), graph=False,
                                 rep=10)
                finally:
                    tp.ENABLED = keep
                _emit(ctx, "indexer_prefill_topk", us_s, rows * n_ctx, 0, context=n_ctx, rows=rows,
                      us_per_row=us_s / rows)
                del scores, ref, written
                torch.cuda.empty_cache()
