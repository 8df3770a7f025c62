"""Pure MQTT codec: bytes in, packets out (``Decoder``), and packets in, bytes out (``encode``)."""

from __future__ import annotations

from mqttd.codec import packets
from mqttd.codec.decoder import CLOSED, NEED_DATA, Decoder
from mqttd.codec.encoder import encode
from mqttd.codec.packets import *  # noqa: F403

__all__ = ["CLOSED", "NEED_DATA", "Decoder", "encode", *packets.__all__]
