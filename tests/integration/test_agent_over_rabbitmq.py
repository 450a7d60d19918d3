"""An agent and a console on the real broker, in one process."""

import pytest

from agents.host.alerts import Threshold
from hostbus.schema import load_agent_schema
from tests.fakes import EventCollector

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]
HOST = load_agent_schema("host")


def test_an_agent_comes_online_and_is_discovered(console, start_agent):
    waiter = EventCollector()
    console.subscribe(["agent.*.online"], waiter)
    runtime, _ = start_agent(facts={"role": "it-online"})
    online = waiter.wait_for(lambda e: e.host == runtime.host_id)
    assert online.data["agents"] == ["host"] and online.data["epoch"] == runtime.epoch
    found = console.discover(filter={"facts": {"role": "it-online"}}, expect=[runtime.host_id])
    assert [a.host for a in found] == [runtime.host_id]
    assert found[0].facts["os"] == "linux"


def test_every_host_method_works_over_the_wire(console, start_agent):
    runtime, power = start_agent()
    host = runtime.host_id
    for name, spec in HOST.methods.items():
        if name.startswith("service."):  # a unit no machine has
            args = {"name": "hostbus-integration-none.service"}
        elif spec.dangerous:
            args = {"delay_s": 0, "reason": "integration test"}
        else:
            args = {}
        res = console.call("host", name, args, host=host, timeout=15)
        assert res.status in ("ok", "error"), name
        if res.status == "error":
            # services need systemd, which this machine may not run (it says so), and the
            # unit asked about does not exist
            assert name == "services" or name.startswith("service."), res.reply
            assert res.reply.error["code"] in ("unsupported", "not_found"), res.reply
            continue
        spec.result_validator.validate(res.reply.result)
    assert power.calls == [("reboot", 0, "integration test"),
                           ("shutdown", 0, "integration test")]
    identity = console.call("host", "identify", host=host).reply.result
    assert identity["host_id"] == host


def test_processes_arguments_reach_the_agent(console, start_agent):
    import psutil

    runtime, _ = start_agent()
    me = psutil.Process().name()  # "python" or "pytest", by how the suite was started
    res = console.call("host", "processes", {"name": f"{me}*", "limit": 2, "sort": "pid"},
                       host=runtime.host_id)
    procs = res.reply.result["processes"]
    assert 1 <= len(procs) <= 2 and all(p["name"].startswith(me) for p in procs)
    assert [p["pid"] for p in procs] == sorted(p["pid"] for p in procs)


def test_every_object_class_can_be_queried(console, start_agent):
    runtime, _ = start_agent()
    for class_name, spec in HOST.classes.items():
        result = console.query("host", class_name, hosts=[runtime.host_id])
        res = result.results[0]
        if class_name == "service" and res.status == "error":
            assert res.reply.error["code"] == "unsupported"
            continue
        assert res.status == "ok", res.reply
        for obj in res.reply.result["objects"]:
            spec.object_validator.validate(obj)
    root = console.query("host", "disk", where={"mountpoint": "/"}, hosts=[runtime.host_id])
    assert [o["mountpoint"] for o in root.results[0].reply.result["objects"]] == ["/"]


def test_metrics_and_alert_events_reach_a_subscriber(console, start_agent):
    waiter = EventCollector()
    console.subscribe(["host.*.metrics", "host.*.alert"], waiter)
    # Levels every sample crosses: the first sample raises the alert.
    runtime, _ = start_agent(metrics_interval=0.2,
                             alerts={"memory_percent": Threshold(0.0, -1.0)})
    host = runtime.host_id
    metrics = waiter.wait_for(lambda e: e.host == host and e.event == "metrics")
    HOST.events["metrics"].data_validator.validate(metrics.data)
    alert = waiter.wait_for(lambda e: e.host == host and e.event == "alert")
    assert alert.data["metric"] == "memory_percent" and alert.data["state"] == "raised"
    HOST.events["alert"].data_validator.validate(alert.data)
    ours = [(e, n) for e, n in waiter.events if e.host == host and e.event == "alert"]
    assert len(ours) == 1  # hysteresis: no second raise while it stays high


def test_a_host_that_does_not_answer_is_reported_as_no_reply(rabbitmq, console, start_agent):
    runtime, _ = start_agent()
    rabbitmq.enroll("it-ghost", ["host"])  # enrolled, but no agent runs there
    result = console.fanout("host", "identify", {}, [runtime.host_id, "it-ghost"], timeout=1.0)
    assert {r.host: r.status for r in result.results} == {runtime.host_id: "ok",
                                                          "it-ghost": "no_reply"}


def test_a_refused_publish_does_not_stop_the_transport(rabbitmq):
    """The broker closes the channel on a bad publish; consumers carry on."""
    import threading

    from hostbus.transport import connect
    from hostbus.transport.base import Properties

    transport = connect(rabbitmq.url)
    transport.start()
    got = []
    arrived = threading.Event()

    def on_message(delivery):
        got.append(delivery.body)
        arrived.set()

    queue = transport.open_reply_queue(on_message)
    try:
        transport.publish("no.such.exchange", "x", b"{}", Properties())
        # A publish racing the broker's Channel.Close is dropped (fire-and-forget; the
        # reliability work adds confirms), so retry until one gets through...
        for attempt in range(5):
            transport.publish("hostbus.reply", queue, b'{"n": %d}' % attempt, Properties())
            if arrived.wait(2):
                break
        assert arrived.is_set(), "the consumer stopped after a refused publish"
        # ...then the transport is back to normal: every publish arrives.
        arrived.clear()
        transport.publish("hostbus.reply", queue, b'{"steady": true}', Properties())
        assert arrived.wait(10) and got[-1] == b'{"steady": true}'
    finally:
        transport.close()
