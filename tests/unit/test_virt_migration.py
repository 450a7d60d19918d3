"""Live migration's rules without a second host: which disks are copied, what is asked
of libvirt, and what each libvirt refusal means for the caller. The migrations
themselves run in tests/integration/test_live_migration.py (two real hypervisors)."""

import copy

import libvirt
import pytest

from agents.virt import CONFIG_DEFAULTS, migration
from agents.virt.agent import VirtAgent
from agents.virt.connection import open_connection
from agents.virt.templates import templates_from_config
from hostbus.errors import RemoteError
from hostbus.schema import load_agent_schema
from tests.unit.test_virt_agent import Events, call

SCHEMA = load_agent_schema("virt")
TARGET = "qemu+tls://kvm02.example.net/system"

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:40 / /var/lib/libvirt/images rw - nfs4 filer:/images rw,vers=4.2
31 22 0:41 / /var/lib/libvirt/images/local rw - xfs /dev/sdb1 rw
32 22 0:42 / /srv/with\\040space rw - cephfs ceph rw
33 22 0:43 / /srv/gluster rw - fuse.glusterfs gl:/vol rw
"""


@pytest.mark.parametrize(("path", "fs_type"), [
    ("/var/lib/libvirt/images/web.qcow2", "nfs4"),
    ("/var/lib/libvirt/images", "nfs4"),
    ("/var/lib/libvirt/images/local/db.qcow2", "xfs"),     # the deeper mount wins
    ("/var/lib/libvirt/imagesX/a.img", "ext4"),             # a prefix is not a parent
    ("/srv/with space/a.img", "cephfs"),                    # mountinfo escapes spaces
    ("/srv/gluster/a.img", "fuse.glusterfs"),
    ("/home/a.img", "ext4"),
])
def test_the_file_system_of_a_path_is_its_deepest_mount(path, fs_type):
    assert migration.fs_type_of(path, MOUNTINFO) == fs_type


def disk(kind, source, extra=""):
    attr = {"file": "file", "block": "dev"}.get(kind)
    src = (f"<source {attr}='{source}'/>" if attr else
           "<source protocol='rbd' name='pool/img'/>" if kind == "network" else
           f"<source pool='{source.split('/')[0]}' volume='{source.split('/')[1]}'/>")
    return f"<disk type='{kind}' device='disk'>{src}<target dev='vda'/>{extra}</disk>"


def xml(*disks):
    return f"<domain><name>x</name><devices>{''.join(disks)}</devices></domain>"


def no_pool(pool, volume):
    raise AssertionError("no volume disks here")


def test_disks_on_network_storage_are_shared_and_local_ones_are_copied():
    disks = migration.domain_disks(xml(
        disk("file", "/var/lib/libvirt/images/web.qcow2"),      # on NFS
        disk("file", "/var/lib/libvirt/images/local/db.qcow2"),  # on a local xfs
        disk("network", ""),                                    # Ceph RBD
        disk("block", "/dev/vg0/data"),                         # a local device
    ), MOUNTINFO, no_pool)
    assert [(d.source, d.shared) for d in disks] == [
        ("/var/lib/libvirt/images/web.qcow2", True),
        ("/var/lib/libvirt/images/local/db.qcow2", False),
        ("pool/img", True),
        ("/dev/vg0/data", False)]


def test_read_only_and_shareable_disks_and_cdroms_are_not_migrated_storage():
    disks = migration.domain_disks(xml(
        disk("file", "/iso/a.iso", "<readonly/>"),
        disk("file", "/shared/b.img", "<shareable/>"),
        "<disk type='file' device='cdrom'><source file='/iso/c.iso'/></disk>",
        "<disk type='file' device='disk'><target dev='vdb'/></disk>",  # no medium
    ), MOUNTINFO, no_pool)
    assert disks == []


def test_volumes_are_judged_by_their_pool_type_or_their_path():
    pools = {"rbdpool": ("rbd", "rbdpool/v1"), "default": ("dir", "/home/v2.qcow2"),
             "nfs": ("dir", "/var/lib/libvirt/images/v3.qcow2")}
    disks = migration.domain_disks(xml(
        disk("volume", "rbdpool/v1"), disk("volume", "default/v2"), disk("volume", "nfs/v3"),
    ), MOUNTINFO, lambda pool, volume: pools[pool])
    assert [d.shared for d in disks] == [True, False, True]


def test_auto_copies_every_disk_once_one_is_local_and_an_explicit_choice_stands():
    local = migration.Disk("vda", "/home/a.img", False)
    shared = migration.Disk("vdb", "pool/img", True)
    assert migration.storage_copy("auto", [shared, local]) == "all"
    assert migration.storage_copy("auto", [shared]) == "none"
    assert migration.storage_copy("auto", []) == "none"      # diskless
    assert migration.storage_copy("none", [local]) == "none"
    assert migration.storage_copy("incremental", [local]) == "incremental"


def test_the_flags_ask_for_peer_to_peer_persistent_on_the_target_and_gone_from_here():
    plan = migration.Plan(TARGET, live=True, copy_storage="all", bandwidth_mib_s=50,
                          auto_converge=True)
    for flag in ("PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "LIVE", "AUTO_CONVERGE",
                 "NON_SHARED_DISK", "ABORT_ON_ERROR"):
        assert plan.flags & getattr(libvirt, f"VIR_MIGRATE_{flag}"), flag
    assert plan.params == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 50}

    offline = migration.Plan(TARGET, live=False, copy_storage="incremental",
                             bandwidth_mib_s=None, auto_converge=False)
    for flag in ("LIVE", "AUTO_CONVERGE", "NON_SHARED_DISK", "UNSAFE", "OFFLINE"):
        assert not offline.flags & getattr(libvirt, f"VIR_MIGRATE_{flag}"), flag
    assert offline.flags & libvirt.VIR_MIGRATE_NON_SHARED_INC
    assert offline.params == {}        # no limit: libvirt's own default


def libvirt_error(code, message, domain=libvirt.VIR_FROM_QEMU):
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, 0, 0)
    return exc


@pytest.mark.parametrize(("code", "domain", "said", "wire", "reason", "advice"), [
    # What libvirt 9 said in tests/integration/test_live_migration.py, and elsewhere.
    (libvirt.VIR_ERR_MIGRATE_UNSAFE, libvirt.VIR_FROM_QEMU,
     "Unsafe migration: Migration without shared storage is unsafe",
     "failed", "no_shared_storage", "copy_storage=all"),
    (libvirt.VIR_ERR_MIGRATE_UNSAFE, libvirt.VIR_FROM_QEMU,
     "Unsafe migration: Migration may lead to data corruption if disks use cache other "
     "than none or directsync", "failed", "unsafe", "cache"),
    (libvirt.VIR_ERR_CPU_INCOMPATIBLE, libvirt.VIR_FROM_CPU,
     "the CPU is incompatible with host CPU: Host CPU does not provide required features: "
     "avx512f", "failed", "incompatible_cpu", "CPU model both hosts"),
    (libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU,
     "operation failed: guest CPU doesn't match specification: the CPU is incompatible "
     "with host CPU", "failed", "incompatible_cpu", "another target"),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU,
     "internal error: Attempt to migrate guest to the same host "
     "ae5fb279-8c7f-480b-ab0c-d13b03e96300", "failed", "same_host", "host_uuid"),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC,
     "unable to connect to server at '198.18.0.9:16509': No route to host",
     "failed", "target_unreachable", "migration_uri"),
    (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_FROM_RPC, "authentication failed",
     "failed", "target_unreachable", "listens"),
    (libvirt.VIR_ERR_OPERATION_ABORTED, libvirt.VIR_FROM_QEMU,
     "operation aborted: migration out: canceled by client", "failed", "aborted",
     "keeps running here"),
    (libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_FROM_TEST,
     "argument unsupported: p2p migration is not supported by the source host",
     "unsupported", "unsupported", "cannot migrate"),
    (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU,
     "Requested operation is not valid: domain is not running", "conflict", "busy",
     "another job"),
    (libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU,
     "operation failed: migration out job: unexpectedly failed", "failed", "libvirt",
     "libvirtd logs"),
])
def test_each_libvirt_refusal_becomes_a_documented_code_and_reason(
        code, domain, said, wire, reason, advice):
    err = migration.migration_error(libvirt_error(code, said, domain), "web-1", TARGET)
    assert (err.code.value, err.details["reason"]) == (wire, reason)
    assert reason in migration.REASONS
    assert said in err.message and advice in err.message
    assert err.message.startswith("migrate web-1: ")
    assert err.details["libvirt_code"] == code and err.details["target_uri"] == TARGET


def test_the_schema_lists_exactly_the_reasons_the_agent_gives():
    data = SCHEMA.events["domain.migration"].data
    assert tuple(data["properties"]["error"]["properties"]["reason"]["enum"]) == \
        migration.REASONS


@pytest.mark.parametrize("uri", [
    "qemu+tls://kvm02.example.net/system", "qemu+tcp://198.18.0.2/system",
    "qemu+ssh://root@kvm02/system", "qemu+tls://[2001:db8::2]:16514/system",
])
def test_target_uris_over_the_network_are_accepted(uri):
    assert migration.TARGET_URI_RE.fullmatch(uri)
    SCHEMA.methods["domain.migrate"].validate_args({"name": "a", "target_uri": uri})


@pytest.mark.parametrize("uri", [
    "qemu:///system",                                       # this host itself
    "qemu+ext:///system?command=/tmp/evil",                 # runs a program
    "qemu+ssh://kvm02/system?keyfile=/root/.ssh/id_rsa",    # any query
    "qemu+tls://kvm02/session",                             # another daemon
    "qemu+tls://kvm02/system\n",
    "xen+tls://kvm02/system", "test:///default",
])
def test_target_uris_that_could_make_libvirt_run_or_read_something_are_refused(uri):
    assert not migration.TARGET_URI_RE.fullmatch(uri)
    with pytest.raises(RemoteError) as err:
        SCHEMA.methods["domain.migrate"].validate_args({"name": "a", "target_uri": uri})
    assert err.value.details["path"] == "args.target_uri"


def test_job_figures_are_renamed_with_their_units_and_unknown_ones_dropped():
    stats = {"type": 2, "operation": 5, "time_elapsed": 7477, "downtime": 16,
             "memory_remaining": 4759552, "data_remaining": 4759552, "disk_bps": 1,
             "memory_dirty_rate": 3, "errmsg": "text"}
    assert migration.job_figures(stats) == {
        "elapsed_ms": 7477, "downtime_ms": 16, "memory_remaining_bytes": 4759552,
        "data_remaining_bytes": 4759552, "dirty_pages_per_s": 3}


# --------------------------------------------------- the agent on the test driver
@pytest.fixture
def virt():
    cfg = copy.deepcopy(CONFIG_DEFAULTS)
    cfg["migration_uri"] = "qemu+tls://kvm01.example.net/system"
    conn = open_connection("")
    agent = VirtAgent(cfg, host_id="kvm01", conn=conn,
                      templates=templates_from_config(cfg["templates"]))
    events = Events()
    agent.attach(events)
    agent.start()
    yield agent, events
    agent.stop()
    conn.close()


def test_the_agent_offers_its_migration_uri_as_a_fact(virt):
    agent, _ = virt
    assert agent.facts()["migration_uri"] == "qemu+tls://kvm01.example.net/system"
    bare = VirtAgent(copy.deepcopy(CONFIG_DEFAULTS), host_id="kvm02", conn=agent.conn,
                     templates={})
    assert "migration_uri" not in bare.facts()


def test_a_migration_the_hypervisor_cannot_do_is_unsupported_and_reported(virt):
    agent, events = virt
    call(agent, "domain.define", name="web-1", template="web", start=True)
    with pytest.raises(RemoteError) as err:
        call(agent, "domain.migrate", name="web-1", target_uri=TARGET, target_host="kvm02")
    assert err.value.code.value == "unsupported"
    assert err.value.details["reason"] == "unsupported"
    failed = [d for e, d in events.items if e == "domain.migration"]
    assert failed[-1]["status"] == "failed" and failed[-1]["error"]["reason"] == "unsupported"
    SCHEMA.events["domain.migration"].data_validator.validate(failed[-1])
    assert call(agent, "domain.xml", name="web-1")     # still here


def test_only_a_running_domain_to_another_host_is_migrated(virt):
    agent, _ = virt
    call(agent, "domain.define", name="web-2", template="web")
    with pytest.raises(RemoteError) as err:
        call(agent, "domain.migrate", name="web-2", target_uri=TARGET)
    assert err.value.code.value == "conflict" and "not running" in err.value.message
    with pytest.raises(RemoteError) as err:
        call(agent, "domain.migrate", name="web-2", target_uri=TARGET, target_host="kvm01")
    assert err.value.code.value == "invalid_args"
    assert err.value.details["path"] == "args.target_host"
    with pytest.raises(RemoteError) as err:
        call(agent, "domain.migrate", name="nosuch", target_uri=TARGET)
    assert err.value.code.value == "not_found"


def test_aborting_when_no_migration_runs_is_a_conflict(virt):
    agent, _ = virt
    call(agent, "domain.define", name="web-3", template="web", start=True)
    with pytest.raises(RemoteError) as err:
        call(agent, "domain.migrate_abort", name="web-3")
    assert err.value.code.value == "conflict"
    assert "no migration of web-3" in err.value.message


# ------------------------------------------------- the console's side (in memory)
@pytest.fixture
def fleet(memory_broker):
    """kvm01 and kvm02 run virt agents on the test driver (kvm02 offers no migration
    URI), web01 runs only the host agent."""
    from console.client import Console
    from hostbus.serving.runtime import AgentRuntime
    from hostbus.transport.memory import MemoryTransport
    from tests.fakes import make_host_agent

    started = []
    for host_id, uri in (("kvm01", "qemu+tls://kvm01.example.net/system"), ("kvm02", "")):
        memory_broker.enroll(host_id, ["virt"])
        cfg = copy.deepcopy(CONFIG_DEFAULTS)
        cfg["migration_uri"] = uri
        conn = open_connection("")
        agent = VirtAgent(cfg, host_id=host_id, conn=conn,
                          templates=templates_from_config(cfg["templates"]))
        transport = MemoryTransport(memory_broker, user=host_id)
        transport.start()
        started.append((AgentRuntime(transport, host_id, [agent], heartbeat_interval=60),
                        conn))
    memory_broker.enroll("web01", ["host"])
    transport = MemoryTransport(memory_broker, user="web01")
    transport.start()
    started.append((AgentRuntime(transport, "web01", [make_host_agent("web01")[0]],
                                 heartbeat_interval=60), None))
    ct = MemoryTransport(memory_broker, user="console")
    ct.start()
    console = Console(ct)
    console.open()
    for runtime, _ in started:
        runtime.start()
    yield console
    console.close()
    for runtime, conn in started:
        runtime.stop("test over")
        if conn is not None:
            conn.close()


def test_the_console_finds_where_a_vm_runs_and_its_targets_uri(fleet):
    from console import migration as planning

    console = fleet
    made = console.call("virt", "domain.define", {"name": "web-9", "template": "web",
                                                  "start": True}, host="kvm02")
    assert made.status == "ok"
    route = planning.plan(console, "web-9", "kvm01", timeout=5)
    assert route == planning.Route("web-9", "kvm02", "kvm01",
                                   "qemu+tls://kvm01.example.net/system")
    assert planning.progress_pattern(route) == "virt.kvm02.domain.migration"


@pytest.mark.parametrize(("name", "to", "code", "words"), [
    ("web-9", "nosuch", "not_found", "no such target: no agent answers as host nosuch"),
    ("web-9", "kvm02", "invalid_args", "already on kvm02"),
    ("web-9", "web01", "unsupported", "runs no virt agent"),
    ("nosuch", "kvm01", "not_found", "no virt host has a domain nosuch"),
])
def test_the_console_says_why_it_cannot_plan_a_migration(fleet, name, to, code, words):
    from console import migration as planning

    console = fleet
    console.call("virt", "domain.define", {"name": "web-9", "template": "web", "start": True},
                 host="kvm02")
    with pytest.raises(RemoteError) as err:
        planning.plan(console, name, to, timeout=1)
    assert err.value.code.value == code and words in err.value.message


def test_a_target_without_a_migration_uri_says_which_setting_to_add(fleet):
    from console import migration as planning

    console = fleet
    console.call("virt", "domain.define", {"name": "web-8", "template": "web", "start": True},
                 host="kvm01")
    with pytest.raises(RemoteError) as err:
        planning.plan(console, "web-8", "kvm02", timeout=5)
    assert err.value.code.value == "unsupported"
    assert "[virt] migration_uri" in err.value.message
    # Given by hand, the URI needs no fact.
    route = planning.plan(console, "web-8", "kvm02", uri="qemu+ssh://kvm02/system")
    assert route.target_uri == "qemu+ssh://kvm02/system"


def test_the_shipped_policy_lets_operators_migrate_and_nobody_else():
    from pathlib import Path

    from hostbus.security.policy import RulesPolicy

    shipped = RulesPolicy.load(Path(__file__).resolve().parents[2] / "etc" / "policy.toml",
                               "kvm01")
    for method in ("domain.migrate", "domain.migrate_abort"):
        assert SCHEMA.methods[method].dangerous
        assert shipped.decide_call("alice", "virt", method, {"name": "web-1"}).allowed
        assert not shipped.decide_call("grafana", "virt", method, {"name": "web-1"}).allowed
        assert not shipped.decide_call("mallory", "virt", method, {"name": "web-1"}).allowed
