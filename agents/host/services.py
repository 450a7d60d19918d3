"""systemd services: listing, status and control through ``systemctl`` with a fixed
argv (no shell), and a clear ``unsupported`` error where systemd is absent.

A unit name reaches ``systemctl`` only after ``unit_name`` accepted it: a strict
pattern (letters, digits and ``:_.@-``, not starting with ``-``, at most 256
characters), ``.service`` added when missing, and after ``--`` on the command line, so
nothing a caller sends can become an option or a second unit.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

from hostbus.errors import ErrorCode, RemoteError

#: What ``host.service.*`` may do, and the ``systemctl`` verb for each.
ACTIONS = ("start", "stop", "restart", "reload", "enable", "disable")

#: systemd's own unit name characters (systemd.unit(5)), one unit, a service.
UNIT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.@\\-]{0,247}(\.service)?")

#: What ``status`` reads from ``systemctl show``.
STATUS_PROPERTIES = ("Id", "Description", "LoadState", "ActiveState", "SubState",
                     "UnitFileState", "MainPID", "ExecMainStatus", "ActiveEnterTimestamp",
                     "NRestarts")


class ServiceManager(Protocol):
    def list(self) -> list[dict[str, Any]]: ...

    def status(self, name: str) -> dict[str, Any]:
        """The unit's state (``status_result``'s fields)."""
        ...

    def control(self, action: str, name: str) -> None:
        """Do ``action`` (one of ``ACTIONS``) to the unit; raises ``RemoteError``."""
        ...


class Run(Protocol):
    def __call__(self, argv: list[str]) -> tuple[int, str, str]: ...


Runner = Callable[[list[str]], str]


def unit_name(name: str) -> str:
    """The unit ``name`` names (``.service`` added), or ``invalid_args`` naming the rule."""
    if not isinstance(name, str) or not UNIT_PATTERN.fullmatch(name) or ".." in name:
        raise RemoteError(
            ErrorCode.INVALID_ARGS,
            f"{str(name)[:80]!r} is not a service unit name: use letters, digits and "
            "':_.@-', starting with a letter or digit (nginx, getty@tty1.service)")
    return name if name.endswith(".service") else f"{name}.service"


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RemoteError(ErrorCode.FAILED, f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _run_full(argv: list[str]) -> tuple[int, str, str]:
    # Starting a unit waits for its start-up to finish: a slow unit may take a while,
    # within the request's usual deadlines.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


class Systemd:
    def __init__(self, runner: Runner = _run, booted: Callable[[], bool] | None = None,
                 run: Run = _run_full, systemctl: str = "systemctl") -> None:
        self._run = runner
        self._run_full = run
        self._systemctl = systemctl
        # sd_booted(3): systemd is the init system when this directory exists.
        self._booted = booted or (lambda: os.path.isdir("/run/systemd/system"))

    def _require_systemd(self) -> None:
        if not self._booted():
            raise RemoteError(
                ErrorCode.UNSUPPORTED,
                "services need systemd, and this host does not run it "
                "(no /run/systemd/system); process listing works everywhere",
            )

    def list(self) -> list[dict[str, Any]]:
        self._require_systemd()
        out = self._run([self._systemctl, "list-units", "--type=service", "--all", "--plain",
                         "--no-legend", "--no-pager"])
        return parse_list_units(out)

    def status(self, name: str) -> dict[str, Any]:
        unit = unit_name(name)
        self._require_systemd()
        code, out, err = self._run_full(
            [self._systemctl, "show", "--no-pager",
             "--property=" + ",".join(STATUS_PROPERTIES), "--", unit])
        if code != 0:
            raise RemoteError(ErrorCode.FAILED, f"systemctl show {unit} failed: "
                              f"{err.strip()[:500]}")
        found = parse_show(out)
        if found.get("LoadState") == "not-found":
            raise RemoteError(ErrorCode.NOT_FOUND, f"no unit {unit} on this host",
                              {"unit": unit})
        return status_result(unit, found)

    def control(self, action: str, name: str) -> None:
        if action not in ACTIONS:
            raise RemoteError(ErrorCode.INVALID_ARGS,
                              f"unknown service action {action!r}; one of {', '.join(ACTIONS)}")
        unit = unit_name(name)
        self._require_systemd()
        self.status(unit)  # not_found for a unit that does not exist, before acting
        code, _, err = self._run_full([self._systemctl, "--no-ask-password", action, "--",
                                       unit])
        if code != 0:
            raise RemoteError(ErrorCode.FAILED, f"systemctl {action} {unit} failed "
                              f"(exit {code}): {err.strip()[:500]}", {"unit": unit})


def status_result(unit: str, props: dict[str, str]) -> dict[str, Any]:
    """``host.service.status``'s result from ``systemctl show``'s properties."""
    def number(key: str) -> int:
        try:
            return int(props.get(key, "") or 0)
        except ValueError:
            return 0

    return {
        "name": unit.removesuffix(".service"), "unit": unit,
        "description": props.get("Description", ""),
        "load": props.get("LoadState", ""), "active": props.get("ActiveState", ""),
        "sub": props.get("SubState", ""), "enabled": props.get("UnitFileState", ""),
        "main_pid": number("MainPID"), "exit_status": number("ExecMainStatus"),
        "restarts": number("NRestarts"),
        "active_since": props.get("ActiveEnterTimestamp", ""),
    }


def parse_show(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


def parse_list_units(text: str) -> list[dict[str, Any]]:
    services = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4 or not parts[0].endswith(".service"):
            continue
        unit, load, active, sub = parts[:4]
        services.append({
            "name": unit.removesuffix(".service"), "load": load, "active": active, "sub": sub,
            "description": parts[4].strip() if len(parts) > 4 else "",
        })
    return services
