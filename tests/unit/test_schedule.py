"""The broker's wall-clock timers (``mqttd.schedule``) and what the broker does with them:
MQTT 5 session expiry, delayed Wills, retained messages that expire."""

from __future__ import annotations

import dataclasses
import time

from mqttd.broker import Broker
from mqttd.codec.packets import Properties
from mqttd.config import LimitsConfig
from mqttd.message import Message
from mqttd.schedule import Schedule


def test_timers_run_in_time_order_once_and_not_when_cancelled() -> None:
    schedule = Schedule()
    ran: list[str] = []
    sooner: list[bool] = []
    schedule.on_sooner = lambda: sooner.append(True)
    schedule.call_at(20.0, lambda: ran.append("b"))
    schedule.call_at(10.0, lambda: ran.append("a"))
    schedule.call_at(30.0, lambda: ran.append("c")).cancel()
    schedule.call_at(25.0, lambda: ran.append("late"))
    assert len(sooner) == 2  # the first timer, then one due earlier than it
    assert schedule.next_at() == 10.0
    assert schedule.run_due(5.0) == 0
    assert schedule.run_due(20.0) == 2
    assert ran == ["a", "b"]
    assert schedule.run_due(100.0) == 1  # the cancelled one never runs
    assert ran == ["a", "b", "late"]
    assert schedule.next_at() is None


def broker() -> Broker:
    return Broker(dataclasses.replace(LimitsConfig()))


def test_session_expires_after_its_interval_unless_it_came_back() -> None:
    """An offline MQTT 5 session ends when its interval passes; reconnecting (and leaving
    again later) makes the old timer stale."""
    b = broker()
    session, _ = b.open_session("c", False, mqtt5=True, expiry=60)
    b.end_session(session)
    left_at = session.last_seen
    again, present = b.open_session("c", False, mqtt5=True, expiry=60)
    assert present
    assert again is session
    b.schedule.run_due(left_at + 61)  # the first timer is stale: the client came back
    assert "c" in b.sessions
    b.end_session(again)
    b.schedule.run_due(again.last_seen + 59)
    assert "c" in b.sessions
    b.schedule.run_due(again.last_seen + 60)
    assert "c" not in b.sessions
    assert b.stats.sessions_expired == 1


def test_delayed_will_goes_when_the_session_ends_first() -> None:
    """Will Delay 100 but session expiry 10: the Will goes when the session ends."""
    b = broker()
    session, _ = b.open_session("c", False, mqtt5=True, expiry=10)
    b.end_session(session)
    published: list[str] = []
    b.delay_will("c", 100, lambda: published.append("will"))
    b.schedule.run_due(session.last_seen + 10)
    assert published == ["will"]
    b.schedule.run_due(session.last_seen + 200)
    assert published == ["will"]  # once


def test_expired_retained_message_is_removed() -> None:
    """A retained message with a Message Expiry Interval leaves the retained store when it
    expires (and is counted out of the retained limits)."""
    b = broker()
    now = time.time()
    message = Message.from_publish(
        "t", b"x", 0, True, Properties(message_expiry_interval=30), now
    )
    b.publish_message(message)
    assert b.retained.get("t") is message
    assert b.retained_count == 1
    b.schedule.run_due(now + 29)
    assert b.retained.get("t") is message
    b.schedule.run_due(now + 30)
    assert b.retained.get("t") is None
    assert (b.retained_count, b.retained_bytes) == (0, 0)
