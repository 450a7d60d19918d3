"""The health agent: TCP, HTTP(S), command and QEMU guest agent checks declared in the
agent's config, ``check`` events on every change of state, ``health.status``."""

from __future__ import annotations

from typing import Any

from agents.health.agent import HealthAgent

#: This agent's config section ([health] in the agent's TOML file), with its defaults.
#: Each check's interval, timeout, fall and rise default to the values here.
CONFIG_DEFAULTS: dict[str, Any] = {
    "summary_interval": 60.0,   # seconds between summary events (0 = off)
    "interval": 10.0,
    "timeout": 5.0,
    "fall": 3,
    "rise": 1,
    "libvirt_uri": "",          # for guest_agent checks; "" = libvirt's default
    "checks": [],               # [[health.checks]] tables (agents/health/checks.py)
}


def create(config: dict[str, Any], *, host_id: str) -> HealthAgent:
    from agents.health.checks import (
        guest_agent_probe,
        parse_checks,
        probe_command,
        probe_http,
        probe_tcp,
    )

    checks = parse_checks(config["checks"], config)
    probes = {"tcp": probe_tcp, "http": probe_http, "command": probe_command,
              "guest_agent": guest_agent_probe(config["libvirt_uri"])}
    return HealthAgent(config, checks=checks, probes=probes)


def check_config(config: dict[str, Any]) -> str:
    """For ``hostbus-agent --check-config``: the checks parse (``ConfigError`` if not)."""
    from agents.health.checks import parse_checks

    checks = parse_checks(config["checks"], config)
    return f"{len(checks)} check(s)" + (f": {', '.join(c.name for c in checks)}"
                                         if checks else "")


__all__ = ["CONFIG_DEFAULTS", "HealthAgent", "create"]
