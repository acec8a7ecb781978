"""Samplers: structure, validation, reproducibility and the statistics the paper relies on."""

from __future__ import annotations

import math
import re

import pytest
import torch
from scipy import stats

from logitcache.core.config import SamplerConfig
from logitcache.targets.sampling import sample, sample_random, sample_topk
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits

RANDOM_METHODS = ("multinomial", "systematic")


def _check_structure(t: SparseTargets, logits: torch.Tensor) -> None:
    """Invariants every target set must satisfy."""
    num_positions, vocab = logits.shape
    assert t.num_positions == num_positions
    assert t.vocab_size == vocab
    assert t.offsets[0] == 0
    assert t.offsets[-1] == t.num_entries
    counts = t.entry_counts()
    assert (counts >= 1).all()
    assert ((t.token_ids >= 0) & (t.token_ids < vocab)).all()
    rows = t.position_index()
    same_row = rows[1:] == rows[:-1]
    if t.kind == "sampled":
        assert t.values.dtype == torch.int64
        assert (t.values >= 1).all()
        sums = torch.zeros(num_positions, dtype=torch.int64).index_add_(0, rows, t.values)
        assert (sums == t.rounds).all()
        assert (t.token_ids[1:] > t.token_ids[:-1])[same_row].all(), "ids ascend within a position"
    else:
        assert (t.values[1:] <= t.values[:-1])[same_row].all(), "top-k sorted by probability"
    probs = t.target_probs()
    total = torch.zeros(num_positions).index_add_(0, rows, probs)
    if t.kind == "sampled":
        torch.testing.assert_close(total, torch.ones(num_positions))
    else:
        assert (total <= 1 + 1e-5).all()


