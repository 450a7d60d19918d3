"""``hostbus broker enroll --from FILE``: many hosts at once.

The file is read and every name checked before the broker is touched; the users are
checked against the broker's (none may belong to another vhost or be an administrator);
only then are the hosts enrolled, 500 to a definitions import, and each host's config
written. A host listed twice is refused: two lines would mean two passwords."""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from console.commands.broker import (
    agent_config,
    bad_names,
    check_writable,
    write_secret_file,
)
from console.commands.common import CliError, Exit, emit_json, plural, usage
from hostbus import names

if TYPE_CHECKING:
    from hostbus.broker_admin import BrokerAdmin


def read_hosts(lines: TextIO, default_agents: list[str]) -> list[tuple[str, list[str]]]:
    """``(host, agents)`` a line, every name validated; a usage error names the line."""
    hosts: list[tuple[str, list[str]]] = []
    seen: dict[str, int] = {}
    where = getattr(lines, "name", "the file")
    for number, raw in enumerate(lines, 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise usage(f"{where}, line {number}: expected HOST [AGENT,AGENT...], got "
                        f"{raw.strip()!r}")
        host = words[0]
        agents = ([a for a in words[1].split(",") if a] if len(words) == 2
                  else default_agents)
        try:
            names.validate_host_id(host)
            for agent in agents:
                names.validate_agent_name(agent)
        except ValueError as exc:
            raise usage(f"{where}, line {number}: {exc}") from None
        if host in seen:
            raise usage(f"{where}, line {number}: host {host!r} is listed already (line "
                        f"{seen[host]})")
        seen[host] = number
        hosts.append((host, agents))
    if not hosts:
        raise usage(f"{where} lists no host (one a line: HOST [AGENT,AGENT...])")
    return hosts


def enroll_from_file(admin: BrokerAdmin, vhost: str, lines: TextIO,
                     default_agents: list[str], *, users: bool, queue_type: str,
                     config_dir: str, force: bool, url_of: Callable[[str, str], str],
                     as_json: bool) -> Exit:
    hosts = read_hosts(lines, default_agents)
    passwords: dict[str, str] = {}
    if users:
        try:
            os.makedirs(config_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CliError(Exit.FAILED, f"cannot make {config_dir}: {exc}") from None
        for host, _ in hosts:  # before any user exists: a refusal later strands them
            check_writable(os.path.join(config_dir, f"{host}.toml"), force)
        passwords = {host: secrets.token_urlsafe(24) for host, _ in hosts}
    started = time.monotonic()
    show = sys.stderr.isatty() and not as_json

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\renrolled {done:,} of {total:,} hosts ({time.monotonic() - started:.1f} s)",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)

    with bad_names():  # a name taken by another vhost's identity or an administrator
        admin.enroll_many(vhost, hosts, passwords=passwords or None, queue_type=queue_type,
                          progress=progress)
    for host, agents in hosts if users else ():
        write_secret_file(os.path.join(config_dir, f"{host}.toml"),
                          agent_config(host, url_of(host, passwords[host]), agents), force)
    took = round(time.monotonic() - started, 2)
    if as_json:
        emit_json({"vhost": vhost, "hosts": len(hosts), "users": len(passwords),
                   "config_dir": config_dir if users else None, "seconds": took})
    else:
        print(f"{plural(len(hosts), 'host')} enrolled in vhost {vhost} in {took} s"
              + (f"; a broker user each, configs in {config_dir}/HOST.toml (mode 0600)"
                 if users else " (queues and bindings only)"))
    return Exit.OK
