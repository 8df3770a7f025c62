"""The exception hierarchy shared by every mqttd module.

``ProtocolError`` and its subclasses mean the *peer* broke the protocol: the connection is closed,
after a CONNACK with ``connack_code`` when MQTT 3.1.1 requires one. ``LocalProtocolError`` means
*we* tried to send something invalid: a bug in mqttd, never the peer's fault.
"""

from __future__ import annotations


class MQTTError(Exception):
    """Base class of every error mqttd raises on purpose."""


class ProtocolError(MQTTError):
    """The peer sent something the protocol does not allow.

    Args:
        reason: a short snake_case-ish description, safe to log (never contains payloads).
        connack_code: when not ``None``, the CONNACK return code the server must send before
            closing (0x01 unacceptable protocol level, 0x02 identifier rejected, ...).
        reason_code: set only on an MQTT 5 connection: the reason code to put in the CONNACK
            or DISCONNECT sent before closing (0x81 malformed packet, 0x82 protocol error,
            0x95 packet too large, ...) [MQTT-4.13.1-1].
    """

    def __init__(
        self, reason: str, *, connack_code: int | None = None, reason_code: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connack_code = connack_code
        self.reason_code = reason_code


class MalformedPacket(ProtocolError):
    """Bytes that do not form a valid MQTT packet (bad lengths, flags, UTF-8, ...)."""


class ProtocolViolation(ProtocolError):
    """A well-formed packet that is not allowed here (second CONNECT, unknown packet id, ...)."""


class LocalProtocolError(MQTTError):
    """mqttd itself tried to encode or send an invalid packet (a bug in mqttd)."""


class ConfigError(MQTTError):
    """The configuration file is unreadable or invalid; the message names the file and key."""


class StartupError(MQTTError):
    """The broker cannot start (a port in use, an unreadable certificate, ...).

    The message is one line for the operator: what failed, where, and why.
    """


class TakeOverFailed(MQTTError):
    """In a cluster, another node that has the client (alive, by its heartbeat) did not let
    go of it in time: the CONNECT is refused with 0x03 and the client tries again."""
