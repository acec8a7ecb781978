"""The bottom of :mod:`logitcache.kd`: the loss options, the target preparation, shared helpers.

Every implementation (:mod:`.reference`, :mod:`.chunked`, :mod:`.triton_kernel`, :mod:`.fused_linear`)
and the dispatcher (:mod:`.loss`) import from here; this module imports nothing else from ``kd``.
What the options mean is in :mod:`logitcache.kd.loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "GHOST_FLOOR",
    "IMPLS",
    "MODES",
    "REDUCTIONS",
    "Impl",
    "KDParams",
    "Mode",
    "PreparedTargets",
    "Reduction",
    "check_logits",
    "ghost_mass",
    "prepare_targets",
    "resolve_params",
]

Mode = Literal["kl", "ghost", "naive_fix"]
Reduction = Literal["mean", "sum", "none"]
Impl = Literal["auto", "reference", "chunked", "triton"]
MODES = ("kl", "ghost", "naive_fix")
REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("auto", "reference", "chunked", "triton")


@dataclass(frozen=True, kw_only=True)
class KDParams:
    """The sparse-KD loss options, the one place they are listed: every loss function and module
    takes ``params: KDParams`` (``None`` = these defaults). Built by keyword only; validated on
    construction (``ValueError``). What each option means: :mod:`logitcache.kd.loss`."""

    mode: Mode = "kl"  # "kl" | "ghost" | "naive_fix"
    ce_weight: float = 0.0  # α: loss = α·CE(labels) + (1 − α)·KD
    temperature: float = 1.0  # student softmax temperature τ for the KD term
    ignore_index: int = -100  # labels equal to this drop their position
    reduction: Reduction = "mean"  # "mean" (weighted) | "sum" | "none" (not for the fused-linear loss)
    mass_tolerance: float = 1e-3  # a target row may sum to at most 1 + this
    normalized_targets: bool = True  # False: unbiased targets (SparseKDLoader(normalize=False)), any row sum
    chunk_size: int | None = None  # positions per chunk (chunked / fused-linear); None → kd.chunked.chunk_positions
    impl: Impl = "auto"  # "auto" (triton on CUDA, else chunked) | "reference" | "chunked" | "triton"; fused: chunked

    def __post_init__(self) -> None:
        for name in ("ce_weight", "temperature", "mass_tolerance"):
            if not isinstance(getattr(self, name), int | float) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a number, got {getattr(self, name)!r}")
        if not isinstance(self.ignore_index, int):
            raise ValueError(f"ignore_index: expected an int, got {self.ignore_index!r}")
        if self.chunk_size is not None and not isinstance(self.chunk_size, int):
            raise ValueError(f"chunk_size: expected an int or None, got {self.chunk_size!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise ValueError(f"ce_weight: expected 0 <= α <= 1, got {self.ce_weight}")
        if not (1e-4 <= self.temperature <= 1e4):
            raise ValueError(f"temperature: expected a value in [1e-4, 1e4], got {self.temperature}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {self.reduction!r}")
        if not self.mass_tolerance >= 0:
            raise ValueError(f"mass_tolerance: expected >= 0, got {self.mass_tolerance}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {self.chunk_size}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {self.impl!r}")
        if not isinstance(self.normalized_targets, bool):
            raise ValueError(f"normalized_targets: expected a bool, got {self.normalized_targets!r}")
        if not self.normalized_targets and self.mode != "kl":
            raise ValueError(
                f"mode: normalized_targets=False needs mode='kl', got {self.mode!r} (unbiased targets sum to 1 "
                "only in expectation; 'ghost' and 'naive_fix' would read 1 − Σ t as missing mass)"
            )

    @property
    def ghost(self) -> bool:
        return self.mode == "ghost"


def resolve_params(params: KDParams | None) -> KDParams:
    """``params``, or the defaults for ``None``; ``TypeError`` for anything else."""
    if params is None:
        return KDParams()
    if not isinstance(params, KDParams):
        raise TypeError(f"params: expected a KDParams or None, got {type(params).__name__}")
    return params


GHOST_FLOOR = 1e-6
"""A residual ``1 − Σ t`` at or below this is rounding, not ghost mass (fp32 sums of targets that
add up to 1 miss it by ~1e-7)."""


def ghost_mass(total: Tensor) -> Tensor:
    """The ghost token's target ``t_g = 1 − Σ t`` per row, rounding-level residuals read as 0."""
    residual = 1.0 - total
    return torch.where(residual > GHOST_FLOOR, residual, torch.zeros_like(residual))


@dataclass(frozen=True)
class PreparedTargets:
    """Validated targets in the form every implementation consumes (no autograd on any of them)."""

    ids: Tensor  # [N, K'] int64, -1 = padding (K' = K + 1 for naive_fix)
    probs: Tensor  # [N, K'] float32, 0 at padding
    labels: Tensor  # [N] int64, always a valid index (0 where absent or ignored)
    row_weight: Tensor  # [N] float32: keep · weight / denominator (0 for dropped positions)

    def rows(self, start: int, end: int) -> PreparedTargets:
        """Positions ``start:end`` (views, no copies)."""
        return PreparedTargets(
            ids=self.ids[start:end],
            probs=self.probs[start:end],
            labels=self.labels[start:end],
            row_weight=self.row_weight[start:end],
        )


