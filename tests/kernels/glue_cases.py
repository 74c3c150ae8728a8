"""Shared by the glue GPU tests and bench/glue.py: a V4-Flash-shaped model (hidden 4096, hc 4, 64 heads,
FP8 linears, MXFP4 experts; few layers and experts), decode batches on it, and a kernel-launch counter
(torch.profiler: every CUDA kernel, memcpy and memset of the profiled region)."""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch


def flash_shaped_model(tmp_dir, ratios=(4, 128), n_experts: int = 16, vocab: int = 2048, seed: int = 0):
    """Write + load a quantized synthetic checkpoint of V4-Flash widths (layers = len(ratios); layer 0 hash
    routed) on the GPU, bf16 activations, resident FP8 / MXFP4 weights."""
    from models.config import flash_config
    from models.loading import load_model
    from models.synthetic import write_synthetic_checkpoint

    cfg = replace(flash_config(len(ratios)), compress_ratios=tuple(ratios), n_routed_experts=n_experts,
                  vocab_size=vocab, num_hash_layers=1)
    kw = dict(seed=seed, quantize=True, include_mtp=False)
    if "device" in inspect.signature(write_synthetic_checkpoint).parameters:
        kw["device"] = "cuda"
    write_synthetic_checkpoint(cfg, tmp_dir, **kw)
    return load_model(tmp_dir, "cuda", torch.bfloat16)


def batch_of(ids: torch.Tensor, lens: list[int], starts: list[int], block_tables: torch.Tensor):
    """ForwardBatch of one chunk per sequence b: lens[b] tokens from position starts[b], slot b."""
    from models.state import ForwardBatch

    dev = ids.device
    qs = [0]
    for n in lens:
        qs.append(qs[-1] + n)
    pos = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens)]).to(dev)
    last = torch.tensor([q - 1 for q in qs[1:]], device=dev)
    return ForwardBatch(input_ids=ids.to(dev).long(), positions=pos, slot_ids=torch.arange(len(lens), device=dev),
                        block_tables=block_tables.to(dev), logits_indices=last, query_start=qs,
                        context_lens=list(starts))


def prefilled_state(model, batch: int, prompt: int, block_size: int = 256, seed: int = 0):
    """State with `batch` sequences of `prompt` random tokens prefilled -> (state, block_tables, gen)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    per = -(-(prompt + 64) // block_size)
    state = model.new_state(num_slots=batch, num_blocks=batch * per, block_size=block_size)
    tables = torch.arange(batch * per).view(batch, per)
    ids = torch.randint(0, model.cfg.vocab_size, (batch * prompt,), device="cuda", generator=g)
    with torch.no_grad():
        model(batch_of(ids, [prompt] * batch, [0] * batch, tables), state)
    return state, tables, g


def decode_batch(model, tables, batch: int, pos: int, g):
    ids = torch.randint(0, model.cfg.vocab_size, (batch,), device="cuda", generator=g)
    return batch_of(ids, [1] * batch, [pos] * batch, tables)


def count_launches(fn) -> tuple[int, dict[str, int]]:
    """(CUDA kernels + memcpys + memsets run by fn(), count per name) under torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names: dict[str, int] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            names[e.name] = names.get(e.name, 0) + 1
    return sum(names.values()), names


def per_layer_launches(model, batch, state) -> tuple[float, dict[str, int], dict[str, int]]:
    """Launches per layer of one decode forward: (full forward - the same forward without layers) /
    layers, with the per-name counts of both runs (kernels compiled by a warm-up call first)."""
    from models.state import batch_metadata

    batch_metadata(batch)  # built once per step, outside the layers (the graph path stages it)
    layers = model.layers
    with torch.no_grad():
        model(batch, state)
        full_n, full = count_launches(lambda: model(batch, state))
        model.layers = torch.nn.ModuleList()
        try:
            model(batch, state)
            base_n, base = count_launches(lambda: model(batch, state))
        finally:
            model.layers = layers
    return (full_n - base_n) / len(layers), full, base


