"""mqttd: an MQTT 3.1.1 (and 3.1) broker on trio with its own WebSocket gateway."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
