"""Health checks as the agent's config declares them, and the probes that run them.

A check is a table of ``[[health.checks]]``: a ``name``, a ``kind`` and what that kind
needs. Everything a probe runs or connects to comes from this file, never from the
wire: a command's argv is fixed here, and no request can change a check.

    [[health.checks]]
    name = "web"              # unique on this host; letters, digits, . _ -
    kind = "http"             # tcp | http | command | guest_agent
    url = "http://10.0.0.5:8080/health"
    expect_status = [200]     # http: the status codes that pass
    body_match = "ok"         # http: a regular expression the body must contain
    vm = "web01-a"            # the VM this check is about ("" = this host)
    interval = 10.0           # seconds between the starts of two runs
    timeout = 3.0             # seconds one run may take
    fall = 3                  # consecutive failures that make it failing
    rise = 1                  # consecutive passes that make it passing again
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hostbus.errors import ConfigError

KINDS = ("tcp", "http", "command", "guest_agent")
#: What one run's output may hold in an event or a reply.
MAX_OUTPUT = 512
#: What an HTTP check reads of a body to match it.
MAX_BODY = 65536
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_COMMON = {"name", "kind", "vm", "interval", "timeout", "fall", "rise", "description"}
_KIND_KEYS = {
    "tcp": {"host", "port"},
    "http": {"url", "expect_status", "body_match", "tls_verify", "ca_file"},
    "command": {"argv", "expect_exit"},
    "guest_agent": set(),
}


@dataclass(frozen=True)
class Outcome:
    passed: bool
    output: str
    duration_ms: float


@dataclass(frozen=True)
class CheckSpec:
    name: str
    kind: str
    vm: str = ""
    interval: float = 10.0
    timeout: float = 5.0
    fall: int = 3
    rise: int = 1
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """What the check is about: ``vm:NAME`` or ``host``."""
        return f"vm:{self.vm}" if self.vm else "host"


def parse_checks(tables: list[Any], defaults: dict[str, Any]) -> list[CheckSpec]:
    """The checks of ``[[health.checks]]``; ``ConfigError`` names the check and key."""
    specs: list[CheckSpec] = []
    for i, table in enumerate(tables):
        where = f"[[health.checks]] #{i + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: name = {name!r}: give a name of letters, digits "
                              "and . _ - (at most 64)")
        where = f"[[health.checks]] {name!r}"
        if any(s.name == name for s in specs):
            raise ConfigError(f"{where}: two checks have this name")
        kind = table.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind = {kind!r}: one of {', '.join(KINDS)}")
        unknown = set(table) - _COMMON - _KIND_KEYS[kind]
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a "
                              f"{kind} check (known: "
                              f"{', '.join(sorted(_COMMON | _KIND_KEYS[kind]))})")
        common = {k: table.get(k, defaults[k]) for k in ("interval", "timeout", "fall", "rise")}
        for key, low in (("interval", 0.1), ("timeout", 0.1), ("fall", 1), ("rise", 1)):
            value = common[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
                raise ConfigError(f"{where}: {key} = {value!r}: give a number of at least "
                                  f"{low:g}")
        vm = table.get("vm", "")
        if not isinstance(vm, str) or len(vm) > 255:
            raise ConfigError(f"{where}: vm = {vm!r}: the domain's name, or leave it out")
        options = {k: v for k, v in table.items() if k in _KIND_KEYS[kind]}
        _check_options(where, kind, options, vm)
        specs.append(CheckSpec(name=name, kind=kind, vm=vm,
                               interval=float(common["interval"]),
                               timeout=float(common["timeout"]), fall=int(common["fall"]),
                               rise=int(common["rise"]),
                               description=str(table.get("description", "")),
                               options=options))
    return specs


def _check_options(where: str, kind: str, options: dict[str, Any], vm: str) -> None:
    if kind == "tcp":
        port = options.get("port")
        if not isinstance(options.get("host"), str) or not options["host"] \
                or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}: a tcp check needs host = \"NAME\" and port = N")
    elif kind == "http":
        url = options.get("url")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http",
                                                                                  "https"):
            raise ConfigError(f"{where}: a http check needs url = \"http(s)://...\"")
        statuses = options.setdefault("expect_status", [200])
        if isinstance(statuses, int):
            options["expect_status"] = statuses = [statuses]
        if not isinstance(statuses, list) or not all(isinstance(s, int) for s in statuses):
            raise ConfigError(f"{where}: expect_status = {statuses!r}: a status or a list")
        pattern = options.get("body_match", "")
        try:
            options["body_match"] = re.compile(pattern) if pattern else None
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{where}: body_match = {pattern!r} is not a regular "
                              f"expression: {exc}") from None
    elif kind == "command":
        argv = options.get("argv")
        if not isinstance(argv, list) or not argv or \
                not all(isinstance(a, str) for a in argv) or not argv[0].startswith("/"):
            raise ConfigError(f"{where}: a command check needs argv = [\"/absolute/path\", "
                              "\"arg\", ...] (run as is, no shell)")
        if not isinstance(options.setdefault("expect_exit", 0), int):
            raise ConfigError(f"{where}: expect_exit must be a number")
    elif kind == "guest_agent" and not vm:
        raise ConfigError(f"{where}: a guest_agent check needs vm = \"DOMAIN\"")


def bounded(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_OUTPUT else text[:MAX_OUTPUT - 3] + "..."


# ------------------------------------------------------------------------- probes
Probe = Callable[[CheckSpec], tuple[bool, str]]


def probe_tcp(spec: CheckSpec) -> tuple[bool, str]:
    host, port = spec.options["host"], spec.options["port"]
    try:
        with socket.create_connection((host, port), timeout=spec.timeout):
            return True, f"connected to {host}:{port}"
    except OSError as exc:
        return False, f"cannot connect to {host}:{port}: {exc.strerror or exc}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer to check, not a place to go


def probe_http(spec: CheckSpec) -> tuple[bool, str]:
    url = spec.options["url"]
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context(cafile=spec.options.get("ca_file") or None)
        if spec.options.get("tls_verify", True) is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    # No proxy from the environment: a check asks the service itself.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "hostbus-health"}),
                         timeout=spec.timeout) as response:
            status, body = response.status, response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_BODY) if exc.fp else b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"GET {url}: {reason}"
    text = body.decode("utf-8", "replace")
    if status not in spec.options["expect_status"]:
        return False, f"GET {url}: status {status}, expected " \
                      f"{'/'.join(map(str, spec.options['expect_status']))}: {text}"
    match = spec.options["body_match"]
    if match is not None and not match.search(text):
        return False, f"GET {url}: status {status}, body does not match " \
                      f"{match.pattern!r}: {text}"
    return True, f"GET {url}: status {status}"


def probe_command(spec: CheckSpec) -> tuple[bool, str]:
    argv = spec.options["argv"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=spec.timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} did not finish within {spec.timeout:g} s"
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
    output = (done.stdout + done.stderr).strip()
    if done.returncode != spec.options["expect_exit"]:
        return False, f"exit {done.returncode}: {output}"
    return True, f"exit {done.returncode}: {output}"


def guest_agent_probe(uri: str) -> Probe:
    """QEMU guest agent ``guest-ping`` through libvirt (libvirt-python's libvirt_qemu),
    on a connection opened per run: a check must not hold a dead one."""

    def probe(spec: CheckSpec) -> tuple[bool, str]:
        try:
            import libvirt
            import libvirt_qemu
        except ImportError:
            return False, "libvirt-python is not installed on this host"
        try:
            conn = libvirt.open(uri or None)
        except libvirt.libvirtError as exc:
            return False, f"cannot open libvirt {uri or '(default)'}: {exc}"
        try:
            dom = conn.lookupByName(spec.vm)
            libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-ping"}',
                                          max(1, int(spec.timeout)), 0)
            return True, f"guest agent of {spec.vm} answered"
        except libvirt.libvirtError as exc:
            return False, f"guest agent of {spec.vm}: {exc}"
        finally:
            conn.close()

    return probe


def run_probe(probe: Probe, spec: CheckSpec) -> Outcome:
    """One run, whatever the probe raises: an exception is a failed run, said."""
    started = time.perf_counter()
    try:
        passed, output = probe(spec)
    except Exception as exc:  # a probe's bug must not stop its check
        passed, output = False, f"the check could not run: {type(exc).__name__}: {exc}"
    return Outcome(passed, bounded(output), round((time.perf_counter() - started) * 1000, 1))
