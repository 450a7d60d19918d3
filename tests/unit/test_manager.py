"""The manager on the in-memory broker: the fleet model from events and listings, its
state file across a restart, a host's liveness (unresponsive, pinged, fenced, down),
and its actions (HA restart, maintenance moves) against two real virt agents on
libvirt's test driver."""

from __future__ import annotations

import copy
import dataclasses
import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import virt
from console.client import Console
from console.manager.actions import Actions
from console.manager.agent import ManagerAgent
from console.manager.fencing import Fencer
from console.manager.fleet import DOWN, LOST, ONLINE, UNRESPONSIVE, Fleet
from console.manager.policies import Thresholds, n_plus_one, plan
from console.manager.service import Manager
from hostbus.envelope import Event
from hostbus.errors import RemoteError
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.base import Delivery
from hostbus.transport.memory import MemoryTransport
from tests.fakes import until

GIB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def heartbeat(host: str, *, free_vcpus: int = 16, free_mem: int = 8 * GIB,
              agents: tuple[str, ...] = ("virt",), seq: int = 1) -> Event:
    return Event(host=host, agent="agent", event="heartbeat", seq=seq, epoch="e1",
                 data={"agents": list(agents), "version": "0", "epoch": "e1", "uptime_s": 1,
                       "interval_s": 10, "status": {"virt": {
                           "free_vcpus": free_vcpus, "unallocated_memory_bytes": free_mem,
                           "domains_running": 0}}})


def lifecycle(host: str, name: str, what: str, seq: int = 1) -> Event:
    return Event(host=host, agent="virt", event="domain.lifecycle", seq=seq, epoch="e1",
                 data={"name": name, "uuid": f"uuid-{name}", "event": what, "detail": "x"})


class Emitted(list):
    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.append((event, data))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [d for e, d in self if e == event]


# ----------------------------------------------------------------- the model
def test_events_build_the_fleet_and_it_survives_a_restart(tmp_path):
    clock = Clock()
    fleet = Fleet(tmp_path / "m.db", clock=clock)
    manager = Manager(console=None, fleet=fleet, fencer=Fencer())  # type: ignore[arg-type]
    manager.apply(heartbeat("kvm01", free_vcpus=12, free_mem=6 * GIB))
    manager.apply(heartbeat("web01", agents=("host",)))  # no virt agent: not in the fleet
    manager.apply(lifecycle("kvm01", "web-1", "defined"))
    manager.apply(lifecycle("kvm01", "web-1", "started", seq=2))
    manager.apply(Event(host="kvm01", agent="host", event="metrics", seq=3, epoch="e1",
                        data={"time": "t", "cpu_percent": 42.5, "load": [1.5, 1, 1],
                              "memory": {}, "disks": []}))
    assert [h.host for h in fleet.hosts()] == ["kvm01"]
    kvm01 = fleet.host("kvm01")
    assert (kvm01.state, kvm01.free_vcpus, kvm01.unallocated_memory_bytes,
            kvm01.cpu_percent, kvm01.load1) == (ONLINE, 12, 6 * GIB, 42.5, 1.5)
    assert fleet.vm("web-1").state == "running" and fleet.vm("web-1").host == "kvm01"
    fleet.update_vm("web-1", ha=True, xml="<domain/>")
    # Owners come from the provisioner's events.
    manager.apply(Event(host="prov", agent="provision", event="accepted", seq=1, epoch="e",
                        data={"request_id": "r1", "owner": "alice", "template": "web",
                              "count": 1}))
    manager.apply(Event(host="prov", agent="provision", event="progress", seq=2, epoch="e",
                        data={"request_id": "r1", "vm": "web-1", "host": "kvm01", "step": 1,
                              "total": 1}))
    fleet.close()

    again = Fleet(tmp_path / "m.db", clock=clock)
    vm = again.vm("web-1")
    assert (vm.host, vm.state, vm.ha, vm.xml, vm.owner) == ("kvm01", "running", True,
                                                            "<domain/>", "alice")
    assert again.host("kvm01").free_vcpus == 12
    # A VM moved: the new host's word counts, a late word from the old one does not.
    m2 = Manager(console=None, fleet=again, fencer=Fencer())  # type: ignore[arg-type]
    m2.apply(lifecycle("kvm02", "web-1", "started", seq=3))
    m2.apply(lifecycle("kvm01", "web-1", "stopped", seq=4))
    assert (again.vm("web-1").host, again.vm("web-1").state) == ("kvm02", "running")
    m2.apply(lifecycle("kvm02", "web-1", "undefined", seq=5))
    assert again.vm("web-1") is None


