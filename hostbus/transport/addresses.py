"""Logical names (exchanges, routing keys, queues) onto AMQP 1.0 addresses: the one place
that knows a broker's address scheme, so another broker is a new mapping, not a rewrite.
The transport picks the mapping from what the broker announces in its open frame
(``for_broker``).

RabbitMQ 3.x ("v1" addresses):
  send to exchange X with routing key K     /exchange/X/K, or /exchange/X with the
                                            key as the message's subject
  consume existing queue Q                  /amq/queue/Q
  a private queue bound to X with pattern P /exchange/X/P   (as a source; the broker
                                            makes an amq.gen-* queue)
  reply_to as a 0-9-1 peer sees it          /queue/Q  <->  Q

RabbitMQ 4.x ("v2" addresses; v1 still works there but is deprecated):
  send to exchange X with routing key K     /exchanges/X/K, each segment percent-encoded;
                                            a sender without a target (null) sends each
                                            message to its own `to` (a /exchanges/X
                                            sender would route with an empty key)
  consume existing queue Q                  /queues/Q
  a private queue bound to X with pattern P not an address: the client declares the
                                            queue and binds it through the broker's AMQP
                                            management node (``queue_path``,
                                            ``BINDINGS``), then consumes /queues/Q
  reply_to                                  passed on unchanged both ways
  an unroutable message                     is settled `released` (3.x: accepted)

ActiveMQ Artemis and Qpid Dispatch name addresses freely; not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote


def _segment(name: str) -> str:
    """One path segment, percent-encoded as v2 wants: everything but RFC 3986's
    unreserved characters (letters, digits, - . _ ~)."""
    return quote(name, safe="")


@dataclass(frozen=True)
class RabbitMQv1:
    name: str = "rabbitmq-v1"
    # A source address can ask the broker for a private queue bound to an exchange.
    binds_by_attach: bool = True
    # `released` on a publish means nothing is known: the outbox sends it again.
    released_means_unroutable: bool = False

    def send_to(self, exchange: str, routing_key: str) -> str:
        return f"/exchange/{quote(exchange, safe='.-_')}/{quote(routing_key, safe='.-_#*')}"

    def send_to_exchange(self, exchange: str) -> str | None:
        """A sender for any routing key of ``exchange``: the broker routes each message
        by its subject."""
        return f"/exchange/{quote(exchange, safe='.-_')}"

    def queue(self, queue: str) -> str:
        return f"/amq/queue/{quote(queue, safe='.-_')}"

    def bound(self, exchange: str, pattern: str) -> str:
        """A source: the broker makes a private queue bound to ``exchange``."""
        return self.send_to(exchange, pattern)

    @staticmethod
    def route_of(address: str | None, subject: str | None,
                 annotations: dict[Any, Any] | None = None) -> tuple[str, str]:
        """(exchange, routing key) a received message was published with, as far as
        it can be told: from the message annotations RabbitMQ 4 adds (x-exchange,
        x-routing-key), else our own ``to`` address, else the subject (RabbitMQ 3.x sets
        it to the routing key of a 0-9-1 publish; the exchange is then unknown)."""
        if annotations and "x-routing-key" in annotations:
            return (str(annotations.get("x-exchange") or ""),
                    str(annotations["x-routing-key"]))
        for prefix in ("/exchange/", "/exchanges/"):
            if address and address.startswith(prefix):
                exchange, _, key = address[len(prefix):].partition("/")
                return unquote(exchange), unquote(key)
        return "", subject or ""

    @staticmethod
    def reply_to_name(address: str | None) -> str | None:
        """A reply_to as hostbus uses it (a logical name), however it arrived."""
        if address and address.startswith("/queue/"):
            return address[len("/queue/"):]
        return address


@dataclass(frozen=True)
class RabbitMQv2(RabbitMQv1):
    name: str = "rabbitmq-v2"
    binds_by_attach: bool = False
    released_means_unroutable: bool = True
    MANAGEMENT: str = "/management"  # the HTTP-over-AMQP node: declare, bind
    BINDINGS: str = "/bindings"

    def send_to(self, exchange: str, routing_key: str) -> str:
        return f"/exchanges/{_segment(exchange)}/{_segment(routing_key)}"

    def send_to_exchange(self, exchange: str) -> str | None:
        """None: one sender without a target, each message going to its `to` (a sender
        on /exchanges/X would publish every message with an empty routing key)."""
        return None

    def queue(self, queue: str) -> str:
        return f"/queues/{_segment(queue)}"

    def bound(self, exchange: str, pattern: str) -> str:
        raise NotImplementedError("RabbitMQ 4 has no address that binds: declare and bind "
                                  "through the management node (queue_path, BINDINGS)")

    def queue_path(self, queue: str) -> str:
        """The management node's path of a queue (PUT declares it, DELETE deletes it)."""
        return self.queue(queue)

    @staticmethod
    def binding(exchange: str, pattern: str, queue: str) -> dict[str, Any]:
        """The body of a POST to BINDINGS: bind ``queue`` to ``exchange`` with ``pattern``."""
        return {"source": exchange, "binding_key": pattern, "destination_queue": queue,
                "arguments": {}}


def for_broker(properties: dict[Any, Any] | None) -> RabbitMQv1:
    """The mapping for the broker of an open frame's properties (product, version):
    v2 on RabbitMQ 4 and later, v1 otherwise (RabbitMQ 3.x, or a broker that does not
    say)."""
    found = {str(k): v for k, v in (properties or {}).items()}
    if str(found.get("product", "")) == "RabbitMQ":
        major = str(found.get("version", "")).split(".")[0]
        if major.isdigit() and int(major) >= 4:
            return RabbitMQv2()
    return RabbitMQv1()


MAPPINGS = {"rabbitmq-v1": RabbitMQv1(), "rabbitmq-v2": RabbitMQv2()}
