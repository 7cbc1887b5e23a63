"""Rate limits per client address: on failed authentication, and on the routes that need no API key.

A guesser (of keys, tokens, signatures) gets `failures` tries per window and is then refused
outright, valid credentials or not, until the window moves on; anonymous callers (preview links,
E2B's envd and port traffic, by sandbox id) get `anonymous` calls per window, so ids cannot be
scanned at the server's speed. Counted in this server's memory with `limits` (a moving window):
behind several replicas each counts its own share.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class Throttle:
    def __init__(self, failures: str, anonymous: str) -> None:
        """`failures`, `anonymous`: `limits` notation, e.g. "30/minute"."""
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._failures: RateLimitItem = parse(failures)
        self._anonymous: RateLimitItem = parse(anonymous)

    def failure(self, address: str) -> None:
        """Count a refused credential from `address`."""
        self._limiter.hit(self._failures, "failed", address)

    def blocked(self, address: str) -> int | None:
        """Seconds `address` must wait because it failed too often; None when it may go on."""
        return (
            None
            if self._limiter.test(self._failures, "failed", address)
            else self._wait(self._failures, "failed", address)
        )

    def anonymous(self, address: str) -> int | None:
        """Count an anonymous call from `address`: seconds to wait when it is one too many, else None."""
        if self._limiter.hit(self._anonymous, "anonymous", address):
            return None
        return self._wait(self._anonymous, "anonymous", address)

    def _wait(self, item: RateLimitItem, kind: str, address: str) -> int:
        reset = self._limiter.get_window_stats(item, kind, address).reset_time
        return max(1, math.ceil(reset - time.time()))
