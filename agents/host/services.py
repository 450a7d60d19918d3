"""Service listing through systemd; a clear ``unsupported`` error where systemd is absent."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

from hostbus.errors import ErrorCode, RemoteError


class ServiceManager(Protocol):
    def list(self) -> list[dict[str, Any]]: ...


Runner = Callable[[list[str]], str]


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RemoteError(ErrorCode.FAILED, f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Systemd:
    def __init__(self, runner: Runner = _run, booted: Callable[[], bool] | None = None) -> None:
        self._run = runner
        # sd_booted(3): systemd is the init system when this directory exists.
        self._booted = booted or (lambda: os.path.isdir("/run/systemd/system"))

    def list(self) -> list[dict[str, Any]]:
        if not self._booted():
            raise RemoteError(
                ErrorCode.UNSUPPORTED,
                "services need systemd, and this host does not run it "
                "(no /run/systemd/system); process listing works everywhere",
            )
        out = self._run(["systemctl", "list-units", "--type=service", "--all", "--plain",
                         "--no-legend", "--no-pager"])
        return parse_list_units(out)


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
