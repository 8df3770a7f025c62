"""Peer addresses: how a connection's remote end is written, and who may speak for a client.

``format_peer`` turns a socket address into the ``"host:port"`` string that ``ConnectionInfo``
carries (``"[::1]:5000"`` for IPv6). ``client_address`` applies ``trusted_proxies``: the
``X-Forwarded-For`` header is believed only when the TCP peer itself is a trusted proxy, and then
only as far back as the chain is made of trusted proxies -- anything further left could have been
written by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def format_peer(address: object) -> str:
    """Return ``"host:port"`` for a socket address tuple (``"[host]:port"`` for IPv6).

    Args:
        address: what ``socket.getpeername()`` returned.

    Returns:
        A printable address; ``"unknown"`` if it is not an (host, port, ...) tuple.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "unknown"


def parse_trusted_proxies(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse ``trusted_proxies`` entries: single addresses or CIDR networks.

    Raises:
        ValueError: an entry is neither an address nor a network.
    """
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _is_trusted(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(
    peer_ip: str, forwarded_for: Sequence[str], networks: Sequence[IPNetwork]
) -> str | None:
    """The client address that ``X-Forwarded-For`` vouches for, or ``None`` to use the peer.

    Args:
        peer_ip: the TCP peer's IP address.
        forwarded_for: the values of every ``X-Forwarded-For`` header, in order.
        networks: the parsed ``trusted_proxies``.

    Returns:
        The right-most address in the chain that is not itself a trusted proxy, when the peer
        is trusted; ``None`` when the peer is not trusted or the header is absent or garbage.
    """
    if not networks or not forwarded_for or not _is_trusted(peer_ip, networks):
        return None
    chain = [part.strip() for value in forwarded_for for part in value.split(",") if part.strip()]
    for hop in reversed(chain):
        try:
            ipaddress.ip_address(hop.strip("[]"))
        except ValueError:
            return None  # not an address: do not let garbage through as an identity
        if not _is_trusted(hop, networks):
            return hop.strip("[]")
    return chain[0].strip("[]") if chain else None
