"""What every experiment shares: arguments, a real cache server, result files.

Each experiment is a script (``python experiments/<name>.py``) that writes ``<name>.json`` and its
plots (``<name>*.png``) into ``--out`` (default ``results/``) and prints the JSON's summary as its
last line. ``--smoke`` shrinks everything to a seconds-long run for CI (``tests/experiments/``),
written to a temporary directory by the tests, never over the committed results.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

from logitcache.client import CacheClient
from logitcache.testing import ServerProcess

RESULTS = Path(__file__).resolve().parent.parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a seconds-long run (CI): tiny sizes, few steps")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG files go (default results/)")
    p.add_argument("--seed", type=int, default=0)
    return p


@contextmanager
def cache_server(data_dir: Path | None = None) -> Iterator[CacheClient]:
    """A real ``logitcache serve`` process on a free loopback port (no HTTP); yields a client to it."""
    with tempfile.TemporaryDirectory(prefix="logitcache-exp-") as tmp:
        server = ServerProcess(data_dir or Path(tmp), http=False)
        try:
            with server.client(timeout=120) as client:
                yield client
        finally:
            server.stop()


def save_json(out: Path, name: str, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def save_figure(out: Path, name: str, figure: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
