"""deploy/ says only what the code accepts: every manifest parses, every command is a real
``relaygraph`` subcommand with real flags, every ``RELAYGRAPH_*`` variable is a known setting
whose value the process would accept, every keys file parses, every probe, health check and
Prometheus target names a path and port the process serves, and Redis is configured to keep
what it acknowledged.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import yaml  # type: ignore[import-untyped, unused-ignore]  # stubs: types-PyYAML

from dispatcher.settings import DispatcherSettings
from graph_core.keys import DEFAULT_PREFIX, Keys
from graph_core.redis_url import parse_redis_url
from graph_core.settings import _KNOWN_ELSEWHERE, ENV_PREFIX, BaseSettings, load_settings
from relaygraph.api import ApiKeys, ApiSettings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
KEYS_EXAMPLE = DEPLOY / "keys.example.json"
PROMETHEUS_CONF = DEPLOY / "prometheus" / "prometheus.yml"
# The published example key of deploy/README.md, whose digest keys.example.json holds.
EXAMPLE_KEY = "rg_EXAMPLE-ONLY-not-a-secret-make-your-own-with-relaygraph-api-key"

# DESIGN.md section 5, plus the HTTP API.
DESIGNED_SUBCOMMANDS = frozenset(
    {
        "run",
        "up",
        "dispatcher",
        "worker",
        "validate",
        "register",
        "submit",
        "status",
        "runs",
        "history",
        "approve",
        "cancel",
        "export",
        "api",
        "api-key",
    }
)
# The settings class each long-running subcommand loads from the environment.
PROCESS_SETTINGS: dict[str, type[BaseSettings]] = {
    "dispatcher": DispatcherSettings,
    "worker": WorkerSettings,
    "api": ApiSettings,
}
# Where `relaygraph api` serves the Prometheus exposition (dispatchers and workers answer on
# any path of their --metrics-port).
API_METRICS_PATH = "/metrics"
PLACEHOLDER = "placeholder"
POD_NAME = "relaygraph-dispatcher-7d9f-abcde"


# --- helpers ------------------------------------------------------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _compose() -> dict[str, Any]:
    (doc,) = _load_all(COMPOSE)
    return doc


def _k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _load_all(path)]


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _k8s_objects() if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@functools.cache
def _cli_parser() -> argparse.ArgumentParser:
    from relaygraph.cli import build_parser

    return build_parser()


def _subcommands() -> frozenset[str]:
    return frozenset(_subparsers(_cli_parser()))


def _parse_argv(argv: list[str], where: str) -> argparse.Namespace:
    """``relaygraph <argv>`` must name a real subcommand and parse (flags included)."""
    assert argv, f"{where}: empty command"
    assert argv[0] in _subcommands(), (
        f"{where}: {argv[0]!r} is not a relaygraph subcommand (known: {sorted(_subcommands())})"
    )
    try:
        return _cli_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `relaygraph {shlex.join(argv)}` does not parse ({e})")


def _check_argv(argv: list[str], where: str) -> None:
    _parse_argv(argv, where)


def _metrics_endpoint(argv: list[str], env: dict[str, str], where: str) -> tuple[int, str | None]:
    """(port, path) where ``relaygraph <argv>`` with ``env`` serves Prometheus metrics, as the
    process resolves them (flags over ``RELAYGRAPH_*``); path None: any path answers."""
    args = _parse_argv(argv, where)
    if args.command == "api":
        return int(args.port), API_METRICS_PATH
    settings_cls = PROCESS_SETTINGS[args.command]
    flags = {"metrics_port": getattr(args, "metrics_port", None)}
    port = load_settings(settings_cls, flags=flags, env=env).metrics_port
    assert port is not None, f"{where}: serves no metrics (no --metrics-port)"
    return port, None


def _keys(text: str, source: str) -> ApiKeys:
    keys = ApiKeys.parse(text, source)  # raises KeysError naming the bad entry
    assert keys.enabled, f"{source}: no keys, so `relaygraph api` refuses a non-loopback --host"
    return keys


def _interpolate(value: str) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` with nothing set."""

    def one(m: re.Match[str]) -> str:
        op, arg = m.group(2), m.group(3)
        return arg if op in (":-", "-") else PLACEHOLDER

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, value)


def _known_settings() -> set[str]:
    return set(BaseSettings.model_fields) | set(_KNOWN_ELSEWHERE)


