"""The KD tests run on ``tests.kd.cases.DEVICE``: the GPU when there is one, else the CPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.kd.cases import DEVICE


@pytest.fixture(autouse=True)
def _on_device() -> Iterator[None]:
    """On a GPU, tensors the tests create (``torch.zeros``, ``torch.tensor``, ...) land on it.

    On the CPU nothing is set: a default-device mode would route every torch call through
    ``__torch_function__`` for nothing."""
    if DEVICE.type == "cpu":
        yield
        return
    with torch.device(DEVICE):
        yield
