"""Live migration with libvirt: what to ask for, what libvirt's answers mean.

The agent on the source host runs the migration peer to peer: its libvirtd connects to
the target's libvirtd (``target_uri``) and QEMU streams the guest there. Kept apart from
the agent so that each rule (which disks need copying, which flags and parameters, what
a libvirt error means for the caller) is a plain function a unit test can call.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from hostbus.errors import ErrorCode, RemoteError

log = logging.getLogger("hostbus.virt")

#: Target URIs the agent hands to libvirt: the QEMU driver over a network transport, a
#: host (name, IPv4 or bracketed IPv6, an ssh user), an optional port, and nothing else.
#: Query parameters are refused: libvirt reads programs and key files from them
#: (``?command=``, ``?keyfile=``, ``?no_verify=``), which a caller must not choose.
TARGET_URI_RE = re.compile(
    r"^qemu\+(tls|tcp|ssh|libssh|libssh2)://([A-Za-z0-9._-]+@)?"
    r"([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/system$")

#: File systems both hosts of a migration can see, as libvirt counts them (its list in
#: virFileIsSharedFS): a disk on one of these is not copied.
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "gfs2", "ocfs2", "afs", "cifs", "smb3", "ceph", "fuse.glusterfs",
    "glusterfs", "gpfs", "fuse.quobyte", "acfs", "beegfs", "lustre"})
#: Storage pool types whose volumes live on the network, not on this host.
SHARED_POOL_TYPES = frozenset({"rbd", "iscsi", "iscsi-direct", "gluster", "netfs"})

COPY_STORAGE = ("auto", "none", "all", "incremental")

#: libvirt's job statistics, as hostbus names them (units in the name).
JOB_FIGURES = {
    "time_elapsed": "elapsed_ms", "downtime": "downtime_ms", "setup_time": "setup_time_ms",
    "data_total": "data_total_bytes", "data_processed": "data_processed_bytes",
    "data_remaining": "data_remaining_bytes", "memory_total": "memory_total_bytes",
    "memory_processed": "memory_processed_bytes",
    "memory_remaining": "memory_remaining_bytes", "disk_total": "disk_total_bytes",
    "disk_processed": "disk_processed_bytes", "disk_remaining": "disk_remaining_bytes",
    "memory_iteration": "memory_iterations", "memory_dirty_rate": "dirty_pages_per_s",
    "memory_bps": "memory_bytes_per_s", "auto_converge_throttle": "throttle_percent",
}


def job_figures(stats: dict[str, Any]) -> dict[str, int]:
    """The figures of libvirt's job statistics that hostbus reports, renamed."""
    return {ours: int(stats[theirs]) for theirs, ours in JOB_FIGURES.items()
            if isinstance(stats.get(theirs), int)}


# ------------------------------------------------------------------- storage
def fs_type_of(path: str, mountinfo: str) -> str:
    """The file system type of the mount that holds ``path`` (/proc/self/mountinfo)."""
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = line.split(" - ", 1)[1].split()[0]
        inside = (path == mount_point or mount_point == "/"
                  or path.startswith(mount_point.rstrip("/") + "/"))
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


@dataclass(frozen=True)
class Disk:
    target: str          # vda, hda, ...
    source: str          # a path, pool/volume, or a network name
    shared: bool


def domain_disks(domain_xml: str, mountinfo: str,
                 pool_of: Callable[[str, str], tuple[str, str]]) -> list[Disk]:
    """The domain's writable disks and whether each is on storage the target can see.
    ``pool_of(pool, volume)`` gives a volume's (pool type, path)."""
    disks = []
    for disk in ET.fromstring(domain_xml).findall("devices/disk"):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue
        if disk.find("readonly") is not None or disk.find("shareable") is not None:
            continue
        source = disk.find("source")
        if source is None:
            continue
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        kind = disk.get("type", "file")
        if kind == "network":
            disks.append(Disk(dev, source.get("name", ""), True))
        elif kind == "volume":
            pool_type, path = pool_of(source.get("pool", ""), source.get("volume", ""))
            shared = (pool_type in SHARED_POOL_TYPES
                      or fs_type_of(path, mountinfo) in SHARED_FS_TYPES)
            disks.append(Disk(dev, f"{source.get('pool')}/{source.get('volume')}", shared))
        elif kind in ("file", "block"):
            path = source.get("file" if kind == "file" else "dev", "")
            if path:
                disks.append(Disk(dev, path, fs_type_of(path, mountinfo) in SHARED_FS_TYPES))
    return disks


def storage_copy(asked: str, disks: list[Disk]) -> str:
    """What to copy: ``auto`` copies every disk when one is on local storage."""
    if asked != "auto":
        return asked
    return "all" if any(not d.shared for d in disks) else "none"


def read_mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


