"""The server and the thin client work where torch is not installed; the torch side says which extra to add.

Each check runs in a child interpreter whose ``sitecustomize`` makes ``import torch`` (and
``transformers``) fail exactly as an environment without them does. The container image is the
same proof for real (``tests/docker/test_images.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, make_records

BLOCKER = """
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture
def no_torch(tmp_path: Path) -> dict[str, str]:
    """An environment for child processes in which torch and transformers cannot be imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_the_server_serves_without_torch(tmp_path: Path, no_torch: dict[str, str]) -> None:
    blocked = subprocess.run(
        [sys.executable, "-c", "import torch"], env={**os.environ, **no_torch}, capture_output=True, text=True
    )
    assert "No module named 'torch'" in blocked.stderr  # the blocker works
    server = ServerProcess(tmp_path / "data", env=no_torch)
    try:
        items = make_records(6)  # made here, where torch is
        with server.client() as client:
            client.create_shard(0, MANIFEST)
            assert client.write(0, items).written == 6
            assert list(client.read(0, seqs=[5, 0])) == [items[5], items[0]]
        detail = httpx.get(f"{server.url}/v1/shards/0/sequences/2", timeout=10).json()
        assert len(detail["positions"]) == 32
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_the_torch_side_names_the_extra_to_install(tmp_path: Path, no_torch: dict[str, str]) -> None:
    env = {**os.environ, **no_torch}
    for module in ("logitcache.training", "logitcache.kd", "logitcache.writer", "logitcache.targets.sampling"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert done.returncode == 1
        assert "pip install 'logitcache[torch]'" in done.stderr, module
    thin = "from logitcache.client import CacheClient; from logitcache.core import records; import logitcache.apps.cli"
    assert subprocess.run([sys.executable, "-c", thin], env=env, capture_output=True, text=True).returncode == 0
    demo = subprocess.run(
        [sys.executable, "-m", "logitcache", "demo", "--quick", "--no-wait", "--data-dir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 2
    assert "pip install 'logitcache[torch]'" in demo.stderr
    assert "Traceback" not in demo.stderr
