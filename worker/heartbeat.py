"""Leases kept alive by a thread, so a handler that blocks the event loop still holds its job.

Each running attempt holds a lease: a member of the ``leases`` zset (the ``LeaseExpired``
message itself) scored with its expiry. A daemon thread with its own synchronous connection
renews every lease of this process every ``heartbeat_s``, and also renews arq's in-progress
key and the job's running slots under a fleet-wide limit (worker/limits.py), which lapse
with it. Renewal never goes past the attempt's deadline (``timeout_s``): a handler that overruns
lets its lease lapse, and the dispatcher fails the attempt with ``TimeoutError`` even if this
process is wedged. If the process dies, renewals stop and the lease lapses within ``lease_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from arq.connections import RedisSettings
from redis import Redis as SyncRedis
from redis.exceptions import RedisClusterException, RedisError
from redis.sentinel import Sentinel

from worker.limits import RENEW

__all__ = ["Heartbeat", "sync_client"]

logger = logging.getLogger("relaygraph.worker")


@dataclass
class _Held:
    arq_key: str | None
    deadline: float | None  # epoch seconds; renewal stops here
    job_id: str = ""
    slots: tuple[str, ...] = ()  # the running zsets the job holds a slot in (as job_id)
    leases_key: str = ""  # the lease's zset ('': the heartbeat's own)


class Heartbeat:
    def __init__(
        self,
        client: SyncRedis,
        leases_key: str,
        lease_s: float,
        heartbeat_s: float,
        arq_lease_s: float,
    ) -> None:
        self._client = client
        self._leases_key = leases_key
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self._arq_lease_ms = int(arq_lease_s * 1000)
        self._held: dict[bytes, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def expiry(self, deadline: float | None, now: float | None = None) -> float:
        """When a lease renewed now should lapse: ``lease_s`` ahead, never past the deadline."""
        t = (time.time() if now is None else now) + self.lease_s
        return t if deadline is None else min(t, deadline)

    def hold(
        self,
        member: bytes,
        arq_key: str | None,
        deadline: float | None,
        *,
        leases_key: str = "",
        job_id: str = "",
        slots: tuple[str, ...] = (),
    ) -> None:
        """Renew ``member`` (in ``leases_key``, default the heartbeat's) and ``arq_key``
        until ``deadline``; and ``job_id``'s running ``slots``."""
        with self._lock:
            held = _Held(arq_key, deadline, job_id, slots if job_id else (), leases_key)
            self._held[member] = held
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="relaygraph-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, member: bytes) -> None:
        with self._lock:
            self._held.pop(member, None)

    def stop(self) -> None:
        """Stop renewing (idempotent). Leases still held then lapse on their own."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                held = list(self._held.items())
            if not held:
                continue
            try:
                self._beat(held)
            # the dispatcher copes with a lapsed lease; keep beating whatever one beat met:
            # a cluster client's "cannot be connected" is no RedisError, and redis-py's
            # cluster client has failed mid-reset with an AttributeError (no default node)
            except (RedisError, RedisClusterException) as e:
                logger.warning("lease heartbeat failed: %s", e)
            except Exception:
                logger.exception("lease heartbeat failed")

    def _beat(self, held: list[tuple[bytes, _Held]]) -> None:
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        slots: list[str] = []
        holders: list[str] = []
        for member, h in held:
            if h.deadline is not None and now >= h.deadline:
                continue  # overran its timeout: let the lease lapse so the dispatcher acts
            # XX: a lease the dispatcher already took over (expired) is never brought back.
            expiry_ms = int(self.expiry(h.deadline, now) * 1000)
            pipe.zadd(h.leases_key or self._leases_key, {member: expiry_ms}, xx=True)
            if h.arq_key is not None:
                pipe.pexpire(h.arq_key, self._arq_lease_ms)
            slots += h.slots
            holders += [h.job_id] * len(h.slots)
        # the slots by the server's clock, as they were taken; a cluster's pipelines refuse
        # EVAL, so there it goes after them
        renew: tuple[Any, ...] = (RENEW, len(slots), *slots, str(self._arq_lease_ms), *holders)
        apart = bool(slots) and type(self._client).__name__ == "RedisCluster"
        if slots and not apart:
            pipe.eval(*renew)
        pipe.execute()
        if apart:
            self._client.eval(*renew)
        self.beats += 1


def sync_client(rs: RedisSettings) -> SyncRedis:
    """A synchronous client for the same server arq connects to (TLS and sentinel included)."""
    common: dict[str, Any] = {
        "username": rs.username,
        "password": rs.password,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
    }
    if rs.ssl:
        common.update(
            ssl=True,
            ssl_keyfile=rs.ssl_keyfile,
            ssl_certfile=rs.ssl_certfile,
            ssl_cert_reqs=rs.ssl_cert_reqs,
            ssl_ca_certs=rs.ssl_ca_certs,
            ssl_check_hostname=rs.ssl_check_hostname,
        )
    if rs.sentinel:
        hosts = rs.host if isinstance(rs.host, list) else [(rs.host, rs.port)]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={"password": rs.password}, **common
        )
        client: SyncRedis = sentinel.master_for(  # type: ignore[no-untyped-call]
            rs.sentinel_master, db=rs.database
        )
        return client
    if rs.unix_socket_path:
        return SyncRedis(unix_socket_path=rs.unix_socket_path, db=rs.database, **common)
    host = rs.host if isinstance(rs.host, str) else rs.host[0][0]
    return SyncRedis(host=host, port=rs.port, db=rs.database, **common)
