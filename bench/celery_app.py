"""The Celery peer's app: ``celery -A bench.celery_app worker`` (the URL comes from
``BENCH_REDIS_URL``), a Redis broker and a Redis result backend on the benchmark's server."""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

__all__ = ["QUEUE", "READY_KEY", "app", "make_app", "tick"]

QUEUE = "bench-celery"
READY_KEY = "bench:celery:ready"


def make_app(url: str) -> Celery:
    celery = Celery("bench", broker=url, backend=url)
    celery.conf.update(
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery


app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="bench.tick")
def tick() -> float:
    """Does nothing but say when it started."""
    return time.time()


@worker_ready.connect
def _ready(**_: Any) -> None:
    client = redis.Redis.from_url(app.conf.broker_url)
    client.set(READY_KEY, 1, ex=3600)
    client.close()
