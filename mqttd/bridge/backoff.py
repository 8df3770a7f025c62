"""Reconnection delays of a bridge, pure: exponential backoff with jitter.

The n-th consecutive failure waits a random time in [d/2, d], where d = min(cap, base * 2**n):
a remote that refuses the bridge (a wrong password, a remote that is down) is retried ever more
slowly up to ``cap``, never in a busy loop, and bridges that lost the same remote at the same
moment do not all come back at the same instant. A link that came up resets it.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """The delays between a bridge's connection attempts.

    Args:
        base_s: the delay after the first failure (before jitter).
        cap_s: the longest delay.
        rng: the source of jitter (tests pass a seeded one).
    """

    __slots__ = ("base_s", "cap_s", "failures", "rng")

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = max(cap_s, base_s)
        self.rng = rng or random.Random()
        #: consecutive failures so far
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count one more failure)."""
        # 2**n overflows a float after ~1000 doublings; the cap is reached long before.
        delay = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return self.rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        """The link came up: the next failure starts from ``base_s`` again."""
        self.failures = 0
