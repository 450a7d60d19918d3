"""The VMs the provisioner made, and whether each still exists: what quotas count.

A VM is known by its libvirt UUID (its name may be reused, and it may move host); one
recorded without a UUID (made before UUIDs were recorded, or whose define answer was
lost) is matched by host and name until reconciliation learns its UUID. Each VM is in
one of three states:

- ``active``: defined and not shut off (running, paused, ...);
- ``inactive``: defined but shut off (destroyed, or shut down). It still counts: it
  holds its disk and can be started again at any time, so an owner cannot stop VMs,
  provision more and start the old ones again past the quota;
- ``gone``: undefined. The row stays, so a release can tell "already gone" from
  "never ours".

Three sources change the states, and none needs the others: what the provisioner itself
did (``record``, ``gone``), the virt agents' lifecycle events (``apply_event``) and full
listings of the virt hosts (``reconcile``). A listing is a snapshot taken at some
moment; every change bumps a counter, and a listing only touches rows that did not
change after the ``marker`` taken before it was asked for, so a slow listing never undoes
a newer event or record.

Storage is one SQLite table; the class is thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostbus.envelope import now_rfc3339
from hostbus.files import open_database

ACTIVE, INACTIVE, GONE = "active", "inactive", "gone"
#: How many UUIDs of VMs it removed the ledger remembers, to ignore their late events.
REMOVED_KEPT = 10_000

#: Lifecycle events (schemas/agents/virt.json, domain.lifecycle) and the state each
#: leaves a VM in. "defined" also reports an XML update of a VM that exists, so it only
#: brings a gone VM back; "shutdown" and "crashed" are followed by "stopped" if the VM
#: stops, so they change nothing by themselves.
EVENT_STATES = {"started": ACTIVE, "resumed": ACTIVE, "suspended": ACTIVE,
                "pmsuspended": ACTIVE, "stopped": INACTIVE, "undefined": GONE}


def counts(state: str) -> bool:
    """Whether a VM in ``state`` counts against its owner's quota: while it exists."""
    return state != GONE


def listed_state(domain_state: str) -> str:
    """The ledger state of a domain listed in some libvirt state (``virt.domain``)."""
    return INACTIVE if domain_state == "shutoff" else ACTIVE


@dataclass(frozen=True)
class Vm:
    name: str
    host: str
    uuid: str | None
    owner: str
    request_id: str
    state: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "uuid": self.uuid, "owner": self.owner,
                "request_id": self.request_id, "state": self.state, "updated": self.updated}


