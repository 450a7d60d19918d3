"""The sweep's decisions, on a stand-in for pika's channel: what is handed over, what is
dropped, what a removal does. The broker's side is in
tests/integration/test_poison_messages.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pika.exceptions as pex
import pytest

from hostbus.transport.sweep import Sweeper, Swept

QUEUE = "hostbus.host.web01"


class FakeQueue:
    """basic.get with no_ack, as RabbitMQ does it: the head is removed when taken, and a
    message it cannot frame then closes the connection."""

    def __init__(self, messages: list[tuple[str, bool, bool]]) -> None:
        self.messages = list(messages)  # (message id, redelivered, poison)

    def channel(self) -> FakeQueue:
        return self

    def close(self) -> None:
        pass

    def basic_get(self, queue: str, auto_ack: bool) -> tuple[Any, Any, Any]:
        assert queue == QUEUE and auto_ack
        if not self.messages:
            return None, None, None
        mid, redelivered, poison = self.messages.pop(0)
        if poison:
            raise pex.ConnectionClosedByBroker(541, "INTERNAL_ERROR")
        return (SimpleNamespace(redelivered=redelivered), SimpleNamespace(message_id=mid),
                mid.encode())


def sweep(sweeper: Sweeper, queue: FakeQueue) -> list[str]:
    handed: list[str] = []
    sweeper.sweep(queue, [(QUEUE, lambda method, props, body: handed.append(props.message_id))])
    return handed


def crash(sweeper: Sweeper) -> None:
    sweeper.closed(pex.ConnectionClosedByBroker(541, "INTERNAL_ERROR"))


def test_only_a_541_asks_for_a_sweep():
    sweeper = Sweeper()
    sweeper.closed(pex.ConnectionClosedByBroker(320, "CONNECTION_FORCED"))
    assert not sweeper.needed
    crash(sweeper)
    assert sweeper.needed


def test_copies_of_requests_still_in_hand_are_dropped_and_the_rest_handed_over():
    sweeper, channel = Sweeper(), object()
    sweeper.received(channel, 1, QUEUE, "busy", b"busy")
    sweeper.received(channel, 2, QUEUE, "answered", b"answered")
    sweeper.settled(channel, 2)  # answered before the connection died: its ack may be lost
    crash(sweeper)
    handed = sweep(sweeper, FakeQueue([("busy", True, False), ("answered", True, False),
                                        ("later", False, False)]))
    assert handed == ["answered", "later"]
    assert not sweeper.needed


def test_a_request_settled_after_the_crash_is_handed_over_again():
    """Its reply may have died with the connection: the replay guard answers the copy."""
    sweeper, channel = Sweeper(), object()
    sweeper.received(channel, 1, QUEUE, "busy", b"busy")
    crash(sweeper)
    sweeper.settled(channel, 1)
    assert sweep(sweeper, FakeQueue([("busy", True, False)])) == ["busy"]


def test_a_message_the_broker_cannot_frame_is_removed_and_the_sweep_goes_on():
    sweeper = Sweeper()
    crash(sweeper)
    queue = FakeQueue([("a", True, False), ("bad", True, True), ("b", True, False),
                       ("bad2", False, True), ("c", False, False)])
    with pytest.raises(Swept):
        sweep(sweeper, queue)
    assert sweeper.needed and sweeper.removed == 1  # a new connection sweeps on
    with pytest.raises(Swept):  # "b", then "bad2", new but unframeable all the same
        sweep(sweeper, queue)
    assert sweep(sweeper, queue) == ["c"]
    assert sweeper.removed == 2 and not sweeper.needed and not queue.messages


def test_a_sweep_ends_with_the_first_new_message_and_consuming_takes_over():
    """Only the messages out when the connection died can have closed it; a new one is
    taken without an ack too (there is no peeking), and it is the last."""
    sweeper = Sweeper()
    crash(sweeper)
    queue = FakeQueue([("out", True, False), ("new", False, False), ("newer", False, False)])
    assert sweep(sweeper, queue) == ["out", "new"]
    assert queue.messages == [("newer", False, False)]
    assert sweeper.progressed() and not sweeper.progressed()


def test_an_empty_sweep_is_no_progress():
    """A broker that closes connections with 541 for another reason gets the backoff."""
    sweeper = Sweeper()
    crash(sweeper)
    assert sweep(sweeper, FakeQueue([])) == []
    assert not sweeper.progressed()


def test_consuming_waits_for_the_replies_of_what_was_handed_over_or_is_in_hand():
    """Their replies must go out before the next such message can close the connection:
    the transport waits while this count is not zero (for a few seconds at most)."""
    sweeper, channel = Sweeper(), object()
    sweeper.received(channel, 1, QUEUE, "busy", b"busy")
    crash(sweeper)
    done: list[Any] = []
    sweeper.sweep(FakeQueue([("busy", True, False), ("out", True, False)]),
                  [(QUEUE, lambda method, props, body: done.append(sweeper.hand_out()))])
    assert sweeper.handed_out() == 2  # "out" handed over, "busy" still in hand
    done[0]()
    done[0]()  # saying it twice counts once
    assert sweeper.handed_out() == 1
    sweeper.settled(channel, 1)  # the worker answered "busy"
    assert sweeper.handed_out() == 0