def prepare_targets(
    logits_shape: tuple[int, int],
    device: torch.device,
    target_ids: Tensor,  # [N, K]
    target_probs: Tensor,  # [N, K]
    params: KDParams,
    labels: Tensor | None = None,  # [N]
    mask: Tensor | None = None,  # [N] bool, True = keep
    weights: Tensor | None = None,  # [N] >= 0
) -> PreparedTargets:
    """Validate the targets against ``logits [N, V]`` and fold masks and weights into one row weight."""
    n, vocab = logits_shape
    if not isinstance(target_ids, Tensor) or not isinstance(target_probs, Tensor):
        raise TypeError("target_ids, target_probs: expected torch.Tensor")
    if target_ids.dim() != 2 or target_ids.shape[0] != n:
        raise ValueError(f"target_ids: expected shape [N={n}, K], got {list(target_ids.shape)}")
    if target_probs.shape != target_ids.shape:
        raise ValueError(
            f"target_probs: expected shape {list(target_ids.shape)} (as target_ids), got {list(target_probs.shape)}"
        )
    if target_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target_ids: expected int64 or int32, got {target_ids.dtype}")
    if not target_probs.is_floating_point():
        raise ValueError(f"target_probs: expected a floating dtype, got {target_probs.dtype}")
    _check_device("target_ids", target_ids, device)
    _check_device("target_probs", target_probs, device)
    ids = target_ids.long()
    probs = target_probs.detach().float()
    pad = ids == -1
    if target_ids.numel():
        if bool(((ids < -1) | (ids >= vocab)).any()):
            bad = ids[(ids < -1) | (ids >= vocab)][0]
            raise ValueError(f"target_ids: expected ids in [0, V={vocab}) or -1 for padding, got {int(bad)}")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ValueError("target_probs: expected finite non-negative numbers, got a negative, NaN or inf one")
        if bool((probs[pad] != 0).any()):
            raise ValueError("target_probs: expected 0 at padding (id -1), got a non-zero probability")
        ordered = torch.where(pad, -1, ids).sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if bool(repeated.any()):
            row = int(repeated.any(dim=1).nonzero()[0, 0])
            token = int(ordered[:, 1:][repeated][0])
            raise ValueError(f"target_ids: expected unique ids within a row, got id {token} twice in row {row}")
        mass = probs.sum(dim=1)
        if params.normalized_targets and bool((mass > 1 + params.mass_tolerance).any()):
            raise ValueError(
                f"target_probs: expected rows summing to at most 1 + {params.mass_tolerance}, "
                f"got {float(mass.max()):.6f}"
            )
    keep = torch.ones(n, dtype=torch.bool, device=device)
    safe_labels = torch.zeros(n, dtype=torch.int64, device=device)
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32):
            got = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels: expected an int64 tensor of shape [N={n}], got {got}")
        _check_device("labels", labels, device)
        ignored = labels == params.ignore_index
        if bool(((labels < 0) | (labels >= vocab))[~ignored].any()):
            raise ValueError(f"labels: expected ids in [0, V={vocab}) or ignore_index={params.ignore_index}")
        keep &= ~ignored
        safe_labels = torch.where(ignored, 0, labels.long())
    elif params.mode == "naive_fix" or params.ce_weight > 0:
        need = "mode='naive_fix'" if params.mode == "naive_fix" else f"ce_weight={params.ce_weight}"
        raise ValueError(f"labels: {need} needs labels, got None")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != (n,) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor of shape [N={n}], got {getattr(mask, 'shape', mask)}")
        _check_device("mask", mask, device)
        keep &= mask
    if params.mode == "naive_fix":
        ids, probs = _naive_fix(ids, probs, safe_labels)
        pad = ids == -1
    if params.ce_weight == 0:
        keep &= ~pad.all(dim=1)  # no entries and no CE: nothing to learn here
    row_weight = keep.float()
    if weights is not None:
        if not isinstance(weights, Tensor) or weights.shape != (n,) or not weights.is_floating_point():
            raise ValueError(
                f"weights: expected a float tensor of shape [N={n}], got {getattr(weights, 'shape', weights)}"
            )
        _check_device("weights", weights, device)
        w = weights.detach().float()
        if bool((~torch.isfinite(w) | (w < 0)).any()):
            raise ValueError("weights: expected finite non-negative numbers, got a negative, inf or NaN weight")
        row_weight = row_weight * w
    if params.reduction == "mean":
        row_weight = row_weight / row_weight.sum().clamp_min(torch.finfo(torch.float32).tiny)
    return PreparedTargets(ids=ids, probs=torch.where(pad, 0.0, probs), labels=safe_labels, row_weight=row_weight)


def _check_device(name: str, tensor: Tensor, device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name}: expected device {device} (the logits'), got {tensor.device}")


def _naive_fix(ids: Tensor, probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's residual mass ``1 − Σ t`` onto its label: merged into the label's entry if
    present, else into one extra column. Returns ``[N, K + 1]`` ids and probs."""
    residual = (1.0 - probs.sum(dim=1)).clamp_min(0.0)
    match = ids == labels[:, None]
    probs = probs + match.float() * residual[:, None]
    new = ~match.any(dim=1) & (residual > 0)
    extra_id = torch.where(new, labels, -1)
    extra_prob = torch.where(new, residual, 0.0)
    return torch.cat([ids, extra_id[:, None]], dim=1), torch.cat([probs, extra_prob[:, None]], dim=1)


def check_logits(logits: Tensor, name: str) -> None:
    """A 2-d fp32 / fp16 / bf16 tensor, else ``ValueError`` (``TypeError`` for a non-tensor)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"{name}: expected shape [N, V] with V >= 1, got {list(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: expected float32, float16 or bfloat16, got {logits.dtype}")
