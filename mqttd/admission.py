"""Per-address connection limits: how many connections one IP may hold, and how fast it may open
new ones (a token bucket). Pure: the caller passes the time."""

from __future__ import annotations

from mqttd.config import LimitsConfig

#: Addresses tracked before idle, full buckets are forgotten (bounds the memory a scan of many
#: addresses can cost).
MAX_TRACKED_ADDRESSES = 100_000


class Admission:
    """Decides whether a new connection from an address is let in."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.max_per_ip = limits.max_connections_per_ip
        self.rate = limits.max_connect_rate_per_ip
        self.burst = max(self.rate, 1.0)
        self.open: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at)
        self._refusing: dict[str, str] = {}  # ip -> reason, while an episode of refusals lasts

    def refuse(self, ip: str, now: float) -> str | None:
        """The reason to refuse a connection from ``ip`` now, or None to let it in (which
        takes a token)."""
        if self.max_per_ip and self.open.get(ip, 0) >= self.max_per_ip:
            return "max_connections_per_ip"
        if self.rate:
            tokens, at = self._buckets.get(ip, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[ip] = (tokens, now)
                return "max_connect_rate_per_ip"
            if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
                self._forget_idle(now)
            self._buckets[ip] = (tokens - 1, now)
        return None

    def first_refusal(self, ip: str, reason: str) -> bool:
        """True for the first refusal of an episode (log once, not once per attempt)."""
        if self._refusing.get(ip) == reason:
            return False
        if len(self._refusing) >= MAX_TRACKED_ADDRESSES:
            self._refusing.clear()
        self._refusing[ip] = reason
        return True

    def opened(self, ip: str) -> None:
        self.open[ip] = self.open.get(ip, 0) + 1
        self._refusing.pop(ip, None)

    def closed(self, ip: str) -> None:
        count = self.open.get(ip, 0) - 1
        if count > 0:
            self.open[ip] = count
        else:
            self.open.pop(ip, None)

    def _forget_idle(self, now: float) -> None:
        full = [
            ip
            for ip, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for ip in full:
            del self._buckets[ip]
