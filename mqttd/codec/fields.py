"""The data representations of section 1.5, read from and written to the wire.

Shared by ``decoder.py``, ``encoder.py`` and ``properties.py``: UTF-8 Encoded Strings (1.5.4),
Binary Data (1.5.6), Variable Byte Integers (1.5.5). Readers take the buffer, a read offset and
the offset the field must end by, and return ``(value, next offset)``; they raise
``MalformedPacket`` for the peer's bytes. Writers raise ``LocalProtocolError`` for our own.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final, TypeAlias

from mqttd.errors import LocalProtocolError, MalformedPacket

#: What the readers read from: a decoder's buffer (bytes, or a bytearray while a large
#: packet accumulates).
Buffer: TypeAlias = bytes | bytearray

__all__ = [
    "MAX_U16",
    "MAX_VARINT",
    "check_text",
    "pack_u16",
    "read_binary",
    "read_utf8",
    "read_varint",
    "write_binary",
    "write_utf8",
    "write_varint",
]

pack_u16: Final = struct.Struct(">H").pack
#: The largest two-byte integer; also the longest string, binary field and topic [MQTT-4.7.3-3].
MAX_U16: Final = 0xFFFF
#: The largest Variable Byte Integer (1.5.5): four bytes of seven bits.
MAX_VARINT: Final = 268_435_455

#: Control characters section 1.5.3 (MQTT 5: 1.5.4) says a string SHOULD NOT contain, and lets
#: the receiver close the connection for: U+0001..U+001F and U+007F..U+009F. Mosquitto refuses
#: them too.
_CONTROL: Final = re.compile("[\x01-\x1f\x7f-\x9f]")


def check_text(text: str) -> None:
    """Refuse U+0000 ([MQTT-1.5.3-2], [MQTT-1.5.4-2]) and the control characters of 1.5.3."""
    if text.isascii() and text.isprintable():
        return  # the common case, in C: no control character at all
    if "\x00" in text:
        raise MalformedPacket("null_character_in_string")  # [MQTT-1.5.3-2] [MQTT-1.5.4-2]
    if _CONTROL.search(text):
        raise MalformedPacket("control_character_in_string")  # section 1.5.3 / 1.5.4


def read_utf8(buf: Buffer, pos: int, end: int) -> tuple[str, int]:
    """Read a 2-byte-length-prefixed UTF-8 string at ``pos``; return it and the next offset."""
    if pos + 2 > end:
        raise MalformedPacket("truncated_string")
    stop = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated_string")
    try:
        # Python's strict decoder rejects surrogates and overlong forms. [MQTT-1.5.3-1]
        # [MQTT-1.5.4-1] U+FEFF is kept as it is, never stripped. [MQTT-1.5.3-3] [MQTT-1.5.4-3]
        text = buf[pos + 2 : stop].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("invalid_utf8") from None
    check_text(text)
    return text, stop


def read_binary(buf: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    """Read 2-byte-length-prefixed binary data at ``pos``; return it and the next offset."""
    if pos + 2 > end:
        raise MalformedPacket("truncated_binary")
    stop = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated_binary")
    return bytes(buf[pos + 2 : stop]), stop


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Read a Variable Byte Integer (1.5.5) at ``pos``; return it and the next offset.

    Raises:
        MalformedPacket: truncated, longer than four bytes, or not in its shortest form
            ([MQTT-1.5.5-1]).
    """
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise MalformedPacket("truncated_varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise MalformedPacket("varint_not_minimal")  # [MQTT-1.5.5-1]
            return value, pos
        shift += 7
        if shift == 28:
            raise MalformedPacket("varint_too_long")


def write_varint(n: int) -> bytes:
    """Encode ``n`` as a Variable Byte Integer (1.5.5; the Remaining Length of 2.2.3).

    Raises:
        LocalProtocolError: ``n`` is not an int in 0..268 435 455.
    """
    if type(n) is not int or not 0 <= n <= MAX_VARINT:
        raise LocalProtocolError("remaining_length_out_of_range")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_utf8(text: Any, what: str) -> bytes:
    """A 2-byte-length-prefixed UTF-8 string ([MQTT-1.5.3-1], [MQTT-1.5.3-2], 1.5.4)."""
    if not isinstance(text, str):
        raise LocalProtocolError(f"{what}_not_a_string")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise LocalProtocolError(f"{what}_not_utf8") from None
    if len(raw) > MAX_U16:
        raise LocalProtocolError(f"{what}_too_long")
    if "\x00" in text:
        raise LocalProtocolError(f"{what}_contains_null")
    return pack_u16(len(raw)) + raw


def write_binary(data: Any, what: str) -> bytes:
    """2-byte-length-prefixed Binary Data (1.5.6)."""
    if not isinstance(data, bytes | bytearray):
        raise LocalProtocolError(f"{what}_not_bytes")
    if len(data) > MAX_U16:
        raise LocalProtocolError(f"{what}_too_long")
    return pack_u16(len(data)) + data
