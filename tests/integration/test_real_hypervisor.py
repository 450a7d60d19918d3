"""A real hypervisor: libvirtd and QEMU (software emulation), one tiny diskless domain
driven through the virt agent over the broker, its lifecycle events observed.

`./run.sh test` installs and starts libvirtd and virtlogd. Run directly, this test
starts them if they are installed; it skips only when they are not (never with CI=true).
"""

import copy
import shutil
import subprocess
import uuid

import pytest

from agents import virt
from hostbus.serving.runtime import AgentRuntime
from hostbus.testing.pytest_plugin import fail_or_skip
from tests.fakes import EventCollector

pytestmark = pytest.mark.integration
URI = "qemu:///system"


def _libvirtd_answers() -> bool:
    done = subprocess.run(["virsh", "-c", URI, "uri"], capture_output=True, check=False,
                          timeout=30)
    return done.returncode == 0


@pytest.fixture(scope="module")
def hypervisor():
    if shutil.which("virsh") is None or shutil.which("qemu-system-x86_64") is None:
        fail_or_skip("libvirt-daemon-system and qemu-system-x86 are not installed "
                     "(./run.sh test)")
    if not _libvirtd_answers():
        for daemon in ("virtlogd", "libvirtd"):
            if subprocess.run(["pgrep", "-x", daemon], check=False).returncode != 0:
                subprocess.run([f"/usr/sbin/{daemon}", "-d"], check=False)
        deadline_tries = 60
        while not _libvirtd_answers() and deadline_tries:
            subprocess.run(["sleep", "1"], check=False)  # a daemon start has no event to await
            deadline_tries -= 1
    if not _libvirtd_answers():
        fail_or_skip(f"libvirtd does not answer at {URI}")
    return URI


TINY = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><video><model type='none'/></video><memballoon model='none'/></devices>
</domain>"""


def test_a_real_qemu_domain_through_the_agent(rabbitmq, console, hypervisor):
    host_id = f"qemu-{uuid.uuid4().hex[:8]}"
    rabbitmq.enroll(host_id, ["virt"])
    cfg = copy.deepcopy(virt.CONFIG_DEFAULTS)
    cfg.update(uri=hypervisor, domain_type="qemu", stats_interval=0, templates={})
    agent = virt.create(cfg, host_id=host_id)
    runtime = AgentRuntime.serve(rabbitmq.url, host_id, [agent], heartbeat_interval=3600,
                                 intervals={"virt": cfg}, check_results=True)
    events = EventCollector()
    console.subscribe([f"virt.{host_id}.domain.lifecycle"], events)
    name = f"hostbus-it-{uuid.uuid4().hex[:6]}"

    def call(method, **args):
        res = console.call("virt", method, args, host=host_id, timeout=120)
        assert res.status == "ok", (method, res.reply and res.reply.error)
        return res.reply.result

    try:
        assert call("node.info")["hypervisor"] == "QEMU"
        call("domain.define", name=name, xml=TINY.format(name=name))
        assert call("domain.start", name=name)["state"] == "running"
        assert call("domain.suspend", name=name)["state"] == "paused"
        assert call("domain.resume", name=name)["state"] == "running"
        assert call("domain.destroy", name=name)["state"] == "shutoff"
        call("domain.undefine", name=name)
        events.wait_for(lambda e: e.data["name"] == name and e.data["event"] == "undefined",
                        timeout=60)
        seen = [e.data["event"] for e, _ in events.events if e.data["name"] == name]
        # QEMU adds events of its own (resumed as it starts, shutdown before stopped):
        # ours must all be there, in this order.
        expected = iter(seen)
        for wanted in ("defined", "started", "suspended", "resumed", "stopped", "undefined"):
            assert wanted in expected, (wanted, seen)
        stopped = next(e for e, _ in events.events
                       if e.data["name"] == name and e.data["event"] == "stopped")
        assert stopped.data["detail"] == "destroyed"
    finally:
        subprocess.run(["virsh", "-c", hypervisor, "destroy", name], capture_output=True,
                       check=False)
        subprocess.run(["virsh", "-c", hypervisor, "undefine", name], capture_output=True,
                       check=False)
        runtime.stop("test over")
        agent.conn.close()
