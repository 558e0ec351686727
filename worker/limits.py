"""Fleet-wide limits as the workers take them (the rules: graph_core/limits.py).

A limit is taken in scripts of its own, next to the claim rather than inside it: they touch
the limits' keys and nothing else, so on a Redis Cluster the limits can live in one slot
while runs and queues are spread over the others.

* ``ACQUIRE``, once a job is claimed and one of its scopes (its queue's, its handler
  type's) has a limit: take a running slot and a token in every limited scope, or none and
  hold the job back. A slot is a member of the scope's running zset scored with its expiry,
  which the worker's heartbeat renews with the job's in-progress key (``RENEW``): a worker
  that dies frees its slots when they lapse, as its jobs' in-progress keys do.
* A job held back is noted (the held-back hash, and the scope's held-back zset) and handed
  back to its queue, its try not counted; ``Gate.unheld`` tells the worker whether a
  release woke it meanwhile, while it was still claimed (the wake-up then found it taken).
* ``RELEASE``, at the job's end (or hand-back): free its slots, and pop the oldest job each
  of its scopes holds back; the worker pushes those on their queues' wake lists.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson

from graph_core.keys import Keys

__all__ = ["ACQUIRE", "LIMITS_CHECK_S", "RELEASE", "RENEW", "SERVER_MS_LUA", "Gate"]

logger = logging.getLogger("relaygraph.worker")

LIMITS_CHECK_S: Final = 1.0  # a limit set (or the last one cleared) applies within this

# The server's clock in ms: the clock of every queue score (apply.lua writes them with it)
# and of the running slots' expiries.
SERVER_MS_LUA = """
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Take a job's limits, or hold it back. KEYS: 1 the limits hash, 2 the held-back jobs' hash
# (job id -> "<scope>|<wake list>"); then, for each scope in ARGV[4..], its running zset,
# its token bucket and its held-back zset. ARGV: 1 the job id, 2 how long a running slot
# lives unrenewed (ms), 3 the job's queue's wake list (noted for a hold). Every scope is
# checked before anything is taken. The reply: nil (taken), or {'throttled', scope, ms
# until its next token (0: wait for a slot)}.
ACQUIRE: Final = (
    SERVER_MS_LUA
    + """
local job = ARGV[1]
local now = server_ms()
local take = {}
local function hold(scope, k, wait)
  redis.call('HSET', KEYS[2], job, scope .. '|' .. ARGV[3])
  redis.call('ZADD', KEYS[k + 2], 'NX', now, job)
  return {'throttled', scope, wait}
end
for i = 4, #ARGV do
  local scope, k = ARGV[i], 3 * (i - 3)
  local raw = redis.call('HGET', KEYS[1], scope)
  if raw then
    local m, r, b = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)$')
    local max_running, rate, burst = tonumber(m), tonumber(r), tonumber(b) or 1
    if max_running then
      -- slots not renewed in time were dead workers'; this job's own (an earlier
      -- delivery's: a retry, a hand-back, a crash) is not a slot taken
      redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
      local running = redis.call('ZCARD', KEYS[k])
      if redis.call('ZSCORE', KEYS[k], job) then running = running - 1 end
      if running >= max_running then return hold(scope, k, 0) end
      take[#take + 1] = {KEYS[k]}
    end
    if rate and rate > 0 then
      local got = redis.call('HMGET', KEYS[k + 1], 'tokens', 'ts')
      local tokens = tonumber(got[1]) or burst
      local since = now - (tonumber(got[2]) or now)
      tokens = math.min(burst, tokens + math.max(0, since) * rate / 1000)
      if tokens < 1 then return hold(scope, k, math.ceil((1 - tokens) * 1000 / rate)) end
      take[#take + 1] = {KEYS[k + 1], tokens}
    end
  end
end
for _, t in ipairs(take) do
  if t[2] then
    redis.call('HSET', t[1], 'tokens', tostring(t[2] - 1), 'ts', tostring(now))
  else
    redis.call('ZADD', t[1], now + tonumber(ARGV[2]), job)
  end
end
if redis.call('HDEL', KEYS[2], job) == 1 then
  for i = 4, #ARGV do redis.call('ZREM', KEYS[3 * (i - 3) + 2], job) end
end
return false
"""
)

