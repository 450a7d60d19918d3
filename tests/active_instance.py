"""One instance of a service that uses the active queue, for the takeover tests:
``python -m tests.active_instance URL SERVICE NAME``. It prints ``active`` or ``standby``
on each change and ``event ROUTING_KEY`` for each event it receives, which it never
acknowledges: killed, it leaves them to the next active instance."""

from __future__ import annotations

import sys
import threading

from hostbus.publisher import Publisher
from hostbus.serving.active import ActiveStandby
from hostbus.transport import connect
from hostbus.transport.base import Delivery


def main(url: str, service: str, name: str) -> None:
    transport = connect(url, connection_name=f"active instance {name}", prefetch=16)
    transport.start()

    def on_event(delivery: Delivery) -> None:
        print("event", delivery.routing_key, flush=True)  # held, never acknowledged

    standby = ActiveStandby(transport, Publisher(transport), service, instance=name,
                            tick_interval=0.2,
                            on_change=lambda active: print(
                                "active" if active else "standby", flush=True),
                            on_event=on_event)
    standby.start()
    print("started", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(*sys.argv[1:4])
