"""Loading MQTT 5 enhanced authentication methods from ``[auth] methods``."""

from __future__ import annotations

import pytest

from mqttd.config import AuthConfig
from mqttd.enhanced_auth import Outcome, load_authenticators
from mqttd.errors import ConfigError
from tests.helpers import challenge_auth


def test_a_method_loads_and_runs_its_exchange() -> None:
    methods = load_authenticators(
        AuthConfig(methods=("tests.helpers.challenge_auth:ChallengeAuth",))
    )
    authenticator = methods[challenge_auth.METHOD]
    exchange = authenticator.start("c", None)
    challenge = exchange.step(b"bob")
    assert challenge.outcome is Outcome.CONTINUE
    assert challenge.data is not None
    done = exchange.step(challenge_auth.response(challenge.data))
    assert (done.outcome, done.username) == (Outcome.SUCCESS, "bob")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no.such.module:Factory", "No module named"),
        ("tests.helpers.challenge_auth:Missing", "Missing"),
        ("tests.helpers.challenge_auth", "auth.methods"),
    ],
)
def test_a_method_that_does_not_load_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_authenticators(AuthConfig(methods=(spec,)))


def test_two_factories_for_one_method_are_refused() -> None:
    spec = "tests.helpers.challenge_auth:ChallengeAuth"
    with pytest.raises(ConfigError, match="two authenticators"):
        load_authenticators(AuthConfig(methods=(spec, spec)))
