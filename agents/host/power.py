"""Reboot and shutdown, behind an interface so tests and demos never power anything off."""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Protocol

from hostbus.errors import ErrorCode, RemoteError

log = logging.getLogger("hostbus.host.power")


class PowerController(Protocol):
    #: True when nothing is really done (only logged): replies say so.
    dry_run: bool

    def schedule(self, action: str, delay_s: int, reason: str) -> None:
        """``action`` is reboot or shutdown; act after ``delay_s`` seconds."""


def shutdown_argv(binary: str, action: str, reason: str) -> list[str]:
    """The shutdown command line. The reason comes from the caller: after ``--`` it is
    a wall message whatever it looks like (``-P`` would otherwise turn a reboot into a
    poweroff: shutdown's option parser takes options anywhere on the line)."""
    return [binary, "-r" if action == "reboot" else "-P", "--", "now", reason]


class SystemPower:
    """Calls the system's shutdown command after the delay (on a timer, so the reply is
    sent first)."""

    dry_run = False

    def schedule(self, action: str, delay_s: int, reason: str) -> None:
        import shutil  # here, not at import: only hosts that really power off need it

        cmd = shutil.which("systemctl") if action in ("reboot", "shutdown") else None
        binary = shutil.which("shutdown")
        if cmd is None and binary is None:
            raise RemoteError(ErrorCode.UNSUPPORTED, "neither systemctl nor shutdown is installed")
        argv = (shutdown_argv(binary, action, reason) if binary
                else [str(cmd), "reboot" if action == "reboot" else "poweroff"])
        log.warning("%s in %d s: %s (%s)", action, delay_s, reason, " ".join(argv))
        timer = threading.Timer(delay_s, subprocess.run, args=(argv,), kwargs={"check": False})
        timer.daemon = True
        timer.start()


@dataclass
class RecordingPower:
    """Records what would have happened. Used by tests and by ``power_control =
    "dry-run"`` (the quick start's setting)."""

    calls: list[tuple[str, int, str]] = field(default_factory=list)
    dry_run: bool = True

    def schedule(self, action: str, delay_s: int, reason: str) -> None:
        log.warning("dry-run: would %s in %d s: %s", action, delay_s, reason)
        self.calls.append((action, delay_s, reason))
