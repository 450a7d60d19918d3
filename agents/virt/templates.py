"""The template catalog, read from the agent's config ([virt.templates.NAME])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.virt.xml import check_name

GENERIC_SKELETON = Path(__file__).resolve().parent / "templates" / "generic.xml"

TEMPLATE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "base_volume": "",          # required: the volume clones are made from
    "pool": "default",          # the storage pool holding the base volume and the clones
    "network": "default",       # "" for no network interface
    "skeleton": "",             # domain XML skeleton file; "" = templates/generic.xml
    "vcpus": 1,
    "memory_mib": 1024,
    "max_vcpus": 8,
    "max_memory_mib": 16384,
    "ha": False,                # VMs made from it are highly available (the manager
    "ha_priority": 0,           # restarts them elsewhere), higher priority first
}


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    base_volume: str
    pool: str
    network: str | None
    skeleton: str
    vcpus: int
    memory_mib: int
    max_vcpus: int
    max_memory_mib: int
    ha: bool = False
    ha_priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "base_volume": self.base_volume, "pool": self.pool,
                "network": self.network or "", "vcpus": self.vcpus,
                "memory_mib": self.memory_mib, "max_vcpus": self.max_vcpus,
                "max_memory_mib": self.max_memory_mib, "ha": self.ha,
                "ha_priority": self.ha_priority}


def templates_from_config(section: dict[str, Any]) -> dict[str, Template]:
    catalog = {}
    for name, raw in section.items():
        where = f"[virt.templates.{name}]"
        check_name(name, "template")
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a table")
        unknown = sorted(set(raw) - set(TEMPLATE_DEFAULTS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(sorted(TEMPLATE_DEFAULTS))})")
        cfg = {**TEMPLATE_DEFAULTS, **raw}
        if not cfg["base_volume"]:
            raise ValueError(f"{where}: base_volume is required")
        if not 1 <= cfg["vcpus"] <= cfg["max_vcpus"]:
            raise ValueError(f"{where}: vcpus must be between 1 and max_vcpus")
        if not 64 <= cfg["memory_mib"] <= cfg["max_memory_mib"]:
            raise ValueError(f"{where}: memory_mib must be between 64 and max_memory_mib")
        if not isinstance(cfg["ha"], bool):
            raise ValueError(f"{where}: ha must be true or false")
        if isinstance(cfg["ha_priority"], bool) or not isinstance(cfg["ha_priority"], int) \
                or not 0 <= cfg["ha_priority"] <= 100:
            raise ValueError(f"{where}: ha_priority must be a whole number from 0 to 100")
        skeleton_path = Path(cfg["skeleton"]) if cfg["skeleton"] else GENERIC_SKELETON
        try:
            skeleton = skeleton_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{where}: cannot read skeleton {skeleton_path}: {exc}") from None
        catalog[name] = Template(
            name=name, description=cfg["description"], base_volume=cfg["base_volume"],
            pool=cfg["pool"], network=cfg["network"] or None, skeleton=skeleton,
            vcpus=int(cfg["vcpus"]), memory_mib=int(cfg["memory_mib"]),
            max_vcpus=int(cfg["max_vcpus"]), max_memory_mib=int(cfg["max_memory_mib"]),
            ha=cfg["ha"], ha_priority=cfg["ha_priority"],
        )
    return catalog