# A job's end: free its running slots and pop, in each of its scopes, the oldest job held
# back (one whose note is gone, woken already or claimed since, is skipped; three at most).
# KEYS: 1 the held-back jobs' hash; then, for each scope, its running zset and its
# held-back zset. ARGV[1]: the job id ('': free nothing, only pop). The reply: wake list,
# job id, the scope's position (1, 2...), ... for the worker to push (it cannot see here
# whether a job still exists: one gone, cancelled while held back, is popped for nothing,
# and the worker pops again in that scope).
RELEASE: Final = """
local woken = {}
for k = 2, #KEYS, 2 do
  if ARGV[1] ~= '' then redis.call('ZREM', KEYS[k], ARGV[1]) end
  for _ = 1, 3 do
    local popped = redis.call('ZPOPMIN', KEYS[k + 1])
    if #popped == 0 then break end
    local note = redis.call('HGET', KEYS[1], popped[1])
    local wake = note and string.match(note, '|(.*)$')
    if wake then
      redis.call('HDEL', KEYS[1], popped[1])
      woken[#woken + 1] = wake
      woken[#woken + 1] = popped[1]
      woken[#woken + 1] = k / 2
      break
    end
  end
end
return woken
"""

# The heartbeat's renewal of running slots: KEYS the running zsets, ARGV[1] a slot's life
# (ms), ARGV[2..] the job holding each; a slot already gone (released, expired) stays gone.
RENEW: Final = (
    SERVER_MS_LUA
    + """
local until_ms = server_ms() + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do redis.call('ZADD', key, 'XX', until_ms, ARGV[i + 1]) end
return #KEYS
"""
)


class Gate:
    """One worker queue's view of the limits: which scopes have one (read from Redis at
    most every ``LIMITS_CHECK_S``), and the calls that take and free them."""

    def __init__(self, keys: Keys, queue_scope: str) -> None:
        self.keys = keys
        self.queue_scope = queue_scope
        self.limited: frozenset[str] = frozenset()  # the scopes that have a limit
        self._checked = -LIMITS_CHECK_S
        self._typed = False  # some handler type has a limit: a job's type must be read

    @property
    def on(self) -> bool:
        return bool(self.limited)

    async def refresh(self, pool: Any, now: float | None = None) -> None:
        """Read which scopes have a limit, unless that was done under a second ago."""
        now = time.monotonic() if now is None else now
        if now - self._checked < LIMITS_CHECK_S:
            return
        self._checked = now
        scopes = await pool.hkeys(self.keys.limits)
        self.limited = frozenset(s.decode() if isinstance(s, bytes) else s for s in scopes)
        self._typed = any(s.startswith("type:") for s in self.limited)

    def scopes(self, job: bytes | None) -> list[str]:
        """The limited scopes of a job: its queue's, and its handler type's (read from the
        job's envelope, as relaygraph's jobs carry it)."""
        found = [self.queue_scope] if self.queue_scope in self.limited else []
        if self._typed and job is not None:
            kind = _handler_type(job)
            if kind and f"type:{kind}" in self.limited:
                found.append(f"type:{kind}")
        return found

    def running_keys(self, scopes: list[str]) -> tuple[str, ...]:
        return tuple(self.keys.limit_running(s) for s in scopes)

    def acquire_call(
        self, job_id: str, scopes: list[str], slot_ms: int, wake_key: str
    ) -> tuple[list[str], list[str]]:
        """ACQUIRE's keys and arguments; ``slot_ms``: how long a slot lives unrenewed;
        ``wake_key``: the wake list of the job's queue (in its run's shard)."""
        keys = [self.keys.limits, self.keys.limits_throttled]
        for scope in scopes:
            keys += [
                self.keys.limit_running(scope),
                self.keys.limit_bucket(scope),
                self.keys.limit_held(scope),
            ]
        return keys, [job_id, str(slot_ms), wake_key, *scopes]

    def release_call(self, job_id: str, scopes: list[str]) -> tuple[list[str], list[str]]:
        """RELEASE's keys and arguments; ``job_id`` '' pops held-back jobs, frees nothing."""
        keys = [self.keys.limits_throttled]
        for scope in scopes:
            keys += [self.keys.limit_running(scope), self.keys.limit_held(scope)]
        return keys, [job_id]

    async def unheld(self, pool: Any, job_ids: list[str]) -> list[str]:
        """Of jobs held back and handed back since, those whose note is gone: a release
        popped them (and woke them while they were still claimed), or a claim took them."""
        pipe = pool.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hexists(self.keys.limits_throttled, job_id)
        held = await pipe.execute()
        return [job_id for job_id, h in zip(job_ids, held, strict=True) if not h]


def _handler_type(job: bytes) -> str:
    """The handler type in a relaygraph job's envelope (``a[0].type``); '' for any other."""
    try:
        env = orjson.loads(job)
        kind = env["a"][0]["type"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return ""
    return kind if isinstance(kind, str) else ""
