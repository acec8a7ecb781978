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


# the longest test files, started first (`make pytest` runs two workers, each file on one, in this
# order): with them last, one worker is left running them alone at the end of the run
LONG_POLES = (
    "tests/experiments/test_distillation.py",
    "tests/docker/test_images.py",
    "tests/apps/test_teacher.py",
    "tests/experiments/test_gradient_similarity.py",
    "tests/integrations/test_ray.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONG_POLES)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(LONG_POLES)))  # stable: else as collected
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs these on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
