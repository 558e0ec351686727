"""Worker configuration: the handler registry, ``load_registry``, worker settings and Redis URLs."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graph_core.errors import RelaygraphError
from graph_core.model import CONTROL_TYPES, Node
from graph_core.settings import SettingsError, load_settings
from worker import HandlerRegistry, NodeContext, WorkerSettings, load_registry
from worker.app import WorkerConfigError, redis_settings_from_url
from worker.builtins import BUILTIN_TYPES
from worker.registry import RegistryError, RegistryLoadError

# --- registration ---------------------------------------------------------------------------


def test_builtins_are_included_unless_disabled() -> None:
    assert set(BUILTIN_TYPES) <= set(HandlerRegistry().types())
    assert HandlerRegistry(builtins=False).types() == []


def test_decorator_registers_async_and_sync_handlers() -> None:
    registry = HandlerRegistry(builtins=False)

    @registry.handler("agent")
    async def agent(ctx: NodeContext) -> dict[str, Any]:
        return {}

    @registry.handler("notification")
    def notification(ctx: NodeContext) -> None:
        return None

    assert registry.get("agent") is agent
    assert registry.get("notification") is notification
    assert registry.get("nope") is None
    assert registry.types() == ["agent", "notification"]
    assert "agent" in registry and "nope" not in registry
    agent_spec, notification_spec = registry.spec("agent"), registry.spec("notification")
    assert agent_spec is not None and agent_spec.is_async
    assert notification_spec is not None and not notification_spec.is_async


def test_callable_objects_with_async_call_count_as_async() -> None:
    class Agent:
        async def __call__(self, ctx: NodeContext) -> None:
            return None

    registry = HandlerRegistry(builtins=False)
    registry.register("agent", Agent())
    spec = registry.spec("agent")
    assert spec is not None and spec.is_async


@pytest.mark.parametrize("control", sorted(CONTROL_TYPES))
def test_control_types_cannot_have_handlers(control: str) -> None:
    registry = HandlerRegistry()
    with pytest.raises(RegistryError, match="control node type") as info:
        registry.register(control, lambda ctx: None)
    assert isinstance(info.value, RelaygraphError)
    assert info.value.name == control


def test_registering_a_type_twice_needs_replace() -> None:
    registry = HandlerRegistry()

    def first(ctx: NodeContext) -> int:
        return 1

    def second(ctx: NodeContext) -> int:
        return 2

    registry.register("agent", first)
    with pytest.raises(RegistryError, match=r"already registered.*first.*replace=True"):
        registry.register("agent", second)
    registry.register("agent", second, replace=True)
    assert registry.get("agent") is second
    # built-ins too
    with pytest.raises(RegistryError, match="'function'"):
        registry.register("function", first)
    registry.register("function", first, replace=True)
    assert registry.get("function") is first


@pytest.mark.parametrize("bad", ["", "   "])
def test_node_type_must_be_a_non_empty_string(bad: str) -> None:
    with pytest.raises(RegistryError, match="non-empty"):
        HandlerRegistry().register(bad, lambda ctx: None)


def test_handler_must_be_callable() -> None:
    with pytest.raises(RegistryError, match="not callable"):
        HandlerRegistry().register("agent", 42)  # type: ignore[arg-type]


def test_named_functions() -> None:
    registry = HandlerRegistry()

    @registry.function("slugify")
    def slugify(ctx: NodeContext) -> str:
        return "x"

    assert registry.get_function("slugify") is slugify
    assert registry.get_function("nope") is None
    assert registry.function_names() == ["slugify"]
    with pytest.raises(RegistryError, match=r"function 'slugify'.*already registered"):
        registry.register_function("slugify", slugify)
    registry.register_function("slugify", slugify, replace=True)


def test_reads_declaration_is_kept() -> None:
    registry = HandlerRegistry(builtins=False)

    def reads(node: Node) -> list[str]:
        return ["a.output.x"]

    registry.register("agent", lambda ctx: None, reads=reads)
    spec = registry.spec("agent")
    assert spec is not None and spec.reads is reads


# --- load_registry ------------------------------------------------------------------------


@pytest.fixture
def handler_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary package ``rgtest_handlers`` importable for one test."""
    pkg = tmp_path / "rgtest_handlers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(
        textwrap.dedent(
            """
            from worker import HandlerRegistry
            registry = HandlerRegistry()
            other = HandlerRegistry(builtins=False)

            @registry.handler("agent")
            async def agent(ctx):
                return {}
            """
        )
    )
    (pkg / "wrong.py").write_text("registry = {'agent': None}\n")
    (pkg / "broken.py").write_text("import rgtest_not_installed_dependency\n")
    (pkg / "raises.py").write_text("raise ValueError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("rgtest_handlers")]:
        del sys.modules[name]


def test_load_registry_default_attribute(handler_modules: Path) -> None:
    registry = load_registry("rgtest_handlers.good")
    assert "agent" in registry.types()


def test_load_registry_named_attribute(handler_modules: Path) -> None:
    assert load_registry("rgtest_handlers.good:other").types() == []


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("rgtest_handlers.missing", "module 'rgtest_handlers.missing' not found"),
        ("rgtest_nowhere.handlers", "module 'rgtest_nowhere.handlers' not found"),
        ("rgtest_handlers.good:nothing", "has no attribute 'nothing'"),
        ("rgtest_handlers.wrong", "is a dict, not a HandlerRegistry"),
        ("rgtest_handlers.broken", "importing 'rgtest_handlers.broken' failed.*rgtest_not_inst"),
        ("rgtest_handlers.raises", "ValueError: boom at import"),
        ("not a module", "not a module path"),
        ("", "expected 'pkg.module'"),
    ],
)
def test_load_registry_errors(handler_modules: Path, spec: str, match: str) -> None:
    with pytest.raises(RegistryLoadError, match=match) as info:
        load_registry(spec)
    assert info.value.spec == spec


