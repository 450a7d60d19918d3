"""oslo.messaging's side of `hostbus bench --only peers` (rabbit driver, threading
executor), run by the python of the venv the bench made for it. Roles and protocol:
_lines.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import oslo_messaging
from _lines import DATA, answer_commands, arguments, say
from oslo_config import cfg


class Ping:
    def ping(self, ctxt: dict[str, Any]) -> dict[str, bool]:
        return {"pong": True}


_parsed: list[bool] = []


def transport(url: str, *, notifications: bool = False) -> Any:
    # The global configuration, as a service has it (some of oslo.messaging's options are
    # registered there alone); no configuration files: the URL says it all.
    conf = cfg.CONF
    if not _parsed:
        conf([], default_config_files=[])
        _parsed.append(True)
    rabbit = "rabbit://" + url.split("://", 1)[1]
    if notifications:
        return oslo_messaging.get_notification_transport(conf, url=rabbit)
    return oslo_messaging.get_rpc_transport(conf, url=rabbit)


def serve(url: str, prefix: str, servers: int) -> None:
    rpc = transport(url)
    running = [oslo_messaging.get_rpc_server(
        rpc, oslo_messaging.Target(topic=prefix, server=f"{prefix}-{i}"), [Ping()],
        executor="threading") for i in range(servers)]
    for server in running:
        server.start()
    say({"ready": True})
    import sys

    sys.stdin.read()  # until the bench closes it
    for server in running:
        server.stop()


class Counter:
    def __init__(self, n: int) -> None:
        self.n, self.got, self.last = n, 0, 0.0
        self.done = threading.Event()

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
             metadata: Any) -> None:
        self.got += 1
        self.last = time.time()
        if self.got >= self.n:
            self.done.set()


def subscribe(url: str, prefix: str, n: int) -> None:
    counter = Counter(n)
    listener = oslo_messaging.get_notification_listener(
        transport(url, notifications=True), [oslo_messaging.Target(topic=prefix)], [counter],
        executor="threading")
    listener.start()
    say({"ready": True})
    counter.done.wait()
    say({"got": counter.got, "last": counter.last})
    listener.stop()


def client(url: str, prefix: str) -> None:
    rpc = oslo_messaging.get_rpc_client(transport(url), oslo_messaging.Target(topic=prefix),
                                        timeout=30)
    notifier = oslo_messaging.Notifier(transport(url, notifications=True),
                                       publisher_id="bench", driver="messaging",
                                       topics=[prefix])
    pool: list[ThreadPoolExecutor] = []

    def call(command: dict[str, Any]) -> dict[str, Any]:
        server = rpc.prepare(server=f"{prefix}-0")
        times = []
        for _ in range(command["n"]):
            started = time.perf_counter()
            server.call({}, "ping")
            times.append((time.perf_counter() - started) * 1000)
        return {"ms": times}

    def broadcast(command: dict[str, Any]) -> dict[str, Any]:
        # oslo.messaging's fan-out is cast only (no replies): the way to hear from every
        # server is a call to each, made at once from a thread each.
        n = command["servers"]
        if not pool:
            pool.append(ThreadPoolExecutor(max_workers=n))
        targets = [rpc.prepare(server=f"{prefix}-{i}") for i in range(n)]
        started = time.perf_counter()
        replies = list(pool[0].map(lambda target: target.call({}, "ping"), targets))
        elapsed = (time.perf_counter() - started) * 1000
        if len(replies) != n:
            raise RuntimeError(f"{len(replies)} replies of {n}")
        return {"ms": elapsed}

    def publish(command: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        for _ in range(command["n"]):
            notifier.info({}, "bench.metrics", DATA)
        return {"start": started}

    answer_commands({"call": call, "broadcast": broadcast, "publish": publish})


def main() -> None:
    args = arguments()
    if args.role == "server":
        serve(args.url, args.prefix, args.servers)
    elif args.role == "subscribe":
        subscribe(args.url, args.prefix, args.events)
    else:
        client(args.url, args.prefix)


if __name__ == "__main__":
    main()