# ------------------------------------------------------------ flags, params
@dataclass(frozen=True)
class Plan:
    """One migration as the agent will ask libvirt for it."""
    target_uri: str
    live: bool
    copy_storage: str           # none, all, incremental
    bandwidth_mib_s: int | None
    auto_converge: bool

    @property
    def flags(self) -> int:
        flags = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)
        if self.live:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if self.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if self.copy_storage == "all":
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        elif self.copy_storage == "incremental":
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        return flags

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mib_s
        return params


# -------------------------------------------------------------------- errors
#: Why a migration failed, for programs (``details.reason``); docs/errors.md lists them.
REASONS = ("no_shared_storage", "unsafe", "incompatible_cpu", "same_host",
           "target_unreachable", "aborted", "unsupported", "busy", "libvirt")


def migration_error(exc: libvirt.libvirtError, name: str, target_uri: str) -> RemoteError:
    """A libvirt error from a migration as the caller's error: a documented code, the
    reason in ``details.reason``, and what to do about it in the message."""
    code = exc.get_error_code()
    said = exc.get_error_message() or str(exc)
    details: dict[str, Any] = {"libvirt_code": code, "target_uri": target_uri}

    def error(wire: ErrorCode, reason: str, advice: str) -> RemoteError:
        return RemoteError(wire, f"migrate {name}: {said}. {advice}",
                           {**details, "reason": reason})

    if code == libvirt.VIR_ERR_MIGRATE_UNSAFE and "shared storage" in said:
        return error(ErrorCode.FAILED, "no_shared_storage",
                     "Its disks are not on storage the target shares: migrate with "
                     "copy_storage=all (or auto) to copy them")
    if code == libvirt.VIR_ERR_MIGRATE_UNSAFE:
        return error(ErrorCode.FAILED, "unsafe",
                     "libvirt judges this migration unsafe for the guest's disks (their "
                     "cache mode); change the disks' cache to none")
    if code == libvirt.VIR_ERR_CPU_INCOMPATIBLE or "CPU is incompatible" in said:
        return error(ErrorCode.FAILED, "incompatible_cpu",
                     "The target's CPU lacks what the guest's CPU model needs: choose "
                     "another target, or give the guest a CPU model both hosts offer")
    if "to the same host" in said:
        return error(ErrorCode.FAILED, "same_host",
                     "The target URI leads back to this host's libvirt (libvirt compares "
                     "host UUIDs, so two hosts sharing a host_uuid look the same): check the "
                     "target's migration_uri")
    if code == libvirt.VIR_ERR_OPERATION_ABORTED:
        return error(ErrorCode.FAILED, "aborted",
                     "It was aborted (virt.domain.migrate_abort) and keeps running here")
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_AUTH_FAILED) or (
            code == libvirt.VIR_ERR_SYSTEM_ERROR
            and exc.get_error_domain() == libvirt.VIR_FROM_RPC):
        return error(ErrorCode.FAILED, "target_unreachable",
                     f"This host's libvirt could not reach the target's at {target_uri}: "
                     "check the target agent's migration_uri and that its libvirtd listens "
                     "there (listen_tls or listen_tcp)")
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
        return error(ErrorCode.UNSUPPORTED, "unsupported",
                     "This host's hypervisor cannot migrate this way")
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return error(ErrorCode.CONFLICT, "busy",
                     "The domain's state or another job of it does not allow a migration now")
    return error(ErrorCode.FAILED, "libvirt", "See the hosts' libvirtd logs")


# ------------------------------------------------------------------- progress
class ProgressWatch:
    """Reads the migration job's statistics every ``interval`` seconds on a thread of its
    own and hands them to ``report``, until stopped. libvirt has no progress event, only
    the job's statistics to read."""

    def __init__(self, dom: Any, interval: float,
                 report: Callable[[dict[str, int]], None]) -> None:
        self._dom = dom
        self._interval = interval
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostbus-migration-progress",
                                        daemon=True)

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                stats = self._dom.jobStats()
            except libvirt.libvirtError:
                return  # the domain left this host: the migration is over
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue  # not started yet, or finished; the caller reports the end
            try:
                self._report(job_figures(stats))
            except Exception:  # a failed event must not end the progress reports
                log.exception("failed to report migration progress")


class Completions:
    """The statistics libvirt sends when a domain's job completes (its JOB_COMPLETED
    event, which carries the downtime), for the migrations this agent is waiting on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[str, dict[str, Any] | None] = {}

    def expect(self, uuid: str) -> None:
        with self._cond:
            self._waiting[uuid] = None

    def completed(self, uuid: str, stats: dict[str, Any]) -> None:
        with self._cond:
            if uuid in self._waiting:
                self._waiting[uuid] = stats
                self._cond.notify_all()

    def take(self, uuid: str, timeout: float) -> dict[str, Any] | None:
        """The statistics, once they came (None after ``timeout``); forgets the domain."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.wait_for(lambda: self._waiting.get(uuid) is not None,
                                max(0.0, deadline - time.monotonic()))
            return self._waiting.pop(uuid, None)

    def forget(self, uuid: str) -> None:
        with self._cond:
            self._waiting.pop(uuid, None)