def test_a_listing_settles_a_host_and_forgets_what_it_no_longer_has(tmp_path):
    fleet = Fleet(tmp_path / "m.db")
    fleet.seen("kvm01")
    fleet.apply_lifecycle("kvm01", {"name": "old", "event": "started"})
    changed, gone = fleet.reconcile("kvm01", [
        {"name": "web-1", "uuid": "u1", "state": "running", "vcpus": 2,
         "memory_bytes": GIB}], {"cpus": 4, "memory_bytes": 16 * GIB, "free_vcpus": 14,
                                 "unallocated_memory_bytes": 15 * GIB, "vcpus_allocated": 2})
    assert [v.name for v in changed] == ["web-1"] and gone == ["old"]
    assert fleet.host("kvm01").cpus == 4 and fleet.vm("web-1").vcpus == 2
    # A listing asked for before an event is older than it: it changes nothing the
    # event told, and does not forget a VM the event made.
    asked = fleet.clock() - 60
    fleet.apply_lifecycle("kvm01", {"name": "web-1", "event": "stopped"})
    fleet.apply_lifecycle("kvm01", {"name": "new", "event": "defined"})
    changed, gone = fleet.reconcile("kvm01", [
        {"name": "web-1", "uuid": "u1", "state": "running", "vcpus": 2,
         "memory_bytes": GIB}], asked=asked)
    assert (changed, gone) == ([], [])
    assert fleet.vm("web-1").state == "shutoff" and fleet.vm("new") is not None
    # A host back after its HA VM was restarted elsewhere lists a shut-off copy: the
    # running one stays the VM.
    fleet.apply_lifecycle("kvm02", {"name": "web-1", "event": "started"})
    fleet.reconcile("kvm01", [{"name": "web-1", "uuid": "u1", "state": "shutoff",
                               "vcpus": 2, "memory_bytes": GIB}],
                    asked=fleet.clock() + 1)
    assert (fleet.vm("web-1").host, fleet.vm("web-1").state) == ("kvm02", "running")


def test_a_spoofed_event_is_dropped_and_acknowledged(tmp_path):
    fleet = Fleet(tmp_path / "m.db")
    manager = Manager(console=None, fleet=fleet, fencer=Fencer(),  # type: ignore[arg-type]
                      multi_host_users=frozenset())
    ev = heartbeat("kvm01")
    body, props = ev.encode()
    acked = threading.Event()
    forged = Delivery(body, dataclasses.replace(props, user_id="kvm99"),
                      "hostbus.event", ev.routing_key(), ack=acked.set)
    manager._apply(forged)
    assert acked.is_set() and fleet.hosts() == [] and manager.dropped == 1
    acked.clear()
    manager._apply(Delivery(b"{not json", props, "hostbus.event", ev.routing_key(),
                            ack=acked.set))
    assert acked.is_set() and manager.dropped == 2


# ------------------------------------------------------- the placement index
_HOSTS = [f"kvm{i}" for i in range(4)]
_ops = st.lists(st.one_of(
    st.tuples(st.just("host"), st.sampled_from(_HOSTS), st.integers(0, 16),
              st.integers(0, 32), st.booleans(), st.sampled_from([ONLINE, UNRESPONSIVE, DOWN])),
    st.tuples(st.just("event"), st.sampled_from(_HOSTS), st.sampled_from("abcde"),
              st.sampled_from(["defined", "started", "stopped", "crashed", "undefined"])),
    st.tuples(st.just("vm"), st.sampled_from("abcde"), st.integers(0, 4), st.integers(0, 8),
              st.booleans()),
    st.tuples(st.just("listing"), st.sampled_from(_HOSTS),
              st.lists(st.sampled_from("abcde"), unique=True, max_size=3)),
    st.tuples(st.just("reload"))), max_size=25)


