"""Run a repository script (an experiment or a benchmark) as CI does: a subprocess from the repo root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``python <script> <args>``; assert it succeeded; return its last stdout line as JSON."""
    done = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary
