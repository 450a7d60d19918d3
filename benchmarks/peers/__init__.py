"""hostbus against its peers, oslo.messaging (rabbit driver) and nameko, on the same
broker in the same run, each peer in a virtual environment of its own (venvs.py) and
driven through a small script run by that environment's python (oslo_driver.py,
nameko_driver.py). Raw pika is measured beside them, as everywhere in the bench.

- call: one request/reply round trip to one server. hostbus: ``Console.call("agent",
  "ping")`` to an ``AgentRuntime`` (the call benchmark's side); raw pika: the call
  benchmark's echo on the default exchange; oslo.messaging: ``RPCClient.call`` to one
  RPC server (threading executor); nameko: ``ClusterRpcProxy`` to one service under a
  ``ServiceRunner``. All sides open at once, in turns of ``harness.BLOCK`` calls.
- broadcast: one request to N servers, every reply back. hostbus: a broadcast ping that
  knows whom to expect, to N simulated agents (the fanout benchmark's fleet); raw pika:
  one publish to a fanout exchange bound to N queues, each answered by an echo on one
  connection; oslo.messaging and nameko have no request fan-out that returns replies
  (oslo's fanout and nameko's broadcast events are one-way), so theirs is a call to each
  of the N servers at once: oslo from a thread each, nameko through ``call_async``.
  The sides take turns, one broadcast each.
- events: one publisher, one subscriber in another process; events/s from the first
  publish to the last receipt. hostbus and raw pika as in the events benchmark; oslo:
  a ``Notifier`` into a notification listener; nameko: the standalone event dispatcher
  into an ``event_handler`` service. The sides take turns, one run each per round.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pika

from benchmarks import call as call_bench
from benchmarks import events as events_bench
from benchmarks import machine
from benchmarks.fanout import SimulatedFleet
from benchmarks.harness import Bench, Side, in_turns, progress, summary
from benchmarks.peers.driver import Driver
from benchmarks.peers.venvs import PEERS, Peer, PeerError, clear_work, python_for

__all__ = ["PeerError", "run"]

#: A peer's server is ready when it says so; importing eventlet and oslo on a busy
#: 2-core machine takes seconds.
READY_S = 120


def _started(driver: Driver) -> Driver:
    try:
        driver.answer(READY_S)
    except BaseException:
        driver.close()
        raise
    return driver


class _PeerCall:
    """Round trips through a peer: its server in one process, its client in another."""

    def __init__(self, peer: Peer, python: Path, url: str) -> None:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        self._server = _started(Driver(peer, python, "server", url, prefix, servers=1))
        try:
            self._client = Driver(peer, python, "client", url, prefix)
        except BaseException:
            self._server.close()
            raise

    def block(self, n: int) -> list[float]:
        samples: list[float] = self._client.ask({"do": "call", "n": n})["ms"]
        return samples

    def close(self) -> None:
        self._client.close()
        self._server.close()


class _Broadcaster(Protocol):
    def broadcast(self) -> float: ...

    def close(self) -> None: ...


class _PeerBroadcast:
    def __init__(self, peer: Peer, python: Path, url: str, n: int) -> None:
        self.n = n
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        self._server = _started(Driver(peer, python, "server", url, prefix, servers=n))
        try:
            self._client = Driver(peer, python, "client", url, prefix)
        except BaseException:
            self._server.close()
            raise

    def broadcast(self) -> float:
        elapsed: float = self._client.ask({"do": "broadcast", "servers": self.n})["ms"]
        return elapsed

    def close(self) -> None:
        self._client.close()
        self._server.close()


class _HostbusBroadcast:
    """A broadcast ping that knows whom to expect, to N simulated agents."""

    def __init__(self, bench: Bench, n: int) -> None:
        from console.client import Console

        self._fleet = SimulatedFleet(bench, n)
        self._filter = {"facts": {"fleet": self._fleet.prefix}}
        try:
            self._console = Console.connect(bench.url)
        except BaseException:
            self._fleet.close()
            raise

    def broadcast(self) -> float:
        started = time.perf_counter()
        found = self._console.discover(filter=self._filter, expect=self._fleet.hosts,
                                       timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        if len(found) != len(self._fleet.hosts):
            raise RuntimeError(f"hostbus broadcast: {len(found)} replies of "
                               f"{len(self._fleet.hosts)}")
        return elapsed

    def close(self) -> None:
        self._console.close()
        self._fleet.close()


class _RawFanout:
    """Raw pika: one publish to a fanout exchange bound to N queues; one echo thread on
    one connection answers every queue (as the simulated agents share connections)."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self._exchange = f"bench.fanout.{uuid.uuid4().hex[:8]}"
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="raw-fanout")
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the raw pika fan-out servers did not start")
        self._conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = self._ch = self._conn.channel()
        self._reply_q = ch.queue_declare("", exclusive=True).method.queue
        self._got = [0]
        ch.basic_consume(self._reply_q, self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self._got[0] += 1

    def _serve(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        ch.exchange_declare(self._exchange, "fanout", auto_delete=True)

        def on_request(channel: Any, method: Any, props: Any, body: bytes) -> None:
            channel.basic_publish("", props.reply_to, body,
                                  pika.BasicProperties(correlation_id=props.correlation_id))

        for _ in range(self.n):
            queue = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(queue, self._exchange)
            ch.basic_consume(queue, on_request, auto_ack=True)
        self._ready.set()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()

    def broadcast(self) -> float:
        self._got[0] = 0
        started = time.perf_counter()
        self._ch.basic_publish(self._exchange, "", b'{"method": "ping"}',
                               pika.BasicProperties(reply_to=self._reply_q,
                                                    correlation_id="x"))
        deadline = started + 30
        while self._got[0] < self.n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"raw pika fan-out: {self._got[0]} replies of {self.n}")
            self._conn.process_data_events(time_limit=1)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._conn.close()
        self._stop.set()
        self._thread.join(5)


class _PeerEvents:
    """A peer's publisher (a long-lived client) into a fresh subscriber each run."""

    def __init__(self, peer: Peer, python: Path, url: str) -> None:
        self.peer, self.python, self.url = peer, python, url
        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self._client = Driver(peer, python, "client", url, self.prefix)

    def rate(self, n: int) -> float:
        subscriber = _started(Driver(self.peer, self.python, "subscribe", self.url,
                                     self.prefix, events=n))
        try:
            start = self._client.ask({"do": "publish", "n": n}, timeout=600)["start"]
            done = subscriber.answer(timeout=600)
        finally:
            subscriber.close()
        rate: float = done["got"] / (done["last"] - start)
        return rate

    def close(self) -> None:
        self._client.close()


def _ratios(out: dict[str, Any], sides: list[str], key: str) -> None:
    """``out["over_hostbus"][side]``: each side's ``key`` over hostbus's."""
    out["over_hostbus"] = {side: round(out[side][key] / out["hostbus"][key], 2)
                           for side in sides}


def run(bench: Bench, calls: int, servers: int, broadcasts: int, n_events: int,
        event_rounds: int) -> dict[str, Any]:
    # The machine as every benchmark names it; its load at the start ("loadavg") and,
    # below, at the end: the peers' figures move with it.
    out: dict[str, Any] = {"machine": machine.describe(),
                           "peers": {p.name: {"version": p.version, "pins": list(p.pins)}
                                     for p in PEERS}}
    pythons = {peer.name: python_for(peer) for peer in PEERS}
    out["logs"] = str(clear_work())  # the drivers' logs, this run's only
    others = ["raw_pika", *pythons]

    progress(f"peers: call round trips, {calls} each: raw pika, hostbus, "
             f"{', '.join(pythons)}, in turns")
    makers: dict[str, Callable[[], Side]] = {
        "raw_pika": lambda: call_bench.RawPikaSide(bench.url),
        "hostbus": lambda: call_bench.HostbusSide(bench),
    }
    for peer in PEERS:
        makers[peer.name] = (lambda p=peer: _PeerCall(p, pythons[p.name], bench.url))
    samples = in_turns(makers, calls, warm=max(20, calls // 20))
    out["call"] = {side: summary(values) for side, values in samples.items()}
    _ratios(out["call"], others, "p50")

    progress(f"peers: broadcast to {servers} servers, every reply back, {broadcasts} each, "
             f"in turns")
    broadcasters: dict[str, Callable[[], _Broadcaster]] = {
        "raw_pika": lambda: _RawFanout(bench.url, servers),
        "hostbus": lambda: _HostbusBroadcast(bench, servers),
    }
    for peer in PEERS:
        broadcasters[peer.name] = (
            lambda p=peer: _PeerBroadcast(p, pythons[p.name], bench.url, servers))
    out["broadcast"] = {"servers": servers, **_broadcast_in_turns(broadcasters, broadcasts)}
    _ratios(out["broadcast"], others, "p50")

    progress(f"peers: events, {n_events} a run, {event_rounds} run(s) each, in turns")
    out["events"] = {"events": n_events, **_events_in_turns(bench, pythons, n_events,
                                                              event_rounds)}
    _ratios(out["events"], others, "median_per_s")
    out["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _broadcast_in_turns(makers: dict[str, Callable[[], _Broadcaster]],
                        rounds: int) -> dict[str, Any]:
    sides: dict[str, _Broadcaster] = {}
    times: dict[str, list[float]] = {label: [] for label in makers}
    try:
        for label, make in makers.items():
            sides[label] = make()
            sides[label].broadcast()  # warm-up
        for _ in range(rounds):
            for label, side in sides.items():
                times[label].append(side.broadcast())
    finally:
        for side in sides.values():
            side.close()
    return {label: summary(values) for label, values in times.items()}


def _events_in_turns(bench: Bench, pythons: dict[str, Path], n: int,
                     rounds: int) -> dict[str, Any]:
    publishers = {}
    try:
        for peer in PEERS:
            publishers[peer.name] = _PeerEvents(peer, pythons[peer.name], bench.url)
        sides: dict[str, Callable[[int], float]] = {
            "raw_pika": lambda k: events_bench.raw_rate(bench.url, k),
            "hostbus": lambda k: events_bench.hostbus_rate(bench, k),
            **{name: publisher.rate for name, publisher in publishers.items()},
        }
        rates: dict[str, list[float]] = {label: [] for label in sides}
        for measure in sides.values():
            measure(max(100, n // 10))  # warm-up, every side alike
        for _ in range(rounds):
            for label, measure in sides.items():
                rates[label].append(measure(n))
    finally:
        for publisher in publishers.values():
            publisher.close()
    return {label: {"median_per_s": round(sorted(values)[len(values) // 2]),
                    "per_s": [round(x) for x in values]} for label, values in rates.items()}
