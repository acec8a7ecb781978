"""Evaluation metrics of the paper (§5): calibration (ECE), top-1 agreement with the teacher, LM loss.

* **ECE** (Guo et al., 2017): bin positions by the student's max probability; in each bin compare
  the mean confidence with the accuracy (argmax == label); ECE is the bin-size-weighted mean of
  ``|accuracy − confidence|``. :class:`CalibrationAccumulator` streams it over many batches and
  keeps the per-bin figures for reliability diagrams.
* **Top-1 agreement**: how often the student's argmax equals the teacher's (a proxy for
  speculative-decoding acceptance). With sparse targets the teacher's argmax is the entry with
  the largest target probability (:func:`sparse_argmax`).
* **LM loss**: mean cross-entropy on the labels.

ECE and LM loss skip positions whose label is ``ignore_index``; top-1 agreement skips positions
without teacher entries and those a mask excludes. Softmaxes run in chunks of positions so memory
stays bounded. Bins are right-closed, ``(lo, hi]``, as in Guo et al.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CalibrationAccumulator",
    "CalibrationBins",
    "expected_calibration_error",
    "lm_loss",
    "sparse_argmax",
    "top1_agreement",
]

_CHUNK = 1024


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics: ``edges [B+1]``, ``count [B]``, ``confidence [B]`` (mean), ``accuracy [B]``."""

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor

    @property
    def ece(self) -> float:
        total = float(self.count.sum())
        if total == 0:
            return 0.0
        return float((self.count * (self.accuracy - self.confidence).abs()).sum() / total)


class CalibrationAccumulator:
    """Streaming expected calibration error over equal-width confidence bins."""

    def __init__(self, n_bins: int = 15) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins: expected >= 1, got {n_bins}")
        self.n_bins = n_bins
        self._count = torch.zeros(n_bins, dtype=torch.float64)
        self._confidence = torch.zeros(n_bins, dtype=torch.float64)
        self._correct = torch.zeros(n_bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100) -> None:
        """Add positions: ``logits [N, V]``, ``labels [N]``."""
        _check_pair(logits, labels)
        for start in range(0, logits.shape[0], _CHUNK):
            x = logits[start : start + _CHUNK].float()
            y = labels[start : start + _CHUNK]
            keep = y != ignore_index
            confidence, predicted = torch.softmax(x[keep], dim=-1).max(dim=-1)
            correct = (predicted == y[keep]).double()
            # right-closed bins (lo, hi] as Guo et al.: a confidence of exactly 0.5 belongs to (0.4, 0.5]
            bins = (torch.ceil(confidence.double() * self.n_bins) - 1).long().clamp_(0, self.n_bins - 1).cpu()
            self._count.index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))
            self._confidence.index_add_(0, bins, confidence.double().cpu())
            self._correct.index_add_(0, bins, correct.cpu())

    def bins(self) -> CalibrationBins:
        safe = self._count.clamp_min(1)
        return CalibrationBins(
            edges=torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64),
            count=self._count.clone(),
            confidence=self._confidence / safe,
            accuracy=self._correct / safe,
        )

    def compute(self) -> float:
        """The ECE so far, in [0, 1] (multiply by 100 for the paper's percentages)."""
        return self.bins().ece


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15, ignore_index: int = -100) -> float:
    """ECE of one batch (see :class:`CalibrationAccumulator` for many)."""
    acc = CalibrationAccumulator(n_bins)
    acc.update(logits, labels, ignore_index)
    return acc.compute()


def sparse_argmax(target_ids: Tensor, target_probs: Tensor) -> Tensor:
    """The teacher's most probable token per position from padded sparse targets. ``[N]`` int64.

    -1 where a position has no entries.
    """
    if target_ids.shape[1] == 0:
        return torch.full((target_ids.shape[0],), -1, dtype=torch.int64, device=target_ids.device)
    best = torch.where(target_ids >= 0, target_probs.float(), -1.0).argmax(dim=1, keepdim=True)
    return target_ids.gather(1, best).squeeze(1).long()


@torch.no_grad()
def top1_agreement(logits: Tensor, teacher_top1: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of positions where the student's argmax equals ``teacher_top1 [N]`` (ids).

    Positions with a negative teacher id (no entries, see :func:`sparse_argmax`) or ``mask`` False
    are skipped.
    """
    _check_pair(logits, teacher_top1)
    keep = teacher_top1 >= 0
    if mask is not None:
        keep &= mask
    agree = (logits.argmax(dim=-1) == teacher_top1)[keep]
    return float(agree.float().mean()) if agree.numel() else 0.0


@torch.no_grad()
def lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> float:
    """Mean cross-entropy (nats) of ``logits [N, V]`` on ``labels [N]``."""
    _check_pair(logits, labels)
    total, count = 0.0, 0
    for start in range(0, logits.shape[0], _CHUNK):
        y = labels[start : start + _CHUNK].long()
        x = logits[start : start + _CHUNK].float()
        total += float(torch.nn.functional.cross_entropy(x, y, ignore_index=ignore_index, reduction="sum"))
        count += int((y != ignore_index).sum())
    return total / count if count else 0.0


def _check_pair(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits [N, V] and labels [N], got {list(logits.shape)} and {list(labels.shape)}")
