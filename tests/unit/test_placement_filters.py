"""The placement engine's filters, one by one: each rules out what it should, says why,
and lets the rest through."""

from console.placement import (
    Fleet,
    HostView,
    PlacementConfig,
    PlacementRequest,
    TemplateLimits,
    VmView,
    place,
)
from console.placement.filters import FILTERS, Step


def check(name: str, request: PlacementRequest, hosts: list[HostView],
          vms: list[VmView] = (), config: PlacementConfig | None = None) -> dict[str, str | None]:
    fleet = Fleet(hosts, vms, config)
    step = Step(fleet, request)
    return {h.name: FILTERS[name](step, h.name) for h in hosts}


SMALL = PlacementRequest(vcpus=1, memory_mib=1024)


def test_host_state_lets_only_online_hosts_take_vms():
    hosts = [HostView(n, state=n, cpus=4, memory_mib=4096) for n in
             ("online", "offline", "unresponsive", "maintenance", "standby")]
    assert check("host_state", SMALL, hosts) == {
        "online": None, "offline": "offline", "unresponsive": "unresponsive",
        "maintenance": "maintenance", "standby": "standby"}


def test_memory_counts_running_vms_the_reserve_and_the_hosts_own_report():
    hosts = [HostView("a", cpus=4, memory_mib=2048),
             HostView("b", cpus=4, memory_mib=4096, free_memory_mib=512),
             HostView("c", cpus=4, memory_mib=4096)]
    vms = [VmView("x", "a", 1, 1536), VmView("off", "c", 1, 4096, state="shutoff")]
    assert check("memory", SMALL, hosts, vms) == {
        "a": "memory 512 MiB free < 1024 needed",
        "b": "memory 512 MiB free < 1024 needed", "c": None}
    reserved = PlacementConfig(host_reserved_memory_mib=3500)
    assert check("memory", SMALL, hosts[2:], config=reserved) == {
        "c": "memory 596 MiB free < 1024 needed"}


def test_memory_overcommit_gives_more_room():
    hosts = [HostView("a", cpus=4, memory_mib=1024)]
    vms = [VmView("x", "a", 1, 1024)]
    assert check("memory", SMALL, hosts, vms)["a"] is not None
    assert check("memory", SMALL, hosts, vms,
                 PlacementConfig(memory_overcommit=2.0))["a"] is None


def test_vcpus_use_the_overcommit_ratio_or_the_hosts_own_capacity():
    hosts = [HostView("a", cpus=2, memory_mib=8192), HostView("b", cpus=2, memory_mib=8192,
                                                             vcpu_capacity=16)]
    vms = [VmView(f"x{i}", h, 4, 10) for i, h in enumerate("ab")]
    big = PlacementRequest(vcpus=5, memory_mib=10)
    found = check("vcpus", big, hosts, vms, PlacementConfig(vcpu_overcommit=4.0))
    assert found == {"a": "vCPUs 4 free < 5 needed (capacity 8)", "b": None}


def test_cpu_load_over_the_window_filters_busy_hosts():
    hosts = [HostView("busy", cpus=4, memory_mib=4096, cpu_load=0.95),
             HostView("calm", cpus=4, memory_mib=4096, cpu_load=0.2),
             HostView("unknown", cpus=4, memory_mib=4096)]
    found = check("cpu_load", SMALL, hosts, config=PlacementConfig(max_cpu_load=0.9,
                                                                   cpu_load_window_s=600))
    assert found == {"busy": "CPU load 95% over the last 600 s > 90%", "calm": None,
                     "unknown": None}


def test_pinning_keeps_to_the_pinned_hosts():
    hosts = [HostView("a", cpus=4, memory_mib=4096), HostView("b", cpus=4, memory_mib=4096)]
    req = PlacementRequest(vcpus=1, memory_mib=10, pinned_hosts=("b",))
    assert check("pinning", req, hosts) == {"a": "not among the pinned hosts (b)", "b": None}


