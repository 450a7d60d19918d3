#!/usr/bin/env python3
"""Two real hypervisor hosts on one machine, for trying and testing live migration.

Each host is a libvirt daemon of its own in its own network, mount and UTS namespaces:
its own hostname, its own /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt
and /var/log/libvirt (folders under the pair's directory, bound over the real ones),
its own host_uuid (libvirt refuses a migration to a host with the same UUID), and one end
of a veth pair with an address of its own. The two daemons reach each other over the
veth pair only: libvirt's peer-to-peer connection and QEMU's migration stream both go
from one namespace to the other. Guests run under QEMU's software emulation (TCG), so no
/dev/kvm is needed.

With --broker-url, a hostbus-agent (the virt agent) runs for each host, inside that
host's mount and UTS namespaces (so qemu:///system is that host's daemon) but in the
machine's network namespace (so it reaches the broker on 127.0.0.1).

    sudo .venv/bin/python scripts/hypervisor_pair.py up --broker-url amqp://...
    sudo .venv/bin/python scripts/hypervisor_pair.py guest demo1      # on the first host
    .venv/bin/hostbus vm demo1 migrate --to hv-b
    sudo .venv/bin/python scripts/hypervisor_pair.py serial demo1     # its counter
    sudo .venv/bin/python scripts/hypervisor_pair.py down

Everything it starts is stopped by ``down`` (guests, daemons, agents, namespaces), and
the tests call the same code. Needs root, iproute2, util-linux, libvirt-daemon-system,
qemu-system-x86 and binutils (for the guest, a 512-byte boot sector built from
scripts/counter_guest.s).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST_SOURCE = Path(__file__).resolve().parent / "counter_guest.s"
DEFAULT_DIR = Path("/tmp/hostbus-hypervisor-pair")
#: The veth pair's addresses: RFC 2544's range for network benchmarks, never routed,
#: and private to the pair's two namespaces (nothing else is on that link).
ADDRESSES = ("198.18.0.1", "198.18.0.2")
#: The folders each host has of its own, bound over the machine's.
PRIVATE_DIRS = ("etc/libvirt", "run/libvirt", "var/lib/libvirt", "var/cache/libvirt",
                "var/log/libvirt")
COUNT_LINE = re.compile(rb"hostbus-guest count (\d+)\r?\n")


class PairError(RuntimeError):
    """Something the set-up could not do; the message says what and how to fix it."""


@dataclass
class Host:
    name: str               # hostname, hostbus host id
    address: str            # on the veth pair
    netns: str
    veth: str
    root: str               # this host's folders
    host_uuid: str
    libvirtd_pid: int = 0
    agent_pid: int = 0

    @property
    def socket(self) -> str:
        return f"{self.root}/run/libvirt/libvirt-sock"

    @property
    def local_uri(self) -> str:
        """This host's daemon, from the machine's namespaces (virsh, tests)."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def migration_uri(self) -> str:
        """How the other host's daemon reaches this one (peer-to-peer migration)."""
        return f"qemu+tcp://{self.address}/system"

    def path(self, inside: str) -> Path:
        """A path as this host sees it, from outside: /var/log/libvirt/x -> root/var/..."""
        for private in PRIVATE_DIRS:
            if inside == f"/{private}" or inside.startswith(f"/{private}/"):
                return Path(self.root) / inside.lstrip("/")
        return Path(inside)


