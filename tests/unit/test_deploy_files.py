"""The deployment files (compose, Dockerfile, Kubernetes) and Grafana provisioning: they parse,
Prometheus accepts both scrape configurations, they use real settings and set the required
ones, the job and the recommendation API get the same values for the settings both read, the
image holds what the API imports, and versions, parallelism and topics agree with the project.

They cannot run here (no Docker engine, no cluster): these checks are what keeps them honest.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from deploy.local_stack import LocalStack
from deploy.sizing import (
    REFERENCE,
    TaskManagerMemory,
    flink_derived_memory,
    load_figures,
    taskmanager_memory,
)
from flywheel.settings import DEV_HMAC_KEY, ENV_PREFIX, Settings, load_settings

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
# the embedded stack's scrape job names, which alerts.yml and the dashboard query
SCRAPE_JOBS = set(LocalStack(Settings.model_construct()).scrape_targets())
API_SERVICE = "api"  # compose
API_DEPLOYMENT = "flywheel-api"  # Kubernetes Deployment and Service
IMAGE = "flywheel"  # built from deploy/Dockerfile, tagged with pyproject's version


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


def _promtool_check_config(config: str, directory: Path) -> None:
    """``promtool check config`` of the text ``config`` with alerts.yml next to it (as both
    deployments mount it); fails on any error and unless the rule file was loaded."""
    promtool = shutil.which("promtool") or shutil.which("promtool", path="/usr/sbin:/usr/bin")
    assert promtool, "promtool not found: run scripts/install.sh (Debian package `prometheus`)"
    (directory / "prometheus.yml").write_text(config)
    shutil.copy(ALERTS, directory / "alerts.yml")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def _k8s_prometheus() -> dict[str, Any]:
    (config_map,) = [d for d in _k8s_kind("ConfigMap") if "prometheus.yml" in d["data"]]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["prometheus.yml"])
    return config


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    _promtool_check_config(COMPOSE_PROMETHEUS.read_text(), tmp_path)


def test_promtool_accepts_the_k8s_prometheus_config(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery, so each job's
    ``kubernetes_sd_configs`` is swapped for a static target: promtool checks the rest (global
    settings, rule files, relabelling); the selection itself is tested below."""
    config = _k8s_prometheus()
    for job in config["scrape_configs"]:
        discovery = job.pop("kubernetes_sd_configs")
        assert [sd["role"] for sd in discovery] == ["pod"], job["job_name"]
        job["static_configs"] = [{"targets": ["pod.example:1"]}]
    _promtool_check_config(yaml.safe_dump(config), tmp_path)


def test_prometheus_configs_scrape_the_jobs_the_alerts_expect() -> None:
    assert {"flywheel", "flink", "api"} <= SCRAPE_JOBS
    compose = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    for config in (compose, _k8s_prometheus()):
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