def _check_env(env: dict[str, str], subcommand: str, where: str) -> None:
    names = sorted(n for n in env if n.startswith(ENV_PREFIX))
    unknown = [n for n in names if n[len(ENV_PREFIX) :].lower() not in _known_settings()]
    assert unknown == [], f"{where}: unknown RELAYGRAPH_* settings {unknown}"
    settings_cls = PROCESS_SETTINGS.get(subcommand)
    if settings_cls is not None:
        load_settings(settings_cls, env=env)  # raises SettingsError naming what is wrong


def _compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _relaygraph_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose_services().items() if "build" in s}


def _compose_argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _compose_volume(service: dict[str, Any], target: str) -> tuple[str, list[str]]:
    """(source, options) of the ``source:target[:options]`` volume of ``service``."""
    found = []
    for raw in service.get("volumes", []):
        source, mounted, *options = _interpolate(str(raw)).split(":")
        if mounted == target:
            found.append((source, options))
    assert len(found) == 1, f"expected one volume at {target}, found {found}"
    return found[0]


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: _interpolate(str(v)) for k, v in raw.items()}


def _k8s_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) for every container in deploy/k8s."""
    for obj in _k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            pod = obj["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                yield obj["metadata"]["name"], pod, c


def _k8s_workload(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod template, its one container) of the Deployment ``name``."""
    template = _k8s("Deployment", name)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template, container


