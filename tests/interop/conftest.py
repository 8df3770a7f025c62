"""Interop tests reuse the in-process broker fixtures of the integration tests."""

from __future__ import annotations

from tests.integration.conftest import close_wire_clients, durability, server, start_server

__all__ = ["close_wire_clients", "durability", "server", "start_server"]
