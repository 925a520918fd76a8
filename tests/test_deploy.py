"""The deployment files agree with the code: docker-compose.yml parses and runs commands that exist."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from waflow_testing.fixtures import REPO

PORTS = {"ingest": 8001, "conversation": 8002, "contacts": 8003, "outbound": 8004, "simulator": 8090}
# `docker compose up --scale NAME=N` needs these without a fixed host port.
SCALED = ("ingest", "conversation", "contacts", "outbound")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for pyproject in [
        *REPO.glob("services/*/pyproject.toml"),
        *REPO.glob("tools/*/pyproject.toml"),
        REPO / "libs" / "common" / "pyproject.toml",
    ]:
        scripts |= set(tomllib.loads(pyproject.read_text())["project"].get("scripts", {}))
    return scripts


def test_compose_runs_every_process_on_its_contract_port() -> None:
    services = compose()["services"]
    assert {"kafka", "mongodb", "setup", *PORTS} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert services["mongodb"]["image"].startswith("mongo:")
    for name, port in PORTS.items():
        assert services[name]["ports"] == ([f"{port}"] if name in SCALED else [f"{port}:{port}"]), name
        assert services[name]["command"] == [f"waflow-{name}"]


def test_scaled_services_publish_no_fixed_host_port() -> None:
    services = compose()["services"]
    for name in SCALED:
        for mapping in services[name].get("ports", []):
            assert ":" not in str(mapping), f"{name} publishes {mapping}: --scale would clash on the host port"
        assert "container_name" not in services[name]


def test_mongodb_runs_as_an_initiated_replica_set() -> None:
    mongodb = compose()["services"]["mongodb"]
    assert mongodb["image"] == "mongo:7"
    assert mongodb["command"][:2] == ["--replSet", "rs0"]
    check = " ".join(mongodb["healthcheck"]["test"])
    assert "rs.initiate" in check
    assert "isWritablePrimary" in check


def test_compose_commands_exist_as_console_scripts() -> None:
    scripts = console_scripts()
    for name in PORTS:
        assert f"waflow-{name}" in scripts
    assert "waflow-admin" in scripts
    assert "waflow-admin" in " ".join(compose()["services"]["setup"]["command"])


def test_services_get_the_contract_configuration() -> None:
    services = compose()["services"]
    for name in ("ingest", "conversation", "contacts", "outbound"):
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["MONGODB_URI"] == "mongodb://mongodb:27017/?replicaSet=rs0"
        assert "WAFLOW_SECRETS_KEY" in env
        assert env[f"{name.upper()}_PORT"] == str(PORTS[name])


def test_the_image_holds_the_whole_workspace() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for member in ("libs", "services", "tools", "uv.lock"):
        assert member in dockerfile


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed here; the YAML checks above still ran",
)
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        env={"WAFLOW_SECRETS_KEY": "x", "PATH": str(Path(shutil.which("docker") or "").parent)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
