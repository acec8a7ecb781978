"""The committed stubs are what `make proto` generates from proto/ today."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitcache.proto import generate

pytest.importorskip("grpc_tools")


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert fresh, "protoc wrote nothing"
    committed_root = generate.REPO / "src"
    for path in fresh:
        relative = path.relative_to(tmp_path)
        committed = committed_root / relative
        assert committed.exists(), f"{relative} is not committed: run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), f"{relative} is stale: run `make proto`"