@dataclass
class Pair:
    directory: str
    hosts: list[Host] = field(default_factory=list)

    # ------------------------------------------------------------- state file
    @classmethod
    def load(cls, directory: Path | str = DEFAULT_DIR) -> Pair:
        state = Path(directory) / "pair.json"
        if not state.exists():
            raise PairError(f"no hypervisor pair in {directory} (run: {sys.argv[0]} up)")
        data = json.loads(state.read_text())
        return cls(data["directory"], [Host(**h) for h in data["hosts"]])

    def save(self) -> None:
        state = Path(self.directory) / "pair.json"
        state.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise PairError(f"no host {name!r} in this pair; hosts: "
                        f"{', '.join(h.name for h in self.hosts)}")

    # -------------------------------------------------------------------- up
    @classmethod
    def up(cls, directory: Path | str = DEFAULT_DIR, names: tuple[str, str] = ("hv-a", "hv-b"),
           *, timeout: float = 120.0) -> Pair:
        """Make both hosts and start their daemons; on any failure, undo what was done."""
        _check_tools()
        directory = Path(directory).resolve()
        if (directory / "pair.json").exists():
            raise PairError(f"a pair already runs from {directory}: stop it first "
                            f"({sys.argv[0]} down --dir {directory})")
        if directory.exists() and any(directory.iterdir()):
            # down() removes the whole folder: it must hold nothing but the pair.
            raise PairError(f"{directory} is not empty: give the pair a folder of its own")
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        # Names of namespaces and links are machine-wide: derive them from the directory so
        # that two pairs (two developers, two test runs) never collide.
        tag = "hb" + hashlib.sha256(str(directory).encode()).hexdigest()[:7]
        pair = cls(str(directory), [
            Host(name=name, address=address, netns=f"{tag}-{i}", veth=f"{tag}v{i}",
                 root=str(directory / name), host_uuid=str(uuid.uuid4()))
            for i, (name, address) in enumerate(zip(names, ADDRESSES, strict=True))])
        pair.save()
        try:
            pair._make_network()
            for host in pair.hosts:
                pair._start_libvirtd(host)
            deadline = time.monotonic() + timeout
            for host in pair.hosts:
                wait_until(lambda h=host: _answers(h), deadline,
                      f"libvirtd of {host.name} (log: {host.root}/var/log/libvirt/libvirtd.log)")
                _virsh(host, "pool-define-as", "default", "dir", "--target",
                       "/var/lib/libvirt/images")
                _virsh(host, "pool-start", "default")
                _virsh(host, "pool-autostart", "default")
        except BaseException:
            pair.down()
            raise
        return pair

    def _make_network(self) -> None:
        a, b = self.hosts
        for host in self.hosts:
            _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", a.veth, "type", "veth", "peer", "name", b.veth)
        for host in self.hosts:
            _run("ip", "link", "set", host.veth, "netns", host.netns)
            _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.veth)
            _run("ip", "-n", host.netns, "link", "set", host.veth, "up")
            _run("ip", "-n", host.netns, "link", "set", "lo", "up")

    def _start_libvirtd(self, host: Host) -> None:
        root = Path(host.root)
        for private in PRIVATE_DIRS:
            (root / private).mkdir(parents=True, exist_ok=True)
        (root / "var/lib/libvirt/images").mkdir(exist_ok=True)
        (root / "var/log/libvirt/qemu").mkdir(exist_ok=True)
        (root / "etc/libvirt/libvirtd.conf").write_text(
            "# A test hypervisor of scripts/hypervisor_pair.py: plain TCP with no\n"
            "# authentication, reachable only from the other namespace of the pair.\n"
            "# A real host uses TLS (listen_tls) or SSH for peer-to-peer migration.\n"
            "listen_tls = 0\nlisten_tcp = 1\n"
            f'listen_addr = "{host.address}"\nauth_tcp = "none"\n'
            f'host_uuid = "{host.host_uuid}"\n'
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n')
        (root / "etc/libvirt/qemu.conf").write_text(
            "# Guests' output goes to files (no virtlogd of its own), cgroups are left\n"
            "# alone (two daemons on one machine would name their guests' groups alike),\n"
            "# and the address the other host sends the migration stream to is this one.\n"
            'stdio_handler = "file"\ncgroup_controllers = [ ]\nsecurity_driver = "none"\n'
            f'migration_host = "{host.address}"\n')
        # The machine's QEMU capabilities cache spares each new daemon its probe of QEMU
        # (seconds of CPU); libvirt checks each entry and probes again if it is stale.
        cache = Path("/var/cache/libvirt/qemu/capabilities")
        if cache.is_dir():
            shutil.copytree(cache, root / "var/cache/libvirt/qemu/capabilities",
                            dirs_exist_ok=True)
        binds = " ".join(f'mount --bind "$ROOT/{d}" "/{d}";' for d in PRIVATE_DIRS)
        script = (f'set -e; ROOT="$1"; hostname "$2"; {binds} '
                  "exec /usr/sbin/libvirtd --listen --pid-file /run/libvirt/libvirtd.pid")
        log = open(root / "libvirtd.out", "ab")  # noqa: SIM115 - the daemon keeps it
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
             "--propagation", "private", "--", "sh", "-c", script, "sh", host.root,
             host.name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        host.libvirtd_pid = proc.pid
        self.save()

    # ---------------------------------------------------------------- agents
    def start_agents(self, broker_url: str, *, policy: str = "", extra: str = "",
                     timeout: float = 60.0) -> None:
        """Run hostbus-agent (virt) for each host, as an operator would. The host must be
        enrolled on the broker; with no policy file, the pair's own lets anyone do
        anything (a laboratory, not a production host)."""
        python = Path(sys.executable)
        agent_bin = python.parent / "hostbus-agent"
        if not agent_bin.exists():
            raise PairError(f"{agent_bin} not found: run with the Python of hostbus's "
                            "virtual environment (.venv/bin/python)")
        if not policy:
            policy = str(Path(self.directory) / "policy.toml")
            Path(policy).write_text('[[rule]]\nname = "the pair is a laboratory: anyone '
                                    'may do anything"\nallow = true\n')
        for host in self.hosts:
            cfg = Path(host.root) / "agent.toml"
            cfg.write_text(
                f'[broker]\nurl = "{broker_url}"\n'
                f'[agent]\nhost_id = "{host.name}"\nagents = ["virt"]\n'
                f'state_dir = "{host.root}/agent-state"\n'
                f'[security]\npolicy = "{policy}"\n'
                f'[virt]\nuri = "qemu:///system"\ndomain_type = "qemu"\n'
                f'migration_uri = "{host.migration_uri}"\nstats_interval = 0.0\n{extra}')
            log = open(Path(host.root) / "agent.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(
                ["nsenter", "--target", str(host.libvirtd_pid), "--mount", "--uts", "--",
                 str(agent_bin), "--config", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            host.agent_pid = proc.pid
            self.save()
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            wait_until(lambda h=host: _agent_online(h), deadline,
                  f"hostbus-agent of {host.name} (log: {host.root}/agent.log)")

    def stop_agents(self) -> None:
        for host in self.hosts:
            _stop(host.agent_pid)
            host.agent_pid = 0
        self.save()

    # ---------------------------------------------------------------- guests
    def define_guest(self, host_name: str, name: str, *, memory_mib: int = 32,
                     start: bool = True) -> str:
        """Define (and start) the counter guest on one host; returns its domain XML."""
        host = self.host(host_name)
        if memory_mib < 8:
            raise PairError("the counter guest needs at least 8 MiB of memory")
        image = f"/var/lib/libvirt/images/{name}.img"
        build_guest_image(host.path(image), memory_mib)
        _virsh(host, "pool-refresh", "default")
        xml = guest_xml(name, memory_mib, image)
        xml_file = Path(host.root) / f"{name}.xml"
        xml_file.write_text(xml)
        _virsh(host, "define", str(xml_file))
        if start:
            _virsh(host, "start", name)
        return xml

    def serial(self, host_name: str, name: str) -> bytes:
        """What the guest printed on its serial port while it ran on this host."""
        path = self.host(host_name).path(f"/var/log/libvirt/qemu/{name}.serial")
        return path.read_bytes() if path.exists() else b""

    def counts(self, host_name: str, name: str) -> list[int]:
        return [int(n) for n in COUNT_LINE.findall(self.serial(host_name, name))]

    def virsh(self, host_name: str, *args: str) -> str:
        return _virsh(self.host(host_name), *args)

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        """Stop everything the pair started, whatever state it is in; returns what it did."""
        done = []
        for host in self.hosts:
            if _stop(host.agent_pid):
                done.append(f"stopped the agent of {host.name}")
            if host.libvirtd_pid and _alive(host.libvirtd_pid):
                with contextlib.suppress(PairError, subprocess.TimeoutExpired):
                    for dom in _virsh(host, "list", "--name").split():
                        _virsh(host, "destroy", dom)
                        done.append(f"destroyed guest {dom} on {host.name}")
            # A guest outlives its daemon: stop any that is left, by its pid file.
            for pid_file in Path(host.root, "run/libvirt/qemu").glob("*.pid"):
                if pid_file.name == "driver.pid":  # the daemon's own
                    continue
                with contextlib.suppress(ValueError, OSError):
                    if _stop(int(pid_file.read_text().strip())):
                        done.append(f"killed QEMU {pid_file.stem} of {host.name}")
            if _stop(host.libvirtd_pid):
                done.append(f"stopped libvirtd of {host.name}")
        for host in self.hosts:
            if subprocess.run(["ip", "netns", "del", host.netns], capture_output=True,
                              check=False).returncode == 0:
                done.append(f"removed network namespace {host.netns}")
        shutil.rmtree(self.directory, ignore_errors=True)
        return done


# ------------------------------------------------------------------- the guest
def guest_xml(name: str, memory_mib: int, image: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{image}'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/{name}.serial' append='on'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def build_guest_image(path: Path, memory_mib: int) -> None:
    """Assemble the counter guest for this memory size and write it as a 1 MiB raw disk.
    It fills its memory from 1 MiB up to 4 MiB below the top (SeaBIOS keeps its tables
    there) and dirties the first MiB of that once a second."""
    fill_end = (memory_mib - 4) << 20
    symbols = {"FILL_START": 1 << 20, "FILL_END": fill_end, "DIRTY_START": 1 << 20,
               "DIRTY_END": min(2 << 20, fill_end)}
    with tempfile.TemporaryDirectory() as work:
        obj, binary = Path(work, "guest.o"), Path(work, "guest.bin")
        defsyms = [arg for key, value in symbols.items()
                   for arg in ("--defsym", f"{key}={value}")]
        _run("as", "--32", *defsyms, "-o", str(obj), str(GUEST_SOURCE))
        _run("ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o",
             str(binary), str(obj))
        sector = binary.read_bytes()
    if len(sector) != 512:
        raise PairError(f"the guest's boot sector is {len(sector)} bytes, not 512")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as image:
        image.write(sector)
        image.truncate(1 << 20)


# ------------------------------------------------------------------- helpers
def _check_tools() -> None:
    if os.geteuid() != 0:
        raise PairError("network and mount namespaces need root: run with sudo")
    missing = [tool for tool in ("ip", "unshare", "nsenter", "virsh", "as", "ld")
               if shutil.which(tool) is None]
    missing += [p for p in ("/usr/sbin/libvirtd",) if not os.path.exists(p)]
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64")
    if missing:
        raise PairError(f"missing: {', '.join(missing)} (apt-get install iproute2 "
                        "util-linux libvirt-daemon-system qemu-system-x86 binutils)")


def _run(*cmd: str, timeout: float = 60.0) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        raise PairError(f"{' '.join(cmd)} failed ({done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def _virsh(host: Host, *args: str) -> str:
    return _run("virsh", "-q", "-c", host.local_uri, *args)


def _answers(host: Host) -> bool:
    if not _alive(host.libvirtd_pid):
        raise PairError(f"libvirtd of {host.name} exited: see {host.root}/libvirtd.out and "
                        f"{host.root}/var/log/libvirt/libvirtd.log")
    return subprocess.run(["virsh", "-c", host.local_uri, "uri"], capture_output=True,
                          check=False, timeout=30).returncode == 0


def _agent_online(host: Host) -> bool:
    log = (Path(host.root) / "agent.log").read_bytes()
    if b"online as" in log:
        return True
    if not _alive(host.agent_pid):
        last = (log.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise PairError(f"hostbus-agent of {host.name} exited: {last}")
    return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _stop(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; True if it was running."""
    if not _alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(PairError):
        wait_until(lambda: not _alive(pid), deadline, f"process {pid} to exit")
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def wait_until(ready: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``ready`` until the deadline (a daemon's start has no event to wait on),
    backing off from 50 ms to 1 s."""
    pause = 0.05
    while not ready():
        if time.monotonic() > deadline:
            raise PairError(f"gave up waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


# ----------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Two libvirt hypervisors in network namespaces on this machine, for "
                    "live migration (see the module's docstring).")
    parser.add_argument("--dir", default=str(DEFAULT_DIR),
                        help=f"the pair's folders and state (default {DEFAULT_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make both hosts and start their libvirt daemons")
    up.add_argument("--names", default="hv-a,hv-b",
                    help="the two hosts' names: hostnames and hostbus host ids")
    up.add_argument("--broker-url", default=os.environ.get("HOSTBUS_BROKER_URL", ""),
                    help="also run a hostbus-agent (virt) for each host on this broker "
                         "(default: $HOSTBUS_BROKER_URL; none: no agents); enroll the hosts "
                         "first (hostbus broker enroll NAME --agents virt)")
    guest = sub.add_parser("guest", help="define and start the counter guest on a host")
    guest.add_argument("name")
    guest.add_argument("--host", default="", help="default: the first host")
    guest.add_argument("--memory-mib", type=int, default=32)
    serial = sub.add_parser("serial", help="the counter guest's last counts on each host")
    serial.add_argument("name")
    virsh = sub.add_parser("virsh", help="virsh against one host's daemon")
    virsh.add_argument("host")
    virsh.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="the hosts, their URIs and their guests")
    sub.add_parser("down", help="stop and remove everything the pair started")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            names = tuple(args.names.split(","))
            if len(names) != 2:
                parser.error("--names takes two names, separated by a comma")
            pair = Pair.up(args.dir, names)  # type: ignore[arg-type]
            if args.broker_url:
                try:
                    pair.start_agents(args.broker_url)
                except BaseException:
                    pair.down()
                    raise
            _print_status(pair)
        elif args.command == "down":
            for line in Pair.load(args.dir).down():
                print(line)
        elif args.command == "guest":
            pair = Pair.load(args.dir)
            host = args.host or pair.hosts[0].name
            pair.define_guest(host, args.name, memory_mib=args.memory_mib)
            print(f"guest {args.name} ({args.memory_mib} MiB) runs on {host}; its serial "
                  f"output: {pair.host(host).path(f'/var/log/libvirt/qemu/{args.name}.serial')}")
        elif args.command == "serial":
            pair = Pair.load(args.dir)
            for host in pair.hosts:
                counts = pair.counts(host.name, args.name)
                print(f"{host.name}: {len(counts)} counts"
                      + (f", {counts[0]} to {counts[-1]}" if counts else ""))
        elif args.command == "virsh":
            print(Pair.load(args.dir).virsh(args.host, *args.args), end="")
        elif args.command == "status":
            _print_status(Pair.load(args.dir))
    except PairError as exc:
        print(f"hypervisor_pair: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(pair: Pair) -> None:
    for host in pair.hosts:
        guests = ""
        with contextlib.suppress(PairError, subprocess.TimeoutExpired):
            guests = " ".join(_virsh(host, "list", "--all", "--name").split())
        agent = f"agent pid {host.agent_pid}" if _alive(host.agent_pid) else "no agent"
        print(f"{host.name}: {host.address} in netns {host.netns}, libvirtd pid "
              f"{host.libvirtd_pid}, {agent}\n  from here: virsh -c '{host.local_uri}'\n"
              f"  migration URI: {host.migration_uri}\n  guests: {guests or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
