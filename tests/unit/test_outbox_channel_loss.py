"""A channel the broker closes under the outbox (a refused event) while the connection
stays up: the events in flight beside the refused one are sent again, and still reach a
subscriber in order, whatever another thread sends meanwhile and whatever was queued
for the I/O thread before the loss.

The transport here is scripted: the test plays its I/O thread, so the interleavings the
real broker produces only under load (found in CI: events 151-234 arrived after 235
onwards) happen every time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hostbus.publisher import Publisher
from hostbus.serving.outbox import EventOutbox
from hostbus.transport.base import Confirm, Properties, withdrawn


class ScriptedTransport:
    """Publishes wait in a queue until ``run`` (the I/O thread) sends them on the
    current channel; what the broker received is ``wire``: (channel, seq)."""

    user = "web01"

    def __init__(self) -> None:
        self.queued: list[tuple[int, Confirm]] = []
        self.unconfirmed: list[tuple[int, Confirm]] = []
        self.wire: list[tuple[int, int]] = []
        self.channel = 1

    def on_connection_lost(self, callback: Callable[[Exception], None]) -> None:
        pass

    def on_connection_restored(self, callback: Callable[[], None]) -> None:
        pass

    def publish(self, exchange: str, routing_key: str, body: bytes, props: Properties, *,
                persistent: bool = False, confirm: Confirm | None = None,
                mandatory: bool = False) -> None:
        assert confirm is not None
        self.queued.append((int(body), confirm))

    def run(self) -> None:
        while self.queued:
            seq, confirm = self.queued.pop(0)
            if withdrawn(confirm):
                continue
            self.wire.append((self.channel, seq))
            self.unconfirmed.append((seq, confirm))

    def confirm_all(self) -> None:
        pending, self.unconfirmed = self.unconfirmed, []
        for _, confirm in pending:
            confirm(True)

    def close_channel(self, refused: int, meanwhile: Callable[[], None]) -> None:
        """The broker closes the channel on ``refused``: it is reported False, the rest
        in flight None, one callback at a time; ``meanwhile`` runs after the first (what
        another thread's send does between two of them)."""
        self.channel += 1
        pending, self.unconfirmed = self.unconfirmed, []
        for n, (seq, confirm) in enumerate(pending):
            confirm(False if seq == refused else None)
            if n == 0:
                meanwhile()

    def seen_by_a_subscriber(self, refused: int) -> list[int]:
        """What reached the queue: the first channel up to the refused publish (the
        broker drops the rest), then every later channel; repeats dropped, as consumers
        do by (epoch, seq)."""
        got: list[int] = []
        for channel, seq in self.wire:
            if channel == 1 and seq >= refused:
                continue
            if seq not in got:
                got.append(seq)
        return got


def send(outbox: EventOutbox, seq: int) -> None:
    outbox.send("hostbus.event", f"host.web01.alert.{seq}", str(seq).encode(), Properties())


@pytest.mark.parametrize("refused", [1, 5], ids=["refused-first", "refused-later"])
def test_events_sent_again_after_a_refused_one_closed_the_channel_arrive_in_order(
        refused: int) -> None:
    wire = ScriptedTransport()
    outbox = EventOutbox(Publisher(wire))  # type: ignore[arg-type]
    for seq in range(1, 11):
        send(outbox, seq)
    wire.run()  # 1-10 on the first channel, unconfirmed
    send(outbox, 11)  # queued for the I/O thread before it learns of the loss
    wire.close_channel(refused, meanwhile=lambda: send(outbox, 12))
    for _ in range(3):
        wire.run()
        wire.confirm_all()
    expected = [seq for seq in range(1, 13) if seq != refused]
    assert wire.seen_by_a_subscriber(refused) == expected
    assert outbox.status() == {"spooled": 0, "dropped": 0, "rejected": 1,
                               "unconfirmed": 0}
    assert outbox.wait_confirmed(0)
    send(outbox, 13)  # back on the fast path
    wire.run()
    assert wire.wire[-1] == (2, 13)
