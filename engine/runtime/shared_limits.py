"""One rate limit per workspace, shared by every worker through Redis.

Several workers sending for one workspace must together keep the partner's limits, so the
limiter's state lives in Redis and every request takes exactly ONE Redis call: a Lua script
(run by EVALSHA; redis-py loads it again when a restarted Redis has forgotten it) that, on
Redis' own clock (``TIME``, so the workers' clocks never matter), checks EVERY limit the
sink declares for the request and either charges them all or none.

Per limit the script keeps what the local ``RateLimiter`` keeps (engine/runtime/ratelimit.py):

* a GCRA "theoretical arrival time" that paces requests evenly with a small burst, and
* the log of what was really admitted in the last window (a sorted set, with its running sum),
  so no stretch of ``per_seconds * (1 + jitter)`` ever holds more than ``amount`` units, even
  for requests costing many units (items, bytes) where pacing alone would let one extra
  request's worth through.

A request that any limit refuses is charged nowhere; the script answers how long to wait.

Failing closed: while Redis cannot be reached no request leaves (``unreachable`` counts the
failed calls); the limiter waits and tries again, and the request is sent once Redis answers.
Nothing is lost, only delayed. The alternative, falling back to a local share of the limit
(``amount / workers``) while Redis is away, keeps sending but needs every worker to know how
many there are; we chose to stop, since a partner's 429s cost more than a short pause.

A Redis restarted empty has forgotten the window. A worker that has charged these limits
before (a "veteran") notices by the scope's marker key being gone and fills the window for
one span before anyone sends again: after a restart the partner may still be counting what
was sent just before it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from moerules.engine.connector import RateLimit, Sink, WireRequest
from moerules.engine.runtime.ratelimit import DEFAULT_JITTER, TokenBucket

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["GCRA_SCRIPT", "SharedRateLimiter", "connect", "workspace_scope"]

# KEYS: the scope's marker, then per limit its hash (tat, sum, seq, pause) and its log.
# ARGV: veteran (0/1), a pause in microseconds to set first (0: none; a partner's
# Retry-After heard by this worker, passed on to all), then per limit: interval, tolerance,
# span, amount, cost (microseconds for times, units for amount and cost).
# Returns 0 when admitted (every limit charged), else the microseconds to wait.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local veteran = ARGV[1] == '1'
local pause_for = tonumber(ARGV[2])
local n = (#KEYS - 1) / 2
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], now)
  if veteran then
    -- an empty Redis after a restart: the partner may still count the last window
    for i = 1, n do
      local base = 2 + (i - 1) * 5
      local span = tonumber(ARGV[base + 3])
      local amount = tonumber(ARGV[base + 4])
      redis.call('DEL', KEYS[2 * i], KEYS[2 * i + 1])
      redis.call('HSET', KEYS[2 * i], 'tat', now, 'sum', amount, 'seq', 1)
      redis.call('ZADD', KEYS[2 * i + 1], now, 'reset:' .. amount)
      redis.call('PEXPIRE', KEYS[2 * i], math.ceil(2 * span / 1000) + 1000)
      redis.call('PEXPIRE', KEYS[2 * i + 1], math.ceil(2 * span / 1000) + 1000)
    end
  end
end
local wait = 0
local tats = {}
local sums = {}
for i = 1, n do
  local h, z = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 2 + (i - 1) * 5
  local interval = tonumber(ARGV[base + 1])
  local tolerance = tonumber(ARGV[base + 2])
  local span = tonumber(ARGV[base + 3])
  local amount = tonumber(ARGV[base + 4])
  local cost = tonumber(ARGV[base + 5])
  local state = redis.call('HMGET', h, 'tat', 'sum', 'pause')
  local tat = tonumber(state[1]) or now
  local sum = tonumber(state[2]) or 0
  local pause = tonumber(state[3]) or 0
  if pause_for > 0 and now + pause_for > pause then
    pause = now + pause_for
    redis.call('HSET', h, 'pause', pause)
  end
  -- the pace: GCRA
  local w = tat - tolerance - now
  if pause - now > w then w = pause - now end
  -- the log: drop what left the window, then see whether this request fits
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - span)
  if #old > 0 then
    for _, member in ipairs(old) do
      sum = sum - tonumber(string.match(member, '([0-9]+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - span)
    redis.call('HSET', h, 'sum', sum)
  end
  local excess = sum + cost - amount
  if excess > 0 then
    local start = 0
    while excess > 0 do
      local page = redis.call('ZRANGE', z, start, start + 63, 'WITHSCORES')
      if #page == 0 then break end
      for j = 1, #page, 2 do
        excess = excess - tonumber(string.match(page[j], '([0-9]+)$'))
        if excess <= 0 then
          local lw = tonumber(page[j + 1]) + span - now
          if lw > w then w = lw end
          break
        end
      end
      start = start + 64
    end
  end
  if w > wait then wait = w end
  tats[i] = tat
  sums[i] = sum
end
if wait > 0 then return math.ceil(wait) end
for i = 1, n do
  local h, z = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 2 + (i - 1) * 5
  local interval = tonumber(ARGV[base + 1])
  local span = tonumber(ARGV[base + 3])
  local cost = tonumber(ARGV[base + 5])
  local tat = tats[i]
  if tat < now then tat = now end
  local seq = redis.call('HINCRBY', h, 'seq', 1)
  redis.call('HSET', h, 'tat', tat + cost * interval, 'sum', sums[i] + cost)
  redis.call('ZADD', z, now, seq .. ':' .. cost)
  -- idle limits vanish; the marker (no expiry) tells idleness from a restart
  local ttl = math.ceil(2 * span / 1000) + 1000
  redis.call('PEXPIRE', h, ttl)
  redis.call('PEXPIRE', z, ttl)
end
return 0
"""

