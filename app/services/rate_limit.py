"""Request rate limits per API key: `rate_limit_per_s` requests a second on average, bursts of
`rate_limit_burst`; past them a 429 `rate_limited` with Retry-After. Shared by every API
process through Redis when the service has Redis (a token bucket kept in one Lua call), kept
in process otherwise (`stagecraft up`). A Redis that does not answer lets requests through
rather than failing them."""

from __future__ import annotations

import logging
import time

from app.config import Settings
from app.errors import RateLimited

log = logging.getLogger("stagecraft.api")

# KEYS[1]: the bucket; ARGV: rate/s, burst, now (s). Returns 0 (allowed) or ms to wait.
BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 't', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class LocalLimiter:
    def __init__(self, rate: float, burst: int, size: int = 100_000):
        self.rate, self.burst, self.size = rate, max(1, burst), size
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    async def check(self, key: str) -> None:
        now = time.monotonic()
        tokens, at = self.buckets.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            raise RateLimited((1 - tokens) / self.rate)
        if len(self.buckets) >= self.size:
            self.buckets.clear()
        self.buckets[key] = (tokens - 1, now)

    async def close(self) -> None:
        pass


class RedisLimiter:
    def __init__(self, url: str, rate: float, burst: int):
        import redis.asyncio

        self.rate, self.burst = rate, max(1, burst)
        self.redis = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.script = self.redis.register_script(BUCKET)
        self.failing = False

    async def check(self, key: str) -> None:
        try:
            wait_ms = int(await self.script(keys=[f"stagecraft:rate:{key}"], args=[self.rate, self.burst, time.time()]))
            self.failing = False
        except Exception as exc:  # Redis unreachable: do not fail requests for it
            if not self.failing:
                log.warning("rate limits are not enforced while Redis does not answer: %s", type(exc).__name__)
            self.failing = True
            return
        if wait_ms > 0:
            raise RateLimited(wait_ms / 1000)

    async def close(self) -> None:
        await self.redis.aclose()


def make_limiter(settings: Settings) -> LocalLimiter | RedisLimiter | None:
    if settings.rate_limit_per_s <= 0:
        return None
    if settings.pubsub_url:
        return RedisLimiter(settings.pubsub_url, settings.rate_limit_per_s, settings.rate_limit_burst)
    return LocalLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
