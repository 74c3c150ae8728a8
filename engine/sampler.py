"""Batched sampling: one row of logits per sequence that samples this step -> one token per row.

Processing order (vLLM's), all on the logits' device, batched over rows:

  1. logprobs come from the RAW logits (log_softmax of the model output, before any penalty,
     mask, temperature or truncation), as vLLM returns them by default;
  2. allowed_token_ids, guided_choice (the next token of every choice the output still
     prefixes; EOS after a whole choice) and structured-output grammars (engine/guided: the tokens
     that keep the output a prefix of a match; EOS once it is a match): every other token -> -inf
     (a row left with no token may take EOS); logit_bias: added to the listed tokens' logits;
     min_tokens: below `min_tokens` generated tokens, EOS (even with ignore_eos) and stop_token_ids
     are set to -inf; ignore_eos itself masks nothing (the engine doesn't stop on EOS);
     bad_words: a word's last token is set to -inf when the output ends with its other tokens;
  3. penalties: repetition (prompt + output tokens: positive logits divided, negative multiplied),
     frequency (minus freq * count in output) and presence (minus presence if count > 0);
  4. greedy rows take the argmax here; the other rows are divided by their temperature;
  5. min-p, then top-k and top-p (min-p compares to the max probability, which neither truncation
     changes, so it commutes with top-k; vLLM also applies it first);
  6. sampling by argmax(probs / q) with q ~ Exp(1) (the exponential-race form of a categorical draw);
     a seeded row draws q from its own generator, so its tokens do not depend on the batch;
  7. forced tokens (thinking budget reached) replace the chosen token; their logprob entry holds the
     forced token's raw logprob.

The only host -> device traffic is `SamplingMetadata.build` (once per step, pinned and non-blocking:
building never waits for the device); the only device -> host sync is reading logprob dicts
(`SamplerOutput.logprobs()`, or the engine's once-per-step copy of `logprob_pack`), and only when a
row asked for logprobs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.h2d import h2d
from engine.sampling_params import SamplingParams

_NEG_INF = float("-inf")


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed` (any Python int; reduced to 64 bits)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def _allowed_now(p: SamplingParams, output: list[int], eos_token_id: int | None) -> list[int]:
    """Tokens a row may sample next: allowed_token_ids, intersected with the next token of every
    guided choice the output is still a prefix of (EOS once it equals a whole choice)."""
    if p.choice_token_ids is None:
        return p.allowed_token_ids
    n = len(output)
    nxt = {c[n] for c in p.choice_token_ids if len(c) > n and c[:n] == output}
    if any(c == output for c in p.choice_token_ids) and eos_token_id is not None:
        nxt.add(eos_token_id)
    if p.allowed_token_ids is not None:
        nxt &= set(p.allowed_token_ids)
    return sorted(nxt) or ([eos_token_id] if eos_token_id is not None else [])


def _forced_token(p: SamplingParams, output: list[int]) -> int | None:
    """thinking_end_token_id when the thinking budget is spent without it having been generated."""
    if p.thinking_budget is None or len(output) < p.thinking_budget:
        return None
    return None if p.thinking_end_token_id in output else p.thinking_end_token_id


@dataclass
class SamplingMetadata:
    """Per-step sampling tensors, S rows (one per sampling sequence); optional parts are None when
    no row uses them, so the sampler skips that work."""

    num_rows: int  # S
    temperature: torch.Tensor  # [S] float32; 1.0 on greedy rows (never divides by zero)
    greedy_rows: torch.Tensor | None  # [S] bool, True = argmax; None when no row is greedy
    all_greedy: bool  # every row is greedy: skip temperature/truncation/sampling entirely
    top_k: torch.Tensor | None  # [S] long, vocab size where disabled; None when no row uses top-k
    max_top_k: int  # largest enabled k (0 when top_k is None)
    top_p: torch.Tensor | None  # [S] float32, 1.0 where disabled; None when unused
    min_p: torch.Tensor | None  # [S] float32, 0.0 where disabled; None when unused
    generators: dict[int, torch.Generator]  # row -> generator of seeded random rows
    # min_tokens: flat (row, token id) pairs set to -inf this step
    banned_rows: torch.Tensor | None  # [B] long
    banned_token_ids: torch.Tensor | None  # [B] long
    # penalties, for the P rows that use one (counts are built for those rows only)
    penalty_rows: torch.Tensor | None  # [P] long, row indices
    repetition_penalty: torch.Tensor | None  # [P, 1] float32
    seen_mask: torch.Tensor | None  # [P, V] bool: token in prompt or output; None if no repetition penalty
    frequency_penalty: torch.Tensor | None  # [P, 1] float32
    presence_penalty: torch.Tensor | None  # [P, 1] float32
    output_counts: torch.Tensor | None  # [P, V] float32 occurrences in the output; None if unused
    # logit_bias: flat (row, token id, bias) triples added to the logits
    bias_rows: torch.Tensor | None  # [L] long
    bias_token_ids: torch.Tensor | None  # [L] long
    bias_values: torch.Tensor | None  # [L] float32
    # allowed_token_ids: rows restricted to a token set
    allowed_rows: torch.Tensor | None  # [A] long
    allowed_mask: torch.Tensor | None  # [A, V] bool, True = may be sampled
    # thinking budget: rows whose next token is forced
    forced_rows: torch.Tensor | None  # [F] long
    forced_token_ids: torch.Tensor | None  # [F] long
    num_logprobs: list[int | None]  # per row: top-k logprobs wanted (None = no logprobs)
    max_num_logprobs: int | None  # max over rows; None when no row wants logprobs

    @classmethod
    def build(cls, params: list[SamplingParams], output_token_ids: list[list[int]],
              prompt_token_ids: list[list[int]], generators: list[torch.Generator | None],
              eos_token_id: int | None, vocab_size: int, device: torch.device | str,
              guides: list[Any] | None = None) -> SamplingMetadata:
        """Gather row values into tensors. Row i samples for a sequence with params[i], its generated
        tokens output_token_ids[i], its prompt prompt_token_ids[i], generator generators[i] and
        structured-output cursor guides[i] (engine.guided.GuideCursor or None)."""
        S, V = len(params), vocab_size
        if not (len(output_token_ids) == len(prompt_token_ids) == len(generators) == S):
            raise ValueError("params, output_token_ids, prompt_token_ids and generators must have one entry per row")

        def f32(vals: list[float]) -> torch.Tensor:
            return h2d(torch.tensor(vals, dtype=torch.float32), device)

        def i64(vals: list[int]) -> torch.Tensor:
            return h2d(torch.tensor(vals, dtype=torch.long), device)

        greedy = [p.greedy for p in params]
        rand = [i for i in range(S) if not greedy[i]]
        ks = [params[i].top_k for i in rand if 0 < params[i].top_k < V]
        top_k = i64([p.top_k if not g and 0 < p.top_k < V else V for p, g in zip(params, greedy)]) if ks else None
        use_top_p = any(params[i].top_p < 1.0 for i in rand)
        use_min_p = any(params[i].min_p > 0.0 for i in rand)

        banned_rows, banned_ids = [], []
        for i, (p, out) in enumerate(zip(params, output_token_ids)):
            ids = set()
            if len(out) < p.min_tokens:
                ids = {t for t in p.stop_token_ids if t < V}
                if eos_token_id is not None and eos_token_id < V:
                    ids.add(eos_token_id)
            for seq in p.bad_words_token_ids or ():  # ban a bad word's last token when the rest precedes it
                if seq[-1] < V and (len(seq) == 1 or out[len(out) - len(seq) + 1:] == seq[:-1]):
                    ids.add(seq[-1])
            banned_rows += [i] * len(ids)
            banned_ids += sorted(ids)

        bias = [(i, t, float(b)) for i, p in enumerate(params) for t, b in (p.logit_bias or {}).items() if t < V]
        allow_lists = {i: _allowed_now(p, out, eos_token_id) for i, (p, out) in enumerate(zip(params, output_token_ids))
                       if p.allowed_token_ids is not None or p.choice_token_ids is not None}
        guide_masks = {i: g.packed_mask() for i, g in enumerate(guides or ()) if g is not None and g.active}
        allowed = sorted(set(allow_lists) | set(guide_masks))
        allowed_mask = None
        if allowed and not guide_masks:
            allowed_mask = cls._token_table(device, V, [allow_lists[i] for i in allowed]) > 0
        elif allowed:
            allowed_mask = cls._guided_table(device, V, allowed, allow_lists, guide_masks, eos_token_id)

        pen = [i for i, p in enumerate(params) if p.needs_penalties]
        rep = freq = pres = seen = counts = None
        if pen:
            pen_params = [params[i] for i in pen]
            if any(p.repetition_penalty != 1.0 for p in pen_params):
                rep = f32([p.repetition_penalty for p in pen_params])[:, None]
                seen = cls._token_table(device, V, [prompt_token_ids[i] + output_token_ids[i] for i in pen]) > 0
            if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in pen_params):
                freq = f32([p.frequency_penalty for p in pen_params])[:, None]
                pres = f32([p.presence_penalty for p in pen_params])[:, None]
                counts = cls._token_table(device, V, [output_token_ids[i] for i in pen])

        forced = [(i, t) for i, (p, out) in enumerate(zip(params, output_token_ids))
                  if (t := _forced_token(p, out)) is not None]
        num_logprobs = [p.logprobs for p in params]
        wanted = [n for n in num_logprobs if n is not None]
        return cls(
            num_rows=S,
            temperature=f32([1.0 if g else p.temperature for p, g in zip(params, greedy)]),
            greedy_rows=h2d(torch.tensor(greedy, dtype=torch.bool), device) if any(greedy) else None,
            all_greedy=all(greedy),
            top_k=top_k, max_top_k=max(ks, default=0),
            top_p=f32([1.0 if g else p.top_p for p, g in zip(params, greedy)]) if use_top_p else None,
            min_p=f32([0.0 if g else p.min_p for p, g in zip(params, greedy)]) if use_min_p else None,
            generators={i: generators[i] for i in rand if generators[i] is not None},
            banned_rows=i64(banned_rows) if banned_rows else None,
            banned_token_ids=i64(banned_ids) if banned_ids else None,
            penalty_rows=i64(pen) if pen else None,
            repetition_penalty=rep, seen_mask=seen, frequency_penalty=freq, presence_penalty=pres,
            output_counts=counts,
            bias_rows=i64([i for i, _, _ in bias]) if bias else None,
            bias_token_ids=i64([t for _, t, _ in bias]) if bias else None,
            bias_values=f32([b for _, _, b in bias]) if bias else None,
            allowed_rows=i64(allowed) if allowed else None,
            allowed_mask=allowed_mask,
            forced_rows=i64([i for i, _ in forced]) if forced else None,
            forced_token_ids=i64([t for _, t in forced]) if forced else None,
            num_logprobs=num_logprobs, max_num_logprobs=max(wanted) if wanted else None,
        )

    @staticmethod
    def _guided_table(device: torch.device | str, vocab_size: int, rows: list[int], allow_lists: dict[int, list[int]],
                      guide_masks: dict[int, tuple[np.ndarray, bool]], eos_token_id: int | None) -> torch.Tensor:
        """bool [len(rows), V] on `device`: each row's grammar mask (EOS where the grammar lets the row
        end), intersected with its allow-list; a row left with nothing may still end (EOS). Built as
        packed bits on the host (V/8 bytes a row), which cross to the device in one copy and are
        unpacked there."""
        width = (vocab_size + 7) // 8
        eos_ok = eos_token_id is not None and eos_token_id < vocab_size
        eos_byte, eos_bit = divmod(eos_token_id, 8) if eos_ok else (0, 0)
        eos_val = np.uint8(0x80 >> eos_bit)  # MSB first, as np.packbits
        packed_np = np.full((len(rows), width), 255, dtype=np.uint8)
        for r, i in enumerate(rows):
            if i in guide_masks:
                bits, may_end = guide_masks[i]
                bits = bits[:width]
                packed_np[r, :len(bits)] = bits
                packed_np[r, len(bits):] = 0  # beyond the grammar's vocabulary: no
                if eos_ok and may_end:
                    packed_np[r, eos_byte] |= eos_val
            if i in allow_lists:  # only these rows can end up empty: a grammar row alone has a token or EOS
                allow = np.zeros(width * 8, dtype=bool)
                allow[[t for t in allow_lists[i] if t < vocab_size]] = True
                packed_np[r] &= np.packbits(allow)
                if eos_ok and not packed_np[r].any():
                    packed_np[r, eos_byte] |= eos_val
        if torch.device(device).type == "cpu":  # numpy unpacks faster than torch's uint8 shifts here
            return torch.from_numpy(np.unpackbits(packed_np, axis=1, count=vocab_size).view(bool))
        return unpack_bits(h2d(torch.from_numpy(packed_np), device), vocab_size)

    @staticmethod
    def _token_table(device: torch.device | str, vocab_size: int, rows: list[list[int]]) -> torch.Tensor:
        """[len(rows), V] float32 counts of each token id per row (ids >= V are ignored)."""
        row_idx = torch.tensor(list(itertools.chain.from_iterable([r] * len(ids) for r, ids in enumerate(rows))),
                               dtype=torch.long)
        tok_idx = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.long)
        keep = tok_idx < vocab_size
        row_t, tok_t = h2d(row_idx[keep], device), h2d(tok_idx[keep], device)
        table = torch.zeros(len(rows), vocab_size, dtype=torch.float32, device=device)
        return table.index_put_((row_t, tok_t), torch.ones_like(tok_t, dtype=torch.float32), accumulate=True)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [S] long, on the logits' device
    num_logprobs: list[int | None] | None  # per row: top-k logprobs asked (None: not asked); None: no row asked
    logprob_pack: torch.Tensor | None  # the rows' raw logprobs as `logprob_pack`, on the device; None: no row asked

    def logprobs(self) -> list[dict[int, float] | None] | None:
        """Per row {token_id: raw logprob} with the chosen token and the top-k, None for rows that did
        not ask; None when no row asked. One device -> host copy (waits for the sampler)."""
        if self.logprob_pack is None:
            return None
        return logprob_dicts(self.logprob_pack.cpu().numpy(), self.num_logprobs)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """np.unpackbits(packed, axis=1, count=count) as bool, on packed's device (MSB first)."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(packed.shape[0], -1)[:, :count].bool()