_MICROS = 1_000_000


def workspace_scope(sink: Sink) -> str:
    """The scope of ``sink``'s limits: the destination and a digest of its settings (the
    workspace and its credential), so every worker sending with the same settings shares one
    limit, and no secret appears in a Redis key."""
    settings = repr(sorted((str(k), repr(v)) for k, v in sink.settings.items()))
    return f"{sink.name}:{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


def connect(url: str, *, timeout: float = 0.5) -> Redis:
    """A client for ``url`` (``redis://host:port/db``) that reports an unreachable Redis at
    once: the limiter does its own waiting and retrying (and counts it), so the client's
    built-in retries, which would hide an outage for seconds, are off."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _limit_id(limit: RateLimit) -> str:
    """A limit's name in Redis: the same for every worker declaring the same limit."""
    kind = f":{limit.kind}" if limit.kind else ""
    return f"{limit.limit_key}:{limit.counts}{kind}:{limit.amount}/{limit.per_seconds:g}"


class SharedRateLimiter:
    """The local ``RateLimiter``'s interface (``acquire``, ``widen``, ``pause``), its state in
    Redis under ``scope`` (a workspace: every worker sending for it uses the same scope).

    ``redis`` is a ``redis.asyncio.Redis``, best made by ``connect``, whose calls time out
    and are not retried inside the client, so that an unreachable Redis is noticed at once.
    """

    def __init__(
        self,
        redis: Redis,
        scope: str,
        limits: Sequence[RateLimit],
        *,
        burst_fraction: float = 0.01,
        jitter: float = DEFAULT_JITTER,
        retry_wait: float = 0.1,
        retry_cap: float = 2.0,
    ) -> None:
        self.redis = redis
        self.scope = scope
        self.buckets = [
            TokenBucket(limit, burst_fraction=burst_fraction, jitter=jitter) for limit in limits
        ]
        self._script: Any = redis.register_script(GCRA_SCRIPT)
        self._by_key: dict[str, list[TokenBucket]] = {}
        self._paused: dict[str, float] = {}  # by limit key: until when (monotonic), to tell
        self.retry_wait = retry_wait
        self.retry_cap = retry_cap
        self.veteran = False  # charged these limits before: an empty Redis is a restart
        self.calls = 0  # Redis calls made to admit requests
        self.waits = 0  # times a request had to wait for a limit
        self.unreachable = 0  # calls that failed: Redis away, nothing sent meanwhile

    def _key(self, suffix: str) -> str:
        # one hash tag: in a Redis Cluster all of a scope's keys live on one node
        return f"moerules:limits:{{{self.scope}}}:{suffix}"

    def _buckets(self, key: str) -> list[TokenBucket]:
        found = self._by_key.get(key)
        if found is None:
            found = [b for b in self.buckets if b.limit.limit_key in ("*", key)]
            self._by_key[key] = found
        return found

    def _call(self, key: str, request: WireRequest | None) -> tuple[list[str], list[int]]:
        keys = [self._key("alive")]
        pause = self._paused.get(key, -math.inf) - time.monotonic()
        args = [1 if self.veteran else 0, round(pause * _MICROS) if pause > 0 else 0]
        for bucket in self._buckets(key):
            units = bucket.cost(request)
            if units <= 0:
                continue
            name = _limit_id(bucket.limit)
            keys += [self._key(name), self._key(name + ":log")]
            args += [
                max(1, round(bucket.interval * _MICROS)),
                round(bucket.tolerance * _MICROS),
                round(bucket.span * _MICROS),
                bucket.limit.amount,
                units,
            ]
        return keys, args

    async def try_acquire(self, target: WireRequest | str) -> float:
        """One Redis call: 0.0 when ``target`` was admitted (all its limits charged), else
        the seconds to wait before asking again. Raises when Redis cannot be reached."""
        request = None if isinstance(target, str) else target
        key = target if isinstance(target, str) else target.limit_key
        keys, args = self._call(key, request)
        if len(keys) == 1:
            return 0.0
        self.calls += 1
        wait = int(await self._script(keys=keys, args=args))
        self.veteran = True
        self._paused.pop(key, None)  # told: Redis holds the pause for everyone now
        return wait / _MICROS

    async def acquire(self, target: WireRequest | str) -> None:
        """Wait until ``target`` may leave; while Redis is away, wait (fail closed)."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        backoff = self.retry_wait
        while True:
            try:
                wait = await self.try_acquire(target)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self.unreachable += 1
                await anyio.sleep(backoff)
                backoff = min(self.retry_cap, backoff * 2)
                continue
            backoff = self.retry_wait
            if wait <= 0:
                return
            self.waits += 1
            await anyio.sleep(wait)

    async def aclose(self) -> None:
        await self.redis.aclose()

    def widen(self, key: str) -> None:
        """A 429 came although the pace kept to the limits: this worker paces more slowly."""
        for bucket in self._buckets(key):
            bucket.widen()

    def pause(self, key: str, seconds: float) -> None:
        """The partner said Retry-After: hold ``key`` back here at once, and tell the other
        workers with this worker's next call for ``key`` (still one call per request)."""
        if seconds <= 0 or math.isinf(seconds):
            return
        until = time.monotonic() + seconds
        self._paused[key] = max(self._paused.get(key, -math.inf), until)
