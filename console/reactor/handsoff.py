"""The manager's HA and the reactor do not fight: what the manager is handling (a host
unresponsive, down, being fenced or in maintenance; a VM being restarted elsewhere or
moved) is not the reactor's to act on.

The reactor learns it from the manager's own events, read from its active queue in the
same stream as the events its rules look at (so in the order they happened, and
redelivered after a takeover like any other), never by asking the manager per event:

- ``manager.ID.host.state``: ``unresponsive`` or ``down`` holds the host (its liveness
  is the manager's: pinged, fenced, its HA VMs restarted elsewhere); ``online`` releases
  it;
- ``manager.ID.host.fence_failed``: holds the host (an operator must look);
- ``manager.ID.maintenance``: ``started`` holds the host until ``ended``;
- ``manager.ID.ha.restart``: ``started`` holds the VM until ``completed``, ``failed``;
- ``manager.ID.move``: ``started`` holds the VM until ``completed`` or ``failed``.

A release lasts ``settle_s`` more (a VM just restarted may fail its checks while it
boots). What is held is kept in the reactor's store. On becoming active, an instance
asks the manager once for its hosts (``manager.hosts``: state and maintenance), for
what it may have missed while another instance was active.

An action whose host or VM is held is not sent: its decision is ``skipped``, with the
hold's reason, in ``hostbus reactor history``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from console.reactor.rules import Target
from console.reactor.store import ReactorStore
from hostbus.envelope import Event

if TYPE_CHECKING:
    from console.client import Console

log = logging.getLogger("hostbus.reactor")

#: The manager's events the reactor reads (``manager.ID.EVENT``).
EVENTS = ("host.state", "host.fence_failed", "maintenance", "ha.restart", "move")
HELD_STATES = ("unresponsive", "down")


def patterns(manager: str) -> list[str]:
    """What the reactor's active queue is bound to for manager ``manager``."""
    return [f"manager.{manager}.{event}" for event in EVENTS] if manager else []


def vm_of(target: Target) -> str | None:
    """The VM an action is about: a virt call's ``name``, or any call's ``vm``."""
    value = target.args.get("name") if target.agent == "virt" else target.args.get("vm")
    return value if isinstance(value, str) and value else None


def _at(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


class HandsOff:
    def __init__(self, store: ReactorStore, manager: str, *, settle_s: float = 0.0) -> None:
        """``manager``: the manager's id (its ``[manager] host_id``); empty: no manager
        is listened to and nothing is held."""
        self.store = store
        self.manager = manager
        self.settle_s = settle_s

    def applies(self, event: Event) -> bool:
        return bool(self.manager) and event.agent == "manager" and \
            event.host == self.manager and event.event in EVENTS

    def apply(self, event: Event, event_id: str, now: float) -> None:
        """One manager event into the holds (state, not deltas: a redelivery changes
        nothing twice)."""
        data, name = event.data, event.event
        if name == "host.state" and isinstance(data.get("host"), str):
            host, state = data["host"], str(data.get("state"))
            if state in HELD_STATES:
                self._hold("host", host, "liveness", f"the manager has host {host} {state}"
                           f" ({data.get('why', '')})", now, event_id)
            else:
                self._release("host", host, "liveness", f"host {host} {state} again", now)
        elif name == "host.fence_failed" and isinstance(data.get("host"), str):
            self._hold("host", data["host"], "liveness",
                       f"the manager could not fence host {data['host']} "
                       f"({data.get('error', '')}); an operator must look", now, event_id)
        elif name == "maintenance" and isinstance(data.get("host"), str):
            host, status = data["host"], data.get("status")
            if status == "ended":
                self._release("host", host, "maintenance",
                              f"host {host}'s maintenance ended", now)
            else:
                self._hold("host", host, "maintenance", f"the manager has host {host} in "
                           f"maintenance ({status})", now, event_id)
        elif name in ("ha.restart", "move") and isinstance(data.get("vm"), str):
            vm = data["vm"]
            what = "restarting" if name == "ha.restart" else "moving"
            step = data.get("status") if name == "ha.restart" else data.get("step")
            if step in ("completed", "failed", "not_ha"):
                self._release("vm", vm, name, f"the manager's {name} of VM {vm} {step}",
                              now)
            elif step in ("started", None) or name == "move":
                self._hold("vm", vm, name, f"the manager is {what} VM {vm} from "
                           f"{data.get('from_host')} to {data.get('to_host')} ({step})",
                           now, event_id)

    def _hold(self, kind: str, name: str, cause: str, reason: str, now: float,
              event_id: str) -> None:
        self.store.hold(kind, name, cause, reason, now, event_id)
        log.info("hands off %s %s: %s", kind, name, reason)

    def _release(self, kind: str, name: str, cause: str, reason: str, now: float) -> None:
        self.store.release(kind, name, cause, now + self.settle_s,
                           f"{reason} at {_at(now)}; settling until "
                           f"{_at(now + self.settle_s)}" if self.settle_s else reason)

    def why_not(self, target: Target, now: float) -> str | None:
        """Why an action must not be sent now (the manager handles its host or VM), or
        None."""
        if not self.manager:
            return None
        found = self.store.holds("host", target.host, now)
        vm = vm_of(target)
        if vm is not None:
            found += self.store.holds("vm", vm, now)
        if not found:
            return None
        return "; ".join(f"{h['reason']} since {_at(h['since'])}"
                         + (f" (settling until {_at(h['until'])})" if h["until"] else "")
                         for h in found)

    # ----------------------------------------------------------------- seeding
    def seed(self, console: Console, now: float, timeout: float = 5.0) -> bool:
        """Ask the manager, once, which hosts it handles now (on becoming active: what
        another instance saw is not in this one's store). False if it did not say."""
        if not self.manager:
            return True
        result = console.call("manager", "hosts", {}, host=self.manager, timeout=timeout)
        reply = result.reply
        if result.status != "ok" or reply is None or not reply.ok:
            error = (reply.error or {}) if reply is not None else {}
            log.warning("could not ask manager %s which hosts it handles (%s %s %s): "
                        "only its events from now on say it (its policy must allow this "
                        "reactor manager.hosts; no manager: [reactor] manager = \"\")",
                        self.manager, result.status, error.get("code", ""),
                        error.get("message", result.not_enrolled or ""))
            return False
        with self.store.transaction():
            for host in (reply.result or {}).get("hosts", []):
                name, state = str(host.get("host")), str(host.get("state"))
                if state in HELD_STATES:
                    self._hold("host", name, "liveness", f"the manager has host {name} "
                               f"{state} ({host.get('why', '')})", now, "manager.hosts")
                else:
                    self.store.release("host", name, "liveness", now,
                                       "online (manager.hosts)")
                if host.get("maintenance"):
                    self._hold("host", name, "maintenance", f"the manager has host {name} "
                               "in maintenance", now, "manager.hosts")
                else:
                    self.store.release("host", name, "maintenance", now,
                                       "not in maintenance (manager.hosts)")
        return True