def _requirements(name: str) -> dict[str, str]:
    """``name -> version`` of ``deploy/requirements-<name>.txt``."""
    lines = (DEPLOY / f"requirements-{name}.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("name", ["job", "api"])
def test_image_requirements_are_pinned_like_pyproject(name: str) -> None:
    pins = _pins()
    reqs = _requirements(name)
    assert reqs, "no requirement found"
    assert {name: pins.get(name) for name in reqs} == reqs
    assert f"-r /opt/flywheel/deploy/requirements-{name}.txt" in DOCKERFILE.read_text()


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


# --- the recommendation API -----------------------------------------------------------------


def _version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def _packages() -> list[str]:
    """The project's packages (pyproject's ``[tool.setuptools] packages``)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages: list[str] = setuptools["packages"]
    return packages


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.Module, lazy: Callable[[str], bool]) -> Iterator[str]:
    """Absolute imports of a module: those at module level, and those inside the top-level
    functions and classes whose name ``lazy`` accepts; ``if TYPE_CHECKING:`` blocks skipped."""

    def visit(node: ast.AST, outer: str | None) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                items: list[ast.AST] = list(child.orelse)
            else:
                items = [child]
            for item in items:
                scope = outer
                definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                if outer is None and isinstance(item, definition):
                    scope = item.name
                if scope is not None and not lazy(scope):
                    continue
                if isinstance(item, ast.Import):
                    yield from (alias.name for alias in item.names)
                elif isinstance(item, ast.ImportFrom) and item.level == 0 and item.module:
                    yield item.module
                    yield from (f"{item.module}.{alias.name}" for alias in item.names)
                yield from visit(item, scope)

    return visit(tree, None)


class _Reach:
    """What a process can load, by reading sources: the project modules reachable from its
    entry modules through imports, the top-level names of the other modules they import, and
    the string constants of each (uvicorn loads its event loop and HTTP parser by name)."""

    def __init__(self, roots: list[str], lazy: Callable[[str, str], bool]) -> None:
        packages = set(_packages())
        self.modules: set[str] = set()
        self.third_party: set[str] = set()
        self.strings: dict[str, set[str]] = {}
        todo = list(roots)
        while todo:
            module = todo.pop()
            path = _module_file(module)
            if module in self.modules or path is None:
                continue
            self.modules.add(module)
            tree = ast.parse(path.read_text())
            for name in _imports(tree, functools.partial(lazy, module)):
                top = name.split(".")[0]
                if top in packages:
                    todo.append(name)
                elif top not in sys.stdlib_module_names:
                    self.third_party.add(top)
            self.strings[module] = {
                node.value
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
            }

    def settings_read(self) -> set[str]:
        """Settings fields the modules may read: every attribute access named like a field
        (over-approximated: the object is not checked), properties of Settings expanded."""
        fields = set(Settings.model_fields)
        properties = _settings_properties()
        read: set[str] = set()
        for module in self.modules - {"flywheel.settings"}:
            path = _module_file(module)
            assert path is not None
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute):
                    read |= {node.attr} & fields | properties.get(node.attr, set())
        return read


def _settings_properties() -> dict[str, set[str]]:
    """``property -> fields its body reads`` for the properties of Settings."""
    tree = ast.parse((ROOT / "flywheel" / "settings.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    fields = set(Settings.model_fields)
    found = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
        ):
            found[node.name] = {
                n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr in fields
            }
    return found


def _api_reach() -> _Reach:
    """``flywheel api``: the CLI's module level and its ``main`` and ``_api`` (not the other
    subcommands), then everything they import, lazy imports included."""
    return _Reach(
        ["flywheel.cli", "serving.app"],
        lambda module, scope: module != "flywheel.cli" or scope in ("main", "_api"),
    )


def _job_reach() -> _Reach:
    return _Reach(["flink_jobs.job"], lambda module, scope: True)


def _interpolate(value: str) -> str:
    """A compose value as the container sees it: ``${X:?msg}`` (required) becomes a stand-in
    secret, ``${X:-default}`` its default."""
    value = re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "a-stand-in-secret-key", value)
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _compose_envs() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Environment of the API container and of each Flink container (compose)."""
    services = _compose()["services"]
    return services[API_SERVICE]["environment"], [
        services[name]["environment"] for name in FLINK_SERVICES
    ]


def _container_env(container: dict[str, Any]) -> dict[str, Any]:
    """``name -> value`` of a Kubernetes container: ConfigMap entries, then its own ``env``
    (a ``valueFrom`` reference stands for itself)."""
    config_maps = {d["metadata"]["name"]: d["data"] for d in _k8s_kind("ConfigMap")}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else item["valueFrom"]
    return env


def _api_deployment() -> dict[str, Any]:
    (deployment,) = [d for d in _k8s_kind("Deployment") if d["metadata"]["name"] == API_DEPLOYMENT]
    return deployment


def _api_container() -> dict[str, Any]:
    container: dict[str, Any]
    (container,) = _api_deployment()["spec"]["template"]["spec"]["containers"]
    return container


def _flink_containers() -> list[dict[str, Any]]:
    (deployment,) = _k8s_kind("FlinkDeployment")
    containers: list[dict[str, Any]] = deployment["spec"]["podTemplate"]["spec"]["containers"]
    return containers


def _k8s_envs() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Environment of the API container and of the Flink containers (Kubernetes)."""
    return _container_env(_api_container()), [_container_env(c) for c in _flink_containers()]


_ENVS = {"compose": _compose_envs, "k8s": _k8s_envs}


def _loaded(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process with environment ``env`` loads (secrets: a stand-in value)."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            text = value if isinstance(value, str) else "a-stand-in-secret-key"
            monkeypatch.setenv(name, _interpolate(text))
    return load_settings()


def test_api_modules_are_found() -> None:
    """The source reading below sees the API's real modules, settings and libraries."""
    api = _api_reach()
    assert {"serving.app", "serving.store", "serving.health", "flywheel.events"} <= api.modules
    assert {"fastapi", "uvicorn", "redis", "kafka"} <= api.third_party
    assert {"hmac_key", "redis_url", "kafka_bootstrap", "api_port"} <= api.settings_read()
    assert "experiment" in api.settings_read(), "experiment_spec (a property) reads it"
    assert not {m for m in api.modules if m.startswith("flink_jobs")}
    assert "pyflink" in _job_reach().third_party


