"""The host agent: identity, inventory, metrics, processes, services (listing, status
and control) and power control.

psutil (or a stand-in with the same functions), the service manager and the power
controller are passed in, so tests run the real code against fakes.
"""

from __future__ import annotations

import fnmatch
import os
import platform
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from agents.host.alerts import AlertTracker, Threshold
from agents.host.power import PowerController
from agents.host.services import ServiceManager, unit_name
from hostbus import __version__
from hostbus.envelope import now_rfc3339
from hostbus.serving.agent import Agent, method, objects, periodic

# Pseudo and container file systems that say nothing about the host's disks.
_SKIP_FSTYPES = {"squashfs", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "cgroup",
                 "cgroup2", "nsfs", "autofs", "devpts", "mqueue", "debugfs", "tracefs"}
_PROC_ATTRS = ["pid", "ppid", "name", "username", "status", "cpu_percent", "memory_info",
               "memory_percent", "create_time", "cmdline"]
# A process listing's CPU percent is measured from the previous listing; one older than
# this says little about now, so the next listing samples afresh first.
_CPU_BASELINE_STALE_S = 60.0
_SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "cpu": lambda p: -p["cpu_percent"], "memory": lambda p: -p["rss_bytes"],
    "pid": lambda p: p["pid"], "name": lambda p: (p["name"], p["pid"]),
}


def _iso(ts: float) -> str:
    return now_rfc3339(datetime.fromtimestamp(ts, UTC))


def _os_release() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