def _index_of(fleet: Fleet) -> dict[str, Any]:
    index = fleet._index
    return {"rooms": dict(index.room_table()), "ha_needs": index.ha_needs(),
            "groups": dict(index.group_hosts), "hosts": dict(index.hosts),
            "load": {h: (load.memory_mib, load.vcpus, dict(load.ha_sizes))
                     for h, load in index.load.items() if h in index.hosts}}


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ops)
def test_the_placement_index_kept_with_each_change_equals_one_built_afresh(tmp_path, ops):
    """The manager decides from an index of its records changed with each of them (a
    decision built one from every record: 17-60 ms at 10,000 VMs): whatever the
    changes, it is the index the records would give."""
    path = tmp_path / f"m{uuid.uuid4().hex}.db"
    fleet = Fleet(path)
    for op in ops:
        if op[0] == "host":
            _, host, free_gib, free_vcpus, maintenance, state = op
            fleet.update_host(host, cpus=8, memory_bytes=16 * GIB, free_vcpus=free_vcpus,
                              unallocated_memory_bytes=free_gib * GIB, maintenance=maintenance,
                              state=state)
        elif op[0] == "event":
            fleet.apply_lifecycle(op[1], {"name": op[2], "event": op[3]})
        elif op[0] == "vm":
            fleet.update_vm(op[1], vcpus=op[2], memory_bytes=op[3] * GIB, ha=op[4])
        elif op[0] == "listing":
            fleet.reconcile(op[1], [{"name": n, "state": "running", "vcpus": 1,
                                     "memory_bytes": GIB} for n in op[2]],
                            asked=fleet.clock() + 1)
        else:
            fleet.reload()
        fresh = Fleet(path)  # built from the state file: every record once
        assert _index_of(fleet) == _index_of(fresh)
        assert fleet.counts() == {h: n for h in _HOSTS if (n := len(fresh.vms(h)))}
        fresh.close()
    fleet.close()


def test_a_decision_or_a_plan_builds_no_index_of_the_fleet(tmp_path, monkeypatch):
    from console.placement import fleet as index_module

    fleet = Fleet(tmp_path / "m.db")
    for name, used in (("kvm01", 15), ("kvm02", 4), ("kvm03", 2)):
        _host(fleet, name, used)
    for name, gib in (("a", 1), ("b", 2), ("c", 4)):
        _vm(fleet, name, "kvm01", gib)
        fleet.update_vm(name, ha=True)
    built = []
    real = index_module.Fleet.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(index_module.Fleet, "__init__", counting)
    actions = Actions(None, fleet)  # type: ignore[arg-type]
    assert actions._choose(fleet.vm("a")) == ("kvm03", "")
    assert [m["vm"] for m in plan(fleet, "even_distribution")["moves"]] == ["a", "b"]
    assert plan(fleet, "host_down", host_down="kvm01")["left"] == []
    assert n_plus_one(fleet)["ok"] is True
    assert built == []
    # and the decisions left the index as the records give it
    monkeypatch.setattr(index_module.Fleet, "__init__", real)
    assert _index_of(fleet) == _index_of(Fleet(tmp_path / "m.db"))


