"""sparse_kd_loss: every implementation against the dense reference and the paper's closed forms."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from logitcache.kd import KDParams, sparse_kd_loss
from logitcache.targets.sampling import sample_random
from tests.kd.cases import Case, generator, make_case

HAS_TRITON = importlib.util.find_spec("triton") is not None
FAST_IMPLS = ["chunked", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton missing"))]
OPTIONS = {field.name for field in dataclasses.fields(KDParams)}


def _call(*args: Any, **kwargs: Any) -> torch.Tensor:
    """sparse_kd_loss with the KDParams fields among ``kwargs`` gathered into ``params``."""
    options = {name: kwargs.pop(name) for name in OPTIONS & kwargs.keys()}
    return sparse_kd_loss(*args, **kwargs, params=KDParams(**options))


def _run(case: Case, impl: str, grad_scale: float = 1.0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and d(loss · grad_scale)/d logits (with a per-row upstream gradient for 'none')."""
    logits = case.logits.detach().clone().requires_grad_()
    loss = _call(logits, case.ids, case.probs, impl=impl, **kwargs)
    if loss.dim() == 0:
        (loss * grad_scale).backward()
    else:
        upstream = torch.linspace(-1.0, 2.0, loss.numel())
        (loss * upstream).sum().backward()
    assert logits.grad is not None
    return loss.detach(), logits.grad


def _assert_matches_reference(case: Case, impl: str, atol: float = 1e-5, **kwargs: Any) -> None:
    loss, grad = _run(case, impl, grad_scale=3.7, **kwargs)
    ref_loss, ref_grad = _run(case, "reference", grad_scale=3.7, **kwargs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=atol)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("mode", ["kl", "ghost", "naive_fix"])
@pytest.mark.parametrize("kind", ["sampled", "topk"])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_reference(impl: str, mode: str, kind: str, ce_weight: float, temperature: float) -> None:
    seed = 10 * ["kl", "ghost", "naive_fix"].index(mode) + ["sampled", "topk"].index(kind)  # fixed, per case
    case = make_case(kind=kind, empty_rows=(3,), seed=seed)
    _assert_matches_reference(case, impl, labels=case.labels, mode=mode, ce_weight=ce_weight, temperature=temperature)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("mode", ["kl", "ghost", "naive_fix"])
