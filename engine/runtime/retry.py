"""When to try a request again, and how long to wait first.

A partner that says how long to wait (``Retry-After``, already turned into seconds by the sink's
``classify``) is obeyed, up to ``max_retry_after``. Otherwise the wait is exponential backoff
with *full jitter* (a uniform draw between 0 and ``min(cap, base * 2**(attempt-1))``), which
spreads the retries of many senders instead of having them return in lockstep.

>>> policy = RetryPolicy(max_attempts=6, backoff_base=0.5, backoff_cap=30.0)
>>> policy.delay(1, retry_after=2.0)
2.0
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "retry_after_seconds"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded attempts; Retry-After when given, else capped exponential backoff, full jitter."""

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.max_retry_after < 0:
            raise ValueError("backoff_base, backoff_cap and max_retry_after must be >= 0")

    def can_retry(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) may be followed by another."""
        return attempt < self.max_attempts

    def backoff(self, attempt: int) -> float:
        """The ceiling of the jittered wait after attempt ``attempt``."""
        # min() before the power keeps huge attempt numbers from overflowing a float
        exponent = min(attempt - 1, 62)
        return min(self.backoff_cap, self.backoff_base * float(2**exponent))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt ``attempt`` failed."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        return self.rng.uniform(0.0, self.backoff(attempt))


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
