"""The virt agent: a host's hypervisor through libvirt.

The libvirt connection is passed in (tests hand it libvirt's test driver). Every libvirt
error is translated into a wire error at the edge (``_libvirt_errors``), so callers see
``not_found``, ``conflict`` or ``failed`` with libvirt's own message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, ClassVar

import libvirt

from agents.virt import migration
from agents.virt.names import event_words, state_words
from agents.virt.templates import Template
from agents.virt.xml import (
    DomainSpec,
    build_domain_xml,
    check_name,
    checked_domain_xml,
    snapshot_xml,
    volume_xml,
)
from hostbus.errors import ErrorCode, RemoteError
from hostbus.serving.agent import Agent, method, objects, periodic

log = logging.getLogger("hostbus.virt")

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
}
_CONFLICT = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_DOM_EXIST}


@contextlib.contextmanager
def _libvirt_errors(action: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        message = f"{action}: {exc.get_error_message()}"
        if code in _NOT_FOUND:
            raise RemoteError(ErrorCode.NOT_FOUND, message) from None
        if code in _CONFLICT:
            raise RemoteError(ErrorCode.CONFLICT, message) from None
        raise RemoteError(ErrorCode.FAILED, message, {"libvirt_code": code}) from None


class VirtAgent(Agent):
    name = "virt"

    def __init__(self, config: dict[str, Any], *, host_id: str, conn: Any,
                 templates: dict[str, Template]) -> None:
        super().__init__(config)
        self.host_id = host_id
        self.conn = conn
        self.templates = templates
        self.uri = conn.getURI()
        self.domain_type = config.get("domain_type") or (
            "test" if self.uri.startswith("test:") else "kvm")
        self.vcpu_ratio = float(config.get("vcpu_ratio", 4.0))
        self._stopped: dict[str, threading.Event] = {}
        self._stopped_lock = threading.Lock()
        self._callback_ids: list[int] = []
        # Where other hosts' libvirt reaches this one for a migration (a fact: consoles
        # read it to migrate a domain here). "" = not offered.
        self.migration_uri = str(config.get("migration_uri", ""))
        self._completions = migration.Completions()
        self._migrating: set[str] = set()
        self._migrating_lock = threading.Lock()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._callback_ids = [
            self.conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
            self.conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed,
                None),
        ]

    def stop(self) -> None:
        for callback_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.domainEventDeregisterAny(callback_id)
        self._callback_ids = []

    def _on_job_completed(self, conn: Any, dom: Any, stats: dict[str, Any],
                          opaque: Any) -> None:
        """Runs on libvirt's event-loop thread: a job's final statistics (a migration's
        downtime is only here)."""
        try:
            self._completions.completed(dom.UUIDString(), stats)
        except Exception:  # never let an exception into libvirt's C loop
            log.exception("failed to take a job's statistics")

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        """Runs on libvirt's event-loop thread; emit only hands the event over."""
        name, why = event_words(event, detail)
        try:
            dom_name, dom_uuid = dom.name(), dom.UUIDString()
            self.emit("domain.lifecycle", {"name": dom_name, "uuid": dom_uuid,
                                           "event": name, "detail": why})
            if name in ("stopped", "undefined"):
                with self._stopped_lock:
                    waiter = self._stopped.get(dom_name)
                if waiter is not None:
                    waiter.set()
        except Exception:  # never let an exception into libvirt's C loop
            log.exception("failed to publish a lifecycle event")

    def facts(self) -> dict[str, Any]:
        facts = {"hypervisor": self.conn.getType().lower()}
        if self.migration_uri:
            facts["migration_uri"] = self.migration_uri
        return facts

    def heartbeat_status(self) -> dict[str, Any]:
        node = self.node_info()
        return {key: node[key] for key in ("unallocated_memory_bytes", "free_vcpus",
                                           "domains_running")} | {
            "templates": sorted(self.templates)}

    # ------------------------------------------------------------------ node
    @method("node.info")
    def node_info(self) -> dict[str, Any]:
        with _libvirt_errors("node info"):
            model, memory_mib, cpus, mhz, *_ = self.conn.getInfo()
            running = [self.conn.lookupByID(i) for i in self.conn.listDomainsID()]
            used_mem = sum(d.info()[1] for d in running) * 1024
            used_vcpus = sum(d.info()[3] for d in running)
            total_domains = len(self.conn.listAllDomains())
        memory = memory_mib * 1024 * 1024
        return {
            "host": self.host_id, "uri": self.uri, "hypervisor": self.conn.getType(),
            "cpu_model": model, "cpus": cpus, "mhz": mhz, "memory_bytes": memory,
            "unallocated_memory_bytes": max(0, memory - used_mem),
            "vcpus_allocated": used_vcpus,
            "free_vcpus": max(0, int(cpus * self.vcpu_ratio) - used_vcpus),
            "domains_running": len(running), "domains_total": total_domains,
        }

    @method("template.list")
    def template_list(self) -> dict[str, Any]:
        return {"templates": [t.to_dict() for t in self.templates.values()]}

    # ---------------------------------------------------------------- domains
    def _domain(self, name: str) -> Any:
        check_name(name)
        with _libvirt_errors(f"domain {name}"):
            return self.conn.lookupByName(name)

    def _describe(self, dom: Any) -> dict[str, Any]:
        state, reason = dom.state()
        state_name, reason_name = state_words(state, reason)
        _, max_mem, _, vcpus, cpu_time = dom.info()
        return {"name": dom.name(), "uuid": dom.UUIDString(), "state": state_name,
                "reason": reason_name, "vcpus": vcpus, "memory_bytes": max_mem * 1024,
                "autostart": bool(dom.autostart()), "persistent": bool(dom.isPersistent()),
                "cpu_time_ns": cpu_time}

    @method("domain.define")
    def domain_define(self, name: str, template: str | None, xml: str | None,
                      vcpus: int | None, memory_mib: int | None, start: bool) -> dict[str, Any]:
        check_name(name)
        if (template is None) == (xml is None):
            raise RemoteError(ErrorCode.INVALID_ARGS,
                              "give exactly one of template (a catalog name) or xml",
                              {"path": "args.template"})
        if self._exists(name):
            raise RemoteError(ErrorCode.CONFLICT, f"domain {name} already exists")
        if xml is not None:
            xml_name, text = checked_domain_xml(xml)
            if xml_name != name:
                raise RemoteError(ErrorCode.INVALID_ARGS,
                                  f"name {name!r} does not match the XML's <name> {xml_name!r}",
                                  {"path": "args.name"})
            with _libvirt_errors(f"define {name}"):
                dom = self.conn.defineXML(text)
            volume = None
        else:
            assert template is not None
            dom, volume = self._define_from_template(name, template, vcpus, memory_mib)
        if start:
            with _libvirt_errors(f"start {name}"):
                dom.create()
        return {**self._describe(dom), "template": template, "volume": volume}

    def _define_from_template(self, name: str, template_name: str, vcpus: int | None,
                              memory_mib: int | None) -> tuple[Any, str]:
        tpl = self.templates.get(template_name)
        if tpl is None:
            raise RemoteError(
                ErrorCode.INVALID_ARGS,
                f"no template {template_name!r}; templates: {', '.join(sorted(self.templates))}",
                {"path": "args.template"})
        vcpus = vcpus or tpl.vcpus
        memory_mib = memory_mib or tpl.memory_mib
        if vcpus > tpl.max_vcpus:
            raise RemoteError(ErrorCode.INVALID_ARGS,
                              f"template {tpl.name} allows at most {tpl.max_vcpus} vcpus",
                              {"path": "args.vcpus"})
        if memory_mib > tpl.max_memory_mib:
            raise RemoteError(ErrorCode.INVALID_ARGS,
                              f"template {tpl.name} allows at most {tpl.max_memory_mib} MiB",
                              {"path": "args.memory_mib"})
        volume_name = f"{name}.qcow2"
        created = self._clone_volume(tpl, volume_name)
        spec = DomainSpec.new(name=name, vcpus=vcpus, memory_mib=memory_mib,
                              domain_type=self.domain_type, pool=tpl.pool, volume=volume_name,
                              network=tpl.network)
        try:
            with _libvirt_errors(f"define {name}"):
                dom = self.conn.defineXML(build_domain_xml(tpl.skeleton, spec))
        except RemoteError:
            if created:  # do not leave an orphan disk behind
                self._delete_volume(tpl.pool, volume_name)
            raise
        return dom, volume_name

    def _clone_volume(self, tpl: Template, volume_name: str) -> bool:
        """Clone the template's base volume; copy-on-write (a qcow2 overlay) where the
        pool is a directory. An existing clone of that name (from an interrupted earlier
        attempt) is reused. Returns whether a volume was created."""
        with _libvirt_errors(f"pool {tpl.pool}"):
            pool = self.conn.storagePoolLookupByName(tpl.pool)
        with contextlib.suppress(libvirt.libvirtError):
            pool.storageVolLookupByName(volume_name)
            return False
        with _libvirt_errors(f"base volume {tpl.base_volume} in pool {tpl.pool}"):
            base = pool.storageVolLookupByName(tpl.base_volume)
            capacity = base.info()[1]
            pool_type = ET.fromstring(pool.XMLDesc(0)).get("type")
            fmt = ET.fromstring(base.XMLDesc(0)).find("target/format")
            base_format = fmt.get("type", "raw") if fmt is not None else "raw"
        with _libvirt_errors(f"clone {tpl.base_volume} to {volume_name}"):
            if pool_type in ("dir", "fs", "netfs") and base_format == "qcow2":
                pool.createXML(volume_xml(volume_name, capacity, "qcow2",
                                          (base.path(), "qcow2")), 0)
            else:
                pool.createXMLFrom(volume_xml(volume_name, capacity, base_format, None),
                                   base, 0)
        return True

    def _delete_volume(self, pool_name: str, volume_name: str) -> None:
        try:
            self.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(
                volume_name).delete(0)
        except libvirt.libvirtError as exc:
            log.warning("could not remove volume %s/%s: %s", pool_name, volume_name,
                        exc.get_error_message())

    def _exists(self, name: str) -> bool:
        try:
            self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return False
        return True

    # The states each action needs, checked here so every hypervisor driver gives the
    # same clear `conflict` (the test driver calls a double start an internal error).
    _NEEDS: ClassVar[dict[str, tuple[set[str], str]]] = {
        "start": ({"shutoff", "crashed", "nostate"}, "is already running"),
        "suspend": ({"running", "blocked"}, "is not running"),
        "resume": ({"paused"}, "is not paused"),
        "destroy": ({"running", "blocked", "paused", "shutdown", "crashed", "pmsuspended"},
                    "is not running"),
        "reboot": ({"running", "blocked"}, "is not running"),
    }

    def _act(self, name: str, action: str) -> dict[str, Any]:
        dom = self._domain(name)
        allowed, complaint = self._NEEDS[action]
        with _libvirt_errors(f"{action} {name}"):
            state = state_words(*dom.state())[0]
        if state not in allowed:
            raise RemoteError(ErrorCode.CONFLICT, f"cannot {action} {name}: it {complaint} "
                              f"(state {state})", {"state": state})
        with _libvirt_errors(f"{action} {name}"):
            getattr(dom, {"start": "create", "suspend": "suspend", "resume": "resume",
                          "destroy": "destroy", "reboot": "reboot"}[action])()
        return self._describe(dom)

    @method("domain.start")
    def domain_start(self, name: str) -> dict[str, Any]:
        return self._act(name, "start")

    @method("domain.suspend")
    def domain_suspend(self, name: str) -> dict[str, Any]:
        return self._act(name, "suspend")

    @method("domain.resume")
    def domain_resume(self, name: str) -> dict[str, Any]:
        return self._act(name, "resume")

    @method("domain.destroy")
    def domain_destroy(self, name: str) -> dict[str, Any]:
        return self._act(name, "destroy")

    @method("domain.reboot")
    def domain_reboot(self, name: str) -> dict[str, Any]:
        return self._act(name, "reboot")

    @method("domain.shutdown")
    def domain_shutdown(self, name: str, timeout_s: float) -> dict[str, Any]:
        """Ask the guest to shut down and wait for libvirt's stopped event."""
        dom = self._domain(name)
        with _libvirt_errors(f"shutdown {name}"):
            state = state_words(*dom.state())[0]
        if state not in ("running", "blocked", "paused"):
            raise RemoteError(ErrorCode.CONFLICT, f"cannot shut down {name}: it is not running "
                              f"(state {state})", {"state": state})
        stopped = threading.Event()
        with self._stopped_lock:
            self._stopped[name] = stopped
        try:
            with _libvirt_errors(f"shutdown {name}"):
                dom.shutdown()
            # The event may have come before we waited; the state says for sure.
            if (dom.state()[0] != libvirt.VIR_DOMAIN_SHUTOFF and not stopped.wait(timeout_s)
                    and dom.state()[0] != libvirt.VIR_DOMAIN_SHUTOFF):
                raise RemoteError(
                    ErrorCode.TIMEOUT,
                    f"guest {name} did not shut down within {timeout_s:g} s (it may not "
                    "handle ACPI shutdown); use domain.destroy to force it off",
                    {"timeout_s": timeout_s})
        finally:
            with self._stopped_lock:
                self._stopped.pop(name, None)
        return self._describe(dom)

    @method("domain.undefine")
    def domain_undefine(self, name: str, remove_storage: bool) -> dict[str, Any]:
        dom = self._domain(name)
        if dom.isActive():
            raise RemoteError(ErrorCode.CONFLICT,
                              f"domain {name} is running; shut it down or destroy it first")
        volumes = self._volumes_of(dom) if remove_storage else []
        with _libvirt_errors(f"undefine {name}"):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        for pool, volume in volumes:
            self._delete_volume(pool, volume)
        return {"name": name, "removed_volumes": [f"{p}/{v}" for p, v in volumes]}

    def _volumes_of(self, dom: Any) -> list[tuple[str, str]]:
        root = ET.fromstring(dom.XMLDesc(0))
        found = []
        for source in root.findall("devices/disk[@device='disk']/source"):
            if source.get("pool") and source.get("volume"):
                found.append((source.get("pool", ""), source.get("volume", "")))
        return found

    @method("domain.xml")
    def domain_xml(self, name: str) -> dict[str, Any]:
        dom = self._domain(name)
        with _libvirt_errors(f"xml of {name}"):
            return {"name": name, "xml": dom.XMLDesc(0)}

    # -------------------------------------------------------------- migration
    @method("domain.migrate")
    def domain_migrate(self, name: str, target_uri: str, target_host: str | None, live: bool,
                       copy_storage: str, bandwidth_mib_s: int | None, max_downtime_ms: int,
                       auto_converge: bool, progress_interval_s: float) -> dict[str, Any]:
        """Move a running domain to another host, peer to peer; returns when it runs
        there (persistent) and is gone from here. Progress goes out as events."""
        if target_host == self.host_id:
            raise RemoteError(ErrorCode.INVALID_ARGS,
                              f"target_host {target_host} is this host: migrate to another",
                              {"path": "args.target_host"})
        if not migration.TARGET_URI_RE.fullmatch(target_uri):
            raise RemoteError(
                ErrorCode.INVALID_ARGS,
                f"target_uri {target_uri!r} is not a libvirt URI hostbus migrates to: use "
                "qemu+tls|tcp|ssh://HOST[:PORT]/system with no query (the target agent's "
                "migration_uri fact)", {"path": "args.target_uri"})
        dom = self._domain(name)
        with _libvirt_errors(f"migrate {name}"):
            state = state_words(*dom.state())[0]
            uuid, domain_xml = dom.UUIDString(), dom.XMLDesc(0)
            memory_bytes = dom.info()[1] * 1024
        if state not in ("running", "blocked", "paused"):
            raise RemoteError(ErrorCode.CONFLICT,
                              f"cannot migrate {name}: it is not running (state {state}); "
                              "live migration moves running domains", {"state": state})
        disks = migration.domain_disks(domain_xml, migration.read_mountinfo(),
                                       self._pool_and_path)
        plan = migration.Plan(target_uri=target_uri, live=live,
                              copy_storage=migration.storage_copy(copy_storage, disks),
                              bandwidth_mib_s=bandwidth_mib_s, auto_converge=auto_converge)
        with self._migrating_lock:
            if name in self._migrating:
                raise RemoteError(ErrorCode.CONFLICT, f"{name} is already being migrated",
                                  {"reason": "busy"})
            self._migrating.add(name)
        about = {"name": name, "uuid": uuid, "target_host": target_host,
                 "target_uri": target_uri}
        try:
            return self._migrate(dom, plan, about, disks, memory_bytes, max_downtime_ms,
                                 progress_interval_s)
        finally:
            with self._migrating_lock:
                self._migrating.discard(name)

    def _migrate(self, dom: Any, plan: migration.Plan, about: dict[str, Any],
                 disks: list[migration.Disk], memory_bytes: int, max_downtime_ms: int,
                 progress_interval_s: float) -> dict[str, Any]:
        name, uuid = about["name"], about["uuid"]
        started = time.monotonic()
        copied = [d.source for d in disks if not d.shared] if plan.copy_storage != "none" else []
        self._completions.expect(uuid)
        try:
            # A QEMU setting of the domain, kept for its next migrations: set every time.
            dom.migrateSetMaxDowntime(max_downtime_ms, 0)
            self.emit("domain.migration", {**about, "status": "started", "elapsed_ms": 0,
                                           "copy_storage": plan.copy_storage})
            progress = migration.ProgressWatch(dom, progress_interval_s, lambda figures: (
                self.emit("domain.migration", {
                    **about, "elapsed_ms": int((time.monotonic() - started) * 1000),
                    **figures, "status": "running"})))
            with progress:
                dom.migrateToURI3(plan.target_uri, plan.params, plan.flags)
        except libvirt.libvirtError as exc:
            self._completions.forget(uuid)
            error = migration.migration_error(exc, name, plan.target_uri)
            self.emit("domain.migration", {
                **about, "status": "aborted" if error.details["reason"] == "aborted"
                else "failed", "elapsed_ms": int((time.monotonic() - started) * 1000),
                "error": {"code": error.code.value, "reason": error.details["reason"],
                          "message": error.message}})
            raise error from None
        # JOB_COMPLETED reaches the event loop before migrateToURI3 returns; the wait is
        # for a loop that is late.
        stats = self._completions.take(uuid, timeout=5.0)
        job = migration.job_figures(stats) if stats else {}
        elapsed_ms = int((time.monotonic() - started) * 1000)
        self.emit("domain.migration", {**about, **job, "status": "completed",
                                       "elapsed_ms": job.get("elapsed_ms", elapsed_ms)})
        return {**about, "source_host": self.host_id, "live": plan.live,
                "copy_storage": plan.copy_storage, "copied_disks": copied,
                "memory_bytes": memory_bytes, "call_ms": elapsed_ms, "job": job}

    def _pool_and_path(self, pool_name: str, volume_name: str) -> tuple[str, str]:
        try:
            pool = self.conn.storagePoolLookupByName(pool_name)
            pool_type = ET.fromstring(pool.XMLDesc(0)).get("type", "")
            return pool_type, pool.storageVolLookupByName(volume_name).path()
        except libvirt.libvirtError:
            return "", ""  # unknown here: counted as local, so it is copied

    @method("domain.migrate_abort")
    def domain_migrate_abort(self, name: str) -> dict[str, Any]:
        """Stop this host's migration of a domain; the domain keeps running here."""
        dom = self._domain(name)
        with _libvirt_errors(f"abort the migration of {name}"):
            try:
                stats = dom.jobStats()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                stats = {}
        operation = stats.get("operation")
        if (stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE
                or operation != libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT):
            raise RemoteError(ErrorCode.CONFLICT,
                              f"no migration of {name} from this host is running",
                              {"reason": "no_migration"})
        with _libvirt_errors(f"abort the migration of {name}"):
            dom.abortJob()
        return {"name": name, "uuid": dom.UUIDString(), "aborted": True,
                "figures": migration.job_figures(stats)}

    # -------------------------------------------------------------- snapshots
    @method("snapshot.create")
    def snapshot_create(self, name: str, snapshot: str, description: str) -> dict[str, Any]:
        dom = self._domain(name)
        with _libvirt_errors(f"snapshot {snapshot} of {name}"):
            dom.snapshotCreateXML(snapshot_xml(snapshot, description), 0)
        return {"name": name, "snapshot": snapshot}

    @method("snapshot.list")
    def snapshot_list(self, name: str) -> dict[str, Any]:
        dom = self._domain(name)
        with _libvirt_errors(f"snapshots of {name}"):
            current = dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else None
            snaps = [{"snapshot": s.getName(), "current": s.getName() == current}
                     for s in dom.listAllSnapshots(0)]
        return {"name": name, "snapshots": snaps}

    @method("snapshot.revert")
    def snapshot_revert(self, name: str, snapshot: str) -> dict[str, Any]:
        dom = self._domain(name)
        check_name(snapshot, "snapshot")
        with _libvirt_errors(f"revert {name} to {snapshot}"):
            dom.revertToSnapshot(dom.snapshotLookupByName(snapshot, 0), 0)
        return self._describe(dom)

    @method("snapshot.delete")
    def snapshot_delete(self, name: str, snapshot: str) -> dict[str, Any]:
        dom = self._domain(name)
        check_name(snapshot, "snapshot")
        with _libvirt_errors(f"delete snapshot {snapshot} of {name}"):
            dom.snapshotLookupByName(snapshot, 0).delete(0)
        return {"name": name, "snapshot": snapshot, "deleted": True}

    # ---------------------------------------------------------------- objects
    @objects("node")
    def node_objects(self) -> list[dict[str, Any]]:
        return [self.node_info()]

    @objects("domain")
    def domain_objects(self) -> list[dict[str, Any]]:
        with _libvirt_errors("list domains"):
            return [self._describe(d) for d in self.conn.listAllDomains()]

    @objects("pool")
    def pool_objects(self) -> list[dict[str, Any]]:
        out = []
        with _libvirt_errors("list pools"):
            for pool in self.conn.listAllStoragePools():
                _, capacity, allocation, available = pool.info()
                out.append({"name": pool.name(), "uuid": pool.UUIDString(),
                            "active": bool(pool.isActive()), "capacity_bytes": capacity,
                            "allocation_bytes": allocation, "available_bytes": available})
        return out

    @objects("volume")
    def volume_objects(self) -> list[dict[str, Any]]:
        out = []
        with _libvirt_errors("list volumes"):
            for pool in self.conn.listAllStoragePools():
                if not pool.isActive():
                    continue
                for vol in pool.listAllVolumes():
                    _, capacity, allocation = vol.info()
                    fmt = ET.fromstring(vol.XMLDesc(0)).find("target/format")
                    out.append({"pool": pool.name(), "name": vol.name(), "path": vol.path(),
                                "capacity_bytes": capacity, "allocation_bytes": allocation,
                                "format": fmt.get("type", "") if fmt is not None else ""})
        return out

    @objects("network")
    def network_objects(self) -> list[dict[str, Any]]:
        with _libvirt_errors("list networks"):
            return [{"name": n.name(), "uuid": n.UUIDString(), "active": bool(n.isActive()),
                     "bridge": n.bridgeName() if n.isActive() else "",
                     "autostart": bool(n.autostart())} for n in self.conn.listAllNetworks()]

    # --------------------------------------------------------------- periodic
    @periodic("stats_interval")
    def publish_stats(self) -> None:
        self.emit("domain.stats", {"domains": self.domain_stats()})

    def domain_stats(self) -> list[dict[str, Any]]:
        out = []
        with _libvirt_errors("domain stats"):
            for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                root = ET.fromstring(dom.XMLDesc(0))
                rd = wr = rx = tx = 0
                for target in root.findall("devices/disk/target"):
                    with contextlib.suppress(libvirt.libvirtError):
                        stats = dom.blockStats(target.get("dev", ""))
                        rd, wr = rd + stats[1], wr + stats[3]
                for mac in root.findall("devices/interface/mac"):
                    with contextlib.suppress(libvirt.libvirtError):
                        stats = dom.interfaceStats(mac.get("address", ""))
                        rx, tx = rx + stats[0], tx + stats[4]
                out.append({"name": dom.name(), "cpu_time_ns": dom.info()[4],
                            "block_read_bytes": rd, "block_write_bytes": wr,
                            "net_rx_bytes": rx, "net_tx_bytes": tx})
        return out
