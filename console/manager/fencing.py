"""The fence step: what makes sure a silent host really is down before its VMs are
started anywhere else (two copies of a VM writing one disk corrupt it).

A silent host whose ping goes unanswered may still run its VMs: only its agent, or its
network to the broker, may have died. So with ``fence_command`` set (for example an
IPMI power-off, ``["ipmitool", "-H", "{host}-ipmi", "-U", "admin", "-E", "chassis",
"power", "off"]``), the manager runs it and restarts the host's HA VMs only if it exits
0. Without one, the unanswered ping is taken as proof, which is safe only where an
agent cannot die without its VMs (libvirt's test driver, whose hypervisor lives in the
agent's process, or hosts whose watchdog reboots them when their agent dies): the
manager says so at start.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

log = logging.getLogger("hostbus.manager")


class Fencer:
    def __init__(self, command: Sequence[str] = (), *, timeout: float = 60.0) -> None:
        """``command``: program and arguments; ``{host}`` in an argument is replaced by
        the host id. Empty: no fence step."""
        self.command = list(command)
        self.timeout = timeout

    def describe(self) -> str:
        if not self.command:
            return ("none: an unanswered ping confirms a host down (safe only where a "
                    "host's VMs die with its agent; set [manager] fence_command)")
        return f"{self.command[0]} (exit 0 confirms a host down)"

    def fence(self, host: str) -> tuple[bool, str]:
        """(whether the host is now known to be down, what was done or why not)."""
        if not self.command:
            return True, "no fence step configured: the unanswered ping confirms it"
        argv = [arg.replace("{host}", host) for arg in self.command]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"fence command {argv[0]} could not run: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return False, (f"fence command {argv[0]} exited {done.returncode}"
                           + (f": {tail[0][:300]}" if tail[0] else ""))
        log.warning("fenced host %s with %s", host, argv[0])
        return True, f"fenced by {argv[0]}"
