"""Shared test helpers. ``wire`` builds MQTT packet bytes by hand, independently of mqttd.codec."""

from __future__ import annotations
