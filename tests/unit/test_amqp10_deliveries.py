"""The AMQP 1.0 transport's one delivery handler, both directions: the broker's outcome
for a publish reaches its confirm callback, and an incoming message reaches its consumer
only when it is whole, readable, decodable and its consumer is still open."""

from __future__ import annotations

from typing import Any

from proton import Delivery as ProtonDelivery
from proton import Endpoint, Message

from hostbus.transport.amqp10 import ProtonTransport, _Deliveries, _Events, _Sent
from hostbus.transport.amqp10_messages import encode_message
from hostbus.transport.base import Properties


class FakeLink:
    def __init__(self, *, sender: bool, frame: bytes = b"", closed: bool = False) -> None:
        self.is_sender, self.is_receiver = sender, not sender
        self.name = "hostbus-in-1"
        self.state = Endpoint.LOCAL_CLOSED if closed else Endpoint.LOCAL_ACTIVE
        self.frame, self.advanced, self.credit = frame, False, 0

    def recv(self, n: int) -> bytes:
        return self.frame[:n]

    def advance(self) -> None:
        self.advanced = True

    def flow(self, n: int) -> None:
        self.credit += n


class FakeDelivery:
    ACCEPTED, REJECTED = ProtonDelivery.ACCEPTED, ProtonDelivery.REJECTED
    RELEASED, MODIFIED = ProtonDelivery.RELEASED, ProtonDelivery.MODIFIED

    def __init__(self, link: FakeLink, *, tag: str = "1", state: Any = None,
                 aborted: bool = False, partial: bool = False) -> None:
        self.link, self.tag, self.remote_state = link, tag, state
        self.updated = state is not None
        self.settled = state is not None
        self.aborted, self.partial, self.readable = aborted, partial, True
        self.pending = len(link.frame)
        self.outcome: Any = None
        self.was_settled = False
        self.remote = type("Remote", (), {"condition": None})()

    def update(self, outcome: Any) -> None:
        self.outcome = outcome

    def settle(self) -> None:
        self.was_settled = True


class Event:
    def __init__(self, delivery: FakeDelivery) -> None:
        self.delivery = delivery


def _events() -> tuple[_Events, ProtonTransport]:
    transport = ProtonTransport("amqp10://guest:guest@127.0.0.1:5672/x")
    return _Events(transport), transport


def test_each_final_outcome_reaches_the_publishers_confirm() -> None:
    events, transport = _events()
    heard: dict[str, bool | None] = {}
    handler = _Deliveries(events)
    for tag, state in (("a", ProtonDelivery.ACCEPTED), ("r", ProtonDelivery.REJECTED),
                       ("l", ProtonDelivery.RELEASED), ("m", ProtonDelivery.MODIFIED)):
        transport._unsettled[tag] = _Sent("out", "hostbus.event", "k", 0.0,
                                          lambda ok, tag=tag: heard.__setitem__(tag, ok))
        dlv = FakeDelivery(FakeLink(sender=True), tag=tag, state=state)
        handler.on_delivery(Event(dlv))
        assert dlv.was_settled
    # released: RabbitMQ 4.x routed it nowhere, which a 0-9-1 broker confirms too
    assert heard == {"a": True, "r": False, "l": True, "m": None}
    assert transport._unsettled == {}


def test_a_mandatory_publish_released_by_the_broker_is_reported_unroutable() -> None:
    events, transport = _events()
    unroutable: list[tuple[str, str, str | None]] = []
    transport.on_unroutable(lambda ex, key, props: unroutable.append((ex, key,
                                                                      props.message_id)))
    handler = _Deliveries(events)
    for tag, state, mandatory in (("1", ProtonDelivery.RELEASED, True),
                                  ("2", ProtonDelivery.ACCEPTED, True),
                                  ("3", ProtonDelivery.RELEASED, False)):
        transport._unsettled[tag] = _Sent(
            "out", "hostbus.request", f"host.h{tag}", 0.0, None,
            Properties(message_id=f"m{tag}") if mandatory else None)
        handler.on_delivery(Event(FakeDelivery(FakeLink(sender=True), tag=tag,
                                               state=state)))
    assert unroutable == [("hostbus.request", "host.h1", "m1")]


def test_a_state_that_is_not_final_keeps_the_publish_waiting() -> None:
    events, transport = _events()
    heard: list[bool | None] = []
    transport._unsettled["1"] = _Sent("out", "hostbus.event", "k", 0.0, heard.append)
    _Deliveries(events).on_delivery(Event(FakeDelivery(
        FakeLink(sender=True), state=ProtonDelivery.RECEIVED)))
    assert heard == [] and "1" in transport._unsettled


class Recorder:
    def __init__(self) -> None:
        self.got: list[Message] = []

    def received(self, link: Any, dlv: Any, msg: Message) -> None:
        self.got.append(msg)


def _frame() -> bytes:
    props = Properties(message_id="m1", content_type="application/json", user_id="guest")
    return bytes(encode_message(props, b'{"a":1}', False, "/exchange/x/k", "k"))


def test_a_whole_message_reaches_its_consumer_with_its_user() -> None:
    recorder = Recorder()
    link = FakeLink(sender=False, frame=_frame())
    _Deliveries(recorder).on_delivery(Event(FakeDelivery(link)))  # type: ignore[arg-type]
    assert [(m.id, m.user_id, m.body) for m in recorder.got] == [("m1", b"guest", b'{"a":1}')]
    assert link.advanced


def test_partial_aborted_closed_and_broken_messages_reach_no_consumer(monkeypatch: Any) -> None:
    recorder = Recorder()
    handler = _Deliveries(recorder)  # type: ignore[arg-type]
    partial = FakeDelivery(FakeLink(sender=False, frame=_frame()), partial=True)
    handler.on_delivery(Event(partial))
    aborted = FakeDelivery(FakeLink(sender=False, frame=_frame()), aborted=True)
    handler.on_delivery(Event(aborted))
    closed = FakeDelivery(FakeLink(sender=False, frame=_frame(), closed=True))
    handler.on_delivery(Event(closed))
    # proton's decoder takes almost any bytes; when it does fail (hypothesis found a
    # ValueError in it), the message is refused and the I/O thread carries on.
    def fail(self: Message, data: bytes) -> None:
        raise ValueError("bad frame")

    monkeypatch.setattr(Message, "decode", fail)
    broken_link = FakeLink(sender=False, frame=_frame())
    broken = FakeDelivery(broken_link)
    handler.on_delivery(Event(broken))
    assert recorder.got == []
    assert not partial.was_settled  # the rest is still on its way
    assert aborted.was_settled
    assert (closed.outcome, closed.was_settled) == (ProtonDelivery.RELEASED, True)
    assert (broken.outcome, broken.was_settled) == (ProtonDelivery.REJECTED, True)
    assert broken_link.credit == 1  # a refused message gives its credit back