# ---------------------------------------------------------------- liveness
class PingConsole:
    """Answers (or not) the manager's pings."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.pinged: list[str] = []

    def call(self, agent: str, method: str, args: dict[str, Any], *, host: str,
             timeout: float) -> Any:
        from console.client import HostResult
        from hostbus.envelope import Reply

        self.pinged.append(host)
        reply = Reply(host=host, agent=agent, method=method, status="ok", result={},
                      correlation_id="c") if self.answers else None
        return HostResult(host, reply)


@pytest.mark.parametrize("fence, answers, final", [
    ([], False, DOWN),          # silence and no fence step: down
    (["true"], False, DOWN),    # fenced
    (["false"], False, UNRESPONSIVE),  # a failed fence: never down
    ([], True, ONLINE),         # it answered the ping: its heartbeats were lost
])
def test_a_silent_host_is_pinged_and_fenced_before_it_counts_as_down(tmp_path, fence,
                                                                     answers, final):
    clock = Clock()
    fleet = Fleet(tmp_path / "m.db", clock=clock)
    emitted, downs = Emitted(), []
    console = PingConsole(answers)
    manager = Manager(console, fleet, fencer=Fencer(fence),  # type: ignore[arg-type]
                      heartbeat_grace=5, emit=emitted, on_down=downs.append)
    manager.apply(heartbeat("kvm01"))  # interval 10 s
    clock.now += 14
    manager.check_liveness()
    assert fleet.host("kvm01").state == ONLINE and console.pinged == []
    clock.now += 2  # 16 s > 10 + 5
    manager.check_liveness()
    assert fleet.host("kvm01").state == final and console.pinged == ["kvm01"]
    assert downs == (["kvm01"] if final == DOWN else [])
    states = [d["state"] for d in emitted.named("host.state")]
    assert states == {DOWN: [UNRESPONSIVE, DOWN], UNRESPONSIVE: [UNRESPONSIVE],
                      ONLINE: [UNRESPONSIVE, ONLINE]}[final]
    if fence == ["false"]:
        assert emitted.named("host.fence_failed")[0]["host"] == "kvm01"
        assert "fence command false exited 1" in fleet.host("kvm01").why
        # Fenced again only after a backoff (a fence is a power switch), told once.
        manager.check_liveness()
        assert console.pinged == ["kvm01"]
        clock.now += 2.5
        manager.check_liveness()
        assert console.pinged == ["kvm01", "kvm01"]
        assert len(emitted.named("host.fence_failed")) == 1
    # A heartbeat brings a host back whatever it was.
    manager.apply(heartbeat("kvm01", seq=2))
    assert fleet.host("kvm01").state == ONLINE


# ------------------------------------------------------------------ actions
@pytest.fixture
def hypervisors(memory_broker, tmp_path):
    """Two virt hosts on the test driver, a console, the fleet settled from them."""
    runtimes, agents = {}, {}
    for host_id in ("kvm01", "kvm02"):
        memory_broker.enroll(host_id, ["virt"])
        t = MemoryTransport(memory_broker, user=host_id)
        t.start()
        agent = virt.create(copy.deepcopy(virt.CONFIG_DEFAULTS), host_id=host_id)
        rt = AgentRuntime(t, host_id, [agent], heartbeat_interval=3600)
        rt.start()
        runtimes[host_id], agents[host_id] = rt, agent
    ct = MemoryTransport(memory_broker, user="manager")
    ct.start()
    console = Console(ct)
    console.open()
    fleet = Fleet(tmp_path / "m.db")
    emitted = Emitted()
    manager = Manager(console, fleet, fencer=Fencer(), emit=emitted, discovery_idle=0.2,
                      call_timeout=10)
    actions = Actions(console, fleet, call_timeout=10, shutdown_timeout=5, emit=emitted)
    yield {"agents": agents, "runtimes": runtimes, "console": console, "fleet": fleet,
           "manager": manager, "actions": actions, "emitted": emitted}
    actions.stop()
    for host_id, rt in runtimes.items():
        rt.stop("test over")
        agents[host_id].conn.close()
    ct.close()


def define(agents: dict[str, Any], host: str, name: str, *, start: bool = True) -> None:
    agents[host].domain_define(name, "web", None, None, None, start)


def test_the_ha_vms_of_a_host_confirmed_down_restart_elsewhere_once(hypervisors):
    h = hypervisors
    define(h["agents"], "kvm01", "web-ha")
    define(h["agents"], "kvm01", "web-plain")
    assert h["manager"].reconcile() == 2
    fleet, agent = h["fleet"], ManagerAgent(h["fleet"], h["actions"],
                                            learn_xml=h["manager"].learn_xml)
    agent.attach(lambda a, e, d: h["emitted"](e, d))
    agent.ha("web-ha", True, 5)
    assert "<name>web-ha</name>" in fleet.vm("web-ha").xml
    assert agent.plan_moves("host_down", "kvm01") == {
        "policy": "host_down", "host_down": "kvm01", "standby": [],
        "moves": [{"vm": "web-ha", "from_host": "kvm01", "to_host": "kvm02", "ha": True,
                   "why": "HA restart (priority 5)"}],
        "left": [{"vm": "web-plain", "why": "not HA: stays down with its host"}]}
    # kvm01 dies (its agent stops answering), and is confirmed down.
    h["runtimes"]["kvm01"].stop("killed")
    fleet.update_host("kvm01", state=DOWN)
    h["actions"].start()
    h["actions"].restart_ha("kvm01")
    h["actions"].restart_ha("kvm01")  # queued twice: done once
    assert h["actions"].idle.wait(30) and h["actions"]._jobs.empty()
    running = {d["name"]: d["state"] for d in h["agents"]["kvm02"].domain_objects()}
    assert running == {"web-ha": "running"}
    assert (fleet.vm("web-ha").host, fleet.vm("web-plain").state) == ("kvm02", LOST)
    restarts = h["emitted"].named("ha.restart")
    assert [(r["vm"], r["status"]) for r in restarts] == [
        ("web-ha", "started"), ("web-ha", "completed"), ("web-plain", "not_ha")]
    # Run again (a takeover by another instance): nothing is defined twice.
    fleet.update_vm("web-ha", host="kvm01")
    h["actions"].restart_ha("kvm01")
    assert h["actions"].idle.wait(30)
    assert h["emitted"].named("ha.restart")[-1] == {
        "vm": "web-ha", "from_host": "kvm01", "to_host": "kvm02", "status": "completed",
        "why": "found already defined there"}
    assert len(h["agents"]["kvm02"].domain_objects()) == 1


def test_a_restart_lists_the_hosts_once_and_a_listing_reads_only_new_xml(hypervisors):
    """At 1,000 hosts a query per HA VM to every host cost 1.3 s a VM, and reading every
    HA VM's XML at each listing 6.5 s of 16.5: one listing per restart job, and XML read
    only when unknown or changed."""
    h = hypervisors
    for name in ("ha-1", "ha-2", "ha-3"):
        define(h["agents"], "kvm01", name)
    h["manager"].reconcile()
    for name in ("ha-1", "ha-2", "ha-3"):
        h["fleet"].update_vm(name, ha=True)
    console = h["console"]
    asked: list[tuple[str, str]] = []
    real_call, real_query = console.call, console.query

    def call(agent: str, method: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(("call", method))
        return real_call(agent, method, *args, **kwargs)

    def query(agent: str, class_name: str, **kwargs: Any) -> Any:
        asked.append(("query", class_name))
        return real_query(agent, class_name, **kwargs)

    console.call, console.query = call, query  # type: ignore[method-assign]
    h["manager"].reconcile()  # learns the three XMLs
    assert asked.count(("call", "domain.xml")) == 3
    asked.clear()
    h["manager"].reconcile()  # nothing changed: nothing read again
    assert ("call", "domain.xml") not in asked
    h["runtimes"]["kvm01"].stop("killed")
    h["fleet"].update_host("kvm01", state=DOWN)
    asked.clear()
    h["actions"].start()
    h["actions"].restart_ha("kvm01")
    assert h["actions"].idle.wait(30)
    assert asked.count(("query", "domain")) == 1
    assert {d["name"] for d in h["agents"]["kvm02"].domain_objects()} == {"ha-1", "ha-2",
                                                                         "ha-3"}


def test_a_vm_provisioned_as_ha_is_marked_so_and_its_xml_read(hypervisors):
    """The provisioner's progress event says the VM is HA (its request or template):
    the manager marks it, with its priority and owner, even before its host's own
    events, and reads its XML on the lister's thread."""
    h, fleet, manager = hypervisors, hypervisors["fleet"], hypervisors["manager"]
    manager.apply(Event(host="prov", agent="provision", event="accepted", seq=1, epoch="e",
                        data={"request_id": "r1", "owner": "alice", "template": "web",
                              "count": 2}))
    define(h["agents"], "kvm01", "web-r1-1")
    define(h["agents"], "kvm02", "web-r1-2")
    for seq, (name, host, ha) in enumerate((("web-r1-1", "kvm01", True),
                                             ("web-r1-2", "kvm02", False)), 2):
        manager.apply(Event(host="prov", agent="provision", event="progress", seq=seq,
                            epoch="e", data={"request_id": "r1", "vm": name, "host": host,
                                             "step": seq - 1, "total": 2, "ha": ha,
                                             "ha_priority": 9 if ha else 0}))
    vm = fleet.vm("web-r1-1")
    assert (vm.host, vm.state, vm.owner, vm.ha, vm.ha_priority) == (
        "kvm01", "running", "alice", True, 9)
    assert (fleet.vm("web-r1-2").ha, fleet.vm("web-r1-2").owner) == (False, "alice")
    manager.active.set()
    manager.start()
    try:
        assert until(lambda: "<name>web-r1-1</name>" in fleet.vm("web-r1-1").xml, timeout=10)
    finally:
        manager.stop()
    assert not manager.reconciled.is_set()  # the XML alone: no listing of every host
    # A later word without the flag does not clear it.
    fleet.provisioned("web-r1-1", "kvm01", owner="alice")
    assert fleet.vm("web-r1-1").ha is True


