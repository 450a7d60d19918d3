"""Stand-ins for host access, shared by unit, integration and fuzz tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from agents.host.agent import HostAgent
from agents.host.alerts import Threshold
from agents.host.power import RecordingPower
from hostbus.errors import ErrorCode, RemoteError
from hostbus.schema import AgentSchema
from hostbus.serving.agent import Agent, method

NT = SimpleNamespace


class FakePs:
    """The psutil functions the host agent uses, with values a test sets."""

    AF_LINK = 17

    def __init__(self) -> None:
        self.cpu = 5.0
        self.mem_percent = 40.0
        self.load = (0.5, 0.4, 0.3)
        self.disks = {"/": 50.0, "/var": 60.0}
        self.procs = [
            {"pid": 1, "ppid": 0, "name": "init", "username": "root", "status": "sleeping",
             "cpu_percent": 0.0, "memory_info": NT(rss=10_000_000), "memory_percent": 0.1,
             "create_time": 1_700_000_000.0, "cmdline": ["/sbin/init"]},
            {"pid": 200, "ppid": 1, "name": "python3", "username": "app", "status": "running",
             "cpu_percent": 35.0, "memory_info": NT(rss=80_000_000), "memory_percent": 2.0,
             "create_time": 1_700_000_100.0, "cmdline": ["python3", "app.py"]},
            {"pid": 300, "ppid": 1, "name": "python3.11", "username": "root",
             "status": "sleeping", "cpu_percent": 2.0, "memory_info": NT(rss=40_000_000),
             "memory_percent": 1.0, "create_time": 1_700_000_200.0, "cmdline": []},
            {"pid": 400, "ppid": 1, "name": "nginx", "username": "www", "status": "sleeping",
             "cpu_percent": 1.0, "memory_info": NT(rss=20_000_000), "memory_percent": 0.5,
             "create_time": 1_700_000_300.0, "cmdline": ["nginx"]},
        ]

    def cpu_percent(self, interval: Any = None) -> float:
        return self.cpu

    def cpu_count(self, logical: bool = True) -> int:
        return 4 if logical else 2

    def virtual_memory(self) -> Any:
        total = 8 << 30
        return NT(total=total, available=int(total * (1 - self.mem_percent / 100)),
                  used=int(total * self.mem_percent / 100), percent=self.mem_percent)

    def swap_memory(self) -> Any:
        return NT(total=1 << 30, used=0, percent=0.0)

    def getloadavg(self) -> tuple[float, float, float]:
        return self.load

    def disk_io_counters(self) -> Any:
        return NT(read_bytes=1, write_bytes=2, read_count=3, write_count=4)

    def net_io_counters(self) -> Any:
        return NT(bytes_sent=1, bytes_recv=2, packets_sent=3, packets_recv=4, errin=0, errout=0)

    def disk_partitions(self, all: bool = False) -> list[Any]:
        parts = [NT(mountpoint=m, device=f"/dev/vd{i}", fstype="ext4")
                 for i, m in enumerate(self.disks)]
        return [*parts, NT(mountpoint="/run", device="tmpfs", fstype="tmpfs")]

    def disk_usage(self, path: str) -> Any:
        pct = self.disks[path]
        return NT(total=100 << 30, used=int((100 << 30) * pct / 100), percent=pct)

    def net_if_addrs(self) -> dict[str, list[Any]]:
        return {"eth0": [NT(family=self.AF_LINK, address="52:54:00:12:34:56"),
                         NT(family=socket.AF_INET, address="192.0.2.10")]}

    def net_if_stats(self) -> dict[str, Any]:
        return {"eth0": NT(isup=True, speed=1000, mtu=1500)}

    def boot_time(self) -> float:
        return 1_700_000_000.0

    def process_iter(self, attrs: list[str]) -> list[Any]:
        return [NT(info=dict(p)) for p in self.procs]


class FakeServices:
    def __init__(self, services: list[dict[str, Any]] | None = None) -> None:
        self.services = services if services is not None else [
            {"name": "nginx", "load": "loaded", "active": "active", "sub": "running",
             "description": "web server"},
            {"name": "cron", "load": "loaded", "active": "failed", "sub": "failed",
             "description": "cron"},
        ]
        self.actions: list[tuple[str, str]] = []

    def list(self) -> list[dict[str, Any]]:
        return self.services

    def _find(self, name: str) -> dict[str, Any]:
        unit = name.removesuffix(".service")
        for service in self.services:
            if service["name"] == unit:
                return service
        raise RemoteError(ErrorCode.NOT_FOUND, f"no unit {unit}.service on this host")

    def status(self, name: str) -> dict[str, Any]:
        s = self._find(name)
        return {"name": s["name"], "unit": f"{s['name']}.service",
                "description": s["description"], "load": s["load"], "active": s["active"],
                "sub": s["sub"], "enabled": s.get("enabled", "enabled"),
                "main_pid": 100 if s["active"] == "active" else 0, "exit_status": 0,
                "restarts": 0, "active_since": ""}

    def control(self, action: str, name: str) -> None:
        """Does to the listed unit what systemd would; every action is recorded."""
        s = self._find(name)
        self.actions.append((action, f"{s['name']}.service"))
        if action in ("start", "restart", "reload"):
            s["active"], s["sub"] = "active", "running"
        elif action == "stop":
            s["active"], s["sub"] = "inactive", "dead"
        else:
            s["enabled"] = "enabled" if action == "enable" else "disabled"


DEFAULT_ALERTS = {
    "cpu_percent": Threshold(90.0, 80.0),
    "memory_percent": Threshold(90.0, 80.0),
    "disk_percent": Threshold(90.0, 85.0),
    "load_per_cpu": Threshold(2.0, 1.5),
}


def make_host_agent(host_id: str = "web01", **kw: Any) -> tuple[HostAgent, FakePs, RecordingPower]:
    ps = kw.pop("ps", None) or FakePs()
    power = RecordingPower()
    # FakePs reports CPU without a baseline: no need to sample first (see processes)
    config = kw.pop("config", {"process_cpu_sample_s": 0.0})
    agent = HostAgent(config, host_id=host_id, ps=ps,  # type: ignore[arg-type]
                      power=power,
                      services=kw.pop("services", None) or FakeServices(),
                      alerts=kw.pop("alerts", None) or DEFAULT_ALERTS)
    return agent, ps, power


PROBE_SCHEMA = AgentSchema.from_dict({
    "agent": "probe", "version": "1.0", "description": "a test agent",
    "classes": {},
    "methods": {
        "echo": {"description": "returns its argument",
                 "args": {"type": "object", "additionalProperties": False,
                          "required": ["text"],
                          "properties": {"text": {"type": "string", "maxLength": 100},
                                         "times": {"type": "integer", "minimum": 1,
                                                   "maximum": 5, "default": 1}}},
                 "result": {"type": "object", "required": ["text"]}},
        "boom": {"description": "raises", "args": {"type": "object",
                                                   "additionalProperties": False,
                                                   "properties": {}},
                 "result": {"type": "object"}},
        "refuse": {"description": "raises a wire error",
                   "args": {"type": "object", "additionalProperties": False, "properties": {}},
                   "result": {"type": "object"}},
        "whoami": {"description": "returns the caller",
                   "args": {"type": "object", "additionalProperties": False, "properties": {}},
                   "result": {"type": "object"}},
    },
    "events": {"ping": {"description": "a test event", "data": {"type": "object"}}},
})


class ProbeAgent(Agent):
    """Counts what it executes, so tests can assert that refused requests never ran."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.executed: list[str] = []

    @method()
    def echo(self, text: str, times: int) -> dict[str, Any]:
        self.executed.append("echo")
        return {"text": text * times}

    @method()
    def boom(self) -> dict[str, Any]:
        self.executed.append("boom")
        raise ZeroDivisionError("on purpose")

    @method()
    def refuse(self) -> dict[str, Any]:
        self.executed.append("refuse")
        raise RemoteError(ErrorCode.CONFLICT, "not now")

    @method()
    def whoami(self, ctx: Any) -> dict[str, Any]:
        self.executed.append("whoami")
        return {"caller": ctx.caller, "request_id": ctx.request_id}


