"""The line protocol between `hostbus bench --only peers` and a peer's driver, which runs
in the peer's own virtual environment and imports nothing of hostbus: one JSON object a
line each way on stdin and stdout.

Roles, the same for every peer (``DRIVER ROLE --url URL --prefix P [--servers N]
[--events N]``):

- ``server``: N RPC servers answering ``ping``, named ``P-0`` ... (or ``P_0`` ...);
  prints ``{"ready": true}`` and serves until it is ended.
- ``subscribe``: one event subscriber; prints ``{"ready": true}``, then, once N events
  are in, ``{"got": N, "last": EPOCH_SECONDS}`` and exits.
- ``client``: answers commands read on stdin: ``{"do": "call", "n": K}`` ->
  ``{"ms": [each round trip]}``; ``{"do": "broadcast", "servers": N}`` -> ``{"ms":
  until the last reply}``; ``{"do": "publish", "n": K}`` -> ``{"start": EPOCH_SECONDS}``
  (taken before the first publish); ``{"do": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

#: The payload of every event, the shape of a hostbus heartbeat's data.
DATA = {"agents": [], "version": "bench", "epoch": "e", "uptime_s": 1.0, "interval_s": 1.0,
        "requests": 0}


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "subscribe", "client"])
    parser.add_argument("--url", required=True, help="amqp://user:pass@host:port/vhost")
    parser.add_argument("--prefix", required=True, help="names of this run's servers")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--events", type=int, default=0)
    return parser.parse_args()


def answer_commands(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """The client's loop: one command a line until ``quit`` or the end of stdin. A
    failure is reported, not raised: the bench names it."""
    for line in sys.stdin:
        command = json.loads(line)
        if command["do"] == "quit":
            return
        try:
            say(handlers[command["do"]](command))
        except Exception as exc:
            say({"error": f"{type(exc).__name__}: {exc}"})
