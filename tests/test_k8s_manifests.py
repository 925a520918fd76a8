"""The Kubernetes manifests (deploy/k8s) render, are valid Kubernetes objects, and agree with the code.

Rendering: `kubectl kustomize` (kustomize is built into kubectl) for the base and every overlay. Where kubectl is
missing (a fresh CI machine has only Python), they are rendered here in plain Python instead: deploy/k8s uses a
few kustomize features on purpose, and where kubectl is there a test proves both renderings equal.

Validation is offline: kubernetes-validate (a dev dependency) ships the Kubernetes JSON schemas, strict ones
included, so a misspelled field fails as surely as a wrong type, with no schema download.

The invariants tie the manifests to the code they deploy: the ports and commands of waflow_common.processes, the
settings classes the services read, the partitions of the topics each service consumes (waflow_common.topics), the
image's user (Dockerfile), and `waflow-admin topics create`.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from pydantic import SecretStr
from pydantic_settings import BaseSettings
from waflow_common import topics
from waflow_common.processes import BY_NAME
from waflow_common.secrets import SecretBox, SecretsKeyError, generate_key
from waflow_common.settings import CommonSettings
from waflow_contacts.main import ContactsSettings
from waflow_conversation.main import ConversationSettings
from waflow_ingest.main import IngestSettings
from waflow_outbound.main import OutboundSettings
from waflow_simulator.settings import SimulatorSettings
from waflow_testing.fixtures import REPO

Obj = dict[str, Any]

K8S = REPO / "deploy" / "k8s"
TARGETS = ("base", "overlays/production", "overlays/dev")
SERVICES: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "conversation": ConversationSettings,
    "contacts": ContactsSettings,
    "outbound": OutboundSettings,
}
# The oldest Kubernetes these manifests promise to fit, and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
# What the Python rendering understands; a kustomization using anything else fails the tests until it does.
PYTHON_RENDERABLE = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "secretGenerator", "patches"}
PLACEHOLDER = "REPLACE"
PRODUCTION_MONGODB_URI = "mongodb://waflow:s3cret@mongodb-0.mongodb:27017/?replicaSet=rs0"


# --- rendering -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with the production secrets.env a real deployment would have (never the developer's
    own: any secrets.env in the working tree is left out of the copy)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secrets.env"))
    (root / "overlays" / "production" / "secrets.env").write_text(
        f"WAFLOW_SECRETS_KEY={generate_key()}\nMONGODB_URI={PRODUCTION_MONGODB_URI}\n"
    )
    return root


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    command = kubectl()
    assert command is not None
    return subprocess.run([command, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)


@functools.cache
def rendered_by_kustomize(directory: Path) -> tuple[Obj, ...]:
    result = kustomize(directory)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _apply_images(obj: Obj, images: list[Obj]) -> None:
    pod = _pod_spec(obj) or {}
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        name, tag = container["image"], ""
        if ":" in name.rsplit("/", 1)[-1]:
            name, tag = name.rsplit(":", 1)
        for image in images:
            if image["name"] == name:
                name, tag = image.get("newName", name), str(image.get("newTag", tag))
                digest = image.get("digest")
                container["image"] = f"{name}@{digest}" if digest else (f"{name}:{tag}" if tag else name)


def _pod_spec(obj: Obj) -> Obj | None:
    spec: Obj | None = obj.get("spec", {}).get("template", {}).get("spec")
    return spec


def _merge(target: Obj, patch: Obj) -> None:
    """A strategic merge patch made of maps and scalars only (lists would need kustomize's merge keys)."""
    for key, value in patch.items():
        assert not isinstance(value, list), f"a patch with a list ({key}): the Python rendering cannot merge it"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _pairs(lines: list[str]) -> list[tuple[str, str]]:
    """KEY=value lines (an env file's, or literals), without blank lines and comments."""
    pairs = []
    for line in (line.strip() for line in lines):
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def _replace_secret(directory: Path, generator: Obj, objects: list[Obj]) -> None:
    """`secretGenerator` with `behavior: replace` over a plain Secret: the data is replaced, the metadata kept,
    and the name gets no hash (the Secret it replaces was not generated)."""
    assert set(generator) <= {"name", "behavior", "envs", "literals"}, generator
    assert generator["behavior"] == "replace", generator
    pairs = _pairs(generator.get("literals", []))
    for env in generator.get("envs", []):
        pairs += _pairs((directory / env).read_text().splitlines())  # a missing file fails, as kustomize does
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == generator["name"]]
    secret.pop("stringData", None)
    secret["data"] = {key: base64.b64encode(value.encode()).decode() for key, value in pairs}


