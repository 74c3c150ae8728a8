"""Pure-torch twin of the MoE router tail and the token->expert alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_route(
    logits: torch.Tensor,  # [N, E] fp32 router logits (x @ W_g^T)
    topk: int,
    routed_scaling: float,
    renorm: bool = True,
    bias: torch.Tensor | None = None,  # [E] fp32 selection bias (non-hash layers)
    tid2eid: torch.Tensor | None = None,  # [V, topk] expert table (hash layers)
    input_ids: torch.Tensor | None = None,  # [N] token ids (hash layers)
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (weights [N, topk] fp32, ids [N, topk] int32).

    s = sqrt(softplus(logits)); ids = topk(s + bias) or tid2eid[input_ids]; w = s[ids] (renormalised
    over the k selected if `renorm`) * routed_scaling."""
    scores = F.softplus(logits.float()).sqrt()
    if tid2eid is not None:
        ids = tid2eid[input_ids.long()].long()
    else:
        sel = scores if bias is None else scores + bias.float()
        ids = torch.topk(sel, topk, dim=-1, sorted=True).indices
    w = scores.gather(1, ids)
    if renorm:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * routed_scaling, ids.to(torch.int32)


def max_aligned_sizes(num_pairs: int, num_experts: int, block_m: int) -> tuple[int, int]:
    """Upper bounds (padded pair slots, blocks) of the aligned layout, known without a device sync."""
    blocks = -(-num_pairs // block_m) + min(num_experts, num_pairs)
    return blocks * block_m, blocks


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort flat (token, slot) pairs by expert into blocks of `block_m` (each block one expert).

    -> sorted_ids int32 [max_padded] (flat pair index t*k+j; pad slots hold N*k),
       expert_ids int32 [max_blocks] (expert of each block; -1 past the used blocks),
       num_post_padded int32 [1] (used slots = sum_e ceil(cnt_e / block_m) * block_m).
    Pairs keep their flat order within an expert (stable)."""
    flat = ids.reshape(-1).long()
    p = flat.numel()
    max_pad, max_blocks = max_aligned_sizes(p, num_experts, block_m)
    dev = ids.device
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    cstart = torch.cumsum(counts, 0) - counts
    rank = torch.arange(p, device=dev) - cstart[sorted_e]
    sorted_ids = torch.full((max_pad,), p, dtype=torch.int32, device=dev)
    sorted_ids[starts[sorted_e] + rank] = order.to(torch.int32)
    total = int(padded.sum())
    expert_ids = torch.full((max_blocks,), -1, dtype=torch.int32, device=dev)
    nb = padded // block_m
    expert_ids[: total // block_m] = torch.repeat_interleave(torch.arange(num_experts, device=dev), nb).to(torch.int32)
    return sorted_ids, expert_ids, torch.tensor([total], dtype=torch.int32, device=dev)
