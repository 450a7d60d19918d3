"""The virt agent (libvirt). ``create`` opens the hypervisor; libvirt is imported only
when this agent is enabled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.virt.agent import VirtAgent

#: This agent's config section ([virt] in the agent's TOML file), with its defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "uri": "",                 # "" = libvirt's test driver with the node hostbus ships
    "domain_type": "",         # "" = "test" on the test driver, else "kvm"
    "vcpu_ratio": 4.0,         # vCPUs offered per physical CPU, for placement
    "stats_interval": 30.0,    # seconds between domain.stats events (0 = off)
    "migration_uri": "",       # how other hosts' libvirt reaches this one, e.g.
                               # "qemu+tls://kvm01.example.net/system"; "" = not offered
    "templates": {
        "web": {"description": "small web server", "base_volume": "base-web.qcow2",
                "vcpus": 1, "memory_mib": 1024, "max_vcpus": 4, "max_memory_mib": 8192},
        "db": {"description": "database server", "base_volume": "base-db.qcow2",
               "vcpus": 2, "memory_mib": 2048, "max_vcpus": 8, "max_memory_mib": 16384},
    },
}


def create(config: dict[str, Any], *, host_id: str) -> VirtAgent:
    from agents.virt.agent import VirtAgent
    from agents.virt.connection import open_connection
    from agents.virt.templates import templates_from_config

    templates = templates_from_config(config["templates"])
    return VirtAgent(config, host_id=host_id, conn=open_connection(config["uri"]),
                     templates=templates)
