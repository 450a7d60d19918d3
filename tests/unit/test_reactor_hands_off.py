"""The reactor keeps its hands off what the manager handles: a host unresponsive, down,
unfenced or in maintenance, a VM being restarted or moved, learnt from the manager's
events in the same stream as the rules' own (and from manager.hosts on activation);
the action is skipped with the reason, recorded, and acts again once the manager is
done and the settling time has passed."""

from console.reactor.actions import Actor
from console.reactor.engine import Engine
from console.reactor.handsoff import HandsOff
from console.reactor.main import patterns
from console.reactor.rules import parse_rules
from console.reactor.store import ReactorStore
from hostbus.envelope import Event
from tests.unit.test_reactor_rules import REBOOT, Agent, Clock


class Manager:
    """Numbers events as the manager (id ``mgr``) does."""

    def __init__(self, name: str = "mgr") -> None:
        self.name, self.seq = name, 0

    def event(self, event: str, **data) -> Event:
        self.seq += 1
        return Event(host=self.name, agent="manager", event=event, seq=self.seq,
                     epoch="m1", data=data)


def engine(tmp_path, clock, settle_s=0.0, rules=(REBOOT,)):
    store = ReactorStore(tmp_path / "reactor.db")
    return Engine(parse_rules(list(rules)), store, clock=clock,
                  hands_off=HandsOff(store, "mgr", settle_s=settle_s))


def test_an_unresponsive_host_holds_its_vms_actions_until_it_is_online(tmp_path):
    clock, agent, mgr = Clock(), Agent(), Manager()
    e = engine(tmp_path, clock)
    assert e.consider(mgr.event("host.state", host="kvm01", state="unresponsive",
                                previous="online", why="no heartbeat for 31 s")) == []
    [skipped] = e.consider(agent.check("failing"))
    assert skipped.decision == "skipped"
    assert "not sent: the manager has host kvm01 unresponsive (no heartbeat for 31 s) " \
           "since" in skipped.detail
    [other] = e.consider(Agent("kvm02").check("failing"))  # another host is not held
    assert other.decision == "fired"
    e.consider(mgr.event("host.state", host="kvm01", state="down", previous="unresponsive",
                         why="fenced"))
    assert e.consider(agent.check("failing"))[0].decision == "skipped"
    e.consider(mgr.event("host.state", host="kvm01", state="online", previous="down",
                         why="it heartbeats again"))
    assert e.consider(agent.check("failing"))[0].decision == "fired"
    history = e.store.history(rule="reboot")
    assert sorted(d["decision"] for d in history) == ["fired", "fired", "skipped", "skipped"]


def test_a_vm_being_moved_or_restarted_is_held_wherever_its_check_runs(tmp_path):
    clock, mgr, kvm02 = Clock(), Manager(), Agent("kvm02")
    e = engine(tmp_path, clock)
    e.consider(mgr.event("move", vm="web-a", from_host="kvm01", to_host="kvm02",
                         step="started", how="cold"))
    [held] = e.consider(kvm02.check("failing"))
    assert held.decision == "skipped" and "moving VM web-a from kvm01 to kvm02" in held.detail
    e.consider(mgr.event("move", vm="web-a", from_host="kvm01", to_host="kvm02",
                         step="started_on_target"))
    assert e.consider(kvm02.check("failing"))[0].decision == "skipped"
    e.consider(mgr.event("move", vm="web-a", from_host="kvm01", to_host="kvm02",
                         step="completed"))
    assert e.consider(kvm02.check("failing"))[0].decision == "fired"

    e.consider(mgr.event("ha.restart", vm="db-1", from_host="kvm03", to_host="kvm02",
                         status="started"))
    assert "restarting VM db-1" in e.consider(
        kvm02.check("failing", vm="db-1"))[0].detail
    e.consider(mgr.event("ha.restart", vm="db-1", from_host="kvm03", to_host="kvm02",
                         status="failed", why="no room"))
    assert e.consider(kvm02.check("failing", vm="db-1"))[0].decision == "fired"


def test_maintenance_holds_until_it_ends_and_then_the_settling_time(tmp_path):
    clock, agent, mgr = Clock(), Agent(), Manager()
    e = engine(tmp_path, clock, settle_s=120)
    e.consider(mgr.event("maintenance", host="kvm01", status="started", moved=0, failed=0))
    e.consider(mgr.event("maintenance", host="kvm01", status="incomplete", moved=0,
                         failed=1))
    [held] = e.consider(agent.check("failing"))
    assert "the manager has host kvm01 in maintenance (incomplete) since" in held.detail
    e.consider(mgr.event("maintenance", host="kvm01", status="ended", moved=0, failed=0))
    clock.now += 60
    [settling] = e.consider(agent.check("failing"))
    assert settling.decision == "skipped" and "maintenance ended" in settling.detail
    assert "settling until" in settling.detail
    clock.now += 61
    assert e.consider(agent.check("failing"))[0].decision == "fired"