# ---- CPU proxy (interpreter): torch ops + Triton launches of a decode forward ------------------------
_NO_LAUNCH = {"view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "t", "transpose", "permute",
              "select", "slice", "split", "split_with_sizes", "unbind", "as_strided", "alias", "detach", "empty",
              "empty_like", "empty_strided", "unflatten", "flatten", "lift_fresh", "diagonal", "narrow", "view_as",
              "expand_as", "_reshape_alias", "new_empty", "new_empty_strided", "sym_size", "sym_stride",
              "is_same_size", "_has_compatible_shallow_copy_type"}
HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"}


def proxy_launches(ratios=(4, 128), batch: int = 2, prompt: int = 9, kv_format: str = "bf16",
                   wide: bool = False, prompts: int = 0) -> dict:
    """A tiny quantized model (resident FP8 weights, as on the GPU) under TRITON_INTERPRET=1 on CPU with
    every op on its Triton path: the torch ops that would launch
    a kernel on CUDA (everything but views and allocations) plus the Triton launches of one decode
    forward, per layer (full forward minus the forward without layers), and any host-syncing op
    (.item() / int() / bool() of a tensor, nonzero, boolean-mask indexing; a CPU .tolist() is invisible).
    kv_format: the KV cache format; wide (implied by an FP8 one): head dims the FP8 kernels pack (128 = 64 nope +
    64 rope, index keys 64). prompts: the counted forward is a mixed step, the `batch` decoders plus this many
    new `prompt`-token prompts (an eager step on the GPU: its launches are host time)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction

    import tempfile

    import kernels
    from models.config import tiny_config
    from models.loading import load_model
    from models.state import batch_metadata
    from models.synthetic import write_synthetic_checkpoint

    counts: Counter = Counter()
    inside = [0]  # torch ops run by the interpreter itself are not kernels

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
                name = "masked_select"  # boolean-mask indexing: a data-dependent shape
            if not inside[0] and name not in _NO_LAUNCH:
                counts[("SYNC:" if name in HOST_SYNC_OPS else "aten:") + name] += 1
            return func(*args, **(kwargs or {}))

    run = InterpretedFunction.run

    def counted_run(self, *a, **k):
        if not inside[0]:
            counts["triton:" + self.fn.__name__] += 1
        inside[0] += 1
        try:
            return run(self, *a, **k)
        finally:
            inside[0] -= 1

    # FP8 dense linears + FP8 experts kept resident (the GPU layout), 2 heads x 64 per o-group so wo_a
    # is whole 128x128 scale blocks and runs grouped
    wide = wide or kv_format != "bf16"
    dims = dict(head_dim=128, qk_rope_head_dim=64, index_head_dim=64) if wide else {}
    cfg = tiny_config(compress_ratios=tuple(ratios), index_topk=4, o_lora_rank=128, num_attention_heads=4,
                      o_groups=2, **dims)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_checkpoint(cfg, tmp, seed=3, quantize=True, include_mtp=False)
        model = load_model(tmp, "cpu", torch.float32, resident_quant=True)
    cfg = model.cfg
    bs = max(128, cfg.ratio_lcm)
    n = batch + prompts
    state = model.new_state(num_slots=n, num_blocks=n, block_size=bs, kv_format=kv_format)
    tables = torch.arange(n).view(n, 1)
    g = torch.Generator().manual_seed(0)
    kernels.set_backend("triton")
    InterpretedFunction.run = counted_run
    try:
        with torch.no_grad():
            ids = torch.randint(0, cfg.vocab_size, (batch * prompt,), generator=g)
            model(batch_of(ids, [prompt] * batch, [0] * batch, tables[:batch]), state)
            out = {}
            lens, starts = [1] * batch + [prompt] * prompts, [prompt] * batch + [0] * prompts
            for tag in ("full", "base"):
                b = batch_of(torch.randint(0, cfg.vocab_size, (sum(lens),), generator=g), lens, starts, tables)
                batch_metadata(b)
                layers = model.layers
                if tag == "base":
                    model.layers = torch.nn.ModuleList()
                counts.clear()
                try:
                    with _Count():
                        model(b, state)
                finally:
                    model.layers = layers
                out[tag] = Counter(counts)
    finally:
        InterpretedFunction.run = run
        kernels.set_backend("auto")
    full, base = out["full"], out["base"]
    return {"per_layer": (sum(full.values()) - sum(base.values())) / len(ratios), "full": dict(full),
            "base": dict(base), "syncs": {k: v for k, v in full.items() if k.startswith("SYNC:")}}
