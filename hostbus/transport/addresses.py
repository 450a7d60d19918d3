"""Logical names (DESIGN section 2) onto AMQP 1.0 addresses: the one place that knows a
broker's address scheme, so another broker is a new mapping, not a rewrite.

RabbitMQ 3.x ("v1" addresses, what this machine runs and what is tested):
  send to exchange X with routing key K     /exchange/X/K, or /exchange/X with the
                                            key as the message's subject
  consume existing queue Q                  /amq/queue/Q
  a private queue bound to X with pattern P /exchange/X/P   (as a source)
  reply_to as a 0-9-1 peer sees it          /queue/Q  <->  Q
RabbitMQ 4.x ("v2" addresses) would be /exchanges/X/K, /queues/Q, with bindings made
through its management API; ActiveMQ Artemis and Qpid Dispatch name addresses freely.
Neither is implemented or tested here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class RabbitMQv1:
    name: str = "rabbitmq-v1"

    def send_to(self, exchange: str, routing_key: str) -> str:
        return f"/exchange/{quote(exchange, safe='.-_')}/{quote(routing_key, safe='.-_#*')}"

    def send_to_exchange(self, exchange: str) -> str:
        """A sender for any routing key of ``exchange``: the broker routes each message
        by its subject."""
        return f"/exchange/{quote(exchange, safe='.-_')}"

    def queue(self, queue: str) -> str:
        return f"/amq/queue/{quote(queue, safe='.-_')}"

    def bound(self, exchange: str, pattern: str) -> str:
        """A source: the broker makes a private queue bound to ``exchange``."""
        return self.send_to(exchange, pattern)

    @staticmethod
    def route_of(address: str | None, subject: str | None) -> tuple[str, str]:
        """(exchange, routing key) a received message was published with, as far as
        it can be told: from our own ``to`` address, else the subject (RabbitMQ sets it
        to the routing key of a 0-9-1 publish; the exchange is then unknown)."""
        from urllib.parse import unquote

        if address and address.startswith("/exchange/"):
            exchange, _, key = address[len("/exchange/"):].partition("/")
            return unquote(exchange), unquote(key)
        return "", subject or ""

    @staticmethod
    def reply_to_name(address: str | None) -> str | None:
        """A reply_to as hostbus uses it (a logical name), however it arrived."""
        if address and address.startswith("/queue/"):
            return address[len("/queue/"):]
        return address


MAPPINGS = {"rabbitmq-v1": RabbitMQv1()}