def _container_port(container: dict[str, Any], port: int | str, where: str) -> int:
    """The container port a probe or Service names, by number or by name."""
    ports = {p.get("name"): int(p["containerPort"]) for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in ports, f"{where}: no container port named {port!r} (has {ports})"
        return ports[port]
    assert port in ports.values(), f"{where}: port {port} is not a container port ({ports})"
    return port


def _is_relaygraph(container: dict[str, Any]) -> bool:
    return not str(container["image"]).startswith("redis:")


def _k8s_env(container: dict[str, Any], where: str) -> dict[str, str]:
    """The environment a container gets, resolved against the ConfigMaps and Secrets in
    deploy/k8s (a reference to an object or key that does not exist fails)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = _k8s("ConfigMap", source["configMapRef"]["name"])
            env.update({k: str(v) for k, v in cm.get("data", {}).items()})
        elif "secretRef" in source:
            secret = _k8s("Secret", source["secretRef"]["name"])
            env.update({k: str(v) for k, v in secret.get("stringData", {}).items()})
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            data = _k8s("Secret", ref["secretKeyRef"]["name"]).get("stringData", {})
            key = ref["secretKeyRef"]["key"]
        elif "configMapKeyRef" in ref:
            data = _k8s("ConfigMap", ref["configMapKeyRef"]["name"]).get("data", {})
            key = ref["configMapKeyRef"]["key"]
        else:  # fieldRef / resourceFieldRef: a value of the pod
            env[name] = POD_NAME
            continue
        assert key in data, f"{where}: env {name} refers to missing key {key!r}"
        env[name] = str(data[key])
    return env


def _redis_conf() -> dict[str, list[str]]:
    conf: dict[str, list[str]] = {}
    for raw in REDIS_CONF.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, *args = line.split()
            conf[name.lower()] = args  # the last occurrence wins, as in Redis
    return conf


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


# --- every file ---------------------------------------------------------------------------


def test_the_deploy_files_exist() -> None:
    for path in (
        DOCKERFILE,
        COMPOSE,
        REDIS_CONF,
        DEPLOY / "README.md",
        K8S / "redis.yaml",
        K8S / "dispatcher.yaml",
        K8S / "worker.yaml",
        K8S / "configmap.yaml",
        K8S / "secret.example.yaml",
        K8S / "api.yaml",
        KEYS_EXAMPLE,
        PROMETHEUS_CONF,
    ):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_to_mappings(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs)


def test_the_cli_has_every_designed_subcommand() -> None:
    assert _subcommands() >= DESIGNED_SUBCOMMANDS


def test_the_relaygraph_script_is_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["relaygraph"] == "relaygraph.cli:main"


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_entrypoint_is_relaygraph() -> None:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    final = instructions[last_from:]
    entrypoints = [rest for op, rest in final if op == "ENTRYPOINT"]
    assert entrypoints, "the final stage sets no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["relaygraph"]


def test_dockerfile_runs_python_311_slim_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    bases = [rest.split()[0] for op, rest in instructions if op == "FROM"]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    users = [rest for op, rest in instructions[last_from:] if op == "USER"]
    assert users, "the final stage runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(op == "RUN" and "pip install" in rest for op, rest in instructions)


def test_dockerfile_copies_only_paths_that_exist() -> None:
    for op, rest in _dockerfile_instructions():
        if op != "COPY" or "--from=" in rest:
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


def test_dockerfile_copies_every_package_the_wheel_needs() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    copied = {
        p.rstrip("/")
        for op, rest in _dockerfile_instructions()
        if op == "COPY" and "--from=" not in rest
        for p in rest.split()[:-1]
        if not p.startswith("--")
    }
    folders = {p.split(".")[0] for p in packages}  # a subpackage comes with its folder
    assert folders <= copied, f"COPY missing for {folders - copied}"


# --- docker compose -----------------------------------------------------------------------


def test_compose_has_redis_dispatchers_workers_the_api_and_prometheus() -> None:
    services = _compose_services()
    assert set(services) == {"redis", "dispatcher", "worker", "api", "prometheus"}
    assert services["dispatcher"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 3


def test_compose_services_reference_existing_images_and_builds() -> None:
    for name, service in _compose_services().items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"
        build = service.get("build")
        if build is not None:
            context = DEPLOY / (build if isinstance(build, str) else build["context"])
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            dockerfile = "Dockerfile" if isinstance(build, str) else build["dockerfile"]
            assert (context / dockerfile).resolve() == DOCKERFILE.resolve(), name
    assert re.match(r"^redis:7(\.\d+)*(-[a-z0-9.]+)?$", _compose_services()["redis"]["image"])
    images = {_interpolate(s["image"]) for s in _relaygraph_services().values()}
    assert len(images) == 1, f"relaygraph's services should share one image, got {images}"
    assert re.match(r"^prom/prometheus:v\d+(\.\d+)*$", _compose_services()["prometheus"]["image"])


def test_compose_commands_are_real_subcommands() -> None:
    services = _relaygraph_services()
    assert set(services) == {"dispatcher", "worker", "api"}
    for name, service in services.items():
        argv = _compose_argv(service)
        _check_argv(argv, f"compose service {name}")
        assert argv[0] == name


def test_compose_environment_is_known_settings_with_valid_values() -> None:
    for name, service in _relaygraph_services().items():
        env = _compose_env(service)
        assert "RELAYGRAPH_REDIS_URL" in env, name
        _check_env(env, _compose_argv(service)[0], f"compose service {name}")


def test_compose_workers_load_handlers_from_the_environment() -> None:
    env = _compose_env(_compose_services()["worker"])
    assert env["RELAYGRAPH_HANDLERS"] == "examples.bug_triage.handlers"


def test_compose_redis_is_persistent_and_healthchecked() -> None:
    services = _compose_services()
    redis_service = services["redis"]
    assert redis_service["healthcheck"]["test"], "redis has no healthcheck"
    volumes = redis_service["volumes"]
    conf_mounts = [v for v in volumes if v.split(":")[0].endswith("redis.conf")]
    assert len(conf_mounts) == 1
    source, target = conf_mounts[0].split(":")[:2]
    assert (DEPLOY / source).resolve() == REDIS_CONF.resolve()
    assert target in [str(c) for c in redis_service["command"]], "redis.conf is not loaded"
    data = [v.split(":") for v in volumes if v.split(":")[1] == _redis_conf()["dir"][0]]
    assert len(data) == 1, "the data directory of redis.conf is not a volume"
    assert data[0][0] in (_compose().get("volumes") or {}), "the data volume is not declared"
    for name in _relaygraph_services():
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name


def test_compose_api_serves_with_the_keys_file() -> None:
    service = _compose_services()["api"]
    args = _parse_argv(_compose_argv(service), "compose service api")
    assert args.host == "0.0.0.0", "the API must listen beyond the container's loopback"
    assert not args.insecure, "the API must not serve without keys"
    assert args.keys, "the API has no keys file (--keys)"
    source, options = _compose_volume(service, args.keys)
    assert "ro" in options, f"{source} is mounted writable"
    assert (DEPLOY / source).resolve() == KEYS_EXAMPLE.resolve()
    _keys(KEYS_EXAMPLE.read_text(), str(KEYS_EXAMPLE.relative_to(ROOT)))
    published = [str(p).split("/")[0].rsplit(":", 1)[-1] for p in service["ports"]]
    assert str(args.port) in published, f"port {args.port} is not published ({published})"


def test_compose_api_healthcheck_calls_readyz_or_healthz_on_its_port() -> None:
    service = _compose_services()["api"]
    args = _parse_argv(_compose_argv(service), "compose service api")
    test = [str(t) for t in service["healthcheck"]["test"]]
    assert test[0] == "CMD" and test[1:3] == ["python", "-c"], (
        f"the image has no curl: check with python ({test})"
    )
    compile(test[3], "healthcheck", "exec")
    urls = re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[A-Za-z]*)", test[3])
    assert urls == [(str(args.port), "/readyz")] or urls == [(str(args.port), "/healthz")], urls


def test_the_example_key_is_documented_and_in_the_example_keys_file() -> None:
    assert EXAMPLE_KEY in (DEPLOY / "README.md").read_text()
    assert "relaygraph api-key" in (DEPLOY / "README.md").read_text()
    keys = ApiKeys.parse(KEYS_EXAMPLE.read_text(), "keys.example.json")
    principal = keys.authenticate(EXAMPLE_KEY)
    assert principal is not None, "keys.example.json does not hold the example key's digest"
    assert principal.name == "example"


def test_compose_prometheus_loads_the_scrape_config() -> None:
    service = _compose_services()["prometheus"]
    source, options = _compose_volume(service, "/etc/prometheus/prometheus.yml")
    assert "ro" in options
    assert (DEPLOY / source).resolve() == PROMETHEUS_CONF.resolve()
    data, _ = _compose_volume(service, "/prometheus")
    assert data in (_compose().get("volumes") or {}), "Prometheus's data volume is not declared"


def _scrape_targets() -> dict[str, tuple[str, int, str, bool]]:
    """job name -> (compose service, port, metrics path, one target per replica)."""
    (conf,) = _load_all(PROMETHEUS_CONF)
    jobs: dict[str, tuple[str, int, str, bool]] = {}
    for job in conf["scrape_configs"]:
        name = job["job_name"]
        path = job.get("metrics_path", "/metrics")
        targets: list[tuple[str, int, bool]] = []
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                address, _, number = str(target).rpartition(":")
                targets.append((address, int(number), False))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", f"{name}: Docker's DNS has no SRV records"
            targets.extend((str(n), int(dns["port"]), True) for n in dns["names"])
        assert len(targets) == 1, f"{name}: expected one target, found {targets}"
        ((host, port, per_replica),) = targets
        jobs[name] = (host, port, str(path), per_replica)
    return jobs


def test_prometheus_scrapes_every_relaygraph_service_where_it_serves_metrics() -> None:
    services = _relaygraph_services()
    scraped = set()
    for job, (host, port, path, per_replica) in _scrape_targets().items():
        assert host in services, f"{job}: {host!r} is not a relaygraph compose service"
        service = services[host]
        where = f"prometheus job {job} ({host})"
        served_port, served_path = _metrics_endpoint(
            _compose_argv(service), _compose_env(service), where
        )
        assert port == served_port, f"{where}: scrapes port {port}, metrics are on {served_port}"
        assert served_path in (None, path), f"{where}: scrapes {path}, served at {served_path}"
        if service.get("deploy", {}).get("replicas", 1) > 1:
            assert per_replica, f"{where}: a static target reaches one replica at random"
        scraped.add(host)
    assert scraped == set(services), f"not scraped: {set(services) - scraped}"


# --- redis.conf ---------------------------------------------------------------------------


def test_redis_conf_keeps_acknowledged_writes() -> None:
    conf = _redis_conf()
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"][0] in ("always", "everysec")
    assert conf.get("no-appendfsync-on-rewrite", ["no"]) == ["no"]


def test_redis_conf_never_evicts() -> None:
    assert _redis_conf()["maxmemory-policy"] == ["noeviction"]


# --- Kubernetes ---------------------------------------------------------------------------


def test_k8s_objects_are_well_formed_and_namespace_less() -> None:
    objects = _k8s_objects()
    assert objects
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert obj["metadata"].get("name"), obj
        assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]


def test_k8s_replicas() -> None:
    assert _k8s("Deployment", "relaygraph-dispatcher")["spec"]["replicas"] == 2
    assert _k8s("Deployment", "relaygraph-worker")["spec"]["replicas"] == 3
    assert _k8s("Deployment", "relaygraph-api")["spec"]["replicas"] == 2


def test_k8s_commands_are_real_subcommands() -> None:
    roles = {}
    for workload, _pod, container in _k8s_containers():
        if not _is_relaygraph(container):
            continue
        where = f"k8s {workload}/{container['name']}"
        assert "command" not in container, f"{where}: keep the image's `relaygraph` ENTRYPOINT"
        argv = [str(a) for a in container["args"]]
        _check_argv(argv, where)
        roles[workload] = argv[0]
    assert roles == {
        "relaygraph-dispatcher": "dispatcher",
        "relaygraph-worker": "worker",
        "relaygraph-api": "api",
    }


def test_k8s_environment_is_known_settings_with_valid_values() -> None:
    for workload, _pod, container in _k8s_containers():
        where = f"k8s {workload}/{container['name']}"
        env = _k8s_env(container, where)
        if _is_relaygraph(container):
            assert "RELAYGRAPH_REDIS_URL" in env, where
            _check_env(env, str(container["args"][0]), where)
        else:
            assert not [n for n in env if n.startswith(ENV_PREFIX)], where


def test_k8s_secret_example_has_a_password_url() -> None:
    secret = _k8s("Secret", "relaygraph-redis")
    url = secret["stringData"]["RELAYGRAPH_REDIS_URL"]
    assert re.match(r"^rediss?://[^:@/]*:[^@/]+@", url), url
    assert "rediss://" in (K8S / "secret.example.yaml").read_text()


def test_k8s_containers_have_resources() -> None:
    for workload, _pod, container in _k8s_containers():
        resources = container.get("resources", {})
        assert resources.get("requests"), f"{workload}: no resource requests"
        assert resources.get("limits", {}).get("memory"), f"{workload}: no memory limit"


def test_k8s_dispatcher_liveness_is_an_exec_probe() -> None:
    (container,) = _k8s("Deployment", "relaygraph-dispatcher")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["livenessProbe"]["exec"]["command"]


def _run_liveness(container: dict[str, Any], fake: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the dispatcher's liveness probe (``python -c SCRIPT``) against ``fake``."""
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    env = _k8s_env(container, "dispatcher")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(redis.Redis, "from_url", classmethod(lambda cls, *a, **kw: fake))
    try:
        exec(compile(command[2], "livenessProbe", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_k8s_dispatcher_liveness_probe_checks_its_own_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (container,) = _k8s("Deployment", "relaygraph-dispatcher")["spec"]["template"]["spec"][
        "containers"
    ]
    env = _k8s_env(container, "dispatcher")
    keys = Keys(env.get("RELAYGRAPH_PREFIX") or DEFAULT_PREFIX)
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    fake.xgroup_create(keys.inbox, keys.inbox_group, "0", mkstream=True)
    fake.xreadgroup(keys.inbox_group, "another-pod", {keys.inbox: ">"}, count=1)
    assert _run_liveness(container, fake, monkeypatch) != 0  # this pod never read the inbox
    fake.xreadgroup(keys.inbox_group, env["RELAYGRAPH_CONSUMER"], {keys.inbox: ">"}, count=1)
    assert _run_liveness(container, fake, monkeypatch) == 0


def _worker_grace_s() -> float:
    """How long a stopping worker lets running jobs finish (``python -m worker --grace``)."""
    from worker.app import serve

    grace: float = inspect.signature(serve).parameters["grace_s"].default
    if (ROOT / "worker" / "__main__.py").exists():
        from worker.__main__ import build_parser

        grace = max(grace, float(build_parser().get_default("grace") or 0))
    return grace


def test_k8s_worker_grace_period_covers_the_workers_own_grace() -> None:
    pod = _k8s("Deployment", "relaygraph-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > _worker_grace_s()
    stop_grace = _compose_services()["worker"]["stop_grace_period"]
    assert int(stop_grace.rstrip("s")) > _worker_grace_s()


def test_k8s_redis_is_a_statefulset_with_a_volume_and_the_shared_conf() -> None:
    sts = _k8s("StatefulSet", "redis")
    service = _k8s("Service", sts["spec"]["serviceName"])
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert re.match(r"^redis:7(\.\d+)*(-[a-z0-9.]+)?$", container["image"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = _redis_conf()["dir"][0]
    assert [n for n, p in mounts.items() if p == data_dir and n in claims], "no PVC at dir"
    config_volumes = {
        v["name"]: v["configMap"]["name"]
        for v in sts["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    (volume, cm_name) = next(iter(config_volumes.items()))
    conf_path = f"{mounts[volume]}/redis.conf"
    assert conf_path in [*container.get("command", []), *container.get("args", [])]
    config_map = _k8s("ConfigMap", cm_name)
    assert config_map["data"]["redis.conf"] == REDIS_CONF.read_text(), (
        "the ConfigMap in deploy/k8s/redis.yaml differs from deploy/redis/redis.conf"
    )


def test_k8s_api_probes_call_readyz_and_healthz_on_the_container_port() -> None:
    _template, container = _k8s_workload("relaygraph-api")
    args = _parse_argv([str(a) for a in container["args"]], "k8s relaygraph-api")
    assert args.host == "0.0.0.0", "the kubelet and the Service reach the pod's IP"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe}: {get['path']}"
        assert _container_port(container, get["port"], probe) == args.port, probe


def test_k8s_api_service_reaches_the_api_port() -> None:
    template, container = _k8s_workload("relaygraph-api")
    args = _parse_argv([str(a) for a in container["args"]], "k8s relaygraph-api")
    service = _k8s("Service", "relaygraph-api")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    target = port.get("targetPort", port["port"])
    assert _container_port(container, target, "Service relaygraph-api") == args.port


def test_k8s_api_keys_are_a_secret_mounted_as_the_keys_file() -> None:
    template, container = _k8s_workload("relaygraph-api")
    args = _parse_argv([str(a) for a in container["args"]], "k8s relaygraph-api")
    assert args.keys and not args.insecure, "the API must serve with keys"
    directory, _, filename = str(args.keys).rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly"), "the keys are mounted writable"
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    source = volume["secret"]
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    key = items.get(filename, filename)
    secret = _k8s("Secret", source["secretName"])
    assert key in secret["stringData"], f"Secret {source['secretName']} has no {key!r}"
    _keys(secret["stringData"][key], f"Secret {source['secretName']} {key}")


def test_k8s_scrape_annotations_name_the_metrics_ports() -> None:
    scraped = set()
    for obj in _k8s_objects():
        if obj["kind"] != "Deployment":
            continue
        name = obj["metadata"]["name"]
        template, container = _k8s_workload(name)
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        argv = [str(a) for a in container["args"]]
        port, path = _metrics_endpoint(argv, _k8s_env(container, name), f"k8s {name}")
        assert annotations["prometheus.io/port"] == str(port), name
        assert path in (None, annotations.get("prometheus.io/path", "/metrics")), name
        _container_port(container, port, f"k8s {name}")
        scraped.add(name)
    assert scraped == {"relaygraph-dispatcher", "relaygraph-worker", "relaygraph-api"}


def test_the_cluster_compose_file_runs_relaygraph_on_a_six_node_cluster() -> None:
    """deploy/docker-compose.cluster.yml: 6 cluster-enabled nodes joined as 3 primaries with
    a replica each, and relaygraph's processes with a cluster URL and the sharded layout
    (real subcommands, known settings that load, a URL naming three of the nodes)."""
    (doc,) = _load_all(DEPLOY / "docker-compose.cluster.yml")
    services: dict[str, dict[str, Any]] = doc["services"]
    nodes = sorted(n for n in services if n.startswith("valkey-"))
    assert nodes == [f"valkey-{i}" for i in range(1, 7)]
    for name in nodes:
        argv = _compose_argv(services[name])
        assert argv[0] == "valkey-server" and argv[argv.index("--cluster-enabled") + 1] == "yes"
    init = " ".join(_compose_argv(services["cluster-init"]))
    assert "--cluster create" in init and "--cluster-replicas 1" in init
    assert all(f"getent hosts {n} " in init for n in nodes)
    ours = {n: s for n, s in services.items() if "build" in s}
    assert set(ours) == {"dispatcher", "worker", "api"}
    for name, service in ours.items():
        argv = _compose_argv(service)
        _check_argv(argv, f"cluster compose service {name}")
        env = _compose_env(service)
        _check_env(env, argv[0], f"cluster compose service {name}")
        target = parse_redis_url(env["RELAYGRAPH_REDIS_URL"])
        assert target.is_cluster and [h for h, _ in target.nodes] == nodes[:3]
        assert int(env["RELAYGRAPH_SHARDS"]) == 16
        assert service["depends_on"]["cluster-init"]["condition"] == (
            "service_completed_successfully"
        )
