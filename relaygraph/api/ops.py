"""Operations routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError, ResponseError

from relaygraph.api.deps import ApiContext, Ctx
from relaygraph.api.models import Health, Ready

__all__ = ["router"]

router = APIRouter(tags=["operations"])

# A dispatcher blocks on the inbox for 0.5 s at a time; one silent this long is gone.
DISPATCHER_STALE_MS: Final = 15_000


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no Redis call)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(response: Response, ctx: Ctx) -> Ready:
    """Ready to serve: Redis answers and at least one dispatcher reads the inbox; also
    the depth of every served queue. 503 (with the reasons) otherwise."""
    keys = ctx.rkeys
    try:
        async with asyncio.timeout(ctx.settings.api_redis_timeout_s):
            await ctx.redis.ping()
            dispatchers = await _live_dispatchers(ctx)
            queues = await _queue_depths(ctx)
    except (RedisError, OSError, TimeoutError) as e:
        response.status_code = 503
        return Ready(
            status="not-ready", redis=False, dispatchers=0, queues={}, reasons=[f"Redis: {e}"]
        )
    inbox = keys.shard(0).inbox  # every dispatcher reads every shard's
    reasons = [] if dispatchers else [f"no dispatcher has read {inbox} lately"]
    if reasons:
        response.status_code = 503
    return Ready(
        status="not-ready" if reasons else "ready",
        redis=True,
        dispatchers=dispatchers,
        queues=queues,
        reasons=reasons,
    )


async def _live_dispatchers(ctx: ApiContext) -> int:
    keys = ctx.rkeys
    try:
        consumers = await ctx.redis.xinfo_consumers(keys.shard(0).inbox, keys.inbox_group)
    except ResponseError:  # no inbox or no group yet: no dispatcher ever started
        return 0
    # Redis 7.2+ and Valkey reset "idle" on every read attempt (an idle dispatcher's too);
    # older servers only on a delivery, so there any member of the group counts.
    if consumers and "inactive" not in consumers[0]:
        return len(consumers)
    return sum(1 for c in consumers if int(c.get("idle", 0)) < DISPATCHER_STALE_MS)


async def _queue_depths(ctx: ApiContext) -> dict[str, int]:
    keys = ctx.rkeys
    names: set[str] = set()
    for raw in await ctx.redis.hvals(keys.workers):
        try:
            record: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("queues"), list):
            names.update(str(q) for q in record["queues"])
    ordered = sorted(names)
    shards = [keys.shard(k) for k in range(max(1, keys.shards))]
    pipe = ctx.redis.pipeline(transaction=False)
    for name in ordered:
        for shard in shards:
            pipe.zcard(shard.queue(name))
    depths = iter(int(n) for n in await pipe.execute())
    return {name: sum(next(depths) for _ in shards) for name in ordered}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus exposition: the API's own counters and the fleet gauges."""
    body = await asyncio.to_thread(generate_latest, ctx.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