@pytest.mark.parametrize("total", [0.6, 1.0, 1.4])
def test_targets_summing_below_at_and_above_one_match_the_reference(impl: str, mode: str, total: float) -> None:
    """Rows may sum to anything up to ``1 + mass_tolerance``; every mode must agree with the reference."""
    case = make_case(kind="topk", seed=40, empty_rows=(3,))
    probs = case.probs * (total / case.probs.sum(dim=1, keepdim=True).clamp_min(1e-30))
    scaled = Case(case.logits, case.ids, probs, case.labels)
    for ce_weight in (0.0, 0.3):
        _assert_matches_reference(scaled, impl, labels=case.labels, mode=mode, ce_weight=ce_weight, mass_tolerance=0.5)


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
def test_ghost_with_a_target_summing_past_one_is_the_kl_gradient(impl: str) -> None:
    """No ghost mass when Σ t > 1: the gradient is (Σ t)·s − t, as in "kl" mode (paper eq. 2)."""
    case = Case(torch.zeros(1, 4).requires_grad_(), torch.tensor([[0, 1]]), torch.tensor([[0.6, 0.6]]), torch.zeros(1))
    _, grad = _run(case, impl, mode="ghost", reduction="sum", mass_tolerance=0.5)
    torch.testing.assert_close(grad, torch.tensor([[-0.3, -0.3, 0.3, 0.3]]))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_masks_weights_and_ignore_index(impl: str, reduction: str) -> None:
    case = make_case(kind="topk", seed=4, empty_rows=(0, 5))
    labels = case.labels.clone()
    labels[[2, 9]] = -100
    mask = torch.ones(37, dtype=torch.bool)
    mask[[11, 12]] = False
    weights = torch.rand(37, generator=generator(1)) * 2
    for mode in ("kl", "ghost", "naive_fix"):
        _assert_matches_reference(
            case, impl, labels=labels, mask=mask, weights=weights, reduction=reduction, mode=mode, ce_weight=0.1
        )


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize(("n", "vocab", "k"), [(37, 1271, 13), (5, 7, 1), (1, 4099, 3), (16, 300, 40)])
def test_odd_shapes(impl: str, n: int, vocab: int, k: int) -> None:
    case = make_case(n, vocab, k, kind="topk", seed=n)
    _assert_matches_reference(case, impl)
    _assert_matches_reference(case, impl, mode="ghost")


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_small_chunks_give_the_same_result(impl: str) -> None:
    case = make_case(seed=8)
    big = _run(case, impl)
    small = _run(case, impl, chunk_size=3)
    torch.testing.assert_close(big, small)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits(impl: str, dtype: torch.dtype) -> None:
    case = make_case(seed=9, kind="topk")
    low = Case(case.logits.detach().to(dtype).requires_grad_(), case.ids, case.probs, case.labels)
    for mode in ("kl", "ghost"):
        loss, grad = _run(low, impl, mode=mode, labels=case.labels, ce_weight=0.2)
        ref_loss, ref_grad = _run(low, "reference", mode=mode, labels=case.labels, ce_weight=0.2)
        assert grad.dtype == dtype
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
        assert (grad.float() - ref_grad.float()).abs().max() <= 1e-2 * ref_grad.float().abs().max()


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
def test_kl_gradient_is_total_mass_times_softmax_minus_target(impl: str) -> None:
    """Paper A.1 / eq. 2: ∂L/∂x = (Σ t)·p − t, with Σ t < 1 for top-k targets."""
    case = make_case(20, 500, 6, kind="topk", seed=10)
    _, grad = _run(case, impl, reduction="sum")
    p = torch.softmax(case.logits.detach().double(), dim=-1)
    dense = torch.zeros(20, 500, dtype=torch.float64).scatter_(1, case.ids, case.probs.double())
    expected = dense.sum(1, keepdim=True) * p - dense
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
def test_ghost_gradient(impl: str) -> None:
    """Paper A.5: top-k tokens get p_i − t_i (full KD); the rest p_j·(1 − t_ghost / p_ghost)."""
    case = make_case(20, 500, 6, kind="topk", seed=11)
    _, grad = _run(case, impl, reduction="sum", mode="ghost")
    p = torch.softmax(case.logits.detach().double(), dim=-1)
    dense = torch.zeros(20, 500, dtype=torch.float64).scatter_(1, case.ids, case.probs.double())
    in_k = torch.zeros(20, 500, dtype=torch.bool).scatter_(1, case.ids, True)
    t_ghost = 1 - dense.sum(1, keepdim=True)
    p_ghost = 1 - (p * in_k).sum(1, keepdim=True)
    expected = torch.where(in_k, p - dense, p * (1 - t_ghost / p_ghost))
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
def test_a_perfect_student_reads_zero(impl: str) -> None:
    gen = generator(12)
    y = torch.randn(6, 40, generator=gen)
    ids = torch.arange(40).expand(6, -1).contiguous()
    probs = torch.softmax(y, dim=-1)
    logits = y.clone().requires_grad_()
    loss = sparse_kd_loss(logits, ids, probs, params=KDParams(impl=impl))  # type: ignore[arg-type]
    loss.backward()
    assert logits.grad is not None
    assert abs(float(loss.detach())) < 1e-6
    assert logits.grad.abs().max() < 1e-6


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_kl_value_is_the_true_kl(impl: str) -> None:
    case = make_case(10, 200, 8, seed=13)
    params = KDParams(impl=impl, reduction="none")  # type: ignore[arg-type]
    loss = sparse_kd_loss(case.logits.detach(), case.ids, case.probs, params=params)
    logp = torch.log_softmax(case.logits.detach().double(), dim=-1)
    t = case.probs.double()
    valid = case.ids >= 0
    expected = torch.where(valid, t * (t.clamp_min(1e-300).log() - logp.gather(1, case.ids.clamp_min(0))), 0).sum(1)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_full_ce_weight_is_cross_entropy(impl: str) -> None:
    case = make_case(seed=14)
    loss, grad = _run(case, impl, labels=case.labels, ce_weight=1.0)
    logits = case.logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(logits, case.labels)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    assert logits.grad is not None
    torch.testing.assert_close(grad, logits.grad)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_ghost_equals_kl_for_normalised_targets(impl: str) -> None:
    case = make_case(seed=15, kind="sampled")  # random-sampling targets sum to 1: no residual
    torch.testing.assert_close(_run(case, impl, mode="ghost"), _run(case, impl, mode="kl"))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_naive_fix_puts_the_residual_on_the_label(impl: str) -> None:
    case = make_case(8, 100, 4, kind="topk", seed=16)
    labels = case.labels.clone()
    labels[0] = case.ids[0, 1]  # a label already among the entries
    fixed_ids = torch.cat([case.ids, torch.full((8, 1), -1)], dim=1)
    fixed_probs = torch.cat([case.probs, torch.zeros(8, 1)], dim=1)
    for row in range(8):
        residual = 1 - case.probs[row].sum()
        hit = (case.ids[row] == labels[row]).nonzero()
        if hit.numel():
            fixed_probs[row, hit[0, 0]] += residual
        else:
            fixed_ids[row, -1] = labels[row]
            fixed_probs[row, -1] = residual
    fixed = Case(case.logits, fixed_ids, fixed_probs, labels)
    torch.testing.assert_close(_run(case, impl, mode="naive_fix", labels=labels), _run(fixed, impl))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_dropped_positions_contribute_nothing(impl: str) -> None:
    case = make_case(seed=17, empty_rows=(4,))
    labels = case.labels.clone()
    labels[7] = -100
    mask = torch.ones(37, dtype=torch.bool)
    mask[9] = False
    loss, grad = _run(case, impl, labels=labels, mask=mask)
    for row in (4, 7, 9):
        assert grad[row].abs().max() == 0
    moved = case.logits.detach().clone()
    moved[[4, 7, 9]] += 5.0
    loss2, _ = _run(Case(moved.requires_grad_(), case.ids, case.probs, labels), impl, labels=labels, mask=mask)
    torch.testing.assert_close(loss, loss2)
    kept = torch.ones(37, dtype=torch.bool)
    kept[[4, 7, 9]] = False
    params = KDParams(reduction="none")
    rows = sparse_kd_loss(case.logits.detach(), case.ids, case.probs, labels=labels, mask=mask, params=params)
    torch.testing.assert_close(loss, rows[kept].mean())


