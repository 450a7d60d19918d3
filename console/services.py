"""What the console-side services (provisioner, historian, exporter) share as daemons."""

from __future__ import annotations

import signal
import threading


def wait_for_stop(stop: threading.Event | None = None) -> str | None:
    """Block until SIGTERM or SIGINT, or until ``stop`` is set (a service embedded in a
    program or a test passes one, and then no signal handler is installed). Returns the
    signal's name, or None when ``stop`` ended it."""
    stopped = stop or threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        reason.append(signal.Signals(signum).name)
        stopped.set()

    if stop is None:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    while not stopped.wait(1.0):
        pass
    return reason[0] if reason else None
