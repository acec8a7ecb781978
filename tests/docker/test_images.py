"""The images, built and run by a real container engine with the README's own commands.

The README's Deploying block is read here and its ``docker`` lines run as written, except that the
container's name, its volume and its host ports are made unique to the test (port 0: the engine
picks free ones, read back with ``docker port``). Skipped, saying why, where ``docker version``
gets no answer from an engine (``.ci/run`` sets one up first with ``container-engine``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from logitcache.client import CacheClient, CacheError
from logitcache.core import records
from tests.server.helpers import MANIFEST, make_records

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "docker" / "work"
WHEELS = REPO / "docker" / "wheels"


def _engine() -> str | None:
    """Why no container engine can be used here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    done = subprocess.run(["docker", "version"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or "Server:" not in done.stdout:
        return f"docker version gets no answer from an engine: {done.stderr.strip()[:200]}"
    return None


pytestmark = pytest.mark.skipif(_engine() is not None, reason=str(_engine()))


def _readme_commands() -> list[str]:
    """The ``docker`` lines of the README's Deploying block, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Deploying") :].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("docker ")]


def _readme(prefix: str) -> list[str]:
    (command,) = [c for c in _readme_commands() if c.startswith(prefix)]
    return shlex.split(command)


def _run(
    args: list[str], *, timeout: float = 900, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO, env=env)
    if check and done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(f"{shlex.join(args)} failed ({done.returncode}):\n{output}")
    return done


def _local_torch_wheel() -> Path | None:
    """A torch CPU wheel in pip's find-links (how this machine installs torch without the PyTorch index)."""
    done = subprocess.run(["pip", "config", "list"], capture_output=True, text=True, check=False)
    dirs = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            dirs += [Path(d.strip("'\"")) for d in value.strip("'\"").split()]
    wheels = sorted(w for d in dirs if d.is_dir() for w in d.glob("torch-*+cpu-*.whl"))
    return wheels[-1] if wheels else None


@pytest.fixture(scope="module")
def server_image() -> str:
    command = _readme("docker build -f docker/Dockerfile -t logitcache .")
    _run(command)
    return command[command.index("-t") + 1]


@pytest.fixture(scope="module")
def jobs_image() -> str:
    wheel = _local_torch_wheel()
    if wheel is not None and not (WHEELS / wheel.name).exists():
        shutil.copy(wheel, WHEELS / wheel.name)  # the PyTorch index is unreachable here: the build takes it from there
    command = _readme("docker build -f docker/Dockerfile --target jobs")
    _run(command)
    return command[command.index("-t") + 1]


class Container:
    """The README's ``docker run``, with a unique name, a unique volume and free host ports."""

    def __init__(self, image: str, volume: str | None = None) -> None:
        self.name = f"logitcache-test-{uuid.uuid4().hex[:8]}"
        self.volume = volume or f"{self.name}-data"
        args = _readme("docker run")
        args[args.index("--name") + 1] = self.name
        args = [re.sub(r"^127\.0\.0\.1:\d+:", "127.0.0.1:0:", a) for a in args]
        args = [a.replace("logitcache-data:", f"{self.volume}:") for a in args]
        assert args[-1] == image
        _run(args)
        self.grpc = self._port(50051)
        self.http = self._port(8080)
        self.wait_ready()

    def _port(self, inside: int) -> int:
        out = _run(["docker", "port", self.name, str(inside)]).stdout.split()[0]
        return int(out.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling the container's own readiness endpoint
        raise AssertionError(
            f"{self.name} did not become ready: {_run(['docker', 'logs', self.name], check=False).stderr[-2000:]}"
        )

    def state(self) -> tuple[str, int]:
        out = _run(["docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name]).stdout.split()
        return out[0], int(out[1])

    def remove(self, *, volume: bool = True) -> None:
        _run(["docker", "rm", "--force", self.name], check=False)
        if volume:
            _run(["docker", "volume", "rm", "--force", self.volume], check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


def test_the_server_image_is_lean_and_has_no_torch(server_image: str) -> None:
    size = int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", server_image]).stdout)
    base = int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", "python:3.11-slim"]).stdout)
    assert size - base <= 150 << 20, f"the image adds {(size - base) >> 20} MiB to its base"
    command = ["docker", "run", "--rm", "--entrypoint", "python", server_image, "-c"]
    assert "No module named 'torch'" in _run([*command, "import torch"], check=False).stderr
    served = "import sys, logitcache.apps.cli, logitcache.server.runner"
    served += "; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    assert _run([*command, served]).stdout.strip() == "[]"  # the server's whole import chain, and no torch


def test_the_readme_run_serves_and_is_healthy_non_root_and_read_only(
    server_image: str, containers: list[Container]
) -> None:
    container = Container(server_image)
    containers.append(container)
    items = make_records(20)
    with CacheClient(container.address, timeout=30) as client:  # from the host, through the published port
        client.create_shard(0, MANIFEST)
        assert client.write(0, items).written == 20
        assert list(client.read(0, ranges=[(0, 20)])) == items
    shards = httpx.get(f"{container.url}/v1/shards", timeout=10).json()
    assert [(s["shard"], s["sequences"]) for s in shards] == [(0, 20)]
    assert "viewer.js" in httpx.get(f"{container.url}/", timeout=10).text
    healthy = "podman" in _run(["docker", "version"]).stdout.lower()
    if healthy:  # podman schedules health checks through systemd, which this machine has not: run it now
        _run(["podman", "healthcheck", "run", container.name])
    deadline = time.monotonic() + 60
    while (
        status := _run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container.name]).stdout.strip()
    ) != "healthy":
        assert time.monotonic() < deadline, f"health: {status}"
        time.sleep(0.5)  # Docker runs the check every 5 s
    assert _run(["docker", "exec", container.name, "id", "-u"]).stdout.strip() == "10001"
    # nothing but the volume keeps what is written (podman adds a scratch tmpfs at /tmp to --read-only)
    probe = "for d in / /etc /opt/venv /home /var /usr/local; do touch $d/probe 2>/dev/null && echo $d; done"
    probe += "; touch /data/probe && echo ok"
    probe += "; grep -q ' /tmp tmpfs ' /proc/mounts || (touch /tmp/probe 2>/dev/null && echo /tmp)"
    assert _run(["docker", "exec", container.name, "sh", "-c", probe]).stdout.split() == ["ok"]


def test_kill_9_mid_stream_then_a_new_container_on_the_volume_keeps_every_acked_record(
    server_image: str, containers: list[Container]
) -> None:
    first = Container(server_image)
    containers.append(first)
    items = make_records(400, seed=6)
    batches = [items[at : at + 4] for at in range(0, len(items), 4)]
    acked: list[int] = []
    enough = threading.Event()
    with CacheClient(first.address, timeout=30) as client:
        client.create_shard(0, MANIFEST)

        def slow() -> Iterator[list[tuple[int, bytes]]]:
            for batch in batches:
                yield batch
                time.sleep(0.01)

        def write() -> None:
            try:
                for ack in client.write_batches(0, slow()):
                    acked.append(ack.batch_id)
                    if len(acked) >= 10:
                        enough.set()
            except CacheError:
                pass  # the container was killed
            finally:
                enough.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert enough.wait(120)
        _run(["docker", "kill", "-s", "KILL", first.name])
        writer.join(60)
    assert 10 <= len(acked) < len(batches)
    _run(["docker", "rm", first.name])
    second = Container(server_image, volume=first.volume)
    containers.append(second)
    with CacheClient(second.address, timeout=30) as client:
        stored = dict(client.read(0, ranges=[(0, len(items))]))
    for batch_id in acked:
        for seq, data in batches[batch_id]:
            assert stored.get(seq) == data, f"acknowledged seq {seq} lost"
    for seq, data in stored.items():  # whatever got in is whole
        assert data == items[seq][1]
        records.decode(data)


def test_docker_stop_drains_and_exits_0(server_image: str, containers: list[Container]) -> None:
    container = Container(server_image)
    containers.append(container)
    with CacheClient(container.address, timeout=30) as client:
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(8))
    stop = _readme("docker stop")
    stop[-1] = container.name
    _run(stop, timeout=120)
    assert container.state() == ("exited", 0)
    logs = _run(["docker", "logs", container.name]).stderr
    assert "SIGTERM received" in logs
    assert "stopped" in logs


def _compose(
    project: str, *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("podman-compose") or "docker compose"
    command = [*shlex.split(tool), "-p", project, "-f", "docker/compose.yaml", *args]
    return _run(command, timeout=timeout, env={**os.environ, **(env or {})})


needs_compose = pytest.mark.skipif(
    shutil.which("podman-compose") is None, reason="needs podman-compose (container-engine installs it)"
)


def _published(container: str, inside: int) -> str:
    return _run(["docker", "port", container, str(inside)]).stdout.split()[0]


@pytest.mark.skipif(
    shutil.which("podman-compose") is None, reason="needs podman-compose (container-engine installs it)"
)
def test_compose_up_serves(server_image: str) -> None:
    project = f"lctest{uuid.uuid4().hex[:6]}"
    env = {"LOGITCACHE_GRPC_PUBLISH": "127.0.0.1:", "LOGITCACHE_HTTP_PUBLISH": "127.0.0.1:"}
    try:
        _compose(project, "up", "-d", env=env)
        address = _published(f"{project}_cache_1", 50051)
        with CacheClient(address, timeout=30, retries=8) as client:
            client.create_shard(0, MANIFEST)
            assert client.write(0, make_records(3)).written == 3
            assert client.get_shard(0).sequences == 3
    finally:
        _compose(project, "down", "-v", env=env, timeout=300)


@pytest.mark.skipif(
    shutil.which("podman-compose") is None, reason="needs podman-compose (container-engine installs it)"
)
@pytest.mark.timeout(1200)  # its fixture builds the jobs image (torch, transformers): minutes on a busy machine
def test_the_cluster_profile_runs_the_teacher_and_the_trainer_to_completion(server_image: str, jobs_image: str) -> None:
    from tests.writer.tiny_models import save_tiny_llama

    seq_len, sequences = 64, 24
    shutil.rmtree(WORK, ignore_errors=True)
    save_tiny_llama(WORK / "teacher")
    vocab = 200
    tokens = np.random.default_rng(0).integers(
        0, vocab, size=seq_len * sequences, dtype=np.uint16
    )  # --token-dtype uint16
    tokens.tofile(WORK / "train.bin")
    for path in WORK.rglob("*"):  # the jobs run as uid 10001; safetensors writes its file 0600
        path.chmod(0o755 if path.is_dir() else 0o644)
    project = f"lctest{uuid.uuid4().hex[:6]}"
    env = {
        "TEACHER_SEQ_LEN": str(seq_len),
        "LOGITCACHE_CACHE_0_PUBLISH": "127.0.0.1:",
        "LOGITCACHE_CACHE_1_PUBLISH": "127.0.0.1:",
    }
    try:
        _compose(project, "--profile", "cluster", "up", "-d", env=env)
        for job in ("teacher", "trainer"):
            code = _run(["docker", "wait", f"{project}_{job}_1"], timeout=900).stdout.strip()
            logs = _run(["docker", "logs", f"{project}_{job}_1"], check=False)
            assert code == "0", f"{job} exited {code}:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}"
        trainer = _run(["docker", "logs", f"{project}_trainer_1"]).stdout
        found = re.search(r"one epoch: (\d+) batches, (\d+) positions", trainer)
        assert found, trainer
        assert int(found.group(2)) == sequences * seq_len  # every position of every sequence
        for shard in (0, 1):
            address = _published(f"{project}_cache-{shard}_1", 50051)
            with CacheClient(address, timeout=30) as client:  # from the host: rank r filled shard r, sealed
                info = client.get_shard(shard)
                assert info.sealed
                half = sequences // 2
                assert client.list_seqs(shard).tolist() == list(range(shard * half, (shard + 1) * half))
                for _, data in client.read(shard, ranges=[(0, sequences)]):
                    record = records.decode(data)
                    assert record.header.num_positions == seq_len
                    assert record.input_ids.max() < vocab
    finally:
        _compose(project, "--profile", "cluster", "down", "-v", env=env, timeout=300)
        shutil.rmtree(WORK, ignore_errors=True)
