"""Test-wide setup.

Without a GPU, Triton kernels run in interpreter mode on CPU tensors; the flag must be set
before Triton is first imported, so it is set here, before any test module loads. Tests marked
``cuda`` (the ``tests/*/test_cuda_*.py`` files) are skipped without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs these on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