def test_all_positions_dropped_reads_zero() -> None:
    case = make_case(seed=18)
    loss, grad = _run(case, "chunked", mask=torch.zeros(37, dtype=torch.bool))
    assert float(loss) == 0.0
    assert grad.abs().max() == 0


def test_no_grad_needed_still_gives_the_loss() -> None:
    case = make_case(seed=19)
    with torch.no_grad():
        value = sparse_kd_loss(case.logits, case.ids, case.probs)
    torch.testing.assert_close(value, _run(case, "reference")[0])


def test_backward_twice_is_refused() -> None:
    case = make_case(seed=20)
    loss = sparse_kd_loss(case.logits, case.ids, case.probs, params=KDParams(impl="chunked"))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_int32_ids_and_fp16_probs_are_accepted() -> None:
    case = make_case(seed=21)
    params = KDParams(mass_tolerance=1e-2)
    a = sparse_kd_loss(case.logits.detach(), case.ids.int(), case.probs.half(), params=params)
    b = sparse_kd_loss(case.logits.detach(), case.ids, case.probs.half().float(), params=params)
    torch.testing.assert_close(a, b)


def test_unbiased_tempered_targets_give_an_unbiased_gradient() -> None:
    """With ``normalized_targets=False`` the loss takes ``count·w / N`` rows as they are (their sums
    scatter around 1) and the mean gradient is the full-KD one, ``s − p``, to within the sampler's
    noise; the self-normalised target's O(1/N) bias, at N = 4, stands out of that noise. (A statistic
    of the targets, so one implementation: "auto", Triton on a GPU, too many rows for its interpreter.)"""
    p = torch.tensor([0.40, 0.20, 0.12, 0.08, 0.06, 0.05, 0.04, 0.02, 0.015, 0.005])
    n = 60000
    drawn = sample_random(p.log().expand(n, -1).contiguous(), 4, temperature=0.8, generator=generator(41))
    student = torch.randn(1, p.numel(), generator=generator(42)).expand(n, -1).contiguous()
    expected = torch.softmax(student[0].double(), -1) - p.double()
    for normalize in (False, True):
        ids, probs = drawn.to_padded(normalize=normalize)
        x = student.clone().requires_grad_()
        params = KDParams(reduction="sum", normalized_targets=normalize)
        sparse_kd_loss(x, ids, probs, params=params).backward()
        assert x.grad is not None
        grad = x.grad.double()
        z = ((grad.mean(0) - expected) / (grad.var(0) / n).sqrt()).abs().max()
        assert z > 8 if normalize else z < 5, (normalize, z)
    with pytest.raises(ValueError, match="rows summing to at most 1"):  # the default refuses them
        sparse_kd_loss(student, *drawn.to_padded(normalize=False))


