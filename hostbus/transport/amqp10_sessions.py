"""The AMQP 1.0 sessions of one connection, for the proton transport (its I/O thread only).

Each link gets a session to itself (a refusal ends the session, and must end only that
link), but hostbus never ends a session while the connection lasts: once every link on a
session is closed, the session waits here for the next link. A session ended and a new one
begun right after it reuses the channel number (proton hands out the lowest free one),
and RabbitMQ 4.0 sometimes never answered the attach that followed on that channel
(seen: an agent's second queue probe, one start in 30; "the broker did not answer the
attach in time"). The number of sessions is bounded by the most links the connection had
open at once. A session the broker ends (a refusal) is answered and dropped; a
connection's sessions go with it.
"""

from __future__ import annotations

from typing import Any

from proton import Endpoint

_OPEN = Endpoint.LOCAL_ACTIVE | Endpoint.REMOTE_ACTIVE


class Sessions:
    """Hands out a session per link on ``connection``, reusing those whose links are
    all closed."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._idle: list[Any] = []
        self.begun = 0  # sessions begun on this connection (tests read it)

    def take(self) -> Any:
        """A session with no open link: an idle one, else a new one."""
        while self._idle:
            session = self._idle.pop()
            if session.state == _OPEN:  # not ended by the broker meanwhile
                return session
        session = self.connection.session()
        session.open()
        self.begun += 1
        return session

    def link_closed(self, link: Any) -> None:
        """``link`` is closed at both ends (or detached by the broker after we closed it:
        RabbitMQ 3.x does not close it): its session waits for the next link once it
        holds no other (the management node's pair shares one) and is still open."""
        session = link.session
        if session.state != _OPEN or session in self._idle:
            return
        other = self.connection.link_head(0)
        while other is not None:
            # (one we closed is gone for us: RabbitMQ 3.x never closes its end)
            if other != link and other.session == session \
                    and not other.state & Endpoint.LOCAL_CLOSED:
                return
            other = other.next(0)
        self._idle.append(session)
