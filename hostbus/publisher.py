"""The one way a message leaves any component: requests, replies, events, approvals and
provisioning requests all go through ``Publisher.publish``.

Invariants:
- ``user_id`` is always the connection's broker user, which the broker checks on every
  publish: a receiver can trust it, and nothing may send without it.
- With a signing key, every message is signed over exactly what leaves (body, exchange,
  routing key and the identifying properties; ``hostbus.security.signing``). Signing is
  deterministic (Ed25519), so a message sent again (the event spool) carries the same
  signature.
- Replies are built and sent in one place (``reply``), so an agent, a service and the
  approval flow answer alike.
- With a tracer (``hostbus.tracing``; None, off, by default), each message carries the
  W3C trace context of its publish in content_type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hostbus import names
from hostbus.transport.base import Caller, Confirm, Properties, Transport

if TYPE_CHECKING:
    from hostbus.envelope import Reply
    from hostbus.security.signing import Signer
    from hostbus.tracing import Tracer


class Publisher:
    def __init__(self, transport: Transport | Caller, signer: Signer | None = None,
                 tracer: Tracer | None = None) -> None:
        self.transport = transport
        self.signer = signer
        self.tracer = tracer

    @property
    def user(self) -> str:
        return self.transport.user

    def publish(self, exchange: str, routing_key: str, body: bytes, props: Properties, *,
                persistent: bool = False, confirm: Confirm | None = None,
                mandatory: bool = False) -> None:
        """``mandatory``: a message no queue takes is reported to the transport's
        ``on_unroutable`` callbacks (requests: no host has that agent enrolled)."""
        props.user_id = self.transport.user  # signed, so set before signing
        if self.signer is not None:
            self.signer.sign(exchange, routing_key, props, body)
        if self.tracer is not None:  # after signing, which rewrites content_type
            self.tracer.inject(exchange, routing_key, props, len(body))
        self.transport.publish(exchange, routing_key, body, props, persistent=persistent,
                               confirm=confirm, mandatory=mandatory)

    def reply(self, reply_to: str, reply: Reply) -> bytes:
        """Send ``reply`` to the reply queue ``reply_to`` (its logical name, as the
        request's reply_to property gave it); returns the body sent."""
        body, props = reply.encode()
        self.publish(names.REPLY_EXCHANGE, reply_to, body, props)
        return body
