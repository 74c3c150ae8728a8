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
