"""The REST schema tells the truth: schemathesis (coverage, fuzzing and stateful phases, every check)
against a live server, with auth off, with a token, and with reads needing the token."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records

TOKEN = "tok"
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
CONFIGS = {
    "open": (),
    "token": ("--auth-token", TOKEN),
    "reads-need-token": ("--auth-token", TOKEN, "--http-reads-need-token"),
}


@pytest.fixture(params=list(CONFIGS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ServerProcess]]:
    proc = ServerProcess(tmp_path, *CONFIGS[request.param])
    with proc.client(TOKEN) as client:
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(8))
        client.create_shard(1, TOPK_MANIFEST)
        client.write(1, make_records(3, topk=True))
    yield request.param, proc
    proc.stop()


@pytest.mark.skipif(SCHEMATHESIS is None, reason="needs schemathesis (a dev dependency)")
def test_schemathesis_finds_nothing(server: tuple[str, ServerProcess], tmp_path: Path) -> None:
    config, proc = server
    command = [SCHEMATHESIS or "", "run", f"{proc.url}/openapi.json", "--checks", "all"]
    command += ["--max-examples", "12", "--seed", "1", "--workers", "1", "--no-color"]
    if config != "open":
        command += ["--header", f"Authorization: Bearer {TOKEN}"]
    # its working directory gets schemathesis's own cache (.schemathesis/): keep it out of the checkout
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout


def test_the_schema_declares_auth_where_it_is_checked(server: tuple[str, ServerProcess]) -> None:
    config, proc = server
    with httpx.Client(base_url=proc.url, timeout=30) as http:
        schema = http.get("/openapi.json").json()
        paths = schema["paths"]
        seal = paths["/v1/shards/{shard}/seal"]["post"]
        assert seal["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SealRequest")
        guarded = {
            "open": set(),
            "token": {("post", "/v1/shards/{shard}/seal")},
            "reads-need-token": {
                (m, p) for p, ops in paths.items() for m in ops if p.startswith("/v1") or p == "/metrics"
            },
        }[config]
        for path, ops in paths.items():
            for method, op in ops.items():
                declared = "security" in op
                assert declared == ((method, path) in guarded), (config, method, path)
                assert ("401" in op["responses"]) == declared, (config, method, path)
        assert ("securitySchemes" in schema.get("components", {})) == bool(guarded)
        metrics = http.get("/metrics")
        assert metrics.status_code == (401 if config == "reads-need-token" else 200)
        assert http.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert http.get("/healthz").status_code == 200  # probes stay open
        assert http.get("/readyz").status_code == 200
