"""Samplers: turn a teacher's logits into sparse targets.

This is the teacher-side half of "Sparse Logit Sampling" (Anshumann et al., 2025). For every
position we keep a handful of (token id, value) entries instead of the whole distribution:

* **Random sampling** (the paper's method, section 3.4). Draw ``N = rounds`` tokens with
  replacement from the proposal ``q ∝ p^t`` (``t = temperature``, 1 by default) and keep, per
  unique token, how often it was drawn. The sparse target is

      t_s(i) ∝ count(i) · p(i) / q(i)            (normalised over the position's entries)

  With ``t = 1`` the importance weight ``p/q`` is 1 and the target is simply ``count / N``,
  which is an unbiased estimate of the teacher distribution. With ``t != 1`` the weights are
  stored with the counts (exact ``p/q`` ratios, float32); :meth:`SparseTargets.target_probs`
  offers both the paper's self-normalised target and the exactly unbiased, unnormalised one.

  Two schemes draw the ``N`` tokens:

  - ``multinomial``: ``N`` independent uniforms per position (the paper's scheme);
  - ``systematic``: one uniform offset ``u`` per position and the ``N`` evenly spaced points
    ``(u + j) / N`` through the position's CDF. Each token is still drawn ``N·q(i)`` times in
    expectation (unbiased), with lower variance: a token's count is ``⌊N q⌋`` or ``⌈N q⌉``.

* **Top-k** (the baseline the paper argues against, section 2), optionally truncated further
  by top-p: the ``k`` most probable tokens with their teacher probabilities, sorted by
  decreasing probability. Their sum is below one; the residual ``1 - Σ p`` is what the ghost
  token and the naive fix use.

Everything is batched over positions (no Python loop over positions or vocabulary) and chunked
over positions so the extra memory is a few ``chunk_size × V`` fp32 buffers (one for the CDF,
one more for an fp16 / bf16 upcast, one more for ``t != 1``). Logits may be fp32, fp16 or bf16
on any device. Per chunk the random samplers make one pass for the row maximum, one ``exp``
pass and one in-place ``cumsum`` over the vocabulary (plus one ``logsumexp`` pass when
``t != 1``), then binary-search the CDF.

Precision: the CDF is fp32, so a token whose probability is below the CDF's resolution next to
large mass (about 1e-7 at V = 128k) is drawn with a relative error of several percent, and the
very smallest can merge into a neighbour; the error moves about 1e-3 of mass among such tail
tokens (measured on the synthetic LM-like teacher). The head and the total tail mass are exact
to fp32 rounding.

Logits of ``-inf`` are allowed (tokens masked out: probability zero, never sampled); NaN,
``+inf`` and rows that are entirely ``-inf`` are refused.

Example::

    cfg = SamplerConfig(method="multinomial", rounds=50)
    targets = sample(logits.view(-1, vocab_size), cfg, generator=torch.Generator().manual_seed(0))
    ids, probs = targets.to_padded()          # [P, K] each, padded with -1 / 0
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from logitcache.chunks import default_chunk_size
from logitcache.core.config import MAX_VOCAB_SIZE, SamplerConfig
from logitcache.targets.sparse import SparseTargets

__all__ = ["sample", "sample_random", "sample_topk"]


def sample(logits: Tensor, config: SamplerConfig, generator: torch.Generator | None = None) -> SparseTargets:
    """Sparsify ``logits [P, V]`` as ``config`` says. ``generator`` must live on the logits' device."""
    if config.method == "topk":
        return sample_topk(logits, config.k, top_p=config.top_p, chunk_size=config.chunk_size)
    return sample_random(
        logits,
        config.rounds,
        method=config.method,
        temperature=config.temperature,
        generator=generator,
        chunk_size=config.chunk_size,
    )