def test_a_host_in_maintenance_is_emptied_by_cold_migration(hypervisors):
    h = hypervisors
    define(h["agents"], "kvm01", "web-1")
    define(h["agents"], "kvm01", "web-2", start=False)
    h["manager"].reconcile()
    agent = ManagerAgent(h["fleet"], h["actions"])
    agent.attach(lambda a, e, d: h["emitted"](e, d))
    h["actions"].start()
    assert agent.maintenance("kvm01", True)["maintenance"] is True
    assert h["actions"].idle.wait(60)
    on_kvm02 = {d["name"]: d["state"] for d in h["agents"]["kvm02"].domain_objects()}
    assert on_kvm02 == {"web-1": "running", "web-2": "shutoff"}
    assert h["agents"]["kvm01"].domain_objects() == []
    moves = h["emitted"].named("move")  # two at a time: each VM's steps in order
    assert [d["step"] for d in moves if d["vm"] == "web-1"] == [
        "started", "shut_down", "started_on_target", "undefined_on_source", "completed"]
    assert [d["step"] for d in moves if d["vm"] == "web-2"] == [
        "started", "defined_on_target", "undefined_on_source", "completed"]
    assert h["emitted"].named("maintenance")[-1] == {"host": "kvm01", "status": "evacuated",
                                                     "moved": 2, "failed": 0}
    # Nothing is placed on a host in maintenance: a second host's loss has nowhere to go.
    h["fleet"].update_vm("web-1", ha=True)
    planned = agent.plan_moves("host_down", "kvm02")
    assert planned["moves"] == [] and planned["left"][0]["vm"] == "web-1"
    assert "kvm01 maintenance" in planned["left"][0]["why"]
    with pytest.raises(RemoteError, match="knows no virt host 'kvm09'"):
        agent.maintenance("kvm09", True)


