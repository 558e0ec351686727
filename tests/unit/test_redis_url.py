"""Redis URLs: every form the dispatcher, client and workers accept, and clear errors."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ResponseError

from dispatcher.connect import connect
from graph_core.redis_url import (
    ClusterUnsupported,
    RedisUrlError,
    check_not_cluster,
    is_cluster_reply,
    is_unavailable_reply,
    parse_redis_url,
    redact,
)
from graph_core.settings import BaseSettings, SettingsError, load_settings


def test_plain_tls_unix_and_sentinel() -> None:
    t = parse_redis_url("redis://alice:p%40ss@cache:6380/2")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == (
        "cache",
        6380,
        2,
        "alice",
        "p@ss",
        False,
    )
    t = parse_redis_url("rediss://h/1?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem")
    assert t.tls and t.ssl == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"}
    t = parse_redis_url("unix:///run/redis.sock?db=3")
    assert (t.unix_path, t.db) == ("/run/redis.sock", 3)
    t = parse_redis_url("redis+sentinel://:pw@s1:26379,s2/primary/4")
    assert t.is_sentinel and t.sentinels == (("s1", 26379), ("s2", 26379))
    assert (t.master, t.db, t.password) == ("primary", 4, "pw")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h", "unsupported scheme"),
        ("redis://h/x", "bad database number"),
        ("redis://h?timeout=1", "unknown option 'timeout'"),
        ("redis+sentinel:///m", "no sentinel addresses"),
        ("redis://h:99999", "Port"),
    ],
)
def test_bad_urls_name_the_problem(url: str, reason: str) -> None:
    with pytest.raises(RedisUrlError, match=reason):
        parse_redis_url(url)


def test_passwords_are_redacted_in_errors() -> None:
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    with pytest.raises(RedisUrlError) as e:
        parse_redis_url("redis://u:secret@h:1/x")
    assert "secret" not in str(e.value)


def test_settings_reject_a_bad_url_by_name() -> None:
    with pytest.raises(SettingsError, match="redis_url"):
        load_settings(BaseSettings, flags={"redis_url": "redis://h?nope=1"}, env={})
    with pytest.raises(SettingsError, match="prefix"):
        load_settings(BaseSettings, flags={"prefix": "bad prefix!"}, env={})


async def test_sentinel_url_gives_a_client_that_asks_the_sentinels() -> None:
    client = connect("redis+sentinel://:pw@127.0.0.1:26379/primary/2")
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "primary"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        "MOVED 6656 127.0.0.1:7001",
        "ASK 12 10.0.0.2:6379",
        "CROSSSLOT Keys in request don't hash to the same slot",
        "CLUSTERDOWN The cluster is down",
        "Command # 1 (HGET relaygraph:run:{abc}:meta run) of pipeline caused error: "
        "('MOVED 7638 127.0.0.1:51627',)",
    ],
)
def test_the_replies_only_a_cluster_gives_are_recognised(reply: str) -> None:
    assert is_cluster_reply(reply)
    assert is_cluster_reply(ResponseError(reply))


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR unknown command 'TASK 12 x'",
        "NOSCRIPT No matching script",
        "ERR value MOVED is not an integer",
    ],
)
def test_other_error_replies_are_not_taken_for_a_clusters(reply: str) -> None:
    assert not is_cluster_reply(reply)


def test_a_server_in_cluster_mode_is_refused_naming_where_and_what_to_use() -> None:
    check_not_cluster({"cluster_enabled": 0})
    check_not_cluster({})  # a server too old to say
    for enabled in (1, "1"):
        with pytest.raises(ClusterUnsupported) as e:
            check_not_cluster({"cluster_enabled": enabled}, "redis://h:7000/0")
        assert "redis://h:7000/0 is a Redis Cluster node" in str(e.value)
        assert "redis+sentinel://" in str(e.value)


@pytest.mark.parametrize(
    ("reply", "unavailable"),
    [
        ("READONLY You can't write against a read only replica.", True),
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("MISCONF Errors writing to the AOF file", True),
        ("LOADING Redis is loading the dataset in memory", True),
        (
            "Error running script (call to f_0c1d): @user_script:12: "
            "@user_script: 12: -READONLY You can't write against a read only replica.",
            True,
        ),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("ERR value is not an integer or out of range", False),
        ("ERR unknown field 'READONLY'", False),
    ],
)
def test_replies_of_a_server_that_cannot_serve_now_are_told_apart(
    reply: str, unavailable: bool
) -> None:
    from relaygraph.api.problems import as_problem

    assert is_unavailable_reply(reply) is unavailable
    problem = as_problem(ResponseError(reply))
    assert (problem is not None and problem.status == 503) is unavailable


def test_a_server_out_of_memory_is_a_503_though_redis_py_drops_the_oom_word() -> None:
    from redis.exceptions import OutOfMemoryError

    from relaygraph.api.problems import as_problem

    problem = as_problem(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    assert problem is not None and (problem.status, problem.slug) == (503, "redis-unavailable")