@pytest.mark.parametrize("method", RANDOM_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_random_sampling_structure(method: str, dtype: torch.dtype, temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = lm_like_logits(37, 1031, generator=gen, dtype=dtype)
    t = sample_random(logits, 50, method=method, temperature=temperature, generator=gen)  # type: ignore[arg-type]
    _check_structure(t, logits)
    assert (t.weights is None) == (temperature == 1.0)
    if t.weights is not None:
        assert t.weights.dtype == torch.float32
        assert (t.weights > 0).all()


@pytest.mark.parametrize("method", RANDOM_METHODS)
def test_reproducible_with_a_generator(method: str) -> None:
    logits = lm_like_logits(20, 500, generator=torch.Generator().manual_seed(1))
    a = sample_random(logits, 30, method=method, generator=torch.Generator().manual_seed(7))  # type: ignore[arg-type]
    b = sample_random(logits, 30, method=method, generator=torch.Generator().manual_seed(7))  # type: ignore[arg-type]
    c = sample_random(logits, 30, method=method, generator=torch.Generator().manual_seed(8))  # type: ignore[arg-type]
    assert torch.equal(a.token_ids, b.token_ids)
    assert torch.equal(a.values, b.values)
    assert not (torch.equal(a.token_ids, c.token_ids) and torch.equal(a.values, c.values))


@pytest.mark.cuda
@pytest.mark.parametrize("method", RANDOM_METHODS)
def test_sampling_on_cuda(method: str) -> None:
    gen = torch.Generator("cuda").manual_seed(0)
    logits = lm_like_logits(300, 32000, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16).cuda()
    t = sample_random(logits, 50, method=method, generator=gen, temperature=0.9)  # type: ignore[arg-type]
    assert t.token_ids.is_cuda
    _check_structure(t.to("cpu"), logits.cpu())


def test_chunking_does_not_change_topk() -> None:
    logits = lm_like_logits(33, 700, generator=torch.Generator().manual_seed(2))
    whole = sample_topk(logits, 9, top_p=0.9)
    chunked = sample_topk(logits, 9, top_p=0.9, chunk_size=4)
    assert torch.equal(whole.token_ids, chunked.token_ids)
    assert torch.equal(whole.offsets, chunked.offsets)
    torch.testing.assert_close(whole.values, chunked.values)


def test_chunked_random_sampling_keeps_structure() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = lm_like_logits(41, 300, generator=gen)
    t = sample_random(logits, 17, method="systematic", generator=gen, chunk_size=5)
    _check_structure(t, logits)


def test_masked_tokens_are_never_sampled() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(200, 50, generator=gen)
    logits[:, ::2] = -math.inf
    for method in RANDOM_METHODS:
        t = sample_random(logits, 40, method=method, generator=gen)  # type: ignore[arg-type]
        assert (t.token_ids % 2 == 1).all()
    top = sample_topk(logits, 30)  # more than the 25 unmasked tokens
    assert (top.token_ids % 2 == 1).all()
    assert int(top.entry_counts().max()) <= 25


def test_topk_matches_torch_topk() -> None:
    logits = lm_like_logits(25, 400, generator=torch.Generator().manual_seed(5))
    t = sample_topk(logits, 7)
    ids, probs = t.to_padded()
    ref = torch.softmax(logits, dim=-1).topk(7, dim=-1)
    assert torch.equal(ids, ref.indices)
    torch.testing.assert_close(probs, ref.values)
    torch.testing.assert_close(t.residual_mass(), 1 - ref.values.sum(-1))


def test_top_p_keeps_the_shortest_prefix_reaching_p() -> None:
    logits = lm_like_logits(60, 400, generator=torch.Generator().manual_seed(6))
    t = sample_topk(logits, 20, top_p=0.8)
    full = sample_topk(logits, 20)
    _, probs = full.to_padded()
    mass = probs.cumsum(-1)
    kept = t.entry_counts()
    for row in range(60):
        n = int(kept[row])
        assert n == 20 or mass[row, n - 1] >= 0.8 - 1e-6
        assert n == 1 or mass[row, n - 2] < 0.8


def test_padded_and_dense_agree() -> None:
    gen = torch.Generator().manual_seed(9)
    logits = lm_like_logits(13, 90, generator=gen)
    t = sample_random(logits, 25, generator=gen, temperature=1.3)
    ids, probs = t.to_padded(width=30)
    assert ids.shape == (13, 30)
    dense = t.to_dense()
    rebuilt = torch.zeros(13, 91).scatter_add_(1, ids.clamp(min=-1) % 91, probs)[:, :90]
    torch.testing.assert_close(rebuilt, dense)
    assert (probs[ids == -1] == 0).all()
    with pytest.raises(ValueError, match="width"):
        t.to_padded(width=1)


def test_sample_dispatches_on_config() -> None:
    gen = torch.Generator().manual_seed(10)
    logits = lm_like_logits(5, 64, generator=gen)
    assert sample(logits, SamplerConfig(method="topk", k=4)).kind == "topk"
    s = sample(logits, SamplerConfig(method="systematic", rounds=8), generator=gen)
    assert s.kind == "sampled"
    assert s.rounds == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rounds": 0}, "rounds: expected 1 <= rounds <= 65535, got 0"),
        ({"rounds": 70000}, "rounds: expected 1 <= rounds <= 65535, got 70000"),
        ({"temperature": 0.0}, "temperature: expected a finite value > 0"),
        ({"temperature": float("nan")}, "temperature"),
        ({"k": 0}, "k: expected"),
        ({"top_p": 1.5}, "top_p: expected 0 < top_p <= 1, got 1.5"),
        ({"method": "beam"}, "method: expected one of"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplerConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_logits_are_refused() -> None:
    good = torch.randn(4, 10)
    with pytest.raises(ValueError, match="k: expected k <= vocab size 10, got 11"):
        sample_topk(good, 11)
    with pytest.raises(ValueError, match=r"shape \[P, V\]"):
        sample_random(torch.randn(10), 5)
    with pytest.raises(ValueError, match="floating dtype"):
        sample_random(torch.ones(3, 10, dtype=torch.int64), 5)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        sample_random([[0.0, 1.0]], 5)  # type: ignore[arg-type]
    for bad_value in (float("nan"), float("inf")):
        bad = good.clone()
        bad[2, 3] = bad_value
        with pytest.raises(ValueError, match="expected finite values"):
            sample_random(bad, 5)
        with pytest.raises(ValueError, match="expected finite values"):
            sample_topk(bad, 3)
    all_masked = good.clone()
    all_masked[1] = -math.inf
    with pytest.raises(ValueError, match="row 1"):
        sample_random(all_masked, 5, method="systematic")


# --------------------------------------------------------------------------- statistics

# A fixed teacher with a head, a middle and a thin tail; M independent positions share it.
_P = torch.tensor(
    [0.30, 0.20, 0.12, 0.10, 0.08, 0.06, 0.05, 0.03, 0.02, 0.015, 0.01, 0.005, 0.004, 0.003, 0.002, 0.001]
)
_M = 20000


def _mean_and_var(
    method: str, rounds: int, temperature: float = 1.0, normalize: bool = True
) -> tuple[torch.Tensor, ...]:
    logits = torch.log(_P).expand(_M, -1).contiguous()
    t = sample_random(
        logits,
        rounds,
        method=method,  # type: ignore[arg-type]
        temperature=temperature,
        generator=torch.Generator().manual_seed(1234),
    )
    dense = torch.zeros(_M, _P.numel(), dtype=torch.float64)
    dense[t.position_index(), t.token_ids] = t.target_probs(normalize=normalize).double()
    return dense.mean(0), dense.var(0), dense.sum(1).mean()


def test_multinomial_counts_follow_the_teacher_chi_square() -> None:
    logits = torch.log(_P).expand(_M, -1).contiguous()
    t = sample_random(logits, 10, method="multinomial", generator=torch.Generator().manual_seed(99))
    observed = torch.zeros(_P.numel(), dtype=torch.float64).index_add_(0, t.token_ids, t.values.double())
    expected = _P.double() * _M * 10
    assert (
        stats.chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue
        > 1e-4
    )


@pytest.mark.parametrize("method", RANDOM_METHODS)
def test_random_sampling_is_unbiased_at_t1(method: str) -> None:
    rounds = 10
    mean, var, _ = _mean_and_var(method, rounds)
    p = _P.double()
    # the standard error of the mean: exact for multinomial, empirical (smaller) for systematic
    theory = (p * (1 - p) / rounds / _M).sqrt()
    se = theory if method == "multinomial" else (var / _M).sqrt().clamp_min(1e-6)
    z = ((mean - p) / se).abs()
    assert z.max() < 5, f"max z = {z.max():.2f}"


@pytest.mark.parametrize("method", RANDOM_METHODS)
@pytest.mark.parametrize("temperature", [0.7, 1.4])
def test_importance_weighted_sampling_is_unbiased(method: str, temperature: float) -> None:
    rounds = 10
    mean, var, _ = _mean_and_var(method, rounds, temperature, normalize=False)
    z = ((mean - _P.double()) / (var / _M).sqrt().clamp_min(1e-6)).abs()
    assert z.max() < 5, f"max z = {z.max():.2f}"
    # the paper's self-normalised target is consistent: its bias is O(1/N), small at N = 50
    normalised, _, total = _mean_and_var(method, 50, temperature, normalize=True)
    assert (normalised - _P.double()).abs().max() < 0.01
    assert abs(float(total) - 1.0) < 1e-6


def test_systematic_has_lower_variance_than_multinomial() -> None:
    rounds = 10
    _, var_multi, _ = _mean_and_var("multinomial", rounds)
    _, var_sys, _ = _mean_and_var("systematic", rounds)
    assert var_sys.sum() < 0.6 * var_multi.sum()
    # token by token wherever N·p is large enough for the difference to show
    big = _P * rounds >= 0.5
    assert (var_sys[big] < var_multi[big]).all()


def test_topk_is_biased() -> None:
    logits = torch.log(_P).unsqueeze(0)
    t = sample_topk(logits, 3)
    target = t.to_dense()[0].double()
    p = _P.double()
    # the tail gets nothing: tokens 4.. have mass p but target 0, for every draw (no variance)
    assert target[3:].sum() == 0
    assert p[3:].sum() > 0.35
    # renormalised (plain top-k KD), the kept tokens are up-scaled: over-confident
    renormalised = target / target.sum()
    assert (renormalised[:3] > p[:3] * 1.5).all()
    # compare with sampling at the same budget, which is unbiased within noise
    mean, _, _ = _mean_and_var("multinomial", 10)
    assert (mean - p).abs().max() < 0.01 < (renormalised - p).abs().max()


def test_systematic_points_that_round_up_never_reach_a_masked_last_token() -> None:
    """With N = 65535, offset + N - 1 rounds to N in fp32 for about 1 in 512 positions."""
    logits = torch.zeros(4000, 8)
    logits[:, -1] = -math.inf
    t = sample_random(logits, 65535, method="systematic", generator=torch.Generator().manual_seed(0), chunk_size=256)
    assert int((t.token_ids == 7).sum()) == 0


def test_top_p_of_one_keeps_all_k() -> None:
    logits = torch.tensor([[10.0, -10.0, -12.0, -14.0]])
    assert sample_topk(logits, 4, top_p=1.0).num_entries == 4


def test_positions_are_the_same_targets_as_the_rows_they_cover() -> None:
    gen = torch.Generator().manual_seed(5)
    for targets in (
        sample_random(lm_like_logits(12, 300, generator=gen), 20, generator=gen),
        sample_topk(lm_like_logits(12, 300, generator=gen), 4),
    ):
        ids, probs = targets.to_padded(width=20)
        part = targets.positions(3, 9)
        assert part.num_positions == 6
        part_ids, part_probs = part.to_padded(width=20)
        torch.testing.assert_close(part_ids, ids[3:9])
        torch.testing.assert_close(part_probs, probs[3:9])