# ------------------------------------------------------------------ policies
def _host(fleet: Fleet, name: str, used_gib: int, *, total_gib: int = 16,
          cpu: float | None = None) -> None:
    fleet.update_host(name, cpus=8, memory_bytes=total_gib * GIB, free_vcpus=32,
                      unallocated_memory_bytes=(total_gib - used_gib) * GIB, cpu_percent=cpu)


def _vm(fleet: Fleet, name: str, host: str, gib: int) -> None:
    fleet.apply_lifecycle(host, {"name": name, "event": "started"})
    fleet.update_vm(name, vcpus=1, memory_bytes=gib * GIB)


def test_even_distribution_moves_the_smallest_vms_off_a_full_host_without_thrashing(tmp_path):
    fleet = Fleet(tmp_path / "m.db")
    _host(fleet, "kvm01", 15)  # 94% used
    _host(fleet, "kvm02", 4)
    _host(fleet, "kvm03", 12)  # 75%: below the threshold, may not go above it
    for name, gib in (("big", 8), ("mid", 4), ("small-a", 1), ("small-b", 2)):
        _vm(fleet, name, "kvm01", gib)
    result = plan(fleet, "even_distribution")
    assert [(m["vm"], m["to_host"]) for m in result["moves"]] == [("small-a", "kvm02"),
                                                                  ("small-b", "kvm02")]
    assert "kvm01 uses 94% of its memory" in result["moves"][0]["why"]
    # Nothing to do on a balanced fleet.
    assert plan(fleet, "even_distribution", thresholds=Thresholds(balance_memory=0.95,
                                                                  balance_cpu=0.95))[
        "moves"] == []


def test_power_saving_empties_idle_hosts_only_when_all_their_vms_fit(tmp_path):
    fleet = Fleet(tmp_path / "m.db")
    _host(fleet, "kvm01", 8)
    _host(fleet, "kvm02", 1, cpu=5.0)
    _host(fleet, "kvm03", 2, cpu=50.0)  # idle memory, busy CPU: kept
    _vm(fleet, "a", "kvm02", 1)
    _vm(fleet, "b", "kvm03", 2)
    result = plan(fleet, "power_saving")
    assert result["standby"] == ["kvm02"]
    assert [(m["vm"], m["from_host"]) for m in result["moves"]] == [("a", "kvm02")]
    # A host whose VMs do not all fit elsewhere is left as it is.
    _vm(fleet, "huge", "kvm02", 3)
    fleet.update_host("kvm01", unallocated_memory_bytes=2 * GIB)
    fleet.update_host("kvm03", unallocated_memory_bytes=2 * GIB)
    assert plan(fleet, "power_saving")["standby"] == []
    assert plan(fleet, "power_saving")["moves"] == []


