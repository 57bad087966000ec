"""The Kubernetes manifests under deploy/ against the code they deploy: every setting they
name exists, the probes reach real routes, the grace period covers the drain, the replicas
share what they must (Redis, outputs, the signing key) and run distinct models. Structural
checks only: no cluster runs here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from server.app import create_app
from server.hosts import PROBE_OPT
from server.settings import Settings
from server.settings_loading import is_setting_path, load_settings
from tests.unit.conftest import make_state

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OMNISERVE_DEPLOYMENTS = ("omniserve-llm", "omniserve-image")
GPU = "nvidia.com/gpu"


def documents() -> dict[str, list[dict[str, Any]]]:
    """Every manifest file's documents, by file name (the kustomization apart)."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(DEPLOY.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def objects() -> list[dict[str, Any]]:
    return [doc for docs in documents().values() for doc in docs]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def settings_toml() -> str:
    return one("ConfigMap", "omniserve-settings")["data"]["omniserve.toml"]


def decode_settings(text: str) -> Settings:
    """The settings file as the server reads it: unknown or misspelt keys are errors."""
    return msgspec.convert(tomllib.loads(text), Settings)


def secret() -> dict[str, str]:
    return one("Secret", "omniserve-secrets")["stringData"]


def pod_environment(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: Secret values read, downward-API
    fields given a sample value, $(VAR) references to earlier variables expanded."""
    env: dict[str, str] = {}
    for item in container(deployment)["env"]:
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda match: env[match.group(1)], item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "omniserve-secrets"
            value = secret()[ref["key"]]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            value = "10.1.2.3"
        env[item["name"]] = value
    return env


def pod_settings(deployment: dict[str, Any], tmp_path: Path) -> Settings:
    """What the server in this pod loads: the ConfigMap's file, then its environment."""
    environ = pod_environment(deployment)
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == "settings")
    config_path = Path(environ["OMNISERVE_CONFIG"])
    assert config_path.parent == Path(mount["mountPath"]), "OMNISERVE_CONFIG is not in the settings mount"
    config = tmp_path / config_path.name
    config.write_text(one("ConfigMap", "omniserve-settings")["data"][config_path.name])
    return load_settings(environ={**environ, "OMNISERVE_CONFIG": str(config)})


def test_every_manifest_parses_and_the_kustomization_lists_them_all() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(documents())
    for doc in objects():
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
    kinds = sorted(doc["kind"] for doc in objects())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Service",
            "Service",
            "StatefulSet",
            "Deployment",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
        ]
    )


def test_the_settings_file_holds_only_real_settings() -> None:
    settings = decode_settings(settings_toml())
    assert settings.cluster.proxy_to_peers
    assert {model.name for model in settings.models} == {"qwen2.5-7b-instruct", "sdxl-base"}
    # The same decoding refuses a misspelt key, so the check above can fail.
    with pytest.raises(msgspec.ValidationError, match="drain_grace"):
        decode_settings(settings_toml().replace("drain_grace_s", "drain_grace"))
    with pytest.raises(msgspec.ValidationError, match="heartbeat"):
        decode_settings(settings_toml().replace("heartbeat_s", "heartbeat_secs"))


@pytest.mark.parametrize("name", OMNISERVE_DEPLOYMENTS)
def test_every_omniserve_variable_names_a_setting(name: str) -> None:
    names = [item["name"] for item in container(one("Deployment", name))["env"]]
    ours = [variable for variable in names if variable.startswith("OMNISERVE_")]
    assert "OMNISERVE_STORE_URL" in ours and "OMNISERVE_CLUSTER__SERVE" in ours
    for variable in ours:
        if variable != "OMNISERVE_CONFIG":
            assert is_setting_path(variable.removeprefix("OMNISERVE_").lower().split("__")), variable
    assert not is_setting_path(["cluster", "servers"])  # the check itself tells a typo


@pytest.mark.parametrize("name", OMNISERVE_DEPLOYMENTS)
def test_each_pod_loads_settings_that_join_the_cluster(name: str, tmp_path: Path) -> None:
    settings = pod_settings(one("Deployment", name), tmp_path)
    catalog = {model.name for model in settings.models}
    assert settings.cluster.serve and set(settings.cluster.serve) <= catalog
    assert settings.cluster.advertise_url == "http://10.1.2.3:8000"  # the pod IP, the container port
    assert settings.store_url.startswith("redis://")
    assert settings.s3.access_key_id and settings.s3.secret_access_key
    port = next(p for p in container(one("Deployment", name))["ports"] if p["name"] == "http")
    assert port["containerPort"] == settings.port == 8000


