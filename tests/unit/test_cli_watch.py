"""`hostbus watch`: patterns are checked against the events the schemas declare."""

import json
import threading

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


def test_watch_says_when_its_queue_is_deleted_and_restored_and_goes_on(fleet):
    fleet.add("web01", heartbeat_interval=0.02)
    pattern = "agent.web01.heartbeat"

    def delete_the_watchers_queue() -> None:  # as an administrator would, mid-watch
        pause = threading.Event()
        while not (queue := next((q for ex, key, q in fleet.broker.bindings
                                  if key == pattern), None)):
            pause.wait(0.01)  # the watch has not subscribed yet
        fleet.broker.delete_queue(queue)

    deleter = threading.Thread(target=delete_the_watchers_queue)
    deleter.start()
    done = fleet.run("watch", pattern, "-n", "30")
    deleter.join(10)
    assert done.exit_code == 0, done.stderr
    lost = done.stderr.index("! subscription hostbus.sub.console.")
    assert "lost (queue" in done.stderr and "restored" in done.stderr[lost:]
    assert done.stdout.count("heartbeat") == 30
