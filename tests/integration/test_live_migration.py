"""Live migration between two real hypervisors on this machine.

scripts/hypervisor_pair.py makes two hosts, each a libvirtd in network, mount and UTS
namespaces of its own (its own sockets, state, host_uuid, and one end of a veth pair),
with a hostbus-agent each on the test's broker. A tiny QEMU guest (software emulation)
that prints a counter on its serial port once a second moves from one to the other while
a watcher follows the events; the counter goes on from where it was, on the target.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from console import migration
from hostbus.errors import RemoteError
from hostbus.schema import load_agent_schema
from hostbus.testing.pytest_plugin import fail_or_skip
from scripts.hypervisor_pair import Pair, PairError, wait_until
from tests.fakes import EventCollector

pytestmark = pytest.mark.integration
MIB = 1 << 20
VIRT = load_agent_schema("virt")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if os.geteuid() != 0:
        fail_or_skip("the hypervisor pair needs root (network and mount namespaces)")
    for tool in ("virsh", "qemu-system-x86_64", "ip", "unshare", "nsenter", "as", "ld"):
        if shutil.which(tool) is None:
            fail_or_skip(f"{tool} is not installed (./run.sh test installs what the "
                         "hypervisor pair needs)")
    tag = uuid.uuid4().hex[:6]
    directory = tmp_path_factory.mktemp("pair") / "hosts"
    try:
        made = Pair.up(directory, (f"mig{tag}-a", f"mig{tag}-b"))
    except PairError as exc:
        pytest.fail(f"could not set up the hypervisor pair: {exc}")
    try:
        yield made
    finally:
        made.down()


@pytest.fixture(scope="module")
def hosts(pair, rabbitmq):
    """Both hosts' agents on the broker under test (a module's tests share them)."""
    for host in pair.hosts:
        rabbitmq.enroll(host.name, ["virt"])
    pair.start_agents(rabbitmq.url)
    try:
        yield [h.name for h in pair.hosts]
    finally:
        pair.stop_agents()


@pytest.fixture
def guest(pair, hosts):
    """A counter guest running on the first host, removed from both afterwards."""
    name = f"counter-{uuid.uuid4().hex[:6]}"
    pair.define_guest(hosts[0], name, memory_mib=32)
    try:
        yield name
    finally:
        for host in hosts:
            for command in (("destroy", name), ("undefine", name, "--remove-all-storage")):
                subprocess.run(["virsh", "-q", "-c", pair.host(host).local_uri, *command],
                               capture_output=True, check=False, timeout=60)


def counting(pair, host, name, at_least):
    """Wait until the guest printed ``at_least`` counts on ``host`` (a serial console
    file has no event to wait on; it is polled)."""
    wait_until(lambda: len(pair.counts(host, name)) >= at_least, time.monotonic() + 60,
               f"{name} to count {at_least} times on {host}")
    return pair.counts(host, name)


def domains(console, host):
    res = console.call("agent", "query", {"agent": "virt", "class_name": "domain"},
                       host=host, timeout=30)
    assert res.status == "ok", res.reply and res.reply.error
    return {d["name"]: d for d in res.reply.result["objects"]}


def test_a_running_guest_moves_live_to_the_other_host_and_keeps_counting(
        pair, hosts, guest, console):
    source, target = hosts
    # A subscription per event name: over AMQP 1.0 an agent's events of different names
    # leave on links of their own and can arrive out of order, and a console drops an
    # event whose seq is below one it already had from that agent (docs/NOTES.md).
    lifecycle, moves = EventCollector(), EventCollector()
    console.subscribe([f"virt.{source}.domain.lifecycle", f"virt.{target}.domain.lifecycle"],
                      lifecycle)
    console.subscribe([f"virt.{source}.domain.migration"], moves)
    counting(pair, source, guest, 2)

    route = migration.plan(console, guest, target)
    assert route.source == source
    assert route.target_uri == pair.host(target).migration_uri  # the target's fact
    # 8 MiB/s: the guest's 28 MiB of data take seconds, so progress is seen meanwhile.
    res = migration.migrate(console, route, timeout=110, bandwidth_mib_s=8,
                            progress_interval_s=0.5)

    assert res.status == "ok", res.reply and res.reply.error
    done = res.reply.result
    assert done["source_host"] == source and done["target_host"] == target
    assert done["copy_storage"] == "all"          # its disk is a local file on each host
    assert done["copied_disks"] == [f"/var/lib/libvirt/images/{guest}.img"]
    assert done["memory_bytes"] == 32 * MIB
    assert done["job"]["memory_total_bytes"] >= 32 * MIB
    assert done["job"]["data_remaining_bytes"] == 0
    assert "downtime_ms" in done["job"]

    # It runs on the target, persistently, and is gone from the source.
    there = domains(console, target)
    assert there[guest]["state"] == "running" and there[guest]["persistent"] is True
    assert guest not in domains(console, source)

    # Same guest, not a new boot: the counter goes on from where the source left it (a
    # line cut at the switch-over is split between the two files, hence + 2).
    before = pair.counts(source, guest)
    after = counting(pair, target, guest, 2)
    assert before[-1] < after[0] <= before[-1] + 2, (before[-3:], after[:3])
    assert after[1] == after[0] + 1

    # The watcher saw progress with what remained, then the end, from the source ...
    def of(events, host, status=None):
        return [e for e, _ in events.events if e.host == host and e.data["name"] == guest
                and status in (None, e.data.get("status"))]

    moves.wait_for(lambda e: e.data["status"] == "completed")
    progress = of(moves, source, "running")
    assert progress, [e.data for e in of(moves, source)]
    assert all("memory_remaining_bytes" in e.data and "data_remaining_bytes" in e.data
               for e in progress)
    # (the disk is copied first, then memory)
    assert any(e.data["memory_remaining_bytes"] > 0 for e in progress), progress
    for event in of(moves, source):       # as the schema says
        VIRT.events["domain.migration"].data_validator.validate(event.data)
    statuses = [e.data["status"] for e in of(moves, source)]
    assert statuses[0] == "started" and statuses[-1] == "completed", statuses
    # ... and lifecycle events from both hosts, as libvirt reported them.
    # (libvirt 9 sends no "undefined" for the source's definition it removes)
    lifecycle.wait_for(lambda e: e.host == source and e.data["event"] == "stopped")
    lifecycle.wait_for(lambda e: e.host == target and e.data["event"] == "resumed")
    source_said = [(e.data["event"], e.data["detail"]) for e in of(lifecycle, source)]
    target_said = [(e.data["event"], e.data["detail"]) for e in of(lifecycle, target)]
    assert source_said[-2:] == [("suspended", "migrated"), ("stopped", "migrated")], \
        source_said
    assert ("started", "migrated") in target_said, target_said
    assert ("resumed", "migrated") in target_said, target_said


def test_an_aborted_migration_leaves_the_guest_running_where_it_was(
        pair, hosts, guest, console):
    source, target = hosts
    events = EventCollector()
    console.subscribe([f"virt.{source}.domain.migration"], events)
    counting(pair, source, guest, 1)
    route = migration.plan(console, guest, target, source=source)
    outcome = {}
    # 1 MiB/s: the migration would take half a minute; it is aborted long before.
    mover = threading.Thread(target=lambda: outcome.setdefault(
        "res", migration.migrate(console, route, timeout=110, bandwidth_mib_s=1,
                                 progress_interval_s=0.5)))
    mover.start()
    try:
        events.wait_for(lambda e: e.data["name"] == guest and e.data["status"] == "running",
                        timeout=60)
        aborted = console.call("virt", "domain.migrate_abort", {"name": guest},
                               host=source, timeout=30)
        assert aborted.status == "ok", aborted.reply and aborted.reply.error
        assert aborted.reply.result["aborted"] is True
    finally:
        mover.join(120)
    res = outcome["res"]
    assert res.status == "error"
    assert res.reply.error["code"] == "failed"
    assert res.reply.error["details"]["reason"] == "aborted"
    events.wait_for(lambda e: e.data["name"] == guest and e.data["status"] == "aborted")

    assert domains(console, source)[guest]["state"] == "running"
    assert guest not in domains(console, target)
    seen = len(pair.counts(source, guest))
    counting(pair, source, guest, seen + 1)     # still counting where it was

    nothing = console.call("virt", "domain.migrate_abort", {"name": guest}, host=source,
                           timeout=30)
    assert nothing.status == "error" and nothing.reply.error["code"] == "conflict"


def test_refused_migrations_say_why_and_leave_the_guest_where_it_was(
        pair, hosts, guest, console):
    source, target = hosts
    counting(pair, source, guest, 1)

    # No such target: the console finds no host of that name.
    with pytest.raises(RemoteError, match="no such target: no agent answers as host nosuch"):
        migration.plan(console, guest, "nosuch-host")

    def refused(**args):
        res = console.call("virt", "domain.migrate", {"name": guest, **args}, host=source,
                           timeout=60)
        assert res.status == "error", res.reply and res.reply.result
        return res.reply.error

    b = pair.host(target)
    # A URI where no libvirt listens (the target's address, a closed port).
    err = refused(target_uri=f"qemu+tcp://{b.address}:1/system")
    assert (err["code"], err["details"]["reason"]) == ("failed", "target_unreachable")
    assert "could not reach the target" in err["message"]
    # The source's own libvirt: libvirt compares host UUIDs.
    err = refused(target_uri=pair.host(source).migration_uri)
    assert (err["code"], err["details"]["reason"]) == ("failed", "same_host")
    # Its disk is local and copying was turned off.
    err = refused(target_uri=b.migration_uri, copy_storage="none")
    assert (err["code"], err["details"]["reason"]) == ("failed", "no_shared_storage")
    assert "copy_storage=all" in err["message"]
    # This host named as the target.
    err = refused(target_uri=b.migration_uri, target_host=source)
    assert err["code"] == "invalid_args"
    # A URI with a query (libvirt reads programs from some) never reaches libvirt.
    console.validate = False  # send it anyway: the agent must refuse it itself
    err = refused(target_uri=f"qemu+ext://{b.address}/system?command=/bin/true")
    assert err["code"] == "invalid_args"

    assert domains(console, source)[guest]["state"] == "running"
    assert guest not in domains(console, target)


def test_the_cli_moves_a_guest_there_and_back_and_names_a_missing_target(
        pair, hosts, guest, rabbitmq):
    source, target = hosts
    counting(pair, source, guest, 1)

    def hostbus(*args):
        return subprocess.run([str(BIN / "hostbus"), *args], capture_output=True, text=True,
                              env={**os.environ, "HOSTBUS_BROKER_URL": rabbitmq.url},
                              timeout=110, check=False)

    there = hostbus("vm", guest, "migrate", "--to", target, "--yes", "--json")
    assert there.returncode == 0, there.stderr
    moved = json.loads(there.stdout)
    assert moved["status"] == "ok" and moved["host"] == source
    assert moved["result"]["target_host"] == target
    seen = len(pair.counts(target, guest))
    counting(pair, target, guest, seen + 1)

    back = hostbus("vm", guest, "migrate", "--to", source, "--yes")
    assert back.returncode == 0, back.stderr
    assert f"{guest} moved from {target} to {source}" in back.stdout
    assert "downtime" in back.stdout
    seen = len(pair.counts(source, guest))
    counting(pair, source, guest, seen + 1)

    nowhere = hostbus("vm", guest, "migrate", "--to", "nosuch-host", "--yes")
    assert nowhere.returncode == 3, nowhere.stderr
    assert "no such target: no agent answers as host nosuch-host" in nowhere.stderr
    unasked = hostbus("vm", guest, "migrate", "--to", target)   # no terminal, no --yes
    assert unasked.returncode == 2 and "pass --yes" in unasked.stderr