@functools.cache
def rendered_in_python(directory: Path) -> tuple[Obj, ...]:
    """What `kubectl kustomize` renders, for the features deploy/k8s uses: resources (files and directories),
    patches of maps, secretGenerator replacing a Secret, namespace, labels on metadata, images."""
    kustomization: Obj = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - PYTHON_RENDERABLE
    assert not unsupported, f"{directory.name}/kustomization.yaml uses {unsupported}: extend rendered_in_python"
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects += copy.deepcopy(list(rendered_in_python(path.resolve())))
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in kustomization.get("secretGenerator", []):
        _replace_secret(directory, generator, objects)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, entry
        for patch in yaml.safe_load_all((directory / entry["path"]).read_text()):
            (target,) = [
                o for o in objects if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            _merge(target, patch)
    for obj in objects:
        if "namespace" in kustomization and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = kustomization["namespace"]
        for entry in kustomization.get("labels", []):
            assert not entry.get("includeSelectors"), entry
            assert not entry.get("includeTemplates"), entry
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
        _apply_images(obj, kustomization.get("images", []))
    return tuple(objects)


def render(tree: Path, target: str) -> tuple[Obj, ...]:
    """By kustomize where kubectl is installed, else by the Python rendering (proved equal where both run)."""
    return rendered_by_kustomize(tree / target) if kubectl() else rendered_in_python(tree / target)


@pytest.fixture(params=TARGETS)
def objects(request: pytest.FixtureRequest, tree: Path) -> tuple[Obj, ...]:
    return render(tree, request.param)


def of_kind(objects: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def image_of(deployment: Obj) -> str:
    image: str = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


def containers(obj: Obj) -> Iterator[Obj]:
    pod = _pod_spec(obj) or {}
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def config_data(objects: tuple[Obj, ...], kind: str, name: str) -> dict[str, str]:
    obj = of_kind(objects, kind)[name]
    data = dict(obj.get("stringData", {}))
    for key, value in obj.get("data", {}).items():
        data[key] = base64.b64decode(value).decode() if kind == "Secret" else value
    return data


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (cores or bytes): 500m, 1, 0.5, 256Mi, 1Gi, 128M."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match, text
    number, suffix = match.groups()
    return float(number) * (suffixes[suffix] if suffix else 1)


# --- schemas ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_a_valid_kubernetes_object(objects: tuple[Obj, ...], version: str) -> None:
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_offline_validation_rejects_a_misspelled_field(tree: Path) -> None:
    deployment = copy.deepcopy(of_kind(render(tree, "base"), "Deployment")["ingest"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_the_python_rendering_is_what_kustomize_renders(tree: Path, target: str) -> None:
    if kubectl() is None:
        pytest.skip("kubectl is not on PATH: nothing to compare the Python rendering with (it is used instead)")

    def comparable(objects: tuple[Obj, ...]) -> list[Obj]:
        # kustomize wraps long base64 values in lines: a Secret's data is compared decoded.
        decoded = [
            o | {"data": {k: base64.b64decode(v) for k, v in o["data"].items()}}
            if o["kind"] == "Secret" and "data" in o
            else o
            for o in objects
        ]
        return sorted(decoded, key=lambda o: (o["kind"], o["metadata"]["name"]))

    assert comparable(rendered_in_python(tree / target)) == comparable(rendered_by_kustomize(tree / target))


# --- the services ----------------------------------------------------------------------------------------------


def test_each_service_has_a_deployment_service_autoscaler_and_disruption_budget(objects: tuple[Obj, ...]) -> None:
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert set(SERVICES) <= set(of_kind(objects, kind)), kind


def test_deployments_run_their_process_on_its_port_with_probes_and_resources(objects: tuple[Obj, ...]) -> None:
    scripts = console_scripts()
    for name, deployment in of_kind(objects, "Deployment").items():
        spec = BY_NAME[name]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == [spec.command], name
        assert spec.command in scripts
        (port,) = container["ports"]
        assert (port["name"], port["containerPort"]) == ("http", spec.default_port), name
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env[spec.port_variable] == str(spec.default_port), name
        assert env[spec.port_variable.replace("_PORT", "_HOST")] == "0.0.0.0", f"{name} must listen beyond loopback"

        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}, name
        # The simulator has no dependencies and no /readyz; every service's /readyz checks Kafka (and MongoDB).
        expected_ready = "/healthz" if name == "simulator" else "/readyz"
        assert readiness["httpGet"] == {"path": expected_ready, "port": "http"}, name
        if "startupProbe" in container:
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz"

        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request, limit = resources["requests"][resource], resources["limits"][resource]
            assert quantity(request) <= quantity(limit), f"{name}: {resource} request {request} > limit {limit}"


def test_services_route_to_the_named_port(objects: tuple[Obj, ...]) -> None:
    deployments = of_kind(objects, "Deployment")
    for name, service in of_kind(objects, "Service").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert service["spec"]["selector"] == deployments[name]["spec"]["selector"]["matchLabels"], name
        (port,) = service["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (BY_NAME[name].default_port, "http"), name


def test_pods_run_unprivileged_as_the_images_user(objects: tuple[Obj, ...]) -> None:
    uid = image_user_id()
    workloads = {**of_kind(objects, "Deployment"), **of_kind(objects, "Job")}
    assert "waflow-topics" in workloads
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        # Service links would put e.g. INGEST_PORT=tcp://10.0.0.7:8001 into the environment the settings read.
        assert pod["enableServiceLinks"] is False, name
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: a writable /tmp on a read-only root"


def consumed_topics(service: str) -> set[str]:
    """The topics the service reads in a consumer group, from its subscribe calls (handlers.py)."""
    handlers = REPO / "services" / service / "src" / f"waflow_{service}" / "handlers.py"
    if not handlers.exists():
        return set()
    names = re.findall(r"subscribe_batched\(\s*topics\.([A-Z_]+)", handlers.read_text())
    return {getattr(topics, name) for name in names}


def test_the_consumed_topics_are_found_in_the_code() -> None:
    assert consumed_topics("ingest") == set()  # ingest only publishes (and reads tenants.v1 without a group)
    assert {topics.INBOUND, topics.CONTACTS, topics.OUTBOUND_RESULTS} <= consumed_topics("conversation")
    assert {topics.INBOUND, topics.CONVERSATION} <= consumed_topics("contacts")
    assert {topics.OUTBOUND_COMMANDS, topics.INBOUND} <= consumed_topics("outbound")


def test_autoscalers_scale_on_cpu_within_the_partitions(objects: tuple[Obj, ...]) -> None:
    """Kafka gives each partition of a topic to one member of a consumer group: replicas beyond the partitions
    of a topic the service consumes would sit idle in that topic's group."""
    partitions = {spec.name: spec.partitions for spec in topics.TOPICS}
    deployments = of_kind(objects, "Deployment")
    for name, hpa in of_kind(objects, "HorizontalPodAutoscaler").items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert "replicas" not in deployments[name]["spec"], f"{name}: the autoscaler owns the replica count"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Resource"
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["type"] == "Utilization"
        low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
        assert 1 <= low <= high, name
        ceiling = min((partitions[t] for t in consumed_topics(name)), default=None)
        if ceiling is not None:
            assert high <= ceiling, f"{name}: maxReplicas {high} > {ceiling} partitions; the rest would sit idle"


def test_disruption_budgets_let_one_pod_go_at_a_time(objects: tuple[Obj, ...]) -> None:
    deployments = of_kind(objects, "Deployment")
    for name, pdb in of_kind(objects, "PodDisruptionBudget").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        # maxUnavailable (not minAvailable: 1) never blocks a node drain when a service runs one replica.
        assert pdb["spec"]["maxUnavailable"] == 1, name


# --- settings and secrets --------------------------------------------------------------------------------------


def test_configmap_and_secret_keys_are_settings_every_process_reads(objects: tuple[Obj, ...]) -> None:
    common = set(CommonSettings.model_fields)
    config = config_data(objects, "ConfigMap", "waflow-config")
    secret = config_data(objects, "Secret", "waflow-secrets")
    for key in [*config, *secret]:
        assert key.isupper(), key
        assert key.lower() in common, f"{key} is no setting of waflow_common.settings"
    secret_fields = {n for n, f in CommonSettings.model_fields.items() if f.annotation is SecretStr}
    assert not {k.lower() for k in config} & secret_fields, "a secret setting in the ConfigMap"
    # Defaults point at 127.0.0.1 (a developer's machine): in a pod each must be set, or it talks to itself.
    loopback = {n for n, f in CommonSettings.model_fields.items() if "127.0.0.1" in str(f.default)}
    assert loopback | secret_fields <= {k.lower() for k in [*config, *secret]}


def settings_fields(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", "")).lower()
    return {prefix + name for name in settings.model_fields}


def test_every_variable_a_container_gets_is_a_setting_of_its_process(objects: tuple[Obj, ...]) -> None:
    readers: dict[str, type[BaseSettings]] = {**SERVICES, "simulator": SimulatorSettings}
    for name, deployment in of_kind(objects, "Deployment").items():
        fields = settings_fields(readers[name])
        for container in containers(deployment):
            for variable in container.get("env", []):
                assert variable["name"].lower() in fields, f"{name} reads no {variable['name']}"
            sources = {s.get("configMapRef", s.get("secretRef", {})).get("name") for s in container.get("envFrom", [])}
            if name in SERVICES:
                assert sources == {"waflow-config", "waflow-secrets"}, name


def test_the_base_secret_is_a_template_the_services_refuse(tree: Path) -> None:
    secret = config_data(render(tree, "base"), "Secret", "waflow-secrets")
    assert set(secret) == {"WAFLOW_SECRETS_KEY", "MONGODB_URI"}
    assert all(PLACEHOLDER in value for value in secret.values())
    with pytest.raises(SecretsKeyError):
        SecretBox(secret["WAFLOW_SECRETS_KEY"])


# --- the topics Job --------------------------------------------------------------------------------------------


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for pyproject in [*REPO.glob("services/*/pyproject.toml"), *REPO.glob("tools/*/pyproject.toml")]:
        scripts |= set(tomllib.loads(pyproject.read_text())["project"].get("scripts", {}))
    scripts |= set(tomllib.loads((REPO / "libs" / "common" / "pyproject.toml").read_text())["project"]["scripts"])
    return scripts


def test_a_job_creates_the_topics_with_waflow_admin(objects: tuple[Obj, ...]) -> None:
    job = of_kind(objects, "Job")["waflow-topics"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["waflow-admin", "topics", "create"]
    assert "waflow-admin" in console_scripts()
    assert container["image"] == image_of(of_kind(objects, "Deployment")["ingest"]), "the Job runs the same release"
    # It needs Kafka's address and the topic prefix only.
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["waflow-config"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, "a finished Job must go, or the next apply fails on it"


# --- the overlays ----------------------------------------------------------------------------------------------


def image_user_id() -> int:
    match = re.search(r"useradd\b.*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert match, "the Dockerfile creates the image's user with useradd --uid"
    return int(match.group(1))


def test_every_container_runs_the_image_kustomize_set(objects: tuple[Obj, ...]) -> None:
    workloads = [*of_kind(objects, "Deployment").values(), *of_kind(objects, "Job").values()]
    images = {container["image"] for workload in workloads for container in containers(workload)}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(r"[a-z0-9./-]*waflow(:[\w.-]+|@sha256:[0-9a-f]{64})", image), image


def test_production_runs_a_release_against_meta_with_real_secrets(tree: Path) -> None:
    objects = render(tree, "overlays/production")
    names = {o["metadata"]["name"] for o in objects}
    assert "simulator" not in names, "the simulator is for development only"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"waflow"}
    assert set(of_kind(objects, "Namespace")) == {"waflow"}
    image = image_of(of_kind(objects, "Deployment")["outbound"])
    assert not image.endswith((":dev", ":latest")), f"{image}: production runs a release"
    assert "/" in image, f"{image}: production pulls from a registry"
    assert config_data(objects, "ConfigMap", "waflow-config")["WHATSAPP_API_BASE_URL"] == "https://graph.facebook.com"
    secret = config_data(objects, "Secret", "waflow-secrets")
    assert secret["MONGODB_URI"] == PRODUCTION_MONGODB_URI
    SecretBox(secret["WAFLOW_SECRETS_KEY"])  # a usable key, from secrets.env
    for hpa in of_kind(objects, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["minReplicas"] >= 2, "one pod lost or drained must not stop a service"


def test_production_does_not_render_without_its_secrets_file(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("secrets.env"))
    with pytest.raises(FileNotFoundError):
        rendered_in_python(copy / "overlays" / "production")
    if kubectl() is not None:
        result = kustomize(copy / "overlays" / "production")
        assert result.returncode != 0
        assert "secrets.env" in result.stderr
    gitignore = (K8S / "overlays" / "production" / ".gitignore").read_text().split()
    assert "secrets.env" in gitignore, "the production secrets must never be committed"


def test_dev_runs_the_simulator_and_outbound_calls_it(tree: Path) -> None:
    objects = render(tree, "overlays/dev")
    port = BY_NAME["simulator"].default_port
    simulator = of_kind(objects, "Deployment")["simulator"]
    assert simulator["spec"]["replicas"] == 1, "the simulator keeps its state in memory"
    assert "simulator" not in of_kind(objects, "HorizontalPodAutoscaler")
    assert of_kind(objects, "Service")["simulator"]["spec"]["ports"][0]["port"] == port
    config = config_data(objects, "ConfigMap", "waflow-config")
    assert config["WHATSAPP_API_BASE_URL"] == f"http://simulator:{port}"
    SecretBox(config_data(objects, "Secret", "waflow-secrets")["WAFLOW_SECRETS_KEY"])