def sample_random(
    logits: Tensor,  # [P, V]
    rounds: int,
    *,
    method: Literal["multinomial", "systematic"] = "multinomial",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> SparseTargets:
    """Random-sampling targets: ``rounds`` draws per position from ``q ∝ softmax(logits)^t``."""
    config = SamplerConfig(method=method, rounds=rounds, temperature=temperature, chunk_size=chunk_size)
    if method not in ("multinomial", "systematic"):
        raise ValueError(f"method: expected 'multinomial' or 'systematic', got {method!r}")
    _check_logits(logits)
    num_positions, vocab = logits.shape
    step = config.chunk_size or default_chunk_size(vocab)
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
    for start in range(0, num_positions, step):
        parts.append(_sample_chunk(logits[start : start + step], config, generator))
    ids, counts, entry_counts, weights = _concat(parts, logits.device)
    return SparseTargets(
        kind="sampled",
        vocab_size=vocab,
        token_ids=ids,
        values=counts,
        offsets=_offsets(entry_counts),
        weights=weights,
        rounds=rounds,
        temperature=temperature,
    )


def sample_topk(
    logits: Tensor,  # [P, V]
    k: int,
    *,
    top_p: float | None = None,
    chunk_size: int | None = None,
) -> SparseTargets:
    """Top-k targets (the baseline): the ``k`` most probable tokens, sorted by probability.

    With ``top_p``, a position keeps only the shortest prefix of its top-k whose mass reaches
    ``top_p`` (at least one entry).
    """
    config = SamplerConfig(method="topk", k=k, top_p=top_p, chunk_size=chunk_size)
    _check_logits(logits)
    num_positions, vocab = logits.shape
    if k > vocab:
        raise ValueError(f"k: expected k <= vocab size {vocab}, got {k}")
    step = config.chunk_size or default_chunk_size(vocab)
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
    for start in range(0, num_positions, step):
        x = logits[start : start + step].float()
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
        _check_finite_rows(lse, "logsumexp")
        top, ids = torch.topk(x, k, dim=-1, sorted=True)
        probs = torch.exp(top - lse)  # [c, k]
        keep = torch.ones_like(probs, dtype=torch.bool)
        if top_p is not None and top_p < 1.0:
            before = torch.cumsum(probs.double(), dim=-1) - probs.double()  # mass strictly before each entry
            keep = before < top_p
        # masked (-inf) tokens can be among the top k of a tiny vocabulary: drop them
        keep &= probs > 0
        keep[:, 0] = True
        parts.append((ids[keep], probs[keep], keep.sum(dim=-1), None))
    ids_all, probs_all, entry_counts, _ = _concat(parts, logits.device)
    return SparseTargets(
        kind="topk",
        vocab_size=vocab,
        token_ids=ids_all,
        values=probs_all,
        offsets=_offsets(entry_counts),
        k=k,
        top_p=top_p,
    )


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [P, V] (2 dims), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating dtype (fp32, fp16, bf16), got {logits.dtype}")
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits: expected at least one position and one token, got {tuple(logits.shape)}")
    if logits.shape[1] > MAX_VOCAB_SIZE:
        raise ValueError(f"logits: expected vocab size <= {MAX_VOCAB_SIZE}, got {logits.shape[1]}")


def _check_finite_rows(row_stat: Tensor, what: str) -> None:
    """``row_stat`` (a max or logsumexp per row) is non-finite iff the row has NaN, +inf or is all -inf."""
    bad = ~torch.isfinite(row_stat.reshape(-1))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"logits: expected finite values (or -inf for masked tokens) in every row, "
            f"got a row whose {what} is {float(row_stat.reshape(-1)[row])} (row {row} of the chunk)"
        )


def _sample_chunk(
    logits: Tensor,  # [c, V]
    config: SamplerConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Sample one chunk: ``(ids [e], counts [e], entries per position [c], weights [e] | None)``."""
    x = logits.float()
    t = config.temperature
    n = config.rounds
    rows = x.shape[0]
    xmax = x.amax(dim=-1, keepdim=True)  # [c, 1]
    _check_finite_rows(xmax, "maximum")
    # unnormalised proposal q̃ = exp(t·(x - max)), then its CDF, all in one [c, V] buffer
    cdf = x - xmax
    if t != 1.0:
        cdf.mul_(t)
    cdf.exp_()
    cdf.cumsum_(dim=-1)
    total = cdf[:, -1:].contiguous()  # [c, 1] = Σ q̃
    if config.method == "systematic":
        offset = torch.rand((rows, 1), generator=generator, device=x.device)
        points = (offset + torch.arange(n, device=x.device, dtype=torch.float32)) / n
    else:
        points = torch.rand((rows, n), generator=generator, device=x.device)
    # side="right": the first index whose CDF exceeds the point, so zero-mass tokens never win;
    # a point that rounds up to the total lands on the last token with mass, not past the end
    drawn = torch.searchsorted(cdf, points * total, right=True)
    drawn = torch.minimum(drawn, torch.searchsorted(cdf, total, right=False))
    if config.method != "systematic":  # systematic points are sorted already
        drawn = drawn.sort(dim=-1).values
    first = torch.ones_like(drawn, dtype=torch.bool)  # [c, n]: first draw of each unique token
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    flat_first = first.reshape(-1)
    starts = flat_first.nonzero().squeeze(1)
    ids = drawn.reshape(-1)[starts]
    ends = torch.cat([starts[1:], torch.tensor([drawn.numel()], device=x.device)])
    counts = ends - starts
    entry_counts = first.sum(dim=-1)
    weights = None
    if t != 1.0:
        # p/q at each unique token: log p = x - lse(x), log q = t·(x - max) - log Σ q̃
        row = torch.arange(rows, device=x.device).repeat_interleave(entry_counts)
        xs = x[row, ids]
        log_p = xs - torch.logsumexp(x, dim=-1)[row]
        log_q = (xs - xmax[row, 0]) * t - torch.log(total[row, 0])
        weights = torch.exp(log_p - log_q)
    return ids, counts, entry_counts, weights


def _concat(
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor | None]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    ids = torch.cat([p[0] for p in parts]).to(torch.int64)
    values = torch.cat([p[1] for p in parts])
    entry_counts = torch.cat([p[2] for p in parts]).to(torch.int64)
    has_weights = parts[0][3] is not None
    weights = torch.cat([p[3] for p in parts if p[3] is not None]) if has_weights else None
    return ids.to(device), values.to(device), entry_counts.to(device), weights


def _offsets(entry_counts: Tensor) -> Tensor:
    offsets = torch.zeros(entry_counts.numel() + 1, dtype=torch.int64, device=entry_counts.device)
    torch.cumsum(entry_counts, dim=0, out=offsets[1:])
    return offsets