# ---- logprobs: a device pack, read on the host in one copy ---------------------------------------
def logprob_pack(logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: list[int | None],
                 with_ranks: bool = False) -> torch.Tensor:
    """Device half of the logprob dicts of the rows of `logprobs` [N, V] (log_softmax of the raw
    logits): ONE float64 tensor, [chosen | ids | ranks (with_ranks) | top-k logprobs | top-k ids] with
    k = max(num_logprobs), so everything reaches the host in one copy (float64 holds fp32 logprobs
    and token ids / ranks < 2^53 exactly). A rank is 1 + the number of tokens more likely than the
    chosen one."""
    k = max((n for n in num_logprobs if n is not None), default=0)
    chosen = logprobs.gather(1, token_ids.view(-1, 1))
    parts = [chosen.view(-1).double(), token_ids.view(-1).double()]
    if with_ranks:
        parts.append(((logprobs > chosen).sum(dim=1) + 1).double())
    if k > 0:
        top_lp, top_ids = logprobs.topk(k, dim=-1)
        parts += [top_lp.reshape(-1).double(), top_ids.reshape(-1).double()]
    return torch.cat(parts)


def logprob_dicts(pack: np.ndarray, num_logprobs: list[int | None],
                  ranks: list[int] | None = None) -> list[dict[int, float] | None]:
    """Host half: `pack` (a `logprob_pack` on the host, as a float64 array) -> per row None (not asked)
    or {chosen token: logprob, then the top-n not already in}. `ranks` (the pack was made with
    with_ranks): extended with each chosen token's rank."""
    n_rows, k = len(num_logprobs), max((n for n in num_logprobs if n is not None), default=0)
    chosen = pack[:n_rows].tolist()
    ids = pack[n_rows:2 * n_rows].astype(np.int64).tolist()
    off = 2 * n_rows
    if ranks is not None:
        ranks.extend(pack[off:off + n_rows].astype(np.int64).tolist())
        off += n_rows
    if k > 0:
        top_lp = pack[off:off + n_rows * k].reshape(n_rows, k).tolist()
        top_ids = pack[off + n_rows * k:off + 2 * n_rows * k].reshape(n_rows, k).astype(np.int64).tolist()
    result: list[dict[int, float] | None] = []
    for i, n in enumerate(num_logprobs):
        if n is None:
            result.append(None)
            continue
        d = {ids[i]: chosen[i]}
        for j in range(n):
            d.setdefault(top_ids[i][j], top_lp[i][j])
        result.append(d)
    return result


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor,
                    num_logprobs: list[int | None], ranks: list[int] | None = None) -> list[dict[int, float] | None]:
    """Logprob dicts for rows of `logprobs` [N, V]: {token_ids[i]: lp} plus the top num_logprobs[i]
    entries (the chosen token first; it may also be among the top-k). One device -> host copy.
    Also usable for prompt logprobs (token_ids = next prompt tokens). `ranks`, when given, is
    extended with each chosen token's rank (1 + the number of tokens more likely than it)."""
    pack = logprob_pack(logprobs, token_ids, num_logprobs, with_ranks=ranks is not None)
    return logprob_dicts(pack.cpu().numpy(), num_logprobs, ranks)


