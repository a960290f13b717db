"""The deployment files (compose, Dockerfile, Kubernetes) and Grafana provisioning: they parse,
Prometheus accepts the compose configuration, they use real settings and set the required
ones, and their versions, parallelism and topics agree with the project.

They cannot run here (no Docker engine, no cluster): these checks are what keeps them honest.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.sizing import (
    REFERENCE,
    TaskManagerMemory,
    flink_derived_memory,
    load_figures,
    taskmanager_memory,
)
from flywheel.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
COMPOSE_PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
GRAFANA = ROOT / "monitoring" / "grafana"
ALERTS = ROOT / "monitoring" / "alerts.yml"
REQUIRED = ("FLYWHEEL_KAFKA_BOOTSTRAP", "FLYWHEEL_REDIS_URL", "FLYWHEEL_HMAC_KEY")
FLINK_SERVICES = ("jobmanager", "taskmanager", "job")
SCRAPE_JOBS = {"flywheel", "flink"}  # the job names alerts.yml and the dashboard query


def _yaml_files() -> list[Path]:
    found = [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), *GRAFANA.rglob("*.yml")]
    return sorted(found)


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _pins() -> dict[str, str]:
    """``name -> version`` of pyproject's ``name==version`` dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(dep.split("==", 1) for dep in deps if "==" in dep)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _load_all(path)]


def _k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _k8s_docs() if doc.get("kind") == kind]


