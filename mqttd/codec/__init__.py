"""Pure MQTT codec: bytes in, packets out (``Decoder``), and packets in, bytes out (``encode``).

MQTT 5.0, 3.1.1 and 3.1; MQTT 5 properties are read and written by ``mqttd.codec.properties``
(``encode_properties`` writes a property block on its own, for callers that cache encodings).
"""

from __future__ import annotations

from mqttd.codec import packets
from mqttd.codec.decoder import CLOSED, NEED_DATA, Decoder
from mqttd.codec.encoder import encode
from mqttd.codec.packets import *  # noqa: F403
from mqttd.codec.properties import PROPERTY_PACKETS, WILL_PROPERTIES, encode_properties

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "PROPERTY_PACKETS",
    "WILL_PROPERTIES",
    "Decoder",
    "encode",
    "encode_properties",
    *packets.__all__,
]
