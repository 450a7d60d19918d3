"""The placement engine as a whole: weights rank, factors combine, ties break the same
way every time, and properties that must hold whatever the fleet (hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from console.placement import (
    HOST_STATES,
    ONLINE,
    Fleet,
    HostView,
    PlacementConfig,
    PlacementRequest,
    VmView,
    load_over_window,
    place,
)
from console.placement.filters import Step
from console.placement.weights import WEIGHTS


def scores(weight: str, request: PlacementRequest, hosts: list[HostView],
           vms: list[VmView] = ()) -> dict[str, float]:
    fleet = Fleet(hosts, vms)
    return WEIGHTS[weight](Step(fleet, request), [h.name for h in hosts])


REQ = PlacementRequest(vcpus=1, memory_mib=1024)


def test_memory_free_prefers_the_host_with_most_memory_left():
    hosts = [HostView("a", cpus=4, memory_mib=5120), HostView("b", cpus=4, memory_mib=3072),
             HostView("c", cpus=4, memory_mib=1024)]
    assert scores("memory_free", REQ, hosts) == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_vcpu_free_prefers_the_host_with_most_vcpus_left():
    hosts = [HostView("a", cpus=1, memory_mib=4096), HostView("b", cpus=2, memory_mib=4096)]
    found = scores("vcpu_free", REQ, hosts)  # 4 - 1 = 3 and 8 - 1 = 7 left
    assert found == {"a": 3 / 7, "b": 1.0}


def test_cpu_load_prefers_idle_hosts_and_counts_unknown_as_half_busy():
    hosts = [HostView("a", cpus=4, memory_mib=4096, cpu_load=0.8),
             HostView("b", cpus=4, memory_mib=4096, cpu_load=0.1),
             HostView("c", cpus=4, memory_mib=4096)]
    found = scores("cpu_load", REQ, hosts)
    assert max(found, key=found.get) == "b"
    assert found["c"] == 0.5 and found["a"] < found["c"]


def test_consolidate_prefers_fuller_hosts():
    hosts = [HostView("a", cpus=4, memory_mib=4096), HostView("b", cpus=4, memory_mib=4096)]
    vms = [VmView("x", "b", 1, 2048)]
    found = scores("consolidate", REQ, hosts, vms)
    assert found == {"a": 0.0, "b": 0.5}


def test_factors_decide_between_spreading_and_packing():
    hosts = [HostView("a", cpus=4, memory_mib=4096), HostView("b", cpus=4, memory_mib=4096)]
    vms = [VmView("x", "b", 1, 2048)]
    spread = place(REQ, hosts, vms)
    assert spread.chosen == {"vm-1": "a"}
    pack = place(REQ, hosts, vms, config=PlacementConfig(weights={
        "memory_free": 0.0, "vcpu_free": 0.0, "cpu_load": 0.0, "consolidate": 1.0}))
    assert pack.chosen == {"vm-1": "b"}


def test_ties_go_to_the_first_host_by_name_whatever_the_order_given():
    hosts = [HostView(n, cpus=4, memory_mib=4096) for n in ("c", "a", "b")]
    assert place(REQ, hosts).chosen == {"vm-1": "a"}
    assert place(REQ, list(reversed(hosts))).chosen == {"vm-1": "a"}


def test_a_request_of_several_vms_spreads_and_counts_each_placed():
    hosts = [HostView(n, cpus=4, memory_mib=2048) for n in "ab"]
    result = place(PlacementRequest(vcpus=1, memory_mib=1024, count=4), hosts)
    assert sorted(result.chosen.values()) == ["a", "a", "b", "b"]
    over = place(PlacementRequest(vcpus=1, memory_mib=1024, count=5), hosts)
    assert not over.ok and over.refused_vm == "vm-5" and len(over.chosen) == 4
    assert over.explain().startswith("no host for vm-5 (4 placed before it): a memory 0 MiB")


def test_a_fleet_is_left_as_it_was_by_a_decision():
    fleet = Fleet([HostView("a", cpus=4, memory_mib=4096)])
    place(PlacementRequest(vcpus=1, memory_mib=1024, count=3), fleet)
    assert fleet.memory_room("a") == 4096 and fleet.vcpu_room("a") == 16


def test_load_over_window_averages_recent_samples_only():
    samples = [(0.0, 1.0), (100.0, 0.2), (150.0, 0.4)]
    assert load_over_window(samples, now=160.0, window_s=100.0) == 0.30000000000000004
    assert load_over_window(samples, now=1000.0, window_s=60.0) is None


# ------------------------------------------------------------------ properties
host_names = st.sampled_from([f"h{i}" for i in range(6)])
hosts_st = st.lists(st.builds(
    HostView, name=host_names, state=st.sampled_from(HOST_STATES),
    cpus=st.integers(1, 3), memory_mib=st.integers(0, 16384),
    free_memory_mib=st.none() | st.integers(0, 16384),
    cpu_load=st.none() | st.floats(0, 1), labels=st.just({})),
    min_size=0, max_size=6, unique_by=lambda h: h.name)
vms_st = st.lists(st.builds(
    VmView, name=st.text("abc", min_size=1, max_size=4), host=host_names,
    vcpus=st.integers(1, 4), memory_mib=st.integers(0, 4096),
    state=st.sampled_from(["running", "shutoff", "paused"]), ha=st.booleans(),
    groups=st.lists(st.sampled_from(["g1", "g2"]), max_size=2).map(tuple)), max_size=12)
requests_st = st.builds(
    PlacementRequest, vcpus=st.integers(1, 12), memory_mib=st.integers(1, 8192),
    count=st.integers(1, 4), pinned_hosts=st.lists(host_names, max_size=2).map(tuple),
    affinity_groups=st.lists(st.sampled_from(["g1", "g2"]), max_size=1).map(tuple),
    anti_affinity_groups=st.lists(st.sampled_from(["g1", "g2"]), max_size=1).map(tuple),
    ha=st.booleans(), ha_reservation=st.booleans())


@settings(max_examples=300, deadline=None)
@given(hosts_st, vms_st, requests_st)
def test_never_places_on_a_filtered_host_nor_past_memory_or_vcpus(hosts, vms, request):
    known = {h.name for h in hosts}
    vms = [vm for vm in vms if vm.host in known]
    result = place(request, hosts, vms)
    fleet = Fleet(hosts, vms)
    by_name = {h.name: h for h in hosts}
    for vm_name, host in result.chosen.items():
        assert by_name[host].state == ONLINE
        assert not request.pinned_hosts or host in request.pinned_hosts
        assert fleet.memory_room(host) >= request.memory_mib
        assert fleet.vcpu_room(host) >= request.vcpus
        if request.anti_affinity_groups:
            assert not any(fleet.load[host].groups.get(g) for g in request.anti_affinity_groups)
        fleet.add(VmView(vm_name, host, request.vcpus, request.memory_mib, ha=request.ha,
                         groups=request.groups()), unreported=True)
    if not result.ok:
        assert set(result.filtered) == known  # every host is accounted for
        assert all(result.filtered.values())


@settings(max_examples=200, deadline=None)
@given(hosts_st, vms_st, requests_st)
def test_the_same_question_gets_the_same_answer_whatever_the_order(hosts, vms, request):
    known = {h.name for h in hosts}
    vms = [vm for vm in vms if vm.host in known]
    assert place(request, hosts, vms) == place(request, list(reversed(hosts)),
                                               list(reversed(vms)))


@settings(max_examples=200, deadline=None)
@given(hosts_st, vms_st, requests_st)
def test_ha_reservation_is_never_broken_by_a_placement(hosts, vms, request):
    known = {h.name for h in hosts}
    vms = [vm for vm in vms if vm.host in known]
    request = PlacementRequest(**{**request.__dict__, "ha_reservation": True})

    def kept(fleet: Fleet) -> set[str]:
        """Hosts whose largest HA VM fits on another online host."""
        out = set()
        for name, load in fleet.load.items():
            need = load.largest_ha()
            if need is None or name not in fleet.hosts:
                continue
            if any(o != name and fleet.hosts[o].state == ONLINE and
                   fleet.memory_room(o) >= need[0] and fleet.vcpu_room(o) >= need[1]
                   for o in fleet.hosts):
                out.add(name)
        return out

    fleet = Fleet(hosts, vms)
    before = kept(fleet)
    result = place(request, fleet)
    for vm_name, host in result.chosen.items():
        largest = fleet.load[host].largest_ha()
        fleet.add(VmView(vm_name, host, request.vcpus, request.memory_mib, ha=request.ha,
                         groups=request.groups()), unreported=True)
        after = kept(fleet)
        assert before <= after, (before, after)
        if request.ha and (largest is None or (request.memory_mib, request.vcpus) > largest):
            assert host in after  # its new largest HA VM can be restarted elsewhere
        before = after


@settings(max_examples=300, deadline=None)
@given(hosts_st, vms_st, requests_st)
def test_each_filters_whole_list_form_keeps_exactly_the_hosts_it_passes(hosts, vms, request):
    from console.placement.filters import BATCHES, FILTERS, batch

    known = {h.name for h in hosts}
    fleet = Fleet(hosts, [vm for vm in vms if vm.host in known])
    names = fleet.names()
    for name in FILTERS:
        step = Step(fleet, request)
        one_by_one = [n for n in names if FILTERS[name](step, n) is None]
        assert batch(name)(Step(fleet, request), names) == one_by_one, name
    assert set(BATCHES) <= set(FILTERS)


@settings(max_examples=200, deadline=None)
@given(hosts_st, vms_st, st.lists(st.integers(0, 11), max_size=12))
def test_the_fleet_kept_by_adds_and_removes_equals_one_built_afresh(hosts, vms, removed):
    known = {h.name for h in hosts}
    vms = [vm for vm in vms if vm.host in known]
    fleet = Fleet(hosts)
    fleet.ha_needs()  # kept from here on
    for vm in vms:
        fleet.add(vm)
    gone = {i for i in removed if i < len(vms)}
    for i in sorted(gone):
        fleet.remove(vms[i])
    left = [vm for i, vm in enumerate(vms) if i not in gone]
    fresh = Fleet(hosts, left)
    assert fleet.ha_needs() == fresh.ha_needs()
    assert list(fleet.ha_needs()) == list(fresh.ha_needs())  # in the same order
    assert fleet.room_table() == fresh.room_table()
    assert dict(fleet.group_hosts) == {g: c for g, c in fresh.group_hosts.items()}
