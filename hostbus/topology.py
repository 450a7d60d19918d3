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


def host_bindings(host_id: str, agents: list[str]) -> list[tuple[str, str]]:
    """(exchange, routing key) pairs that feed one host's queue: directed and broadcast
    keys for each enabled agent and for the built-in agent every daemon has."""
    names.validate_host_id(host_id)
    wanted = [names.BUILTIN_AGENT, *[a for a in agents if a != names.BUILTIN_AGENT]]
    pairs: list[tuple[str, str]] = []
    for agent in wanted:
        names.validate_agent_name(agent)
        pairs.append((names.REQUEST_EXCHANGE, names.request_key(agent, host_id)))
        pairs.append((names.REQUEST_EXCHANGE, names.request_key(agent, None)))
    return pairs