# --------------------------------------------------------------------------- bad input


def _bad(match: str, **overrides: Any) -> None:
    case = make_case(6, 50, 4, seed=22, kind="topk")
    args: dict[str, Any] = {
        "logits": case.logits.detach(),
        "target_ids": case.ids,
        "target_probs": case.probs,
    }
    args.update(overrides)
    with pytest.raises(ValueError, match=match):
        _call(**args)


def test_bad_input_is_refused_with_the_argument_named() -> None:
    case = make_case(6, 50, 4, seed=22, kind="topk")
    ids, probs = case.ids, case.probs
    _bad(r"logits: expected shape \[N, V\]", logits=torch.zeros(6, 5, 50))
    if HAS_TRITON and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        _bad("impl: 'triton' needs CUDA tensors", impl="triton")
    _bad("logits: expected float32, float16 or bfloat16", logits=torch.zeros(6, 50, dtype=torch.float64))
    _bad(r"target_ids: expected shape \[N=6, K\], got \[5, 4\]", target_ids=ids[:5], target_probs=probs[:5])
    _bad(r"target_probs: expected shape \[6, 4\]", target_probs=probs[:, :3])
    _bad("target_ids: expected int64 or int32", target_ids=ids.float())
    _bad(r"target_ids: expected ids in \[0, V=50\) or -1 for padding, got 50", target_ids=ids.clone().fill_(50))
    _bad("target_ids: expected ids", target_ids=ids.clone().fill_(-2))
    _bad("target_probs: expected finite non-negative", target_probs=probs.clone().fill_(-0.1))
    _bad("target_probs: expected finite non-negative", target_probs=probs.clone().fill_(float("nan")))
    _bad("target_probs: expected finite non-negative", target_probs=probs.clone().fill_(float("inf")))
    _bad("target_probs: expected finite non-negative", target_probs=probs.clone().fill_(float("inf")),
         normalized_targets=False)  # fmt: skip
    _bad(r"target_probs: expected rows summing to at most 1 \+ 0.001", target_probs=probs.clone().fill_(0.5))
    padded_ids = ids.clone()
    padded_ids[0, 0] = -1
    _bad("expected 0 at padding", target_ids=padded_ids)
    _bad("labels: mode='naive_fix' needs labels, got None", mode="naive_fix")
    _bad("labels: ce_weight=0.5 needs labels, got None", ce_weight=0.5)
    _bad(r"labels: expected ids in \[0, V=50\)", labels=torch.full((6,), 50))
    _bad(r"labels: expected an int64 tensor of shape \[N=6\]", labels=torch.zeros(5, dtype=torch.int64))
    _bad("mask: expected a bool tensor", mask=torch.ones(6))
    _bad("weights: expected finite non-negative", weights=-torch.ones(6))
    _bad("weights: expected finite non-negative", weights=torch.full((6,), float("inf")))
    dup = ids.clone()
    dup[2, 1] = dup[2, 0]
    _bad("target_ids: expected unique ids within a row, got id .* twice in row 2", target_ids=dup)
    _bad("chunk_size: expected an int", chunk_size=2.5)
    _bad("ignore_index: expected an int", ignore_index=None)
    _bad("ce_weight: expected a number", ce_weight="0.5")
    _bad(r"logits: expected shape \[N, V\] with V >= 1", logits=torch.zeros(6, 0))
    _bad(r"weights: expected a float tensor of shape \[N=6\]", weights=torch.ones(7))
    _bad("mode: expected one of", mode="reverse_kl")
    _bad("reduction: expected one of", reduction="max")
    _bad("impl: expected one of", impl="cuda")
    _bad(r"temperature: expected a value in \[1e-4, 1e4\], got 0", temperature=0.0)
    _bad("ce_weight: expected 0 <= α <= 1, got 1.5", ce_weight=1.5, labels=case.labels)
    _bad("mode: normalized_targets=False needs mode='kl', got 'ghost'", normalized_targets=False, mode="ghost")
    _bad("normalized_targets: expected a bool", normalized_targets=1)
    _bad(f"target_ids: expected device {case.logits.device}", target_ids=ids.to("meta"))


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_ghost_with_a_confident_student_stays_exact(impl: str) -> None:
    """The student's mass outside K rounds to 0 in fp32: the gradient must not explode."""
    x = torch.zeros(2, 1000)
    x[:, 0] = 25.0
    case = Case(
        x.requires_grad_(), torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0.6, 0.1], [0.6, 0.1]]), x[:, 0].long()
    )
    loss, grad = _run(case, impl, mode="ghost", reduction="sum")
    ref_loss, ref_grad = _run(case, "reference", mode="ghost", reduction="sum")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert grad.abs().max() < 1.0


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_ghost_equals_kl_for_fp32_sampled_targets_with_a_confident_student(impl: str) -> None:
    case = make_case(seed=30, kind="sampled")
    sharp = Case((case.logits.detach() * 8).requires_grad_(), case.ids, case.probs, case.labels)
    ghost = _run(sharp, impl, mode="ghost")
    kl = _run(sharp, impl, mode="kl")
    torch.testing.assert_close(ghost, kl)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_bf16_ghost_with_a_confident_student(impl: str) -> None:
    gen = generator(31)
    x = torch.randn(4, 1000, generator=gen) * 0.5
    x[:, 0] += 12
    x = x.bfloat16().requires_grad_()
    case = Case(x, torch.tensor([[0, 1]] * 4), torch.tensor([[0.6, 0.1]] * 4), torch.zeros(4, dtype=torch.int64))
    _, grad = _run(case, impl, mode="ghost")
    _, ref = _run(case, "reference", mode="ghost")
    assert (grad.float() - ref.float()).abs().max() <= 1e-2 * ref.float().abs().max()


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_fp16_logits_survive_loss_scaling(impl: str) -> None:
    case = make_case(64, 512, 8, seed=32)
    x = case.logits.detach().half().requires_grad_()
    (sparse_kd_loss(x, case.ids, case.probs, params=KDParams(impl=impl)) * 65536.0).backward()  # type: ignore[arg-type]
    assert x.grad is not None
    ref_x = case.logits.detach().half().requires_grad_()
    (sparse_kd_loss(ref_x, case.ids, case.probs, params=KDParams(impl="reference")) * 65536.0).backward()
    assert ref_x.grad is not None
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.float(), ref_x.grad.float(), rtol=2e-3, atol=1e-2)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_dropped_rows_never_leak_inf_or_nan(impl: str) -> None:
    case = make_case(6, 50, 4, seed=33, kind="topk")
    x = case.logits.detach().clone()
    x[2] = float("nan")
    x[4, case.ids[4, 0]] = float("-inf")
    mask = torch.ones(6, dtype=torch.bool)
    mask[[2, 4]] = False
    loss, grad = _run(Case(x.requires_grad_(), case.ids, case.probs, case.labels), impl, mask=mask)
    assert torch.isfinite(loss).all()
    assert torch.isfinite(grad).all()
    assert grad[[2, 4]].abs().max() == 0


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_a_leading_block_of_minus_inf_logits(impl: str) -> None:
    x = torch.randn(2, 5000, generator=generator(34))
    x[:, :4096] = float("-inf")
    case = Case(
        x.requires_grad_(),
        torch.tensor([[4100, 4200], [4300, -1]]),
        torch.tensor([[0.5, 0.3], [0.6, 0.0]]),
        torch.zeros(2, dtype=torch.int64),
    )
    loss, grad = _run(case, impl)
    ref_loss, ref_grad = _run(case, "reference")
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def test_double_backward_is_refused_not_silently_wrong() -> None:
    case = make_case(seed=35)
    x = case.logits.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(sparse_kd_loss(x, case.ids, case.probs), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|does not require grad|marked with"):
        torch.autograd.grad(grad.sum(), x)