def _flink_properties(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_every_yaml_file_parses() -> None:
    files = _yaml_files()
    assert COMPOSE in files and len(files) >= 8
    for path in files:
        assert _load_all(path), f"{path.relative_to(ROOT)} is empty"


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or shutil.which("promtool", path="/usr/sbin:/usr/bin")
    assert promtool, "promtool not found: run scripts/install.sh (Debian package `prometheus`)"
    # the compose file mounts alerts.yml next to prometheus.yml: reproduce that layout
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_prometheus_configs_scrape_the_jobs_the_alerts_expect() -> None:
    compose = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    (config_map,) = [d for d in _k8s_kind("ConfigMap") if "prometheus.yml" in d["data"]]
    k8s = yaml.safe_load(config_map["data"]["prometheus.yml"])
    for config in (compose, k8s):
        assert {job["job_name"] for job in config["scrape_configs"]} == SCRAPE_JOBS
        assert config["rule_files"] == ["alerts.yml"]
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert "../../monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_every_flywheel_variable_in_the_deploy_files_is_a_setting() -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    files = [DOCKERFILE, COMPOSE, *sorted(K8S.glob("*.yaml"))]
    used = {name for path in files for name in re.findall(r"FLYWHEEL_[A-Z0-9_]+", path.read_text())}
    assert used, "no FLYWHEEL_* variable found at all"
    assert not used - known, f"not settings: {sorted(used - known)}"


def test_compose_sets_the_required_settings_in_every_flink_container() -> None:
    services = _compose()["services"]
    for name in FLINK_SERVICES:
        env = services[name]["environment"]
        assert all(env.get(var) for var in REQUIRED), f"{name}: {sorted(env)}"
        assert env["FLYWHEEL_METRICS_BIND"] == "0.0.0.0", f"{name}: Prometheus cannot scrape"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "FLYWHEEL_HMAC_KEY:?" in COMPOSE.read_text(), "the HMAC key must be required"


def test_k8s_sets_the_required_settings_of_the_job() -> None:
    (deployment,) = _k8s_kind("FlinkDeployment")
    (container,) = deployment["spec"]["podTemplate"]["spec"]["containers"]
    assert container["name"] == "flink-main-container"
    config_maps = {d["metadata"]["name"]: d["data"] for d in _k8s_kind("ConfigMap")}
    env = {item["name"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        env |= set(config_maps[source["configMapRef"]["name"]])
    assert set(REQUIRED) <= env, f"missing: {sorted(set(REQUIRED) - env)}"
    (settings,) = [data for data in config_maps.values() if "FLYWHEEL_REDIS_URL" in data]
    assert settings["FLYWHEEL_METRICS_BIND"] == "0.0.0.0"
    assert settings["FLYWHEEL_REDIS_URL"].startswith("redis://flywheel-redis:")
    services = {d["metadata"]["name"] for d in _k8s_kind("Service")}
    assert "flywheel-redis" in services


def test_flink_versions_agree_with_pyproject() -> None:
    pins = _pins()
    flink = pins["apache-flink"]
    major, minor, _ = flink.split(".")
    dockerfile = DOCKERFILE.read_text()
    assert re.search(rf"^FROM flink:{re.escape(flink)}-scala_2\.12-java17$", dockerfile, re.M)
    assert f"apache-flink=={flink}" in dockerfile
    libraries = pins["shigawire-apache-flink-libraries"]
    assert f"shigawire-apache-flink-libraries=={libraries}" in dockerfile
    assert libraries.startswith(flink), "connector wheel built for another Flink"
    assert f"flink-connector-kafka:4.0.1-{major}.{minor}" in dockerfile
    assert "python3.11" in dockerfile and ">=3.11,<3.12" in (ROOT / "pyproject.toml").read_text()
    (deployment,) = _k8s_kind("FlinkDeployment")
    assert deployment["spec"]["flinkVersion"] == f"v{major}_{minor}"
    jar = deployment["spec"]["job"]["jarURI"]
    assert jar == f"local:///opt/flink/opt/flink-python-{flink}.jar"
    images = [s.get("image", "") for s in _compose()["services"].values()]
    assert not [i for i in images if i.startswith("flink:")], "use the job image, built above"


def test_job_requirements_are_pinned_like_pyproject() -> None:
    pins = _pins()
    lines = (DEPLOY / "requirements-job.txt").read_text().splitlines()
    reqs = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    assert reqs, "no requirement found"
    assert {name: pins.get(name) for name in reqs} == reqs


def test_parallelism_and_topics_are_consistent() -> None:
    compose = _compose()
    env = compose["services"]["jobmanager"]["environment"]
    parallelism = int(env["FLYWHEEL_PARALLELISM"])
    assert int(_flink_properties(env["FLINK_PROPERTIES"])["parallelism.default"]) == parallelism
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    partitions = dict(re.findall(r"--topic (\S+) --partitions (\d+)", script))
    assert int(partitions[env["FLYWHEEL_EVENTS_TOPIC"]]) >= parallelism
    assert partitions[env["FLYWHEEL_ITEM_SYNC_TOPIC"]] == "1"
    assert env["FLYWHEEL_DLQ_TOPIC"] in partitions
    (deployment,) = _k8s_kind("FlinkDeployment")
    (settings,) = [d["data"] for d in _k8s_kind("ConfigMap") if "FLYWHEEL_PARALLELISM" in d["data"]]
    assert deployment["spec"]["job"]["parallelism"] == int(settings["FLYWHEEL_PARALLELISM"])
    assert deployment["spec"]["job"]["upgradeMode"] == "savepoint"


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/flywheel.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    mounts = _compose()["services"]["grafana"]["volumes"]
    dashboard = "../../monitoring/grafana/flywheel-dashboard.json"
    assert any(m.startswith(f"{dashboard}:{path}/") for m in mounts), mounts
    for kind in ("datasources", "dashboards"):
        assert (
            f"../../monitoring/grafana/provisioning/{kind}:/etc/grafana/provisioning/{kind}:ro"
            in mounts
        )


_MEMORY_KEYS = (
    "taskmanager.memory.task.heap.size",
    "taskmanager.memory.task.off-heap.size",
    "taskmanager.memory.managed.size",
)


def _mib(text: str) -> int:
    """Bytes of a Flink/Kubernetes size in MiB (``4096m``, ``4096Mi``)."""
    match = re.fullmatch(r"(\d+)(m|Mi|g|Gi)", str(text).strip())
    assert match, f"not a size in m/Mi/g/Gi: {text!r}"
    return int(match.group(1)) << (20 if match.group(2) in ("m", "Mi") else 30)


def _taskmanager_configs() -> dict[str, tuple[dict[str, str], int, str]]:
    """``deploy -> (Flink properties, process size, FLYWHEEL_MAX_ITEMS)`` of compose and k8s."""
    compose_env = _compose()["services"]["taskmanager"]["environment"]
    compose = _flink_properties(compose_env["FLINK_PROPERTIES"])
    (deployment,) = _k8s_kind("FlinkDeployment")
    k8s = {k: str(v) for k, v in deployment["spec"]["flinkConfiguration"].items()}
    (settings,) = [d["data"] for d in _k8s_kind("ConfigMap") if "FLYWHEEL_REDIS_URL" in d["data"]]
    k8s_process = _mib(deployment["spec"]["taskManager"]["resource"]["memory"])
    return {
        "compose": (
            compose,
            _mib(compose["taskmanager.memory.process.size"]),
            compose_env["FLYWHEEL_MAX_ITEMS"],
        ),
        "k8s": (k8s, k8s_process, settings["FLYWHEEL_MAX_ITEMS"]),
    }


@pytest.fixture(scope="module")
def needed() -> TaskManagerMemory:
    """The recipe's TaskManager for the workload the deploy files are sized for."""
    return taskmanager_memory(REFERENCE, load_figures())


def test_taskmanager_memory_holds_the_reference_workload(needed: TaskManagerMemory) -> None:
    sizes = (needed.task_heap, needed.task_off_heap, needed.managed)
    wanted = dict(zip(_MEMORY_KEYS, sizes, strict=True))
    for name, (properties, process, max_items) in _taskmanager_configs().items():
        assert int(properties["taskmanager.numberOfTaskSlots"]) == REFERENCE.slots, name
        assert int(max_items) == REFERENCE.items, f"{name}: FLYWHEEL_MAX_ITEMS"
        for key, size in wanted.items():
            assert _mib(properties[key]) >= size, f"{name}: {key} below {size >> 20} MiB"
        assert process >= needed.process, f"{name}: process size below {needed.process >> 20} MiB"
    compose = _compose()["services"]["jobmanager"]["environment"]
    assert int(compose["FLYWHEEL_PARALLELISM"]) == REFERENCE.parallelism


def test_flink_accepts_the_taskmanager_memory(needed: TaskManagerMemory) -> None:
    for name, (properties, process, _) in _taskmanager_configs().items():
        memory = {k: v for k, v in properties.items() if k.startswith("taskmanager.memory.")}
        derived = flink_derived_memory(
            {**memory, "taskmanager.memory.process.size": f"{process >> 20}m"}
        )
        assert derived["taskmanager.memory.task.heap.size"] >= needed.task_heap, name
        assert derived["taskmanager.memory.task.off-heap.size"] >= needed.task_off_heap, name
