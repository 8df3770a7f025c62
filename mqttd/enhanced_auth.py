"""MQTT 5 enhanced authentication (4.12): the interface a method plugs into, and its loading.

No method is built in. ``[auth] methods = ["package.module:Factory", ...]`` names factories;
each is called once, with the ``[auth]`` table it belongs to, when the files are loaded (at
start-up and on SIGHUP) and returns an ``Authenticator``. A CONNECT naming a method no
factory provides gets CONNACK 0x8C (Bad authentication method), as Mosquitto answers without a
plugin for it.

An exchange is sans-IO, like the rest of the connection: ``Authenticator.start`` makes one
``Exchange`` per authentication (at CONNECT, and again for each re-authentication the client
starts with AUTH 0x19), and ``Exchange.step`` takes the client's Authentication Data (from
CONNECT, then from each AUTH 0x18) and says what happens next: ``CONTINUE`` sends the client
AUTH 0x18 with ``data``; ``SUCCESS`` accepts (CONNACK, or AUTH 0x00 after a
re-authentication), with ``data`` as the server's last Authentication Data and ``username`` as
the identity the ACL and session ownership use; ``FAILURE`` refuses (CONNACK with
``reason_code``, or a DISCONNECT after a re-authentication). ``step`` runs on the event loop:
it must not block (it may be called again while a slow backend answers -- keep state in the
exchange).
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mqttd.codec.packets import ReasonCode
from mqttd.errors import ConfigError

if TYPE_CHECKING:
    from mqttd.config import AuthConfig

__all__ = ["Authenticator", "Exchange", "Outcome", "Step", "load_authenticators"]


class Outcome(enum.Enum):
    """What an exchange step decided."""

    CONTINUE = "continue"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Step:
    """The result of ``Exchange.step``.

    Attributes:
        outcome: continue, succeed or fail.
        data: Authentication Data for the client (AUTH 0x18, or the final CONNACK/AUTH).
        username: on success, the authenticated identity (None keeps the CONNECT's User Name).
        reason_code: on failure, the CONNACK/DISCONNECT reason code (default 0x87).
    """

    outcome: Outcome
    data: bytes | None = None
    username: str | None = None
    reason_code: int = ReasonCode.NOT_AUTHORIZED


class Exchange(Protocol):
    """One authentication of one client, step by step."""

    def step(self, data: bytes | None) -> Step:
        """The client sent ``data`` (None when its packet had no Authentication Data)."""


class Authenticator(Protocol):
    """An authentication method."""

    #: the Authentication Method name clients send, e.g. "SCRAM-SHA-256"
    method: str

    def start(self, client_id: str, username: str | None) -> Exchange:
        """Begin an authentication of ``client_id`` (its CONNECT's User Name, if any)."""


def load_authenticators(config: AuthConfig) -> dict[str, Authenticator]:
    """Call the factories ``config.methods`` names; their authenticators by method name.

    Raises:
        ConfigError: a name that does not import, a factory that fails, two factories for one
            method.
    """
    authenticators: dict[str, Authenticator] = {}
    for spec in config.methods:
        module_name, _, attribute = spec.partition(":")
        try:
            factory: Callable[[AuthConfig], Authenticator] = getattr(
                importlib.import_module(module_name), attribute
            )
            authenticator = factory(config)
            method = authenticator.method
        except Exception as exc:  # an operator's plugin: any failure is a config error
            raise ConfigError(f"auth.methods: {spec}: {exc}") from exc
        if not isinstance(method, str) or not method:
            raise ConfigError(f"auth.methods: {spec}: no method name")
        if method in authenticators:
            raise ConfigError(f"auth.methods: two authenticators for {method}")
        authenticators[method] = authenticator
    return authenticators
