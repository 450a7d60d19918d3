"""The agent runtime and the console library together, over the in-memory broker."""

import threading

import pytest

from console.client import Console, Seen, Sequencer
from hostbus.envelope import Event
from hostbus.errors import BrokerBlocked, BrokerRefused, RemoteError, SchemaError
from hostbus.serving.agent import Agent, method
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryTransport
from tests.fakes import PROBE_SCHEMA, EventCollector, ProbeAgent, make_host_agent


@pytest.fixture
def fleet(memory_broker):
    """Two agents (web01, web02) and a console, all on one in-memory broker."""
    runtimes = []
    for host_id, role in (("web01", "web"), ("web02", "db")):
        memory_broker.enroll(host_id, ["host", "probe"])
        transport = MemoryTransport(memory_broker, user=host_id)  # as enrolled
        transport.start()
        host, _, power = make_host_agent(host_id)
        probe = ProbeAgent()
        rt = AgentRuntime(transport, host_id, [host, probe], heartbeat_interval=0.05,
                          facts={"role": role}, schemas={"probe": PROBE_SCHEMA},
                          check_results=True)
        runtimes.append((rt, probe, power))
    ct = MemoryTransport(memory_broker, user="console")
    ct.start()
    console = Console(ct, schemas={"probe": PROBE_SCHEMA})
    console.open()
    collector = EventCollector()
    console.subscribe(["#"], collector)
    for rt, _, _ in runtimes:
        rt.start()
    yield console, runtimes, collector
    for rt, _, _ in runtimes:
        rt.stop("test over")
    console.close()


def test_agents_announce_themselves_and_are_discovered(fleet):
    console, _, collector = fleet
    collector.wait_until(lambda evs: sum(e.full_name == "agent.online" for e, _ in evs) == 2)
    found = console.discover(idle=0.2, first_reply_wait=2.0)
    assert [a.host for a in found] == ["web01", "web02"]
    assert found[0].agents == ["host", "probe"]
    assert found[0].facts["role"] == "web" and found[0].facts["os"]


def test_discovery_filters_on_host_glob_agent_and_facts(fleet):
    console, _, _ = fleet
    assert [a.host for a in console.discover(filter={"facts": {"role": "db"}}, idle=0.2)] == \
        ["web02"]
    assert [a.host for a in console.discover(filter={"host": "*01"}, idle=0.2)] == ["web01"]
    assert console.discover(filter={"agent": "virt"}, idle=0.1, first_reply_wait=0.2) == []


def test_discovery_stops_once_every_expected_host_answered(fleet):
    console, _, _ = fleet
    # A huge idle window would keep it waiting; the expected set ends it instead.
    found = console.discover(expect=["web01", "web02"], idle=30, first_reply_wait=30,
                             timeout=60)
    assert {a.host for a in found} == {"web01", "web02"}


def test_fanout_reports_each_host_a_silent_one_and_one_not_enrolled(fleet, memory_broker):
    console, runtimes, _ = fleet
    memory_broker.enroll("idle01", ["probe"])  # enrolled, but no agent runs there
    result = console.fanout("probe", "echo", {"text": "x"},
                            ["web01", "web02", "idle01", "ghost"], timeout=0.5)
    assert [(r.host, r.status) for r in result.results] == [
        ("web01", "ok"), ("web02", "ok"), ("idle01", "no_reply"), ("ghost", "not_enrolled")]
    assert result.results[3].to_dict()["error"] == {
        "message": "no host 'ghost' has the agent 'probe' enrolled"}
    assert result.summary["ok"] == 2 and result.summary["no_reply"] == 1
    assert result.summary["not_enrolled"] == 1
    assert all(probe.executed == ["echo"] for _, probe, _ in runtimes)


def test_a_call_to_an_agent_no_host_has_is_answered_at_once(fleet):
    console, _, _ = fleet
    # No queue is bound for the request: the console says so at once, long before the
    # timeout, as it does over RabbitMQ.
    res = console.call("agent", "ping", {}, host="nohost", timeout=600)
    assert res.status == "not_enrolled"
    assert res.to_dict()["error"]["message"] == "no host 'nohost' has the agent 'agent' " \
        "enrolled"


def test_fanout_in_batches_still_reaches_every_host(fleet):
    console, _runtimes, _ = fleet
    result = console.fanout("probe", "echo", {"text": "y"}, ["web01", "web02"], batch=1)
    assert result.summary["ok"] == 2


def test_the_console_validates_before_sending(fleet):
    console, _runtimes, _ = fleet
    with pytest.raises(RemoteError, match=r"args\.limit"):
        console.call("host", "processes", {"limit": "lots"}, host="web01")
    with pytest.raises(RemoteError, match="no method 'nope'"):
        console.call("host", "nope", {}, host="web01")


def test_calls_carry_the_broker_user_as_caller(fleet):
    console, _, _ = fleet
    res = console.call("probe", "whoami", {}, host="web02")
    assert res.reply.result["caller"] == "console"


def test_query_returns_objects_filtered_by_field(fleet):
    console, _, _ = fleet
    result = console.query("host", "disk", where={"mountpoint": "/v*"}, hosts=["web01"])
    objs = result.results[0].reply.result["objects"]
    assert [o["mountpoint"] for o in objs] == ["/var"]
    bad = console.query("host", "disk", where={"color": "red"}, hosts=["web01"])
    assert bad.results[0].reply.error["code"] == "invalid_args"


