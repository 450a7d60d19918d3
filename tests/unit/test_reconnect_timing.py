"""How fast a dead broker is noticed and how soon agents come back, as configured: the
schedule and the parameters handed to the client libraries, not wall-clock speed
(benchmarks/recovery.py measures that)."""

from __future__ import annotations

import statistics

from agents.daemon import DEFAULTS
from hostbus.transport.amqp091 import PikaTransport
from hostbus.transport.amqp10 import ProtonTransport
from hostbus.transport.base import DEFAULT_HEARTBEAT, DEFAULT_MAX_BACKOFF, reconnect_delay

URL = "amqp://guest:guest@127.0.0.1:5672/hostbus"


def test_an_agent_tries_again_within_a_few_seconds_of_the_brokers_return():
    # Once at the cap, the wait between two attempts is what separates the broker's
    # return from the agent's: a few seconds, not the half minute it was.
    waits = [reconnect_delay(attempt) for attempt in range(100) for _ in range(20)]
    assert max(waits) <= DEFAULT_MAX_BACKOFF <= 5.0
    assert reconnect_delay(0) <= 0.5  # the first retry is quick


def test_a_fleet_does_not_retry_in_step():
    at_cap = [reconnect_delay(20) for _ in range(2000)]
    # Spread over the upper half of the cap: retries after an outage arrive over
    # seconds, not in one burst; and never faster than half the cap (no storm).
    assert min(at_cap) >= DEFAULT_MAX_BACKOFF / 2
    assert max(at_cap) - min(at_cap) >= DEFAULT_MAX_BACKOFF / 3
    assert statistics.pstdev(at_cap) >= DEFAULT_MAX_BACKOFF / 10


def test_a_dead_broker_is_noticed_well_within_a_minute_by_default():
    transport = PikaTransport(URL)
    params = transport._params_for(transport.url)
    # pika checks every heartbeat + 5 s and gives up at the first check that saw
    # nothing since the one before: within 2 x (heartbeat + 5) s.
    assert params.heartbeat == DEFAULT_HEARTBEAT
    assert 2 * (params.heartbeat + 5) <= 30
    assert ProtonTransport(URL.replace("amqp:", "amqp10:"))._heartbeat == DEFAULT_HEARTBEAT
    # The daemon's configuration says the same (etc/agent.toml documents it).
    assert DEFAULTS["broker"]["heartbeat"] == DEFAULT_HEARTBEAT
    assert DEFAULTS["broker"]["max_backoff"] == DEFAULT_MAX_BACKOFF


def test_a_resource_alarm_is_waited_out_not_turned_into_reconnects():
    transport = PikaTransport(URL)
    assert transport._params_for(transport.url).blocked_connection_timeout is None