# --- settings -------------------------------------------------------------------------------


def test_worker_settings_defaults() -> None:
    s = WorkerSettings()
    assert (s.queues, s.concurrency, s.poll_delay, s.handlers) == (["default"], 10, 0.05, None)


@pytest.mark.parametrize(
    ("value", "queues"), [("default", ["default"]), ("mail, gpu", ["mail", "gpu"])]
)
def test_worker_settings_queues_from_env(value: str, queues: list[str]) -> None:
    s = load_settings(WorkerSettings, env={"RELAYGRAPH_QUEUES": value})
    assert s.queues == queues


def test_worker_settings_from_env_and_flags() -> None:
    env = {
        "RELAYGRAPH_CONCURRENCY": "3",
        "RELAYGRAPH_HANDLERS": "app.handlers:registry",
        "RELAYGRAPH_REDIS_URL": "redis://localhost:6379/0",
    }
    s = load_settings(WorkerSettings, flags={"concurrency": 5}, env=env)
    assert (s.concurrency, s.handlers, s.redis_url) == (
        5,
        "app.handlers:registry",
        env["RELAYGRAPH_REDIS_URL"],
    )


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RELAYGRAPH_CONCURRENCY": "0"}, "concurrency"),
        ({"RELAYGRAPH_QUEUES": "a b"}, "queue name 'a b'"),
        ({"RELAYGRAPH_QUEUES": "a,a"}, "distinct"),
        ({"RELAYGRAPH_POLL_DELAY": "0"}, "poll_delay"),
        ({"RELAYGRAPH_QUEUS": "a"}, "unknown setting"),
    ],
)
def test_worker_settings_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(WorkerSettings, env=env)


# --- Redis URLs -----------------------------------------------------------------------------


def test_redis_url_plain_and_with_password() -> None:
    s = redis_settings_from_url("redis://localhost:6380/2")
    assert (s.host, s.port, s.database, s.ssl, s.password) == ("localhost", 6380, 2, False, None)
    s = redis_settings_from_url("redis://alice:p%40ss%3Aword@cache.internal/")
    assert (s.host, s.port, s.database) == ("cache.internal", 6379, 0)
    assert (s.username, s.password) == ("alice", "p@ss:word")
    s = redis_settings_from_url("redis://:secret@h:1")
    assert (s.username, s.password) == (None, "secret")


def test_redis_url_tls_options() -> None:
    s = redis_settings_from_url(
        "rediss://u:pw@h:6390/1?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem&ssl_check_hostname=true"
    )
    assert (s.ssl, s.ssl_cert_reqs, s.ssl_ca_certs, s.ssl_check_hostname) == (
        True,
        "none",
        "/ca.pem",
        True,
    )
    assert (s.database, s.password) == (1, "pw")


def test_redis_url_unix_socket() -> None:
    s = redis_settings_from_url("unix:///run/redis.sock?db=3")
    assert (s.unix_socket_path, s.database) == ("/run/redis.sock", 3)


def test_redis_url_sentinel() -> None:
    s = redis_settings_from_url("redis+sentinel://:pw@s1:26379,s2:26380,s3/primary/4")
    assert s.sentinel and s.sentinel_master == "primary"
    assert s.host == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert (s.database, s.password) == (4, "pw")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://h", "unsupported scheme"),
        ("redis://h?bogus=1", "unknown option 'bogus'"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis+sentinel:///m", "no sentinel addresses"),
        ("redis+sentinel://s1:x/m", "bad sentinel address"),
    ],
)
def test_redis_url_errors(url: str, match: str) -> None:
    with pytest.raises(WorkerConfigError, match=match):
        redis_settings_from_url(url)