def test_the_deployments_run_distinct_models_of_one_catalog(tmp_path: Path) -> None:
    served = [pod_settings(one("Deployment", name), tmp_path).cluster.serve for name in OMNISERVE_DEPLOYMENTS]
    assert set(served[0]).isdisjoint(served[1])
    llm, image = (pod_settings(one("Deployment", name), tmp_path) for name in OMNISERVE_DEPLOYMENTS)
    assert llm.models == image.models
    kinds = {model.name: model.kind.value for model in llm.models}
    assert [kinds[model] for model in llm.cluster.serve] == ["chat"]
    assert [kinds[model] for model in image.cluster.serve] == ["image"]


def test_probes_reach_the_health_routes(tmp_path: Path) -> None:
    app = create_app(make_state(tmp_path))
    probe_routes = {
        path
        for path, methods in app.route_handler_method_map.items()
        if "GET" in methods and methods["GET"].opt.get(PROBE_OPT)
    }
    assert probe_routes == {"/health", "/ready"}
    for name in OMNISERVE_DEPLOYMENTS:
        spec = container(one("Deployment", name))
        probes = {kind: spec[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        for probe in probes.values():
            assert probe["path"] in probe_routes and probe["port"] == "http"
        # /ready answers 503 while draining: as a liveness probe it would restart a stopping pod.
        assert probes["livenessProbe"]["path"] == "/health"
        assert probes["readinessProbe"]["path"] == "/ready"
        startup = spec["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # time to load a model


@pytest.mark.parametrize("name", OMNISERVE_DEPLOYMENTS)
def test_each_replica_gets_one_gpu(name: str) -> None:
    resources = container(one("Deployment", name))["resources"]
    assert resources["requests"][GPU] == resources["limits"][GPU] == 1


@pytest.mark.parametrize("name", OMNISERVE_DEPLOYMENTS)
def test_the_grace_period_outlasts_the_task_drain(name: str, tmp_path: Path) -> None:
    deployment = one("Deployment", name)
    drain = pod_settings(deployment, tmp_path).tasks.drain_grace_s
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # SIGTERM comes after preStop; the engines still unload after the drain.
    assert grace > int(pre_stop[1]) + drain


def mounted_claim(deployment: dict[str, Any], folder: Path) -> str | None:
    """The claim whose volume holds ``folder`` in this pod (the deepest mount above it)."""
    mounts = [m for m in container(deployment)["volumeMounts"] if folder.is_relative_to(m["mountPath"])]
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(Path(m["mountPath"]).parts))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]].get("persistentVolumeClaim")
    return None if claim is None else claim["claimName"]


@pytest.mark.parametrize("name", OMNISERVE_DEPLOYMENTS)
def test_replicas_share_outputs_files_and_the_signing_key_and_keep_their_own_data_dir(
    name: str, tmp_path: Path
) -> None:
    deployment = one("Deployment", name)
    settings = pod_settings(deployment, tmp_path)
    mounts = {Path(m["mountPath"]): m for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[settings.data_path]["name"]]  # replica id and data-dir lock: per pod
    for folder in (settings.storage.outputs_dir, settings.batches.files_dir):
        claim = mounted_claim(deployment, Path(folder))
        assert claim is not None, f"{folder} is not on a shared claim"
        assert one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert settings.storage.url_signing_key == secret()["url-signing-key"]
    shm = mounts[Path("/dev/shm")]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"


def test_redis_persists_and_takes_the_password_the_replicas_use() -> None:
    redis = one("StatefulSet", "omniserve-redis")
    spec = container(redis)
    args = spec["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    password_ref = next(item for item in spec["env"] if item["name"] == "REDIS_PASSWORD")
    key = password_ref["valueFrom"]["secretKeyRef"]["key"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in spec["volumeMounts"]}
    service = one("Service", redis["spec"]["serviceName"])
    url = re.fullmatch(r"redis://:(?P<password>[^@]+)@(?P<host>[^:/]+):(?P<port>\d+)/\d+", secret()["store-url"])
    assert url is not None
    assert url["password"] == secret()[key]
    assert url["host"] == service["metadata"]["name"]
    assert int(url["port"]) == service["spec"]["ports"][0]["port"]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_disruption_budgets_and_autoscaler_select_the_replicas(tmp_path: Path) -> None:
    pods = {name: one("Deployment", name)["spec"]["template"] for name in OMNISERVE_DEPLOYMENTS}
    service = one("Service", "omniserve")
    assert all(labels_match(service["spec"]["selector"], pod["metadata"]["labels"]) for pod in pods.values())
    port_names = {p["name"] for pod in pods.values() for p in pod["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for name in pods:
        selector = one("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        selected = [other for other, pod in pods.items() if labels_match(selector, pod["metadata"]["labels"])]
        assert selected == [name]
    hpa = one("HorizontalPodAutoscaler", "omniserve-llm")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "omniserve-llm"
    # The commented queue-depth example names a metric the server exports.
    example = re.search(r"name: (omniserve_\w+)", (DEPLOY / "autoscaling.yaml").read_text())
    assert example is not None
    assert f"# TYPE {example[1]} gauge".encode() in make_state(tmp_path).metrics.render()