def _apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int,
                       top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask all but the top-k tokens and the smallest nucleus with mass >= top_p (per row)."""
    V = logits.shape[-1]
    if top_p is None:  # top-k only: threshold from a partial top-k, no full sort
        kth = logits.topk(max_top_k, dim=-1).values  # [S, max_k] descending
        thresh = kth.gather(1, (top_k.clamp(max=max_top_k) - 1).view(-1, 1))
        thresh = thresh.masked_fill((top_k >= V).view(-1, 1), _NEG_INF)
        return logits.masked_fill(logits < thresh, _NEG_INF)
    sorted_logits, order = logits.sort(dim=-1)  # ascending
    if top_k is not None:
        thresh = sorted_logits.gather(1, (V - top_k).view(-1, 1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < thresh, _NEG_INF)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1.0 - top_p).view(-1, 1)
    drop[:, -1] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


class Sampler:
    """Stateless; `sampler(logits, meta)` -> SamplerOutput (tokens and the logprob pack, on the device;
    nothing waits for the device). See the module docstring for the order."""

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != meta.num_rows:
            raise ValueError(f"logits must be [S={meta.num_rows}, V], got {tuple(logits.shape)}")
        if logits.dtype != torch.float32:
            raise ValueError(f"logits must be float32, got {logits.dtype}")
        raw_logprobs = logits.log_softmax(dim=-1) if meta.max_num_logprobs is not None else None
        x = self.process(logits, meta)
        if meta.all_greedy:
            token_ids = x.argmax(dim=-1)
        else:
            token_ids = self._sample(x, meta)
            if meta.greedy_rows is not None:
                token_ids = torch.where(meta.greedy_rows, x.argmax(dim=-1), token_ids)
        if meta.forced_rows is not None:
            token_ids = token_ids.index_put((meta.forced_rows,), meta.forced_token_ids)
        if raw_logprobs is None:
            return SamplerOutput(token_ids, None, None)
        # left on the device: read with SamplerOutput.logprobs() or copied with the tokens (async_step)
        return SamplerOutput(token_ids, meta.num_logprobs, logprob_pack(raw_logprobs, token_ids, meta.num_logprobs))

    def process(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Steps 2-3 (masks, logit bias, min_tokens / bad words, penalties) out of place: the logits
        greedy rows take the argmax of (engine/rejection_sampler.py verifies drafts against them)."""
        x = logits  # every step below is out of place: the caller's logits are never modified
        if meta.allowed_rows is not None:
            x = x.index_copy(0, meta.allowed_rows,
                             x.index_select(0, meta.allowed_rows).masked_fill(~meta.allowed_mask, _NEG_INF))
        if meta.bias_rows is not None:
            x = x.index_put((meta.bias_rows, meta.bias_token_ids), meta.bias_values, accumulate=True)
        if meta.banned_rows is not None:
            x = x.index_put((meta.banned_rows, meta.banned_token_ids), torch.full((), _NEG_INF, device=x.device))
        if meta.penalty_rows is not None:
            x = x.index_copy(0, meta.penalty_rows, self._penalize(x.index_select(0, meta.penalty_rows), meta))
        return x

    @staticmethod
    def _penalize(sub: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Penalties on the [P, V] rows that use one."""
        if meta.seen_mask is not None:
            rep = meta.repetition_penalty
            sub = torch.where(meta.seen_mask, torch.where(sub > 0, sub / rep, sub * rep), sub)
        if meta.output_counts is not None:
            counts = meta.output_counts
            sub = sub - meta.frequency_penalty * counts - meta.presence_penalty * (counts > 0).float()
        return sub

    @staticmethod
    def _sample(x: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Temperature, min-p, top-k/top-p, then one categorical draw per row."""
        probs = Sampler.probs(x, meta)
        q = torch.empty_like(probs).exponential_()
        for row, gen in meta.generators.items():
            q[row].exponential_(generator=gen)
        # q == 0 would turn a zero-probability token into 0/0 = nan (argmax picks nan)
        q.clamp_(min=torch.finfo(q.dtype).tiny)
        return probs.div_(q).argmax(dim=-1)

    @staticmethod
    def probs(x: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Steps 4-5 on processed logits: the distribution random rows draw from ([S, V] fp32)."""
        x = x / meta.temperature.view(-1, 1)
        if meta.min_p is not None:  # p < min_p * p_max  <=>  logit < max_logit + log(min_p)
            thresh = x.amax(dim=-1, keepdim=True) + meta.min_p.log().view(-1, 1)
            x = x.masked_fill(x < thresh, _NEG_INF)
        if meta.top_k is not None or meta.top_p is not None:
            x = _apply_top_k_top_p(x, meta.top_k, meta.max_top_k, meta.top_p)
        return x.softmax(dim=-1)

