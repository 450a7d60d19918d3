"""Reading the historian from a console: pages of stored events, and the seam between a
replay and live events (``hostbus watch --since``).

A replay goes on live without a gap or a repeat when it is done in this order:
subscribe first (live events wait in a buffer), then read the history with ``sync``
(the historian stores everything routed to it before our request first, and our
subscription was bound before that), then print the history, then the buffered live
events not already printed (``Seam``), then live events as they come.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hostbus.envelope import Event
from hostbus.errors import HostbusError

if TYPE_CHECKING:
    from console.client import Console, HostResult

AGENT = "history"


class HistoryUnavailable(HostbusError):
    """The historian did not answer, is not enrolled, or refused; ``status`` says which
    (``no_reply``, ``not_enrolled``, or the error code)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def event_of(record: dict[str, Any]) -> Event:
    """A stored record as the console's ``Event``."""
    return Event(host=record["host"], agent=record["agent"], event=record["event"],
                 data=record["data"], seq=record["seq"], epoch=record["epoch"],
                 time=record["time"], user_id=record.get("user_id"))


def find_historian(console: Console, timeout: float) -> str | None:
    """The host id of the first historian that answers discovery, or None."""
    found = console.discover(filter={"agent": AGENT}, timeout=timeout)
    return found[0].host if found else None


def _result(res: HostResult, historian: str) -> dict[str, Any]:
    if res.not_enrolled is not None:
        raise HistoryUnavailable("not_enrolled", f"no historian {historian!r} is enrolled "
                                 "(hostbus broker enroll-service, then hostbus historian)")
    if res.reply is None:
        raise HistoryUnavailable("no_reply", f"historian {historian} did not answer")
    if not res.reply.ok:
        err = res.reply.error or {}
        raise HistoryUnavailable(str(err.get("code")),
                                 f"historian {historian}: {err.get('code')}: "
                                 f"{err.get('message')}")
    return res.reply.result or {}


def pages(console: Console, historian: str, args: dict[str, Any], *, timeout: float,
          sync: bool = False) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """(events, synced) page after page of ``history.query`` with ``args``; ``sync``
    asks the first page to catch up first (``synced`` says whether it did)."""
    after: str | None = None
    first = True
    while True:
        call = {**args, "sync": sync and first}
        if after is not None:
            call["after"] = after
        result = _result(console.call(AGENT, "query", call, host=historian,
                                      timeout=timeout), historian)
        yield result["events"], bool(result["synced"])
        after, first = result["next"], False
        if after is None:
            return


@dataclass
class Seam:
    """Where a replay meets live events. Each (host, agent, epoch) replayed remembers
    its highest number: a live event at or below it was printed already (dropped); the
    first live event of a stream above it + 1 shows a gap (events that neither the
    history nor the subscription had)."""

    last: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _joined: set[tuple[str, str, str]] = field(default_factory=set)

    def replayed(self, ev: Event) -> None:
        key = (ev.host, ev.agent, ev.epoch)
        if ev.seq > self.last.get(key, 0):
            self.last[key] = ev.seq

    def live(self, ev: Event) -> tuple[bool, str | None]:
        """(deliver it, a note)."""
        key = (ev.host, ev.agent, ev.epoch)
        high = self.last.get(key)
        if high is None:
            return True, None
        if ev.seq <= high:
            return False, None
        if key in self._joined:
            return True, None
        self._joined.add(key)
        if ev.seq > high + 1:
            missing = ev.seq - high - 1
            return True, (f"gap: {missing} event{'s' if missing > 1 else ''} from "
                          f"{ev.host}/{ev.agent} between the history and live events "
                          f"(seq {high + 1}..{ev.seq - 1})")
        return True, None
