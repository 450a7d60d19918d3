"""The host agent (psutil). ``create`` builds it with the real host access."""

from __future__ import annotations

from typing import Any

from agents.host.agent import HostAgent

#: This agent's config section ([host] in the agent's TOML file), with its defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "metrics_interval": 30.0,
    "power_control": "system",
    "process_cpu_sample_s": 0.5,
    "alerts": {
        "cpu_percent": {"raise": 90.0, "clear": 80.0},
        "memory_percent": {"raise": 90.0, "clear": 80.0},
        "disk_percent": {"raise": 90.0, "clear": 85.0},
        "load_per_cpu": {"raise": 2.0, "clear": 1.5},
    },
}


def create(config: dict[str, Any], *, host_id: str) -> HostAgent:
    import psutil

    from agents.host.alerts import thresholds_from_config
    from agents.host.power import RecordingPower, SystemPower
    from agents.host.services import Systemd

    mode = config["power_control"]
    if mode not in ("system", "dry-run"):
        raise ValueError(f"[host] power_control = {mode!r}: use \"system\" or \"dry-run\"")
    power = SystemPower() if mode == "system" else RecordingPower()
    return HostAgent(config, host_id=host_id, ps=psutil, power=power, services=Systemd(),
                     alerts=thresholds_from_config(config["alerts"]))


__all__ = ["CONFIG_DEFAULTS", "HostAgent", "create"]
