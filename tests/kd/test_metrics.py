"""Metrics against plain Python references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from logitcache.kd.metrics import (
    CalibrationAccumulator,
    expected_calibration_error,
    lm_loss,
    sparse_argmax,
    top1_agreement,
)
from tests.kd.cases import generator


def _ece_reference(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    probs = torch.softmax(logits.double(), dim=-1)
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for row, label in zip(probs.tolist(), labels.tolist(), strict=True):
        confidence = max(row)
        predicted = row.index(confidence)
        index = min(max(math.ceil(confidence * n_bins) - 1, 0), n_bins - 1)  # (lo, hi] bins
        bins[index].append((confidence, predicted == label))
    total = len(labels)
    ece = 0.0
    for items in bins:
        if items:
            conf = sum(c for c, _ in items) / len(items)
            acc = sum(ok for _, ok in items) / len(items)
            ece += len(items) / total * abs(acc - conf)
    return ece


def test_ece_matches_the_reference_and_streams() -> None:
    gen = generator(0)
    logits = torch.randn(500, 20, generator=gen) * 3
    labels = torch.randint(0, 20, (500,), generator=gen)
    expected = _ece_reference(logits, labels, 15)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-9)
    acc = CalibrationAccumulator(15)
    for part in range(5):
        acc.update(logits[part * 100 : (part + 1) * 100], labels[part * 100 : (part + 1) * 100])
    assert acc.compute() == pytest.approx(expected, abs=1e-9)
    assert int(acc.bins().count.sum()) == 500


def test_ece_of_a_calibrated_and_an_overconfident_model() -> None:
    gen = generator(1)
    logits = torch.randn(20000, 10, generator=gen)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)  # calibrated by construction
    assert expected_calibration_error(logits, labels) < 0.02
    assert expected_calibration_error(logits * 4, labels) > 0.15  # sharpened: over-confident


def test_ignore_index_is_skipped() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, -100])
    acc = CalibrationAccumulator(10)
    acc.update(logits, labels)
    assert int(acc.bins().count.sum()) == 1
    assert lm_loss(logits, labels) == pytest.approx(float(F.cross_entropy(logits[:1], labels[:1])))


def test_top1_agreement_and_sparse_argmax() -> None:
    ids = torch.tensor([[3, 1, -1], [0, 2, 4]])
    probs = torch.tensor([[0.2, 0.7, 0.0], [0.1, 0.1, 0.8]])
    teacher = sparse_argmax(ids, probs)
    assert teacher.tolist() == [1, 4]
    logits = torch.zeros(2, 5)
    logits[0, 1] = 1.0
    logits[1, 2] = 1.0
    assert top1_agreement(logits, teacher) == 0.5
    assert top1_agreement(logits, teacher, mask=torch.tensor([True, False])) == 1.0


def test_lm_loss_is_mean_cross_entropy() -> None:
    gen = generator(2)
    logits = torch.randn(3000, 50, generator=gen)
    labels = torch.randint(0, 50, (3000,), generator=gen)
    assert lm_loss(logits, labels) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    assert math.isclose(lm_loss(logits[:0], labels[:0]), 0.0)


def test_bins_are_right_closed() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.45, 0.55]]))  # confidences 0.5 and 0.55
    labels = torch.tensor([0, 0])  # the first is right (argmax ties pick 0), the second wrong
    acc = CalibrationAccumulator(10)
    acc.update(logits, labels)
    assert acc.bins().count.tolist()[4:6] == [1.0, 1.0]  # 0.5 in (0.4, 0.5], 0.55 in (0.5, 0.6]


def test_top1_agreement_skips_positions_without_entries() -> None:
    teacher = sparse_argmax(torch.tensor([[2, -1], [-1, -1]]), torch.tensor([[0.9, 0.0], [0.0, 0.0]]))
    assert teacher.tolist() == [2, -1]
    logits = torch.zeros(2, 4)
    logits[:, 2] = 1.0
    assert top1_agreement(logits, teacher) == 1.0
    assert sparse_argmax(torch.zeros(3, 0, dtype=torch.int64), torch.zeros(3, 0)).tolist() == [-1, -1, -1]


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"expected logits \[N, V\] and labels \[N\]"):
        lm_loss(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))
