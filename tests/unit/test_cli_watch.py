"""`hostbus watch`: patterns are checked against the events the schemas declare."""

import json

import pytest


@pytest.mark.parametrize(("pattern", "meant"), [
    ("host.metrics", "host.*.metrics"),   # the event's name, not its routing key
    ("host.*.alerts", "host.*.alert"),    # a typo
    ("virt.domain.lifecycle", "virt.*.domain.lifecycle"),
])
def test_a_pattern_that_can_match_no_event_is_refused_with_the_right_one(fleet, pattern,
                                                                         meant):
    done = fleet.run("watch", pattern, "-d", "0.01")
    assert done.exit_code == 2
    assert f"{pattern!r} matches no event" in done.stderr
    assert f"did you mean {meant}?" in done.stderr


@pytest.mark.parametrize("pattern", ["#", "host.*.metrics", "agent.#", "host.web01.#",
                                     "virt.*.domain.lifecycle", "#.alert", "*.*.heartbeat"])
def test_patterns_that_can_match_are_taken(fleet, pattern):
    done = fleet.run("watch", pattern, "-d", "0.01")
    assert done.exit_code == 0, done.stderr


def test_no_validate_subscribes_to_an_unknown_agents_events(fleet):
    done = fleet.run("watch", "thirdparty.*.thing", "-d", "0.01", "--no-validate")
    assert done.exit_code == 0, done.stderr


def test_watch_prints_the_events_it_was_asked_for(fleet):
    fleet.add("web01", heartbeat_interval=0.05)
    done = fleet.run("watch", "agent.web01.heartbeat", "-n", "1", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["event"] == "heartbeat"
