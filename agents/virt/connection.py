"""Opening libvirt with its event loop on a thread of its own.

libvirt pushes lifecycle events through an event loop that must be registered before
the first connection is opened and then run continuously. It runs on its own thread,
so a slow hypervisor never blocks the AMQP transport; callbacks hand events to the
transport, which is thread-safe.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("hostbus.virt")

TEST_NODE = Path(__file__).resolve().parent / "testnode.xml"
_loop_lock = threading.Lock()
_loop_started = False


def default_uri() -> str:
    """libvirt's built-in test driver, loaded with the node this project ships."""
    return f"test://{TEST_NODE}"


def _start_event_loop(libvirt: Any) -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # keep the loop alive; one bad callback is not fatal
                    log.exception("libvirt event loop iteration failed")

        threading.Thread(target=run, name="hostbus-libvirt-events", daemon=True).start()
        _loop_started = True


def open_connection(uri: str) -> Any:
    import libvirt

    # libvirt prints every error to stderr by default; hostbus reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    _start_event_loop(libvirt)
    try:
        return libvirt.open(uri or default_uri())
    except libvirt.libvirtError as exc:
        raise ConnectionError(f"cannot open libvirt at {uri or default_uri()}: "
                              f"{exc.get_error_message()}") from None
