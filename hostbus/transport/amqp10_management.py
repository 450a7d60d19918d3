"""RabbitMQ 4's AMQP 1.0 management node ("HTTP over AMQP" at ``/management``): how an
AMQP 1.0 client declares and binds queues there, where RabbitMQ 3.x made a bound queue
for a source address. Used by the proton transport, on its I/O thread only.

The protocol (RabbitMQ 4.0, as its own clients speak it): one sender and one receiver,
both named alike and attached to ``/management`` with the link property ``paired =
true``, pre-settled. A request is a message with a ``message_id``, ``reply_to = "$me"``,
the HTTP method as ``subject``, the path (``/queues/NAME``, ``/bindings``) as its ``to``
address, and an AMQP map as its body. The answer carries the request's id as its
``correlation_id``, the HTTP status code as ``subject`` ("200", "201", "204"; 4xx with
the reason as a string body).
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from proton import Link, Message, PropertyDict, symbol
from proton.reactor import LinkOption

log = logging.getLogger(__name__)
Answer = Callable[[int, Any], None]  # (status code, body)
_pairs = itertools.count(1)


class _Paired(LinkOption):  # type: ignore[misc]
    """The management node's link settings, set before the attach is sent."""

    def apply(self, link: Link) -> None:
        link.snd_settle_mode = Link.SND_SETTLED
        link.rcv_settle_mode = Link.RCV_FIRST
        # The receiver's target must be the sender's source (the "client terminus";
        # RabbitMQ refuses the pair otherwise): both left empty here.
        link.properties = PropertyDict({symbol("paired"): True})


class Management:
    """The link pair on one connection; requests answered in any order by id.
    ``address``: the node's (addresses.RabbitMQv2.MANAGEMENT)."""

    PREFIX = "hostbus-management-"  # the pair's link name

    def __init__(self, container: Any, session: Any, address: str) -> None:
        self.name = f"{self.PREFIX}{next(_pairs)}"
        self._pending: dict[str, Answer] = {}
        self.sender = container.create_sender(session, address, name=self.name,
                                              options=_Paired())
        self.receiver = container.create_receiver(session, address, name=self.name,
                                                  options=_Paired())
        self.receiver.flow(100)

    def request(self, method: str, path: str, body: Any, answer: Answer) -> None:
        message_id = str(uuid.uuid4())
        self._pending[message_id] = answer
        message = Message(id=message_id, reply_to="$me", address=path, subject=method,
                          body=body)
        self.sender.send(message)

    def answered(self, message: Message) -> None:
        """A message on our receiver: the answer to one of our requests."""
        self.receiver.flow(1)
        answer = self._pending.pop(str(message.correlation_id), None)
        if answer is None:
            log.warning("an answer from the management node to no request of ours: %s",
                        message.correlation_id)
            return
        try:
            status = int(message.subject or 0)
        except ValueError:
            status = 0
        answer(status, message.body)

    def fail_all(self, reason: str) -> None:
        """The pair is gone (its session or connection ended): every request still
        waiting gets status 0 and ``reason``."""
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer(0, reason)


def run_in_turn(management: Management, requests: list[tuple[str, str, Any]],
                done: Callable[[str | None], None]) -> None:
    """Send ``requests`` (method, path, body) one after the other, each once the one
    before it succeeded; then ``done(None)``, or ``done(reason)`` at the first failure."""
    if not requests:
        done(None)
        return
    method, path, body = requests[0]

    def answered(status: int, answer: Any) -> None:
        if 200 <= status < 300:
            run_in_turn(management, requests[1:], done)
        else:
            done(f"{method} {path}: {status or 'no answer'} {answer}")

    management.request(method, path, body, answered)
