"""Who may connect, and what they may do: the password files and ACLs in force.

``AccessControl`` loads the files named by ``[auth]`` (and any ``[listeners.auth]`` override,
like Mosquitto's ``per_listener_settings``) at start-up, where a bad file stops the broker, and
again on SIGHUP, where a bad file keeps the previous one and logs why. Both ``PasswordFile`` and
``Acl`` are immutable, so a reload swaps references and connections pick the new rules up at
their next check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from mqttd.acl import Acl, ClientAcl
from mqttd.auth import PasswordFile
from mqttd.config import AuthConfig, Config, ListenerConfig
from mqttd.enhanced_auth import Authenticator, load_authenticators
from mqttd.errors import ConfigError

log = structlog.get_logger("mqttd.access")


@dataclass(frozen=True, slots=True)
class Policy:
    """The loaded files of one ``[auth]`` table."""

    config: AuthConfig
    passwords: PasswordFile | None
    acl: Acl
    #: MQTT 5 enhanced authentication methods by name (``[auth] methods``)
    authenticators: dict[str, Authenticator] = field(default_factory=dict)

    @classmethod
    def load(cls, config: AuthConfig) -> Policy:
        """Read the files ``config`` names.

        Raises:
            ConfigError: a file is unreadable or has a bad line (named with its line number).
        """
        passwords = PasswordFile.load(config.password_file) if config.password_file else None
        acl = Acl.load(config.acl_file) if config.acl_file else Acl.allow_all()
        for warning in acl.warnings:
            log.warning("acl_warning", file=str(config.acl_file), warning=warning)
        return cls(config, passwords, acl, load_authenticators(config))


class AccessControl:
    """The policies of the global ``[auth]`` and of each listener that overrides it."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._policies = self._load_all()

    def _load_all(self) -> dict[int, Policy]:
        policies: dict[int, Policy] = {}
        loaded: dict[AuthConfig, Policy] = {}
        for listener in (None, *self._config.listeners):
            auth = self._auth_of(listener)
            if auth not in loaded:
                loaded[auth] = Policy.load(auth)
            policies[id(listener)] = loaded[auth]
        return policies

    def _auth_of(self, listener: ListenerConfig | None) -> AuthConfig:
        if listener is not None and listener.auth is not None:
            return listener.auth
        return self._config.auth

    def policy(self, listener: ListenerConfig) -> Policy:
        """The policy for connections accepted on ``listener``."""
        return self._policies.get(id(listener)) or self._policies[id(None)]

    def reload(self) -> bool:
        """Re-read every file (SIGHUP). On any error keep the old policies and log why.

        Returns:
            True if the new files are in force.
        """
        try:
            policies = self._load_all()
        except ConfigError as exc:
            log.error("auth_reload_failed", error=str(exc), kept="previous files")
            return False
        self._policies = policies
        files = sorted(
            {
                str(path)
                for policy in policies.values()
                for path in (policy.config.password_file, policy.config.acl_file)
                if path is not None
            }
        )
        log.info("auth_reloaded", files=files)
        return True

    def client_acl(
        self, listener: ListenerConfig, username: str | None, client_id: str
    ) -> ClientAcl:
        """The ACL of one client, resolved for its connection."""
        return self.policy(listener).acl.for_client(username=username, client_id=client_id)