def test_affinity_follows_the_group_and_refuses_a_split_group():
    hosts = [HostView(n, cpus=4, memory_mib=4096) for n in "abc"]
    req = PlacementRequest(vcpus=1, memory_mib=10, affinity_groups=("db",))
    assert check("affinity", req, hosts) == dict.fromkeys("abc")  # no member yet
    together = [VmView("db1", "b", 1, 10, groups=("db",))]
    assert check("affinity", req, hosts, together) == {
        "a": "affinity group db runs on b", "b": None, "c": "affinity group db runs on b"}
    split = [*together, VmView("db2", "c", 1, 10, groups=("db",))]
    assert check("affinity", req, hosts, split)["b"] == \
        "affinity group db is split over b, c; move its VMs together first"


def test_anti_affinity_keeps_members_apart_and_ignores_stopped_ones():
    hosts = [HostView(n, cpus=4, memory_mib=4096) for n in "ab"]
    req = PlacementRequest(vcpus=1, memory_mib=10, anti_affinity_groups=("web",))
    vms = [VmView("w1", "a", 1, 10, groups=("web",)),
           VmView("w2", "b", 1, 10, groups=("web",), state="shutoff")]
    assert check("anti_affinity", req, hosts, vms) == {
        "a": "already runs a VM of anti-affinity group web", "b": None}


def test_labels_and_templates():
    tpl = {"web": TemplateLimits(1, 1024, 4, 4096)}
    hosts = [HostView("a", cpus=4, memory_mib=4096, labels={"rack": "r1"}, templates=tpl),
             HostView("b", cpus=4, memory_mib=4096, labels={"rack": "r2"}, templates={})]
    req = PlacementRequest(vcpus=2, memory_mib=2048, template="web", labels={"rack": "r1"})
    assert check("labels", req, hosts) == {"a": None, "b": "rack is 'r2', not 'r1'"}
    assert check("template", req, hosts) == {"a": None, "b": "does not offer template 'web'"}
    huge = PlacementRequest(vcpus=8, memory_mib=2048, template="web")
    assert check("template", huge, hosts)["a"] == \
        "template 'web' allows at most 4 vCPUs and 4096 MiB, not 8 and 2048"


def test_ha_reservation_keeps_room_to_restart_the_largest_ha_vm_of_any_host():
    # a runs a 3 GiB HA VM; only b has room to restart it. Taking b's room refuses b.
    hosts = [HostView("a", cpus=8, memory_mib=4096), HostView("b", cpus=8, memory_mib=4096),
             HostView("c", cpus=8, memory_mib=2048)]
    vms = [VmView("db", "a", 2, 3072, ha=True)]
    req = PlacementRequest(vcpus=1, memory_mib=2048)
    found = check("ha_reservation", req, hosts, vms)
    assert found == {"a": None, "c": None, "b": "HA reservation: it is the only host with "
                     "room to restart the largest HA VM of a (3072 MiB, 2 vCPUs)"}
    off = PlacementRequest(vcpus=1, memory_mib=2048, ha_reservation=False)
    assert check("ha_reservation", off, hosts, vms)["b"] is None


def test_a_new_ha_vm_needs_another_host_able_to_restart_it():
    hosts = [HostView("a", cpus=8, memory_mib=4096), HostView("b", cpus=8, memory_mib=2048)]
    req = PlacementRequest(vcpus=1, memory_mib=3072, ha=True)
    assert check("ha_reservation", req, hosts)["a"] == (
        "HA reservation: no other host could restart this HA VM (3072 MiB, 1 vCPUs) if it "
        "failed")


def test_a_refusal_names_every_host_and_why():
    hosts = [HostView("h1", state="maintenance", cpus=4, memory_mib=4096),
             HostView("h2", cpus=4, memory_mib=4096, free_memory_mib=512)]
    result = place(PlacementRequest(vcpus=1, memory_mib=1024), hosts)
    assert not result.ok
    assert result.explain() == \
        "no host for vm-1: h1 maintenance; h2 memory 512 MiB free < 1024 needed"
    assert result.to_dict()["filtered"] == {"h1": "maintenance",
                                            "h2": "memory 512 MiB free < 1024 needed"}
