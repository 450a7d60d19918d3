"""The broker topology as data, loaded from ``broker_config/definitions.json``.

``broker setup`` imports the file into RabbitMQ; the in-memory broker builds itself from
the same file, so unit tests run against the topology production uses.
"""

from __future__ import annotations

import json
from typing import Any

from hostbus import names
from hostbus.resources import data_dir


def definitions() -> dict[str, Any]:
    text = data_dir("broker_config").joinpath("definitions.json").read_text()
    return json.loads(text)


def host_queues(host_id: str, agents: list[str]) -> dict[str, list[tuple[str, str]]]:
    """One host's queues, each with the (exchange, routing key) pairs that feed it: the
    host queue takes the directed and broadcast keys of each enabled agent, the agent
    queue those of the built-in agent every daemon has. Two queues because a request
    waits in its queue until the agent has room for it (its consumer window): in one
    queue, a ping waited behind every call queued before it (9.5 s behind 100 one-second
    calls); in a queue of its own it is answered at once, whatever the host's backlog."""
    names.validate_host_id(host_id)

    def keys(agent: str) -> list[tuple[str, str]]:
        names.validate_agent_name(agent)
        return [(names.REQUEST_EXCHANGE, names.request_key(agent, host_id)),
                (names.REQUEST_EXCHANGE, names.request_key(agent, None))]

    work = [pair for agent in agents if agent != names.BUILTIN_AGENT for pair in keys(agent)]
    return {names.host_queue(host_id): work,
            names.agent_queue(host_id): keys(names.BUILTIN_AGENT)}


#: A service's active queue (``names.active_queue``). Quorum, so it survives a node;
#: single active consumer, so the broker delivers to one instance (the active one) and
#: hands the queue, with what it held unacknowledged, to the next consumer when that
#: one goes. drop-head: when no instance runs, the oldest events go first and publishers
#: are never refused (an agent's events must not be nacked because a service is away).
#: A delivery limit, without dead-lettering, drops an event that kills every instance
#: that takes it.
ACTIVE_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum", "x-single-active-consumer": True,
    "x-max-length": 100_000, "x-overflow": "drop-head", "x-delivery-limit": 10}


def active_queue(service: str, patterns: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """A service's active queue and the (exchange, binding key) pairs that feed it: the
    event patterns it acts on, and its instances' ticks."""
    names.validate_host_id(service)
    keys = list(dict.fromkeys([*patterns, names.tick_key(service)]))
    return names.active_queue(service), [(names.EVENT_EXCHANGE, k) for k in keys]
