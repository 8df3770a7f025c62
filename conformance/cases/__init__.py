"""Importing this package registers every case."""

from __future__ import annotations

from conformance.cases import (  # noqa: F401
    auth,
    bytecases,
    connect,
    mqtt31,
    publish,
    retain,
    strings,
    subscribe,
    v5_bytes,
    v5_connect,
    v5_interop,
    v5_publish,
    v5_subscribe,
    v5_will,
    websocket,
    will,
)
