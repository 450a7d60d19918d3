"""Domain XML built with an XML library: user-supplied values are set as element text
and attributes, never pasted into markup, so `</name><devices>` stays a (refused) name."""

from __future__ import annotations

import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from hostbus.errors import ErrorCode, RemoteError

# Domain, snapshot and volume names: what every hypervisor and file system accepts.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise RemoteError(
            ErrorCode.INVALID_ARGS,
            f"{what} {name!r} is not allowed: use 1-63 of a-z A-Z 0-9 . _ -, starting with "
            "a letter or digit",
            {"path": f"args.{what}"},
        )
    return name


def new_mac() -> str:
    """A random address in the 52:54:00 prefix QEMU/KVM guests use."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


@dataclass(frozen=True)
class DomainSpec:
    name: str
    vcpus: int
    memory_mib: int
    domain_type: str
    pool: str
    volume: str
    network: str | None
    mac: str
    uuid: str

    @classmethod
    def new(cls, *, name: str, vcpus: int, memory_mib: int, domain_type: str, pool: str,
            volume: str, network: str | None) -> DomainSpec:
        return cls(check_name(name), vcpus, memory_mib, domain_type, pool, volume, network,
                   new_mac(), str(uuid.uuid4()))


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    return found if found is not None else ET.SubElement(parent, tag)


def build_domain_xml(skeleton: str, spec: DomainSpec) -> str:
    root = ET.fromstring(skeleton)
    if root.tag != "domain":
        raise ValueError("a template skeleton must be a <domain> document")
    root.set("type", spec.domain_type)
    _child(root, "name").text = spec.name
    _child(root, "uuid").text = spec.uuid
    for tag in ("memory", "currentMemory"):
        element = _child(root, tag)
        element.set("unit", "MiB")
        element.text = str(spec.memory_mib)
    _child(root, "vcpu").text = str(spec.vcpus)
    devices = _child(root, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "volume", "device": "disk"})
    ET.SubElement(disk, "source", {"pool": spec.pool, "volume": spec.volume})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    if spec.network:
        iface = ET.SubElement(devices, "interface", {"type": "network"})
        ET.SubElement(iface, "source", {"network": spec.network})
        ET.SubElement(iface, "mac", {"address": spec.mac})
        ET.SubElement(iface, "model", {"type": "virtio"})
    return ET.tostring(root, encoding="unicode")


def checked_domain_xml(text: str) -> tuple[str, str]:
    """Parse caller-supplied domain XML; return (name, xml). Refuses what is not a
    <domain> with an acceptable name. Python's expat does not fetch external entities
    and limits entity expansion."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise RemoteError(ErrorCode.INVALID_ARGS, f"xml is not well-formed: {exc}",
                          {"path": "args.xml"}) from None
    if root.tag != "domain":
        raise RemoteError(ErrorCode.INVALID_ARGS, f"xml must be a <domain>, not <{root.tag}>",
                          {"path": "args.xml"})
    name = root.findtext("name") or ""
    check_name(name)
    return name, text


def volume_xml(name: str, capacity_bytes: int, fmt: str, backing: tuple[str, str] | None) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", {"unit": "bytes"}).text = str(capacity_bytes)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", {"type": fmt})
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", {"type": backing[1]})
    return ET.tostring(vol, encoding="unicode")


def snapshot_xml(name: str, description: str) -> str:
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "name").text = check_name(name, "snapshot")
    if description:
        ET.SubElement(snap, "description").text = description
    return ET.tostring(snap, encoding="unicode")
