"""Names on the bus: host ids, agent names, routing keys and queue names.

Every routing key and queue name hostbus uses is built here, so the topology has one
definition on the Python side (``broker_config/definitions.json`` is the other).
"""

from __future__ import annotations

import re
import socket
import uuid

REQUEST_EXCHANGE = "hostbus.request"
EVENT_EXCHANGE = "hostbus.event"
REPLY_EXCHANGE = "hostbus.reply"
PROVISION_EXCHANGE = "hostbus.provision"
PROVISION_QUEUE = "hostbus.provision"
PROVISION_KEY = "provision"
DEAD_EXCHANGE = "hostbus.dead"

BUILTIN_AGENT = "agent"
BROADCAST = "_all"

HOST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Queues a reply may be routed to: hostbus reply queues and applications' own queues.
REPLY_TO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


class InvalidName(ValueError):
    """A host id or agent name that cannot be one (bad input, not a bug)."""


def validate_host_id(host_id: str) -> str:
    if not isinstance(host_id, str) or not HOST_ID_RE.fullmatch(host_id):
        raise InvalidName(
            f"invalid host id {host_id!r}: use 1-63 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit (no dots: dots separate routing-key words)"
        )
    return host_id


def validate_agent_name(name: str) -> str:
    if not isinstance(name, str) or not AGENT_NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid agent name {name!r}: use a lowercase letter then up to 31 of a-z, 0-9, '_'"
        )
    return name


def default_host_id() -> str:
    """The short host name, lowercased, with anything not allowed replaced by '-'."""
    short = socket.gethostname().split(".", 1)[0].lower()
    cleaned = re.sub(r"[^a-z0-9_-]", "-", short).lstrip("-_")[:63]
    return cleaned or "localhost"


HOST_QUEUE_PREFIX = "hostbus.host."


def host_queue(host_id: str) -> str:
    return f"{HOST_QUEUE_PREFIX}{host_id}"


def agent_queue(host_id: str) -> str:
    """The host's queue for the built-in agent (discovery, describe, queries, approvals):
    apart from the host queue, so a ping never waits behind the host's work."""
    return f"hostbus.host.{host_id}.agent"


def active_queue(service: str) -> str:
    """A service's active queue: every instance consumes it, the broker delivers to one
    (single active consumer), so whoever receives from it is the active instance."""
    return f"hostbus.active.{service}"


#: The pseudo-agent of the ticks a service's instances publish into their active queue.
ACTIVE_AGENT = "active"
TICK_EVENT = "tick"


def tick_key(service: str) -> str:
    """Routing key of a service instance's tick: an event of the service's own identity."""
    return event_key(ACTIVE_AGENT, service, TICK_EVENT)


def request_key(agent: str, host_id: str | None) -> str:
    """Routing key of a request: directed to one host, or broadcast when host_id is None."""
    return f"{agent}.{host_id if host_id is not None else BROADCAST}"


def event_key(agent: str, host_id: str, event: str) -> str:
    return f"{agent}.{host_id}.{event}"


def new_reply_queue(user: str) -> str:
    """Reply queues carry their owner's user name, so broker permissions can confine
    each identity to its own: hostbus.reply.<user>.<random>."""
    return f"hostbus.reply.{user}.{uuid.uuid4().hex}"


def subscription_queue(user: str, name: str | None = None) -> str:
    """hostbus.sub.<user>.<name> (a random name for a transient subscription)."""
    return f"hostbus.sub.{user}.{name or uuid.uuid4().hex}"


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: '*' is exactly one word, '#' is zero or more words."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
