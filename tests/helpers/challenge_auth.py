"""A toy MQTT 5 enhanced authentication method for tests: challenge and HMAC response.

``X-CHALLENGE``: the client's first Authentication Data is its user name; the server answers
(AUTH 0x18) with a nonce; the client proves it knows the shared secret by sending
HMAC-SHA256(secret, nonce); the server accepts (its last data: b"welcome") with that user name
as the identity. Any other answer fails with 0x87. Loaded with
``[auth] methods = ["tests.helpers.challenge_auth:ChallengeAuth"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools

from mqttd.config import AuthConfig
from mqttd.enhanced_auth import Outcome, Step

SECRET = b"shared secret"
METHOD = "X-CHALLENGE"
_NONCES = itertools.count(1)


def response(nonce: bytes) -> bytes:
    """What a client that knows ``SECRET`` answers to ``nonce``."""
    return hmac.new(SECRET, nonce, hashlib.sha256).digest()


class _Exchange:
    def __init__(self) -> None:
        self.nonce: bytes | None = None
        self.user: str | None = None

    def step(self, data: bytes | None) -> Step:
        if self.nonce is None:
            if not data:
                return Step(Outcome.FAILURE)
            self.user = data.decode()
            self.nonce = b"nonce-%d" % next(_NONCES)
            return Step(Outcome.CONTINUE, self.nonce)
        if data is not None and hmac.compare_digest(data, response(self.nonce)):
            return Step(Outcome.SUCCESS, b"welcome", username=self.user)
        return Step(Outcome.FAILURE)


class ChallengeAuth:
    """The authenticator (the factory is the class: it takes the ``[auth]`` table)."""

    method = METHOD

    def __init__(self, config: AuthConfig) -> None:
        self.config = config

    def start(self, client_id: str, username: str | None) -> _Exchange:
        return _Exchange()
