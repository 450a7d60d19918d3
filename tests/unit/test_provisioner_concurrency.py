"""The provisioner handling several requests at once, placing from the view of the hosts
it keeps: nothing is placed twice on the same room, quotas hold across requests in
flight, two copies of one message make its VMs once, and a request asks no host
anything before defining its VMs."""

from collections import Counter

from tests.fakes import until
from tests.unit.test_provisioner import Settled, domains, fleet, request  # noqa: F401


def run_all(prov, messages, timeout=60):
    for msg in messages:
        prov.on_message(msg.delivery)
    assert prov.idle.wait(timeout), "the provisioner did not finish its requests"


def test_requests_at_once_each_get_their_vms_on_distinct_names(fleet):  # noqa: F811
    prov, agents, _, received, _ = fleet
    msgs = [Settled(request(owner="big", count=2), f"conc-{i:02d}") for i in range(10)]
    run_all(prov, msgs)
    assert [m.outcome for m in msgs] == ["ack"] * 10
    names = domains(agents)
    assert len(names) == 20 and len({n for n, _ in names}) == 20
    assert {h for _, h in names} == {"kvm01", "kvm02"}
    assert sorted(r["status"] for r in received()) == ["ok"] * 10


def test_room_placed_by_requests_in_flight_is_held_until_the_hosts_report_it(fleet):  # noqa: F811
    """Each test host has 16 GiB; a web VM takes 1 GiB. 20 requests of 2 VMs at once,
    all placed on one view of the hosts: exactly 32 fit, and no host gets a 17th."""
    prov, agents, _, received, _ = fleet
    assert prov.hosts.refreshed.wait(10)
    # No report in between (none on a schedule, on events, or on a refusal): only the
    # room held keeps count.
    prov.hosts.stop()
    prov.hosts.refresh = lambda **kw: 0
    msgs = [Settled(request(owner="big", count=2), f"room-{i:02d}") for i in range(20)]
    run_all(prov, msgs)
    per_host = Counter(h for _, h in domains(agents))
    assert per_host == {"kvm01": 16, "kvm02": 16}
    refused = [r for r in received() if r["status"] == "error"]
    assert len(refused) == 4
    assert all("no virt host has room" in r["error"]["message"] and
               "kvm01 memory 0 MiB free < 1024 needed" in r["error"]["message"]
               for r in refused)


def test_a_quota_holds_across_requests_in_flight(fleet):  # noqa: F811
    """alice may have 5 VMs: of four requests of 2 at once, two are carried out."""
    prov, agents, _, received, _ = fleet
    msgs = [Settled(request(count=2), f"quota-{i}") for i in range(4)]
    run_all(prov, msgs)
    assert sorted(m.outcome for m in msgs) == ["ack", "ack", "dead", "dead"]
    assert len(domains(agents)) == 4
    codes = sorted((r.get("error") or {}).get("code", "ok") for r in received())
    assert codes == ["ok", "ok", "unauthorized", "unauthorized"]


def test_two_copies_of_one_message_at_once_make_its_vms_once(fleet):  # noqa: F811
    prov, agents, _, received, _ = fleet
    first, copy = Settled(request(), "twice-1"), Settled(request(), "twice-1")
    run_all(prov, [first, copy])
    assert (first.outcome, copy.outcome) == ("ack", "ack")
    assert len(domains(agents)) == 2 and len(received()) == 1


def test_a_request_asks_no_host_anything_before_defining(fleet):  # noqa: F811
    """Before, each request discovered the hosts, listed every domain on every host and
    asked each for node.info and template.list."""
    prov = fleet[0]
    assert prov.hosts.refreshed.wait(10)
    prov.hosts.stop()
    prov.tracker.stop()
    transport = prov.console.transport
    publish = transport.publish
    sent = []

    def recording(exchange, routing_key, body, props, **kw):
        sent.append(json_method(body))
        return publish(exchange, routing_key, body, props, **kw)

    transport.publish = recording
    msg = Settled(request(count=3), "quiet-1")
    prov.process(msg.delivery)
    assert msg.outcome == "ack"
    assert sorted(sent) == ["domain.define"] * 3


def json_method(body: bytes) -> str:
    import json

    return json.loads(body)["method"]


def test_a_vm_made_by_someone_else_shows_in_the_view_from_its_events(fleet):  # noqa: F811
    """Between full refreshes, a host's lifecycle events have it asked again: an 8 GiB VM
    started behind the provisioner's back takes its room from the view at once, and a
    request that needs more than is left goes to the other host."""
    prov, agents, _, _, _ = fleet
    assert prov.hosts.refreshed.wait(10)
    full = prov.hosts._last_full
    before = prov.hosts.fleet.memory_room("kvm01")
    agents["kvm01"].domain_define("outsider", "db", None, None, 8192, True)
    assert until(lambda: prov.hosts.fleet.memory_room("kvm01") == before - 8192, 10)
    assert prov.hosts._last_full == full  # no full refresh: the event did it
    msg = Settled(request(owner="big", count=1, template="db", memory_mib=10240),
                  "after-outsider")
    prov.process(msg.delivery)
    assert msg.outcome == "ack"
    assert ("shop-afterout-1", "kvm02") in domains(agents)


def test_late_events_of_a_vm_the_provisioner_removed_do_not_bring_it_back(tmp_path):
    """A define's 'defined' and 'started' events can leave the host after its answer,
    so after a quick release or roll back: the VM stays gone. A VM found undefined by
    someone else and defined again still comes back."""
    from console.provisioner.ledger import VmLedger

    ledger = VmLedger(tmp_path / "l.db")
    ledger.record(owner="alice", request_id="r", host="kvm01", name="a", uuid="u-a")
    ledger.record(owner="alice", request_id="r", host="kvm01", name="b", uuid="u-b")
    ledger.gone("kvm01", "a")  # released by the provisioner
    for event in ("defined", "started", "resumed"):
        ledger.apply_event("kvm01", {"name": "a", "uuid": "u-a", "event": event})
    assert [vm.name for vm in ledger.owned("alice")] == ["b"]
    ledger.apply_event("kvm01", {"name": "b", "uuid": "u-b", "event": "undefined"})
    ledger.apply_event("kvm01", {"name": "b", "uuid": "u-b", "event": "defined"})
    assert [vm.name for vm in ledger.owned("alice")] == ["b"]
