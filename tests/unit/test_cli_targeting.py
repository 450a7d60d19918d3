"""Which hosts a command acts on: stacked filters narrow, never widen."""

import json


def _targets(done):
    assert done.exit_code in (0, 1, 4), done.stderr
    return sorted(r["host"] for r in json.loads(done.stdout)["results"])


def test_a_host_and_a_fact_filter_intersect(fleet):
    fleet.add("vm", {"role": "demo"})
    fleet.add("web01", {"role": "web"})
    fleet.add("web02", {"role": "web"})
    # "reboot vm if it is a web host" must not reach web01 and web02
    done = fleet.run("call", "host.reboot", "delay_s=600", "-H", "vm", "--where", "role=web",
                     "--yes", "--json")
    assert done.exit_code == 3, done.stdout
    assert "vm" in done.stderr and "role=web" in done.stderr
    assert all(power.calls == [] for power in fleet.power.values())
    assert _targets(fleet.run("call", "host.identify", "-H", "web01", "--where", "role=web",
                              "--json")) == ["web01"]
    both = fleet.run("call", "host.identify", "-H", "web*", "-H", "vm", "--where", "role=web",
                     "--json")
    assert _targets(both) == ["web01", "web02"]
    assert "left out vm: did not match --where role=web" in both.stderr


def test_query_narrows_the_same_way(fleet):
    fleet.add("vm", {"role": "demo"})
    fleet.add("web01", {"role": "web"})
    done = fleet.run("query", "host.disk", "-H", "vm", "--where", "role=web", "--json")
    assert done.exit_code == 3
    done = fleet.run("query", "host.disk", "-H", "web01", "-H", "vm", "--where", "role=web",
                     "--json")
    assert {o["host"] for o in json.loads(done.stdout)["objects"]} == {"web01"}


def test_a_named_host_whose_agent_is_not_running_is_offline_at_once(fleet):
    fleet.add("web01")
    fleet.broker.enroll("ghost", ["host"])  # enrolled: its queue exists; no agent runs
    done = fleet.run("call", "host.identify", "-H", "ghost", "-H", "web01", "-t", "30")
    assert done.exit_code == 4, done.output
    assert "ghost is offline: nothing consumes its queue hostbus.host.ghost" in done.stdout
    assert "web01  ok" in done.stdout and "no reply: ghost" in done.stdout
    assert not fleet.broker.queues["hostbus.host.ghost"].messages  # nothing waits there


def test_query_says_a_named_host_is_offline_at_once(fleet):
    fleet.add("web01")
    fleet.broker.enroll("ghost", ["host"])
    done = fleet.run("query", "host.disk", "-H", "web01", "-H", "ghost", "-t", "30")
    assert done.exit_code == 4, done.output
    assert "ghost is offline: nothing consumes its queue hostbus.host.ghost.agent" in \
        done.stdout
    assert "2 hosts: 1 ok, 0 failed, 1 no reply" in done.stdout
