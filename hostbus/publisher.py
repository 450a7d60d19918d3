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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hostbus import names
from hostbus.transport.base import Confirm, Properties, Transport

if TYPE_CHECKING:
    from hostbus.envelope import Reply
    from hostbus.security.signing import Signer


class Publisher:
    def __init__(self, transport: Transport, signer: Signer | None = None) -> None:
        self.transport = transport
        self.signer = signer

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
        self.transport.publish(exchange, routing_key, body, props, persistent=persistent,
                               confirm=confirm, mandatory=mandatory)

    def reply(self, reply_to: str, reply: Reply) -> bytes:
        """Send ``reply`` to the reply queue ``reply_to`` (its logical name, as the
        request's reply_to property gave it); returns the body sent."""
        body, props = reply.encode()
        self.publish(names.REPLY_EXCHANGE, reply_to, body, props)
        return body
