"""The KD tests run on ``tests.kd.cases.DEVICE``: the GPU when there is one, else the CPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.kd.cases import DEVICE


@pytest.fixture(autouse=True)
def _on_device() -> Iterator[None]:
    """Tensors the tests create (``torch.zeros``, ``torch.tensor``, ...) land on ``DEVICE``."""
    before = torch.get_default_device()
    torch.set_default_device(DEVICE)
    try:
        yield
    finally:
        torch.set_default_device(before)
