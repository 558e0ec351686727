"""graph_core/resp.py packs commands byte for byte as redis-py does, and a client given the
packer keeps working (including an arguments mix redis-py refuses)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from graph_core import resp

ARGS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
)


def _redis_py(*args: Any) -> bytes:
    return b"".join(Connection().pack_command(*args))


@given(
    name=st.sampled_from(["SET", "EVALSHA", b"HSET", "CLIENT SETINFO", b"CONFIG GET"]),
    args=st.lists(ARGS, max_size=30),
)
def test_a_command_packs_as_redis_py_packs_it(name: str | bytes, args: list[Any]) -> None:
    expected = _redis_py(name, *args)
    assert resp.pack_command(name, *args) == expected
    words = name.split() if isinstance(name, bytes) else name.encode().split()
    assert resp._python_pack((*words, *args)) == expected


@pytest.mark.parametrize("bad", [True, None, bytearray(b"x"), object()])
def test_what_is_not_str_bytes_int_or_float_is_left_to_redis_py(bad: Any) -> None:
    with pytest.raises(TypeError):
        resp.pack_command("SET", "k", bad)
    with pytest.raises(TypeError):
        resp._python_pack(("SET", "k", bad))
    conn = resp._fast(Connection)()
    if isinstance(bad, bool | bytearray):  # redis-py's own verdict stands
        with pytest.raises(DataError):
            conn.pack_command("SET", "k", bad)


def test_a_connection_with_another_encoding_packs_through_redis_py() -> None:
    conn = resp._fast(Connection)(encoding="latin-1")
    assert (
        b"".join(conn.pack_command("SET", "k", "é"))
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    )


def test_fast_packing_switches_a_pool_and_the_connections_it_holds() -> None:
    client = redis.Redis()
    held = client.connection_pool.make_connection()
    client.connection_pool._available_connections.append(held)
    assert resp.fast_packing(client) is client
    fast = client.connection_pool.connection_class
    assert issubclass(fast, redis.Connection) and fast is not redis.Connection
    assert type(held) is fast
    assert resp.fast_packing(client).connection_pool.connection_class is fast  # once is enough
    assert resp._fast(fast) is fast
    assert resp.fast_packing(object()) is not None  # not a client: left alone