def test_power_saving_never_empties_a_host_it_just_filled(tmp_path):
    """A host that took the VMs of one emptied before it stays: emptying it too moved
    those VMs twice, and its room was counted as before they came."""
    fleet = Fleet(tmp_path / "m.db")
    _host(fleet, "kvm01", 15)  # no room
    for host, vm, gib in (("kvm02", "a", 2), ("kvm03", "b", 3), ("kvm04", "c", 3)):
        _host(fleet, host, gib)
        _vm(fleet, vm, host, gib)
    result = plan(fleet, "power_saving")
    assert [(m["vm"], m["from_host"], m["to_host"]) for m in result["moves"]] == [
        ("a", "kvm02", "kvm03"), ("c", "kvm04", "kvm03")]
    assert result["standby"] == ["kvm02", "kvm04"]


def test_balancing_waits_out_a_window_moves_a_few_a_round_and_never_back(tmp_path):
    from console.manager.balancing import Balancer, Balancing

    clock = Clock()
    fleet = Fleet(tmp_path / "m.db", clock=clock)
    _host(fleet, "kvm01", 15)  # 94% used
    _host(fleet, "kvm02", 4)
    _host(fleet, "kvm03", 4)
    for name, gib in (("a", 1), ("b", 1), ("c", 1), ("d", 2)):
        _vm(fleet, name, "kvm01", gib)
    acted: list[list[dict[str, Any]]] = []
    busy = [False]
    balancer = Balancer(fleet, Balancing(enabled=True, window_s=60, interval_s=300,
                                         max_moves=2, cooldown_s=3600), Thresholds(),
                        act=acted.append, busy=lambda: busy[0])

    def move(m: dict[str, Any]) -> None:  # what the moves do to the model
        gib = fleet.vm(m["vm"]).memory_bytes // GIB
        fleet.update_vm(m["vm"], host=m["to_host"])
        for host, sign in ((m["from_host"], 1), (m["to_host"], -1)):
            h = fleet.host(host)
            fleet.update_host(host, unallocated_memory_bytes=h.unallocated_memory_bytes
                              + sign * gib * GIB)

    assert balancer.tick() == []  # over since now: a spike moves nothing
    clock.now += 30
    assert balancer.tick() == []
    _host(fleet, "kvm01", 12)  # dips below the threshold: the window starts again
    assert balancer.tick() == []
    _host(fleet, "kvm01", 15)
    clock.now += 50
    assert balancer.tick() == []
    clock.now += 61
    busy[0] = True  # an HA restart or an evacuation runs: the round waits
    assert balancer.tick() == []
    busy[0] = False
    first = balancer.tick()
    assert [(m["vm"], m["from_host"]) for m in first] == [("a", "kvm01"), ("b", "kvm01")]
    assert acted == [first]
    for m in first:
        move(m)
    clock.now += 10
    assert balancer.tick() == []  # one round per interval
    # The moved VMs are not moved on for the cooldown, though their hosts fill up and
    # stay full past the window; the others still move.
    _host(fleet, first[0]["to_host"], 15)
    _host(fleet, first[1]["to_host"], 15)
    _host(fleet, "kvm04", 1)
    balancer.tick()
    clock.now += 300
    second = balancer.tick()
    assert second and {m["vm"] for m in second} <= {"c", "d"}
    # Off: the hosts are watched, nothing moves.
    off = Balancer(fleet, Balancing(enabled=False, window_s=0), Thresholds(),
                   act=acted.append)
    assert off.tick() == [] and len(acted) == 1 + bool(second)