def test_a_skip_spends_the_window_and_does_not_count_as_an_action(tmp_path):
    """Three failures within the window while the host is held: skipped, and the window
    starts again; afterwards three new ones fire, and no cooldown from the skip."""
    rule = {**REBOOT, "count": 3, "within_s": 60}
    clock, agent, mgr = Clock(), Agent(), Manager()
    e = engine(tmp_path, clock, rules=(rule,))
    e.consider(mgr.event("host.fence_failed", host="kvm01", error="ipmitool exited 1"))
    assert e.consider(agent.check("failing")) == []
    assert e.consider(agent.check("failing")) == []
    [held] = e.consider(agent.check("failing"))
    assert held.decision == "skipped" and "could not fence host kvm01" in held.detail
    e.consider(mgr.event("host.state", host="kvm01", state="online", previous="unresponsive",
                         why="it answered a ping"))
    assert e.consider(agent.check("failing")) == []  # the window starts again
    assert e.consider(agent.check("failing")) == []
    assert e.consider(agent.check("failing"))[0].decision == "fired"


def test_events_of_another_manager_or_a_repeat_change_nothing(tmp_path):
    clock, agent = Clock(), Agent()
    e = engine(tmp_path, clock)
    impostor = Manager("not-mgr")
    e.consider(impostor.event("maintenance", host="kvm01", status="started", moved=0,
                              failed=0))
    assert e.consider(agent.check("failing"))[0].decision == "fired"
    assert "manager.mgr.maintenance" in patterns(parse_rules([REBOOT]), "mgr")
    assert "manager.mgr.host.state" in patterns(parse_rules([REBOOT]), "mgr")


def test_an_action_queued_before_the_manager_took_the_host_is_not_sent(tmp_path):
    """Decided, queued, then the manager's event: the actor asks again before sending."""
    clock, agent, mgr = Clock(), Agent(), Manager()
    e = engine(tmp_path, clock)
    [fired] = e.consider(agent.check("failing"))
    e.consider(mgr.event("maintenance", host="kvm01", status="started", moved=0, failed=0))

    class NoConsole:
        def call(self, *args, **kwargs):
            raise AssertionError("nothing may be sent")

    actor = Actor(NoConsole(), e.store, hands_off=HandsOff(e.store, "mgr"))  # type: ignore[arg-type]
    actor.act(fired.decision_id)
    row = e.store.get(fired.decision_id)
    assert row["state"] == "skipped" and "in maintenance" in row["detail"]
    # and it does not hold back the next action once the manager is done
    e.consider(mgr.event("maintenance", host="kvm01", status="ended", moved=0, failed=0))
    assert e.consider(agent.check("failing"))[0].decision == "fired"


def test_on_activation_the_manager_is_asked_once_which_hosts_it_handles(tmp_path):
    """What another instance saw is not in this one's store: manager.hosts fills it in
    (and clears what is over); a manager that does not answer leaves the store as is."""
    from types import SimpleNamespace

    clock, agent = Clock(), Agent()
    e = engine(tmp_path, clock)
    e.store.hold("host", "kvm03", "maintenance", "old", clock.now - 10, "x")
    hosts = [{"host": "kvm01", "state": "down", "maintenance": False, "why": "fenced"},
             {"host": "kvm02", "state": "online", "maintenance": True, "why": ""},
             {"host": "kvm03", "state": "online", "maintenance": False, "why": ""}]
    asked = []

    class Console:
        def call(self, agent_name, method, args, *, host, timeout):
            asked.append((agent_name, method, host))
            reply = SimpleNamespace(ok=True, result={"hosts": hosts}, error=None)
            return SimpleNamespace(status="ok", reply=reply, not_enrolled=None)

    assert e.hands_off.seed(Console(), clock.now)
    assert asked == [("manager", "hosts", "mgr")]
    assert "the manager has host kvm01 down (fenced)" in e.consider(
        agent.check("failing"))[0].detail
    assert "host kvm02 in maintenance" in e.consider(
        Agent("kvm02").check("failing"))[0].detail
    assert e.consider(Agent("kvm03").check("failing"))[0].decision == "fired"

    class Silent:
        def call(self, *args, **kwargs):
            return SimpleNamespace(status="no_reply", reply=None, not_enrolled=None)

    assert not e.hands_off.seed(Silent(), clock.now)  # said in the log; nothing changes
    assert e.store.holds("host", "kvm01", clock.now)