@pytest.mark.parametrize("deploy", sorted(_ENVS))
def test_api_and_job_get_the_same_value_of_each_setting_both_read(deploy: str) -> None:
    """Same HMAC key (pseudonyms), Redis, prefix, topics, top-N, experiment... in the API and
    in every job container: either set to the same value or both left at the default."""
    api_env, job_envs = _ENVS[deploy]()
    shared = _api_reach().settings_read() & _job_reach().settings_read()
    assert {"hmac_key", "redis_url", "redis_prefix", "events_topic", "experiment"} <= shared
    for field in sorted(shared):
        var = f"{ENV_PREFIX}{field.upper()}"
        for job_env in job_envs:
            assert api_env.get(var) == job_env.get(var), f"{deploy}: {var} differs"


@pytest.mark.parametrize("deploy", sorted(_ENVS))
def test_api_settings_are_valid_and_reach_other_containers(
    deploy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's environment loads, binds every address, and no setting the API reads is left
    pointing at the container itself (defaults are 127.0.0.1) or at the development key."""
    api_env, job_envs = _ENVS[deploy]()
    for var in REQUIRED:
        assert api_env.get(var), f"{deploy}: {var} not set for the API"
    settings = _loaded(api_env, monkeypatch)
    assert settings.api_host == "0.0.0.0", f"{deploy}: the API is unreachable from outside"
    for field in sorted(_api_reach().settings_read()):
        value = getattr(settings, field)
        if isinstance(value, str):
            assert "127.0.0.1" not in value and "localhost" not in value, f"{deploy}: {field}"
            assert value != DEV_HMAC_KEY, f"{deploy}: {field} is the development key"
    for job_env in job_envs:
        _loaded(job_env, monkeypatch)
    # several workers share their metrics through files in FLYWHEEL_VAR_DIR: a directory the
    # image's user may write (k8s: a volume, there for when FLYWHEEL_API_WORKERS is raised)
    var_dir = str(settings.var_dir)
    if deploy == "k8s":
        mounts = {m["mountPath"] for m in _api_container().get("volumeMounts", [])}
        assert var_dir in mounts, "FLYWHEEL_VAR_DIR: mount an emptyDir there"
    elif settings.api_workers > 1:
        assert re.search(
            rf"mkdir -p {re.escape(var_dir)} && chown flink:flink {re.escape(var_dir)}$",
            DOCKERFILE.read_text(),
            re.M,
        ), f"FLYWHEEL_VAR_DIR={var_dir}: the image must create it for the flink user"


def test_k8s_hmac_key_comes_from_a_secret() -> None:
    for container in (_api_container(), *_flink_containers()):
        (item,) = [e for e in container.get("env", []) if e["name"] == "FLYWHEEL_HMAC_KEY"]
        assert "value" not in item and "secretKeyRef" in item["valueFrom"], container["name"]
    for config_map in _k8s_kind("ConfigMap"):
        assert "FLYWHEEL_HMAC_KEY" not in config_map["data"]


def test_compose_runs_the_api() -> None:
    services = _compose()["services"]
    api = services[API_SERVICE]
    assert api["command"] == ["flywheel", "api"]
    assert api["build"]["dockerfile"] == "deploy/Dockerfile"
    assert api["image"] == services["jobmanager"]["image"], "one image for the job and the API"
    port = int(api["environment"]["FLYWHEEL_API_PORT"])
    assert any(str(p).endswith(f":{port}") for p in api["ports"]), api["ports"]
    assert {"kafka", "redis"} <= set(api["depends_on"])
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in probe
    assert (
        api["environment"]["FLYWHEEL_HMAC_KEY"]
        == services["job"]["environment"]["FLYWHEEL_HMAC_KEY"]
    )


def test_compose_scrapes_every_api_container() -> None:
    services = _compose()["services"]
    port = int(services[API_SERVICE]["environment"]["FLYWHEEL_API_PORT"])
    jobs = {
        j["job_name"]: j for j in yaml.safe_load(COMPOSE_PROMETHEUS.read_text())["scrape_configs"]
    }
    (discovery,) = jobs["api"]["dns_sd_configs"]
    assert discovery["names"] == [API_SERVICE] and discovery["port"] == port
    assert jobs["api"].get("metrics_path", "/metrics") == "/metrics"


def test_k8s_runs_the_api() -> None:
    deployment = _api_deployment()
    container = _api_container()
    assert [*container.get("command", []), *container.get("args", [])] == ["flywheel", "api"]
    port = int(_container_env(container)["FLYWHEEL_API_PORT"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named.values()
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/healthz"
    assert readiness.get("timeoutSeconds", 1) > 1, "/healthz waits up to 1 s per dependency"
    assert "httpGet" in liveness
    for probe in (readiness, liveness):
        assert named.get(probe["httpGet"]["port"], probe["httpGet"]["port"]) == port
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert _mib(resources["limits"]["memory"]) >= _mib(resources["requests"]["memory"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = [s for s in _k8s_kind("Service") if s["metadata"]["name"] == API_DEPLOYMENT]
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert named.get(target, target) == port
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {
        "kustomization.yaml"
    }


def _meta_label(name: str) -> str:
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _targets(job: dict[str, Any], pods: list[dict[str, str]]) -> list[dict[str, str]]:
    """The pod ports a scrape job keeps: its ``keep`` and ``drop`` rules applied the way
    Prometheus applies them (source values joined by ';', regex anchored)."""
    kept = []
    for pod in pods:
        for rule in job["relabel_configs"]:
            action = rule.get("action", "replace")
            if action not in ("keep", "drop"):
                continue
            value = ";".join(pod.get(label, "") for label in rule["source_labels"])
            if bool(re.fullmatch(rule["regex"], value)) != (action == "keep"):
                break
        else:
            kept.append(pod)
    return kept


def test_k8s_scrape_jobs_select_their_pods() -> None:
    """Each scrape job keeps exactly its pods' ports: the discovered labels are those the
    manifests give their pods (and the operator's app/component labels on Flink pods)."""
    (flink,) = _flink_containers()
    (flink_deployment,) = _k8s_kind("FlinkDeployment")
    app = flink_deployment["metadata"]["name"]
    kinds: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        (c, {"app": app, "component": c}, flink) for c in ("jobmanager", "taskmanager")
    ]
    for deployment in _k8s_kind("Deployment"):  # the API's pods, Redis's
        template = deployment["spec"]["template"]
        for container in template["spec"]["containers"]:
            kinds.append(
                (deployment["metadata"]["name"], template["metadata"]["labels"], container)
            )
    pods = [
        {
            **{_meta_label(k): v for k, v in labels.items()},
            "__meta_kubernetes_pod_container_port_name": port["name"],
            "port": str(port["containerPort"]),
            "kind": kind,
        }
        for kind, labels, container in kinds
        for port in container["ports"]
    ]
    env = _container_env(flink)
    expected = {
        "api": {(API_DEPLOYMENT, _container_env(_api_container())["FLYWHEEL_API_PORT"])},
        "flywheel": {("taskmanager", env["FLYWHEEL_METRICS_PORT"])},
        "flink": {(c, env["FLYWHEEL_FLINK_METRICS_PORT"]) for c in ("jobmanager", "taskmanager")},
    }
    for job in _k8s_prometheus()["scrape_configs"]:
        kept = {(pod["kind"], pod["port"]) for pod in _targets(job, pods)}
        assert kept == expected[job["job_name"]], job["job_name"]


def test_images_are_the_project_version() -> None:
    image = f"{IMAGE}:{_version()}"
    services = _compose()["services"]
    built = [s["image"] for s in services.values() if "build" in s]
    assert built and set(built) == {image}
    (flink,) = _k8s_kind("FlinkDeployment")
    assert flink["spec"]["image"] == image
    assert _api_container()["image"] == image
    assert f"-t {image} ." in DOCKERFILE.read_text()


def test_image_holds_the_api_and_what_it_imports() -> None:
    """Every project package is copied into the image, and every library the API imports (or
    names, like uvicorn's loop and parser) is pinned in deploy/requirements-*.txt or is a
    dependency of a pinned one."""
    dockerfile = DOCKERFILE.read_text()
    for package in _packages():
        assert f"COPY {package} /opt/flywheel/{package}\n" in dockerfile, package
    pinned = {**_requirements("job"), **_requirements("api")}
    allowed = _with_dependencies({_canonical(name) for name in pinned})
    api = _api_reach()
    modules = metadata.packages_distributions()
    direct = {_canonical(name) for name in _pins()}
    # libraries the API's own code names (the other strings are not about loading modules)
    strings = set().union(*(v for k, v in api.strings.items() if k.startswith("serving")))
    named = {s for s in strings if s in modules and _canonical(modules[s][0]) in direct}
    assert {"uvloop", "httptools"} <= named
    for module in sorted(api.third_party | named):
        assert module in modules, f"{module} is not installed"
        dists = {_canonical(dist) for dist in modules[module]}
        assert dists & allowed, f"{module} ({sorted(dists)}) is not in the image's requirements"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: set[str]) -> set[str]:
    """``names`` and the distributions they require, transitively (extras left out)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            # markers evaluated here: the image's Python is this one's (3.11, Linux)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_canonical(requirement.name))
    return found
