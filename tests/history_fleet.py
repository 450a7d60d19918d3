"""A historian on the in-memory broker beside the CLI's test fleet (tests/cli_fleet.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console.history.main import HISTORY_QUEUE, Historian
from console.history.store import EventStore, SQLiteStore
from hostbus import names
from hostbus.security.policy import RulesPolicy
from hostbus.transport.memory import MemoryBroker, MemoryTransport

#: Everyone may ask the test historian anything.
OPEN_POLICY = '[[rule]]\nname = "tests ask the historian"\nallow = true\n'


def start_historian(broker: MemoryBroker, store: EventStore, tmp_path: Path,
                    host_id: str = "historian", **kw: Any) -> Historian:
    """What ``hostbus historian --setup``, ``broker enroll-service`` and ``hostbus
    historian`` do, on the in-memory broker."""
    broker.declare_queue(HISTORY_QUEUE)
    broker.bind(names.EVENT_EXCHANGE, "#", HISTORY_QUEUE)
    broker.enroll(host_id, ["history"])
    policy_file = tmp_path / "historian-policy.toml"
    policy_file.write_text(OPEN_POLICY)
    transport = MemoryTransport(broker, user=host_id)
    transport.start()
    kw.setdefault("heartbeat_interval", 0)
    historian = Historian(transport, store, host_id,
                          policy=RulesPolicy.load(policy_file, host_id), **kw)
    historian.start()
    return historian


@pytest.fixture
def historian(fleet: Any, tmp_path: Path) -> Iterator[Historian]:
    store = SQLiteStore(tmp_path / "history.db")
    h = start_historian(fleet.broker, store, tmp_path)
    yield h
    h.stop("test over")
    store.close()
