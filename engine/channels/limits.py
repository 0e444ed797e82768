"""Rate limits and retries, shared by the connectors (which obey them) and the
simulators (which enforce them).

- TokenBucket: `rate` tokens a second up to `burst`; Amazon's usage plans, Etsy's QPS
  and Shopify's leaky bucket (a leaky bucket of size B leaking r/s admits exactly what
  a token bucket of burst B and rate r admits) are all this shape.
- send(): one HTTP call with the retry policy of channel-apis.md §5: retry 429, 5xx and
  timeouts only; honour Retry-After (delay-seconds, decimal or integer, or an
  HTTP-date); otherwise capped exponential backoff with full jitter.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable

import httpx

RETRYABLE = frozenset({429, 500, 502, 503, 504})


class TokenBucket:
    """`rate` tokens per second, at most `burst` banked. rate=None lifts the limit."""

    def __init__(self, rate: float | None, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        if self.rate is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self, n: float = 1.0) -> float:
        """Takes n tokens now and returns 0, or returns the seconds until they exist."""
        if self.rate is None:
            return 0.0
        self._refill(time.monotonic())
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate

    async def take(self, n: float = 1.0) -> None:
        """Waits until n tokens exist, then takes them (callers queue in order)."""
        async with self._lock:
            while (wait := self.try_take(n)) > 0:
                await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """The platform said Retry-After: spend the bank and start refilling after it."""
        if self.rate is not None:
            self.tokens = min(self.tokens, -seconds * self.rate)  # concurrent 429s don't stack


RateLimiter = TokenBucket


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds: delay-seconds (integer or decimal) or an HTTP-date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int, base_s: float = 0.05, cap_s: float = 5.0) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return random.uniform(0.0, min(cap_s, base_s * (2**attempt)))


class Exhausted(Exception):
    """Retries ran out on a transient failure; the caller pushes the latest value later."""


async def send(
    call: Callable[[], Awaitable[httpx.Response]],
    limiter: TokenBucket,
    *,
    attempts: int = 5,
    base_s: float = 0.05,
    cap_s: float = 5.0,
) -> httpx.Response:
    """Runs `call` under the limiter, retrying 429, 5xx and timeouts.

    Returns the first response that is not retryable (2xx or a 4xx the caller reads);
    raises Exhausted when every attempt failed transiently.
    """
    for attempt in range(attempts):
        await limiter.take()
        try:
            response = await call()
        except (httpx.TimeoutException, httpx.TransportError):
            await asyncio.sleep(backoff_s(attempt, base_s, cap_s))
            continue
        if response.status_code not in RETRYABLE:
            return response
        wait = retry_after_s(response)
        if wait is not None and limiter.rate is not None:
            limiter.pause(min(wait, cap_s))  # every caller of this limiter waits it out
        elif wait is not None:
            await asyncio.sleep(min(wait, cap_s))
        else:
            await asyncio.sleep(backoff_s(attempt, base_s, cap_s))
    raise Exhausted(f"gave up after {attempts} attempts")
