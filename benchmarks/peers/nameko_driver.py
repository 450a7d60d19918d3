"""nameko's side of `hostbus bench --only peers`: services under a ServiceRunner
(eventlet, as `nameko run` runs them), the standalone ClusterRpcProxy and event
dispatcher as the client. Run by the python of the venv the bench made for it. Roles and
protocol: _lines.py."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from _lines import DATA, answer_commands, arguments, say


def _service(name: str) -> type:
    from nameko.rpc import rpc

    class Pinged:
        @rpc
        def ping(self) -> dict[str, bool]:
            return {"pong": True}

    Pinged.name = name  # nameko finds a service by this attribute
    return Pinged


def serve(url: str, prefix: str, servers: int) -> None:
    from nameko.runners import ServiceRunner

    runner = ServiceRunner(config={"AMQP_URI": url})
    for i in range(servers):
        runner.add_service(_service(f"{prefix}_{i}"))
    runner.start()  # returns once every service consumes
    say({"ready": True})
    runner.wait()  # until the bench ends the process


def subscribe(url: str, prefix: str, n: int) -> None:
    from nameko.events import event_handler
    from nameko.runners import ServiceRunner

    state = {"got": 0}

    class Subscriber:
        name = f"{prefix}_subscriber"

        @event_handler(f"{prefix}_publisher", "metrics")
        def on_metrics(self, payload: dict[str, Any]) -> None:
            state["got"] += 1
            if state["got"] >= n:
                say({"got": state["got"], "last": time.time()})
                sys.stdout.flush()
                os._exit(0)  # the bench has its answer; nothing to tidy in a vhost it drops

    runner = ServiceRunner(config={"AMQP_URI": url})
    runner.add_service(Subscriber)
    runner.start()
    say({"ready": True})
    runner.wait()


def client(url: str, prefix: str) -> None:
    from nameko.standalone.events import event_dispatcher
    from nameko.standalone.rpc import ClusterRpcProxy

    config = {"AMQP_URI": url}
    cluster = ClusterRpcProxy(config, timeout=30).start()
    dispatch = event_dispatcher(config)

    def call(command: dict[str, Any]) -> dict[str, Any]:
        service = getattr(cluster, f"{prefix}_0")
        times = []
        for _ in range(command["n"]):
            started = time.perf_counter()
            service.ping()
            times.append((time.perf_counter() - started) * 1000)
        return {"ms": times}

    def broadcast(command: dict[str, Any]) -> dict[str, Any]:
        # nameko's broadcast is an event (no replies): the way to hear from every
        # service is an asynchronous call to each, then every result.
        services = [getattr(cluster, f"{prefix}_{i}") for i in range(command["servers"])]
        started = time.perf_counter()
        pending = [service.ping.call_async() for service in services]
        replies = [reply.result() for reply in pending]
        elapsed = (time.perf_counter() - started) * 1000
        if len(replies) != len(services):
            raise RuntimeError(f"{len(replies)} replies of {len(services)}")
        return {"ms": elapsed}

    def publish(command: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        for _ in range(command["n"]):
            dispatch(f"{prefix}_publisher", "metrics", DATA)
        return {"start": started}

    answer_commands({"call": call, "broadcast": broadcast, "publish": publish})


def main() -> None:
    args = arguments()
    if args.role in ("server", "subscribe"):
        import eventlet

        eventlet.monkey_patch()  # nameko's services run on eventlet, as `nameko run` does
    if args.role == "server":
        serve(args.url, args.prefix, args.servers)
    elif args.role == "subscribe":
        subscribe(args.url, args.prefix, args.events)
    else:
        client(args.url, args.prefix)


if __name__ == "__main__":
    main()