class HostAgent(Agent):
    name = "host"

    def __init__(
        self,
        config: dict[str, Any],
        *,
        host_id: str,
        ps: ModuleType,
        power: PowerController,
        services: ServiceManager,
        alerts: dict[str, Threshold],
    ) -> None:
        super().__init__(config)
        self.host_id = host_id
        self.ps = ps
        self.power = power
        self.service_manager = services
        self.alerts = AlertTracker(alerts)
        self.ps.cpu_percent(interval=None)  # prime: the first call has no baseline
        self.cpu_sample_s = float(config.get("process_cpu_sample_s", 0.5))
        self._last_listing: float | None = None  # monotonic time of the last processes()

    def facts(self) -> dict[str, Any]:
        return {"os": platform.system().lower(), "arch": platform.machine(),
                "kernel": platform.release(), "cpus": self.ps.cpu_count() or 1}

    # --------------------------------------------------------------- methods
    @method()
    def identify(self) -> dict[str, Any]:
        boot = self.ps.boot_time()
        machine_id = ""
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            try:
                with open(path, encoding="ascii") as fh:
                    machine_id = fh.read().strip()
                    break
            except OSError:
                continue
        return {
            "host_id": self.host_id, "hostname": socket.gethostname(),
            "fqdn": socket.getfqdn(), "machine_id": machine_id,
            "os": platform.system().lower(), "os_release": _os_release(),
            "kernel": platform.release(), "arch": platform.machine(),
            "boot_time": _iso(boot), "uptime_s": round(time.time() - boot, 1),
            "agent_version": __version__,
        }

    @method()
    def inventory(self) -> dict[str, Any]:
        mem = self.ps.virtual_memory()
        return {
            "cpus": {"logical": self.ps.cpu_count() or 0,
                     "physical": self.ps.cpu_count(logical=False) or 0,
                     "model": _cpu_model()},
            "memory_bytes": mem.total,
            "swap_bytes": self.ps.swap_memory().total,
            "disks": self.disks(),
            "interfaces": self.interfaces(),
        }

    @method()
    def metrics(self) -> dict[str, Any]:
        mem = self.ps.virtual_memory()
        swap = self.ps.swap_memory()
        load = self.ps.getloadavg()
        dio = self.ps.disk_io_counters()
        nio = self.ps.net_io_counters()
        return {
            "time": now_rfc3339(),
            "cpu_percent": self.ps.cpu_percent(interval=None),
            "load": [round(x, 2) for x in load],
            "load_per_cpu": round(load[0] / (self.ps.cpu_count() or 1), 2),
            "memory": {"total_bytes": mem.total, "available_bytes": mem.available,
                       "used_bytes": mem.used, "percent": mem.percent},
            "swap": {"total_bytes": swap.total, "used_bytes": swap.used, "percent": swap.percent},
            "disk_io": {"read_bytes": dio.read_bytes, "write_bytes": dio.write_bytes,
                        "read_count": dio.read_count, "write_count": dio.write_count}
            if dio else None,
            "net_io": {"bytes_sent": nio.bytes_sent, "bytes_recv": nio.bytes_recv,
                       "packets_sent": nio.packets_sent, "packets_recv": nio.packets_recv,
                       "errin": nio.errin, "errout": nio.errout},
            "disks": [{"mountpoint": d["mountpoint"], "percent": d["percent"]}
                      for d in self.disks()],
        }

    @method()
    def processes(self, name: str | None, user: str | None, min_cpu_percent: float,
                  min_rss_bytes: int, sort: str, limit: int) -> dict[str, Any]:
        now = time.monotonic()
        if self._last_listing is None or now - self._last_listing > _CPU_BASELINE_STALE_S:
            # psutil measures a process's CPU from its previous reading: without a recent
            # one every process shows 0 %. Take a reading, wait, and measure from it.
            for _ in self.ps.process_iter(["cpu_percent"]):
                pass
            time.sleep(self.cpu_sample_s)
        self._last_listing = time.monotonic()
        found = []
        for proc in self.ps.process_iter(_PROC_ATTRS):
            info = proc.info
            pname = info.get("name") or ""
            if name is not None and not fnmatch.fnmatchcase(pname, name):
                continue
            if user is not None and info.get("username") != user:
                continue
            rss = info["memory_info"].rss if info.get("memory_info") else 0
            cpu = info.get("cpu_percent") or 0.0
            if cpu < min_cpu_percent or rss < min_rss_bytes:
                continue
            cmd = " ".join(info.get("cmdline") or [])
            found.append({
                "pid": info["pid"], "ppid": info.get("ppid") or 0, "name": pname,
                "user": info.get("username") or "", "status": info.get("status") or "",
                "cpu_percent": round(cpu, 1), "rss_bytes": rss,
                "memory_percent": round(info.get("memory_percent") or 0.0, 2),
                "started": _iso(info["create_time"]) if info.get("create_time") else None,
                "cmdline": cmd[:512],
            })
        found.sort(key=_SORT_KEYS[sort])
        return {"total": len(found), "processes": found[:limit]}

    @method()
    def services(self, name: str | None, state: str) -> dict[str, Any]:
        found = [
            s for s in self.service_manager.list()
            if (name is None or fnmatch.fnmatchcase(s["name"], name))
            and (state == "any" or s["active"] == state)
        ]
        return {"total": len(found), "services": found}

    @method("service.status")
    def service_status(self, name: str) -> dict[str, Any]:
        return self.service_manager.status(name)

    @method("service.start")
    def service_start(self, name: str) -> dict[str, Any]:
        return self._control("start", name)

    @method("service.stop")
    def service_stop(self, name: str) -> dict[str, Any]:
        return self._control("stop", name)

    @method("service.restart")
    def service_restart(self, name: str) -> dict[str, Any]:
        return self._control("restart", name)

    @method("service.reload")
    def service_reload(self, name: str) -> dict[str, Any]:
        return self._control("reload", name)

    @method("service.enable")
    def service_enable(self, name: str) -> dict[str, Any]:
        return self._control("enable", name)

    @method("service.disable")
    def service_disable(self, name: str) -> dict[str, Any]:
        return self._control("disable", name)

    def _control(self, action: str, name: str) -> dict[str, Any]:
        """Act, then answer with the unit's state afterwards (what the caller wants to
        know: did it come up)."""
        unit = unit_name(name)  # a hostile name is refused before anything runs
        self.service_manager.control(action, unit)
        return {"action": action, **self.service_manager.status(unit)}

    @method()
    def reboot(self, delay_s: int, reason: str) -> dict[str, Any]:
        return self._power("reboot", delay_s, reason)

    @method()
    def shutdown(self, delay_s: int, reason: str) -> dict[str, Any]:
        return self._power("shutdown", delay_s, reason)

    def _power(self, action: str, delay_s: int, reason: str) -> dict[str, Any]:
        self.power.schedule(action, delay_s, reason)
        at = datetime.fromtimestamp(time.time() + delay_s, UTC)
        return {"action": action, "scheduled_at": now_rfc3339(at), "delay_s": delay_s,
                "dry_run": self.power.dry_run}

    # --------------------------------------------------------------- objects
    @objects("host")
    def host_objects(self) -> list[dict[str, Any]]:
        ident = self.identify()
        mem = self.ps.virtual_memory()
        return [{
            "host_id": self.host_id, "hostname": ident["hostname"], "os": ident["os"],
            "os_release": ident["os_release"], "kernel": ident["kernel"], "arch": ident["arch"],
            "cpus": self.ps.cpu_count() or 0, "memory_bytes": mem.total,
            "boot_time": ident["boot_time"],
            "cpu_percent": self.ps.cpu_percent(interval=None), "memory_percent": mem.percent,
            "load1": round(self.ps.getloadavg()[0], 2), "uptime_s": ident["uptime_s"],
        }]

    @objects("disk")
    def disks(self) -> list[dict[str, Any]]:
        out = []
        for part in self.ps.disk_partitions(all=False):
            if part.fstype in _SKIP_FSTYPES:
                continue
            try:
                usage = self.ps.disk_usage(part.mountpoint)
            except OSError:
                continue
            out.append({"mountpoint": part.mountpoint, "device": part.device,
                        "fstype": part.fstype, "total_bytes": usage.total,
                        "used_bytes": usage.used, "percent": usage.percent})
        return out

    @objects("interface")
    def interfaces(self) -> list[dict[str, Any]]:
        stats = self.ps.net_if_stats()
        out = []
        for name, addrs in sorted(self.ps.net_if_addrs().items()):
            st = stats.get(name)
            mac = next((a.address for a in addrs if a.family == getattr(self.ps, "AF_LINK", -1)),
                       "")
            ips = [a.address for a in addrs
                   if a.family in (socket.AF_INET, socket.AF_INET6)]
            out.append({"name": name, "mac": mac, "addresses": ips,
                        "up": bool(st.isup) if st else False,
                        "speed_mbps": st.speed if st else 0, "mtu": st.mtu if st else 0})
        return out

    @objects("process")
    def process_objects(self) -> list[dict[str, Any]]:
        return self.processes(None, None, 0.0, 0, "pid", 100000)["processes"]

    @objects("service")
    def service_objects(self) -> list[dict[str, Any]]:
        return self.service_manager.list()

    # -------------------------------------------------------------- periodic
    @periodic("metrics_interval")
    def publish_metrics(self) -> None:
        sample = self.metrics()
        self.emit("metrics", sample)
        for data in self.check_alerts(sample):
            self.emit("alert", data)

    def check_alerts(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        changes = [
            self.alerts.update("cpu_percent", sample["cpu_percent"]),
            self.alerts.update("memory_percent", sample["memory"]["percent"]),
            self.alerts.update("load_per_cpu", sample["load_per_cpu"]),
            *(self.alerts.update("disk_percent", d["percent"], d["mountpoint"])
              for d in sample["disks"]),
        ]
        return [c for c in changes if c is not None]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or os.uname().machine
