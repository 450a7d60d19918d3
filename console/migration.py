"""Live migration from the console: find the host a VM runs on and the libvirt URI of
the host it should go to, then ask the source host's virt agent to move it.

An agent never calls another agent, so the target's URI (its agent's ``migration_uri``
fact) is looked up here and handed to the source in ``virt.domain.migrate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from console.client import Console, HostResult
from hostbus.errors import ErrorCode, RemoteError
from hostbus.names import validate_host_id


@dataclass(frozen=True)
class Route:
    name: str
    source: str
    target: str
    target_uri: str


def find_domain(console: Console, name: str, *, timeout: float = 10.0) -> str:
    """The host whose virt agent has domain ``name`` running (or defined, if it runs
    nowhere). A name found running on two hosts is an error: say which with ``--from``."""
    hosts = [a.host for a in console.discover(filter={"agent": "virt"}, timeout=timeout)]
    if not hosts:
        raise RemoteError(ErrorCode.NOT_FOUND, "no virt agent answered: hostbus agents "
                          "lists what runs")
    found = console.query("virt", "domain", where={"name": name}, hosts=hosts,
                          timeout=timeout)
    holders: dict[str, str] = {}
    for result in found.by_status("ok"):
        for obj in (result.reply.result or {}).get("objects", []) if result.reply else []:
            holders[result.host] = obj.get("state", "")
    running = [h for h, state in holders.items() if state in ("running", "blocked", "paused")]
    if len(running) > 1:
        raise RemoteError(ErrorCode.CONFLICT, f"{name} runs on {', '.join(sorted(running))}: "
                          "name the source host")
    if running:
        return running[0]
    if holders:
        return sorted(holders)[0]
    raise RemoteError(ErrorCode.NOT_FOUND, f"no virt host has a domain {name} "
                      f"(asked {len(hosts)}: {', '.join(hosts)})")


def target_uri(console: Console, host: str, *, timeout: float = 5.0) -> str:
    """The libvirt URI other hosts migrate to ``host`` with: its ``migration_uri`` fact."""
    validate_host_id(host)
    answers = console.discover(filter={"host": host}, expect=[host], timeout=timeout)
    info = next((a for a in answers if a.host == host), None)
    if info is None:
        raise RemoteError(ErrorCode.NOT_FOUND,
                          f"no such target: no agent answers as host {host} (hostbus agents "
                          "lists the hosts that answer)", {"host": host})
    if "virt" not in info.agents:
        raise RemoteError(ErrorCode.UNSUPPORTED, f"host {host} runs no virt agent "
                          f"(it runs {', '.join(info.agents)})", {"host": host})
    uri = info.facts.get("migration_uri")
    if not uri:
        raise RemoteError(ErrorCode.UNSUPPORTED,
                          f"host {host} offers no migration_uri: set [virt] migration_uri in "
                          "its agent's configuration (how other hosts' libvirt reaches it), "
                          "or give the URI", {"host": host})
    return str(uri)


def plan(console: Console, name: str, to: str, *, source: str | None = None,
         uri: str | None = None, timeout: float = 10.0) -> Route:
    """Where ``name`` runs and how its target's libvirt is reached."""
    source = source or find_domain(console, name, timeout=timeout)
    if source == to:
        raise RemoteError(ErrorCode.INVALID_ARGS, f"{name} is already on {to}",
                          {"path": "to"})
    return Route(name, source, to, uri or target_uri(console, to, timeout=timeout))


def migrate(console: Console, route: Route, *, timeout: float = 600.0,
            **options: Any) -> HostResult:
    """Ask the source's virt agent to migrate, and wait for its answer (at most
    ``timeout`` seconds, which is also the request's deadline: agents refuse one more
    than their ``[security] max_deadline_s``, 600 by default, ahead). ``options`` are
    the method's other arguments (live, copy_storage, bandwidth_mib_s, max_downtime_ms,
    auto_converge, progress_interval_s). Progress: subscribe to ``progress_pattern``
    first (a console keeps a subscription until it closes, so a long-lived caller
    subscribes once for every host: ``virt.*.domain.migration``)."""
    args = {"name": route.name, "target_uri": route.target_uri, "target_host": route.target,
            **options}
    return console.call("virt", "domain.migrate", args, host=route.source, timeout=timeout)


def progress_pattern(route: Route) -> str:
    return f"virt.{route.source}.domain.migration"