def test_dangerous_methods_reach_the_injected_power_controller(fleet):
    console, runtimes, _ = fleet
    res = console.call("host", "reboot", {"delay_s": 0, "reason": "patch"}, host="web01")
    assert res.status == "ok" and res.reply.result["action"] == "reboot"
    assert runtimes[0][2].calls == [("reboot", 0, "patch")]
    assert runtimes[1][2].calls == []


def test_heartbeats_are_numbered_and_offline_is_announced(fleet):
    _console, runtimes, collector = fleet
    evs = collector.wait_until(lambda evs: sum(e.full_name == "agent.heartbeat" and
                                             e.host == "web01" for e, _ in evs) >= 2)
    beats = [e for e, _ in evs if e.host == "web01" and e.agent == "agent"]
    assert [e.seq for e in beats] == list(range(1, len(beats) + 1))
    assert all(note is None for _, note in evs)
    beat = next(e for e in beats if e.event == "heartbeat")
    assert beat.data["agents"] == ["host", "probe"] and beat.epoch == runtimes[0][0].epoch
    runtimes[0][0].stop("maintenance")
    collector.wait_until(lambda evs: any(e.full_name == "agent.offline" for e, _ in evs))
    off = next(e for e, _ in collector.events if e.full_name == "agent.offline")
    assert off.data == {"reason": "maintenance"}


def test_the_sequencer_reports_gaps_restarts_and_duplicates():
    def ev(seq, epoch="e1"):
        return Event(host="h", agent="host", event="metrics", data={}, seq=seq, epoch=epoch)

    seq = Sequencer()
    assert seq.check(ev(1)).note is None
    assert seq.check(ev(2)).note is None
    gap = seq.check(ev(5))
    assert gap.fresh and "gap: 2 events" in gap.note
    assert seq.check(ev(5)) == Seen(False, "repeat of seq 5 from h/host")
    restart = seq.check(ev(1, "e2"))
    assert restart.fresh and "restarted" in restart.note
    assert seq.check(ev(2, "e2")) == Seen(True)


def test_the_sequencer_delivers_a_late_event_once_and_drops_only_true_repeats():
    def ev(seq, epoch="e1"):
        return Event(host="h", agent="host", event="alert", data={}, seq=seq, epoch=epoch)

    seq = Sequencer(window=10)
    # 1, 2, 4, 3: 3 was overtaken by 4 on its way. It is delivered, with a note, once.
    assert [seq.check(ev(n)).fresh for n in (1, 2, 4)] == [True, True, True]
    late = seq.check(ev(3))
    assert late.fresh and late.note.startswith("late: seq 3 from h/host arrived after seq 4")
    assert not seq.check(ev(3)).fresh  # now it is a repeat
    assert not seq.check(ev(2)).fresh
    # An event from before a restart is judged against its own epoch.
    assert seq.check(ev(1, "e2")).fresh
    assert not seq.check(ev(4)).fresh and seq.check(ev(5)) == Seen(True)
    # Beyond the window a number cannot be told from a repeat: delivered, with a note.
    assert seq.check(ev(30)).fresh
    old = seq.check(ev(6))
    assert old.fresh and "older than the last 10 numbers" in old.note
    # The holes the window forgot do not grow without bound.
    assert len(seq.streams[("h", "host")]["e1"].holes) <= 10


def test_an_agent_that_disagrees_with_its_schema_is_refused(memory_broker):
    class Sloppy(Agent):
        name = "probe"

        @method()
        def echo(self, text: str) -> dict:  # no `times`, and three methods missing
            return {}

    transport = MemoryTransport(memory_broker)
    with pytest.raises(SchemaError) as info:
        AgentRuntime(transport, "web01", [Sloppy()], schemas={"probe": PROBE_SCHEMA})
    text = str(info.value)
    assert "method 'boom' is in the schema but not implemented" in text
    assert "schema argument 'times' is not a parameter" in text


def test_an_agent_that_is_not_enrolled_says_how_to_enroll(memory_broker):
    transport = MemoryTransport(memory_broker)
    transport.start()
    host, _, _ = make_host_agent("newhost")
    rt = AgentRuntime(transport, "newhost", [host])
    with pytest.raises(BrokerRefused, match="hostbus broker enroll newhost --agents host"):
        rt.start()
    transport.close()


def test_undeclared_events_are_a_programming_error(fleet):
    _, runtimes, _ = fleet
    with pytest.raises(SchemaError, match=r"probe\.nonsense"):
        runtimes[0][1].emit("nonsense", {})


def test_under_a_resource_alarm_a_call_fails_at_once_and_heartbeats_say_so(fleet):
    console, runtimes, collector = fleet
    runtime = runtimes[0][0]
    blocked = threading.Event()
    console.transport.on_blocked(lambda reason: blocked.set())
    console.transport.block("resource alarm (low on memory)")
    runtime.transport.block("resource alarm (low on memory)")
    assert blocked.wait(5)
    with pytest.raises(BrokerBlocked, match="the broker is refusing publishes: resource "
                       r"alarm \(low on memory\); nothing was sent"):
        console.call("agent", "ping", host="web01", timeout=600)
    beat = collector.wait_for(lambda e: e.event == "heartbeat" and e.host == "web01"
                              and "broker_blocked" in e.data)
    assert beat.data["broker_blocked"] == "resource alarm (low on memory)"
    cleared = threading.Event()
    console.transport.on_unblocked(cleared.set)
    console.transport.unblock()
    assert cleared.wait(5)
    assert console.call("agent", "ping", host="web01").status == "ok"
