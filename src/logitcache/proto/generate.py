"""Regenerate the stubs in this package from ``proto/`` (``make proto`` or ``python -m logitcache.proto.generate``).

The ``.proto`` sources live at ``proto/logitcache/v1/`` in the repository; they are compiled with
the virtual import path ``logitcache/proto/...`` so the generated modules import each other as
``logitcache.proto.v1.*``. The test suite regenerates into a temporary directory and fails if the
committed stubs differ (grpcio-tools is pinned in the dev extras so the output is reproducible).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto" / "logitcache"
SOURCES = ("v1/cache.proto",)


def generate(out_dir: Path) -> list[Path]:
    """Compile every source into ``out_dir`` (a ``src``-like root); return the files written."""
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    for source in SOURCES:
        args = [
            "grpc_tools.protoc",
            f"-Ilogitcache/proto={PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_ROOT / source),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source}")
    generated = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    return sorted(p for p in (out_dir / "logitcache" / "proto").rglob("*") if p.name.endswith(generated))


def main() -> int:
    written = generate(REPO / "src")
    for path in written:
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
