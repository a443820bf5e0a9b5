"""Per-client token buckets: ``rate`` requests per second with bursts of ``2 * rate``.

Buckets live in each server process, so N gunicorn workers admit up to N times the rate in all;
`recsql serve` divides the configured rates by the number of workers to keep the total right.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """Token buckets keyed by client identity; ``take`` answers 0 or the seconds to wait."""

    def __init__(self, max_clients: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._max_clients = max_clients

    def take(self, client: str, rate: float) -> float:
        """Spend one token of ``client``'s bucket; 0.0 when allowed, else seconds until a token is back."""
        burst = max(2 * rate, 1.0)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                if len(self._buckets) >= self._max_clients and client not in self._buckets:
                    self._buckets.clear()  # bounded memory; everyone starts with a full bucket again
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after(wait: float) -> str:
    """Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
