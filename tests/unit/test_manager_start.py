"""`hostbus manager`'s start failing: what it started is stopped, and the exit code says
whether another try is worth it (the unit restarts 2, not 3)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from console.manager import main
from hostbus.errors import ConnectionFailed, HostbusError


@pytest.mark.parametrize(("error", "code", "reason"), [
    (ConnectionFailed("the connection was lost while this consumer was attaching"), 2,
     "connection lost"),
    (HostbusError("cannot use the active queue hostbus.active.mgr-t: it does not exist"), 3,
     "refused"),
])
def test_a_failed_start_stops_the_service_and_exits(tmp_path: Path, monkeypatch, error,
                                                    code, reason) -> None:
    """A ConnectionFailed from the start (the active queue's attach cut by a lost
    connection) returned 2 without stopping the service: its loop, actions and a
    transport reconnecting stayed behind."""
    config = tmp_path / "manager.toml"
    config.write_text('[broker]\nurl = "amqp10://u:p@127.0.0.1:1/hostbus"\n'
                      f'[manager]\nhost_id = "mgr-t"\nstate_dir = "{tmp_path}"\n')
    done: list[Any] = []

    class Console:
        def close(self) -> None:
            done.append("console closed")

    class Service:
        def __init__(self, cfg: dict[str, Any], **_: Any) -> None:
            pass

        def start(self) -> None:
            raise error

        def stop(self, why: str = "stopped") -> None:
            done.append(("stopped", why))

    monkeypatch.setattr(main.Console, "connect", staticmethod(lambda *a, **k: Console()))
    monkeypatch.setattr(main, "ManagerService", Service)
    assert main.run(str(config), stop=threading.Event()) == code
    assert done == [("stopped", reason), "console closed"]
