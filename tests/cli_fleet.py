"""The hostbus CLI run through click's runner against agents on the in-memory broker:
the real commands, the real console and dispatch path, no network (milliseconds)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agents.host.power import RecordingPower
from console.cli import cli
from console.client import Console
from console.commands.common import CliContext
from hostbus import names
from hostbus.security.signing import Signer
from hostbus.serving.agent import Agent
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryBroker, MemoryTransport
from tests.fakes import FakePs, make_host_agent

# Discovery over memory answers in microseconds: a short idle window keeps tests fast.
CONFIG = '[console]\ntimeout = 2.0\nidle = 0.05\n'


@dataclass
class Fleet:
    broker: MemoryBroker
    config: Path
    runtimes: dict[str, AgentRuntime] = field(default_factory=dict)
    ps: dict[str, FakePs] = field(default_factory=dict)
    power: dict[str, RecordingPower] = field(default_factory=dict)
    consoles: list[Console] = field(default_factory=list)
    user: str = "console"
    #: Keys the CLI's console signs with, by user (none: unsigned requests).
    signers: dict[str, Signer] = field(default_factory=dict)
    silent: list[MemoryTransport] = field(default_factory=list)

    def add(self, host_id: str, facts: dict[str, Any] | None = None,
            agent_kw: dict[str, Any] | None = None, agents: list[Agent] | None = None,
            **runtime_kw: Any) -> AgentRuntime:
        """Start a daemon for ``host_id`` with these facts: a host agent (``agent_kw``
        for ``make_host_agent``), or ``agents``; the rest is for ``AgentRuntime``."""
        if agents is None:
            host, self.ps[host_id], self.power[host_id] = make_host_agent(
                host_id, **(agent_kw or {}))
            agents = [host]
        self.broker.enroll(host_id, [a.name for a in agents])
        transport = MemoryTransport(self.broker, user=host_id)
        transport.start()
        runtime_kw.setdefault("heartbeat_interval", 60)
        runtime = AgentRuntime(transport, host_id, agents, facts=facts or {},
                               check_results=True, **runtime_kw)
        runtime.start()
        self.runtimes[host_id] = runtime
        return runtime

    def add_silent(self, host_id: str) -> None:
        """A host whose agent takes requests and never answers (a hung agent): its
        queue is consumed, so the CLI does not see it offline, and waits."""
        self.broker.enroll(host_id, ["host"])
        transport = MemoryTransport(self.broker, user=host_id)
        transport.start()
        transport.consume(names.host_queue(host_id), lambda _delivery: None)
        self.silent.append(transport)

    def console(self, ctx: CliContext, validate: bool) -> Console:
        """The console factory the CLI is given instead of a broker connection."""
        transport = MemoryTransport(self.broker, user=self.user)
        transport.start()
        console = Console(transport, validate=validate, signer=self.signers.get(self.user))
        console.open()
        self.consoles.append(console)
        return console

    def run(self, *args: str, input: str | None = None,
            env: dict[str, str] | None = None) -> Result:
        """``hostbus ARGS`` as an operator types it; stdout and stderr kept apart.
        ``env`` with TTY_COMPATIBLE=1 and COLUMNS=N: as on a terminal N columns wide."""
        # discovered hosts are noted for completion: here, not in the user's cache
        env = {"XDG_CACHE_HOME": str(self.config.parent), **(env or {})}
        return CliRunner().invoke(cli, ["--config", str(self.config), *args],
                                  obj=self.console, input=input, env=env,
                                  catch_exceptions=False)

    def stop(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop("test over")
        for console in self.consoles:
            console.close()
        for transport in self.silent:
            transport.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    config = tmp_path / "console.toml"
    config.write_text(CONFIG)
    fleet = Fleet(MemoryBroker(), config)
    yield fleet
    fleet.stop()