def test_a_balancing_move_goes_where_the_plan_said_unless_things_changed(hypervisors):
    h = hypervisors
    define(h["agents"], "kvm01", "web-1")
    define(h["agents"], "kvm01", "web-2")
    h["manager"].reconcile()
    h["actions"].start()
    h["actions"].rebalance([
        {"vm": "web-1", "from_host": "kvm01", "to_host": "kvm02", "why": "kvm01 uses 94%"},
        {"vm": "web-2", "from_host": "kvm02", "to_host": "kvm01", "why": "stale"}])
    assert h["actions"].idle.wait(60)
    assert {d["name"] for d in h["agents"]["kvm02"].domain_objects()} == {"web-1"}
    assert {d["name"] for d in h["agents"]["kvm01"].domain_objects()} == {"web-2"}
    moves = h["emitted"].named("move")
    assert moves[0] == {"vm": "web-1", "from_host": "kvm01", "to_host": "kvm02",
                        "step": "started", "how": "cold", "why": "balance: kvm01 uses 94%"}
    assert moves[-1]["step"] == "completed" and {m["vm"] for m in moves} == {"web-1"}
    assert h["fleet"].vm("web-1").host == "kvm02"


def test_with_agent_keys_only_events_the_host_signed_count(tmp_path):
    from hostbus.publisher import Publisher
    from hostbus.security.signing import Signer, Verifier, generate
    from hostbus.transport.memory import MemoryBroker

    private, _ = generate("kvm01", tmp_path / "keys")
    broker = MemoryBroker()
    broker.enroll_active_queue("manager", ["agent.*.heartbeat"])
    fleet = Fleet(tmp_path / "m.db")
    manager = Manager(console=None, fleet=fleet, fencer=Fencer(),  # type: ignore[arg-type]
                      agent_keys=Verifier.from_folder(tmp_path / "keys"))
    got: list[Delivery] = []
    reader = MemoryTransport(broker, user="manager")
    reader.start()
    reader.consume("hostbus.active.manager", got.append, manual_ack=True)
    for signer, seq in ((None, 1), (Signer.load(private), 2)):
        sender = MemoryTransport(broker, user="kvm01")
        sender.start()
        ev = heartbeat("kvm01", seq=seq, free_vcpus=seq)
        body, props = ev.encode()
        Publisher(sender, signer).publish("hostbus.event", ev.routing_key(), body, props)
        sender.close()
    assert until(lambda: len(got) == 2)
    manager._apply(got[0])  # unsigned: dropped
    assert fleet.hosts() == [] and manager.dropped == 1
    manager._apply(got[1])
    assert fleet.host("kvm01").free_vcpus == 2
    reader.close()


def test_n_plus_one_names_the_ha_vms_the_largest_hosts_loss_would_strand(tmp_path):
    fleet = Fleet(tmp_path / "m.db")
    _host(fleet, "kvm01", 10, total_gib=32)  # the largest
    _host(fleet, "kvm02", 10)  # 6 GiB free
    for name, gib in (("db", 8), ("web", 2)):
        _vm(fleet, name, "kvm01", gib)
        fleet.update_vm(name, ha=True)
    assert n_plus_one(fleet) == {"ok": False, "largest_host": "kvm01", "unplaced": ["db"]}
    fleet.update_vm("db", ha=False)
    assert n_plus_one(fleet)["ok"] is True
    emitted = Emitted()
    manager = Manager(console=None, fleet=fleet, fencer=Fencer(),  # type: ignore[arg-type]
                      emit=emitted)
    manager.check_capacity()
    manager.check_capacity()  # told once per change
    fleet.update_vm("db", ha=True)
    manager.check_capacity()
    assert [d["ok"] for d in emitted.named("capacity")] == [True, False]


def test_the_balancing_settings_load_and_their_mistakes_are_named(tmp_path):
    from console.manager.balancing import Balancing
    from console.manager.main import load_config
    from hostbus.errors import ConfigError

    assert load_config("etc/manager.toml")["balancing"] == Balancing()
    on = tmp_path / "on.toml"
    on.write_text("[policies]\nbalance = true\nbalance_max_moves = 1\n")
    assert load_config(str(on))["balancing"] == Balancing(enabled=True, max_moves=1)
    for line, fragment in (("balance = 1", "must be true or false"),
                           ("balance_max_moves = 0", "give at least 1"),
                           ("balance_window_s = -1", "give 0 or more"),
                           ("balance_memory_threshold = 2", "give a fraction")):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[policies]\n{line}\n")
        with pytest.raises(ConfigError, match=fragment):
            load_config(str(bad))
