"""The agent modules a daemon can host, by name. A module is imported only when its
agent is enabled, so a host agent never loads libvirt.

Each module provides ``CONFIG_DEFAULTS`` (its config section) and
``create(config, *, host_id) -> Agent``; its schema is ``schemas/agents/<name>.json``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hostbus.errors import ConfigError

AGENT_MODULES: dict[str, str] = {
    "host": "agents.host",
    "virt": "agents.virt",
    "health": "agents.health",
}


def load_module(name: str) -> ModuleType:
    if name not in AGENT_MODULES:
        raise ConfigError(
            f"unknown agent {name!r} in [agent] agents; available: {', '.join(AGENT_MODULES)}"
        )
    return importlib.import_module(AGENT_MODULES[name])