class EventCollector:
    """A subscription handler that keeps (event, note) pairs; tests wait on a condition
    instead of sleeping."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, str | None]] = []
        self._cond = threading.Condition()

    def __call__(self, event: Any, note: str | None) -> None:
        with self._cond:
            self.events.append((event, note))
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[list[tuple[Any, str | None]]], bool],
                   timeout: float = 15.0) -> list[tuple[Any, str | None]]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), timeout), \
                [e.full_name for e, _ in self.events]
            return list(self.events)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 15.0) -> Any:
        """The first event matching ``predicate``, once it has arrived."""
        events = self.wait_until(lambda evs: any(predicate(e) for e, _ in evs), timeout)
        return next(e for e, _ in events if predicate(e))


def post_provision_raw(channel: Any, owner: str) -> tuple[str, str]:
    """Post a one-VM "web" provisioning request with a plain pika channel, as any
    program would, with a reply queue of its own; return (reply queue, request id)."""
    import json
    import uuid

    import pika

    reply_queue = f"hostbus.reply.guest.raw{uuid.uuid4().hex[:8]}"
    channel.queue_declare(reply_queue, exclusive=True)
    channel.queue_bind(reply_queue, "hostbus.reply", routing_key=reply_queue)
    rid = str(uuid.uuid4())
    channel.basic_publish("hostbus.provision", "provision", json.dumps(
        {"v": 1, "template": "web", "owner": owner}).encode(), pika.BasicProperties(
        message_id=rid, reply_to=reply_queue, content_type="application/json",
        type="hostbus.provision/1", delivery_mode=2, user_id="guest"))
    return reply_queue, rid


def raw_connection(url: str) -> Any:
    """A plain pika connection (AMQP 0-9-1) to the broker and vhost a hostbus URL names,
    whichever protocol the URL is for: raw clients in tests play a program that knows
    nothing of hostbus."""
    import pika

    scheme, _, rest = url.partition("://")
    return pika.BlockingConnection(pika.URLParameters(
        f"{'amqps' if scheme.startswith('amqps') else 'amqp'}://{rest}"))


def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``condition`` came true within ``timeout``, checked every 20 ms: for what
    has no event to wait on (a state a service reaches on a thread of its own)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        pause.wait(0.02)
    return condition()
