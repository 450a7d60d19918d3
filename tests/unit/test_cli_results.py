"""How fan-out results are shown: as they arrive, with request ids, the failed and
silent hosts named at the end, and what arrived kept on Ctrl-C."""

import json

from console.client import Console
from hostbus.security.signing import Verifier


def _host_lines(text):
    return [line.split()[0] for line in text.splitlines()
            if line.split() and line.split()[1:2] in (["ok"], ["error"], ["no_reply"])]


def test_results_are_printed_as_they_arrive_or_in_host_order_with_collect(fleet):
    fleet.add("slow01", agent_kw={"config": {"process_cpu_sample_s": 0.5}})
    fleet.add("fast01")
    argv = ["call", "host.processes", "limit=1", "-H", "slow01", "-H", "fast01"]
    assert _host_lines(fleet.run(*argv).stdout) == ["fast01", "slow01"]
    fleet.stop()
    fleet.add("slow01", agent_kw={"config": {"process_cpu_sample_s": 0.5}})
    fleet.add("fast01")
    assert _host_lines(fleet.run(*argv, "--collect").stdout) == ["slow01", "fast01"]


def test_the_end_names_failed_and_silent_hosts_and_display_filters(fleet):
    fleet.add("web01")
    fleet.add("web02", verifier=Verifier({}))  # trusts no key: refuses the console
    fleet.add_silent("ghost")  # takes requests, never answers
    done = fleet.run("call", "host.identify", "-H", "web01", "-H", "web02", "-H", "ghost",
                     "-t", "0.3", "--display", "failed")
    assert done.exit_code == 4
    assert _host_lines(done.stdout) == ["web02", "ghost"]
    assert "failed: web02 (bad_signature)" in done.stdout
    assert "no reply: ghost" in done.stdout
    ok_only = fleet.run("call", "host.identify", "-H", "web01", "-H", "ghost", "-t", "0.3",
                        "--display", "ok")
    assert _host_lines(ok_only.stdout) == ["web01"] and "no reply: ghost" in ok_only.stdout


def test_every_result_carries_its_request_id(fleet):
    fleet.add("web01")
    fleet.add_silent("ghost")  # takes requests, never answers
    done = fleet.run("call", "host.identify", "-H", "web01", "-H", "ghost", "-t", "0.3",
                     "--json")
    ids = {r["host"]: r["request_id"] for r in json.loads(done.stdout)["results"]}
    assert set(ids) == {"web01", "ghost"} and len(set(ids.values())) == 2
    human = fleet.run("call", "host.identify", "-H", "web01")
    line = next(line for line in human.stdout.splitlines() if line.startswith("web01"))
    assert "request " in line
    sent = line.split("request ")[1].strip()
    assert [key for _ex, key, d in fleet.broker.published
            if d.properties.message_id == sent] == ["host.web01"]


def test_ctrl_c_keeps_what_arrived_and_exits_130(fleet, monkeypatch):
    fleet.add("web01")
    real = Console.fanout

    def interrupted(self, agent, method, args, hosts, *, on_result=None, **kw):
        result = real(self, agent, method, args, hosts[:1], on_result=on_result, **kw)
        assert result.results[0].status == "ok"
        raise KeyboardInterrupt  # Ctrl-C while the others are waited for

    monkeypatch.setattr(Console, "fanout", interrupted)
    done = fleet.run("call", "host.identify", "-H", "web01", "-H", "ghost")
    assert done.exit_code == 130
    assert _host_lines(done.stdout) == ["web01"]
    assert "interrupted: 1 host not waited for" in done.stdout
    assert "interrupted: 1 of 2 hosts answered" in done.stderr
    as_json = fleet.run("call", "host.identify", "-H", "web01", "-H", "ghost", "--json")
    assert as_json.exit_code == 130
    doc = json.loads(as_json.stdout)
    assert [r["host"] for r in doc["results"]] == ["web01"] and doc["interrupted"] == 1


def test_limit_batches_and_host_lists(fleet):
    for n in range(1, 5):
        fleet.add(f"web0{n}", {"role": "web"})

    def targets(*argv, input=None):
        done = fleet.run("call", "host.identify", *argv, "--json", input=input)
        assert done.exit_code == 0, done.stderr
        return [r["host"] for r in json.loads(done.stdout)["results"]]

    assert len(targets("--all", "--limit", "1")) == 1
    assert len(targets("--all", "--limit", "50%")) == 2
    assert sorted(targets("--all", "--batch", "2", "--batch-sleep", "0.01")) == [
        "web01", "web02", "web03", "web04"]
    listed = fleet.run("agents", "--where", "role=web", "--json").stdout
    assert sorted(targets("--hosts-from", "-", input=listed)) == [
        "web01", "web02", "web03", "web04"]
    assert targets("--hosts-from", "-", input="# the db hosts\nweb02\n\nweb03  \n") == [
        "web02", "web03"]
    bad = fleet.run("call", "host.identify", "--all", "--limit", "0")
    assert bad.exit_code == 2 and "a number of hosts (5) or a percentage (10%)" in bad.stderr
    sleepy = fleet.run("call", "host.identify", "--all", "--batch-sleep", "1")
    assert sleepy.exit_code == 2 and "--batch-sleep needs --batch N" in sleepy.stderr