class VmLedger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_database(self.path, synchronous="FULL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS vms (
            id INTEGER PRIMARY KEY, uuid TEXT, host TEXT NOT NULL, name TEXT NOT NULL,
            owner TEXT NOT NULL, request_id TEXT NOT NULL, state TEXT NOT NULL,
            changed INTEGER NOT NULL, updated TEXT NOT NULL)""")
        self._db.execute("CREATE INDEX IF NOT EXISTS vms_owner ON vms (owner, state)")
        self._db.execute("CREATE INDEX IF NOT EXISTS vms_uuid ON vms (uuid)")
        self._db.execute("CREATE INDEX IF NOT EXISTS vms_request ON vms (request_id)")
        (clock,) = self._db.execute("SELECT COALESCE(MAX(changed), 0) FROM vms").fetchone()
        self._clock = int(clock)
        #: UUIDs of VMs the provisioner removed lately (oldest first).
        self._removed: dict[str, None] = {}

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reading
    _COLUMNS = "id, name, host, uuid, owner, request_id, state, updated"

    @staticmethod
    def _vm(row: tuple[Any, ...]) -> Vm:
        return Vm(*row[1:])

    def _select(self, where: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
        return self._db.execute(f"SELECT {self._COLUMNS} FROM vms WHERE {where} ORDER BY id",
                                tuple(params)).fetchall()

    def count(self, owner: str) -> int:
        """What the quota counts: the owner's VMs that exist (active or inactive)."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM vms WHERE owner = ? AND state != ?",
                                    (owner, GONE)).fetchone()
        return int(n)

    def owned(self, owner: str, *, include_gone: bool = False) -> list[Vm]:
        with self._lock:
            rows = self._select("owner = ?" + ("" if include_gone else " AND state != 'gone'"),
                                (owner,))
        return [self._vm(r) for r in rows]

    def of_request(self, request_id: str) -> list[Vm]:
        """Every VM a request made, gone ones included."""
        with self._lock:
            return [self._vm(r) for r in self._select("request_id = ?", (request_id,))]

    def named(self, name: str) -> list[Vm]:
        """Every VM of that name the provisioner made (on any host), gone ones included."""
        with self._lock:
            return [self._vm(r) for r in self._select("name = ?", (name,))]

    def is_empty(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM vms LIMIT 1").fetchone() is None

    def marker(self) -> int:
        """Take before asking for a listing; pass to ``reconcile``."""
        with self._lock:
            return self._clock

    # ----------------------------------------------------------------- changing
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _set(self, row_id: int, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE vms SET {cols}, changed = ?, updated = ? WHERE id = ?",
                         (*fields.values(), self._tick(), now_rfc3339(), row_id))

    def _find(self, host: str, name: str, uuid: str | None, *,
              on_host: bool = False) -> tuple[Any, ...] | None:
        """Our row for this domain. With a UUID: the row of that UUID (on that host only,
        with ``on_host``), else a row on that host and of that name whose UUID is not
        known yet. Without one: the row on that host and of that name that is not gone."""
        if uuid:
            rows = self._select("uuid = ?" + (" AND host = ?" if on_host else ""),
                                (uuid, host) if on_host else (uuid,))
            if rows:
                return rows[-1]
        rows = self._select("host = ? AND name = ? AND state != 'gone'"
                            + (" AND uuid IS NULL" if uuid else ""), (host, name))
        return rows[-1] if rows else None

    def record(self, *, owner: str, request_id: str, host: str, name: str,
               uuid: str | None, state: str = ACTIVE) -> set[str]:
        """A VM the provisioner made or adopted. Returns the owners whose count changed."""
        with self._lock:
            row = self._find(host, name, uuid)
            if row is None:
                self._db.execute(
                    "INSERT INTO vms (uuid, host, name, owner, request_id, state, changed, "
                    "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (uuid, host, name, owner, request_id, state, self._tick(), now_rfc3339()))
                return {owner} if counts(state) else set()
            before = self._vm(row)
            self._set(row[0], uuid=uuid or before.uuid, host=host, name=name, owner=owner,
                      request_id=request_id, state=state)
            if before.state == state and before.owner == owner:
                return set()
            return {before.owner, owner}

    def gone(self, host: str, name: str, uuid: str | None = None) -> set[str]:
        """The provisioner removed this VM (or found it removed)."""
        with self._lock:
            row = self._find(host, name, uuid)
            if row is None or row[6] == GONE:
                return set()
            self._set(row[0], state=GONE)
            if row[3]:
                # Its define and start events may still be on their way (they can even
                # leave the host after the define's answer): they must not bring it back.
                self._removed[row[3]] = None
                while len(self._removed) > REMOVED_KEPT:
                    self._removed.pop(next(iter(self._removed)))
            return {row[4]}

    def apply_event(self, host: str, data: dict[str, Any]) -> set[str]:
        """A ``virt.<host>.domain.lifecycle`` event's data. Events about VMs the
        provisioner did not make, or that it knows on another host, are ignored: a host
        speaks only for its own VMs (a listing finds a VM that moved)."""
        event = data.get("event")
        with self._lock:
            row = self._find(host, str(data.get("name")), data.get("uuid"), on_host=True)
            if row is None:
                return set()
            vm = self._vm(row)
            if vm.state == GONE and vm.uuid in self._removed:
                return set()  # a late event of a VM the provisioner removed
            state = EVENT_STATES.get(str(event), vm.state)
            if event == "defined" and vm.state == GONE:
                state = INACTIVE
            if state == vm.state and vm.uuid:
                return set()
            self._set(row[0], state=state, uuid=vm.uuid or data.get("uuid"))
            return {vm.owner} if counts(vm.state) != counts(state) else set()

    def reconcile(self, listings: dict[str, list[dict[str, Any]]], marker: int) -> set[str]:
        """Settle every row from full domain listings (``host -> [{name, uuid, state}]``)
        of the hosts that answered, taken after ``marker``. A VM found anywhere takes that
        host and state; one missing from the listing of its host is gone; one whose host
        did not answer is left as it is."""
        by_uuid = {d["uuid"]: (host, d) for host, domains in listings.items()
                   for d in domains}
        by_name = {(host, d["name"]): d for host, domains in listings.items() for d in domains}
        changed: set[str] = set()
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS}, changed FROM vms "
                                    "WHERE changed <= ?", (marker,)).fetchall()
            for row in rows:
                vm = self._vm(row[:-1])
                found = by_uuid.get(vm.uuid) if vm.uuid else None
                if found is None and vm.uuid is None and vm.state != GONE:
                    domain = by_name.get((vm.host, vm.name))
                    found = (vm.host, domain) if domain is not None else None
                if found is not None:
                    host, domain = found
                    state = listed_state(domain["state"])
                    if (host, domain["name"], domain["uuid"], state) == \
                            (vm.host, vm.name, vm.uuid, vm.state):
                        continue
                    self._set(row[0], host=host, name=domain["name"], uuid=domain["uuid"],
                              state=state)
                elif vm.state != GONE and vm.host in listings:
                    state = GONE
                    self._set(row[0], state=state)
                else:
                    continue
                if counts(vm.state) != counts(state):
                    changed.add(vm.owner)
        return changed
