"""The console library: discovery, calls, fan-out, queries and event subscriptions.

The CLI is a thin layer over this module; programs use it directly:

    with Console.connect("amqp://guest:guest@127.0.0.1:5672/hostbus") as console:
        hosts = console.discover(filter={"facts": {"role": "web"}})
        result = console.fanout("host", "identify", {}, [h.host for h in hosts])

The console never waits a fixed time when it can stop earlier: discovery ends when every
expected host answered or when no reply came for an idle window; a fan-out ends when
every host answered or at its timeout.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hostbus import names
from hostbus.envelope import (
    EVENT_TYPE,
    REPLY_TYPE,
    Event,
    Reply,
    new_provision,
    new_request,
    parse_event,
    parse_reply,
)
from hostbus.errors import (
    BrokerRefused,
    ConnectionLost,
    ErrorCode,
    HostbusError,
    RemoteError,
    SchemaError,
)
from hostbus.publisher import Publisher
from hostbus.schema import (
    AgentSchema,
    MethodSpec,
    available_agents,
    load_agent_schema,
)
from hostbus.transport import connect
from hostbus.transport.base import Delivery, Transport

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier

log = logging.getLogger("hostbus.console")

_LOST = object()  # put into waiting queues when the connection drops


@dataclass(frozen=True)
class _Refused:
    """Put into waiting queues when the broker refuses a request publish."""

    reason: str


@dataclass
class HostResult:
    host: str
    reply: Reply | None  # None: no reply before the timeout
    elapsed_ms: float | None = None  # round trip seen by the console
    request_id: str | None = None  # the request's message id (as in the agent's audit log)

    @property
    def status(self) -> str:
        if self.reply is None:
            return "no_reply"
        return "ok" if self.reply.ok else "error"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "status": self.status}
        if self.request_id is not None:
            out["request_id"] = self.request_id
        if self.reply is not None:
            if self.reply.result is not None:
                out["result"] = self.reply.result
            if self.reply.error is not None:
                out["error"] = self.reply.error
            out["agent_ms"] = self.reply.elapsed_ms
        if self.elapsed_ms is not None:
            out["rtt_ms"] = round(self.elapsed_ms, 3)
        return out


@dataclass
class FanoutResult:
    results: list[HostResult]
    elapsed_ms: float

    def by_status(self, status: str) -> list[HostResult]:
        return [r for r in self.results if r.status == status]

    @property
    def summary(self) -> dict[str, Any]:
        return {"hosts": len(self.results), "ok": len(self.by_status("ok")),
                "failed": len(self.by_status("error")),
                "no_reply": len(self.by_status("no_reply")),
                "elapsed_ms": round(self.elapsed_ms, 1)}


@dataclass
class AgentInfo:
    """One daemon's answer to discovery."""

    host: str
    agents: list[str]
    version: str
    epoch: str
    started: str
    facts: dict[str, Any]
    rtt_ms: float
    error: dict[str, Any] | None = None  # the host answered, but refused (code, message)

    @property
    def refused(self) -> bool:
        return self.error is not None

    @classmethod
    def from_reply(cls, reply: Reply, rtt_ms: float) -> AgentInfo:
        r = reply.result or {}
        return cls(host=reply.host, agents=list(r.get("agents", [])),
                   version=str(r.get("version", "")), epoch=str(r.get("epoch", "")),
                   started=str(r.get("started", "")), facts=dict(r.get("facts", {})),
                   rtt_ms=rtt_ms, error=None if reply.ok else dict(reply.error or {}))

    def to_dict(self) -> dict[str, Any]:
        out = {"host": self.host, "agents": self.agents, "version": self.version,
               "epoch": self.epoch, "started": self.started, "facts": self.facts,
               "rtt_ms": round(self.rtt_ms, 3)}
        return out if self.error is None else {"host": self.host, "error": self.error,
                                               "rtt_ms": out["rtt_ms"]}


@dataclass
class Sequencer:
    """Follows (epoch, seq) per host and agent; tells gaps, restarts and duplicates."""

    last: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def check(self, ev: Event) -> str | None:
        key = (ev.host, ev.agent)
        prev = self.last.get(key)
        if prev is None or prev[0] != ev.epoch or ev.seq > prev[1]:
            self.last[key] = (ev.epoch, ev.seq)
        if prev is None:
            return None
        epoch, seq = prev
        if epoch != ev.epoch:
            return f"{ev.host}/{ev.agent} restarted (epoch {epoch} -> {ev.epoch})"
        if ev.seq == seq + 1:
            return None
        if ev.seq > seq + 1:
            missing = ev.seq - seq - 1
            return (f"gap: {missing} event{'s' if missing > 1 else ''} from "
                    f"{ev.host}/{ev.agent} missing (seq {seq + 1}..{ev.seq - 1})")
        return f"duplicate or out-of-order event from {ev.host}/{ev.agent} (seq {ev.seq})"


def method_spec(agent: str, method: str,
                extra: dict[str, AgentSchema] | None = None) -> MethodSpec:
    """The schema of ``agent.method``; raises a ``RemoteError`` naming what exists.
    ``extra`` holds schemas not shipped in ``schemas/agents``."""
    known = {**dict.fromkeys(available_agents()), **(extra or {})}
    if agent not in known:
        raise RemoteError(
            ErrorCode.UNKNOWN_AGENT,
            f"no schema for agent {agent!r}; known agents: {', '.join(sorted(known))}",
        )
    schema = (extra or {}).get(agent) or load_agent_schema(agent)
    spec = schema.methods.get(method)
    if spec is None:
        raise RemoteError(
            ErrorCode.UNKNOWN_METHOD,
            f"agent {agent!r} has no method {method!r}; methods: "
            f"{', '.join(sorted(schema.methods))}",
        )
    return spec


#: Broker users that may answer and publish for any host: one identity that serves many
#: hosts. guest, the demo's, can log in from the broker's own machine only.
MULTI_HOST_USERS = ("guest",)


class Console:
    def __init__(self, transport: Transport, *, validate: bool = True,
                 schemas: dict[str, AgentSchema] | None = None,
                 signer: Signer | None = None, agent_keys: Verifier | None = None,
                 multi_host_users: Iterable[str] = MULTI_HOST_USERS) -> None:
        """``signer`` signs requests.

        A host may only speak for itself. A reply or event whose body names a host other
        than its broker-checked sender (``user_id``; unless the sender is one of
        ``multi_host_users``), or an event whose routing key names another host or
        event than its body, is dropped, logged and counted in ``spoofed``. With
        ``agent_keys`` every reply and event must moreover be signed by the key trusted
        for its sender: a reply that fails counts only if nothing genuine arrives, as
        ``bad_signature``; an event that fails is dropped (logged)."""
        self.transport = transport
        self.publisher = Publisher(transport, signer)
        self.agent_keys = agent_keys
        self.multi_host_users = frozenset(multi_host_users)
        self.spoofed = 0
        self._spoof_logged: set[tuple[str | None, str]] = set()
        self.validate = validate
        self.schemas = dict(schemas or {})
        self._specs: dict[tuple[str, str], MethodSpec] = {}
        self._pending: dict[str, queue.SimpleQueue[Any]] = {}
        self._lock = threading.Lock()
        self._reply_queue: str | None = None
        self._lost: Exception | None = None
        self._connected = threading.Event()
        self._connected.set()

    @property
    def signer(self) -> Signer | None:
        """The key requests and approvals are signed with (None: unsigned)."""
        return self.publisher.signer

    @signer.setter
    def signer(self, signer: Signer | None) -> None:
        self.publisher.signer = signer

    @classmethod
    def connect(cls, url: str, *, connect_timeout: float = 5.0, **kwargs: Any) -> Console:
        transport = connect(url, connection_name="hostbus-console",
                            connect_timeout=connect_timeout, reconnect=True)
        transport.start()
        console = cls(transport, **kwargs)
        try:
            console.open()
        except Exception:
            transport.close()
            raise
        return console

    def open(self) -> None:
        self.transport.on_connection_lost(self._on_lost)
        self.transport.on_connection_restored(self._on_restored)
        self.transport.on_refused(self._on_refused)
        self._reply_queue = self.transport.open_reply_queue(self._on_reply)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing
    def _on_reply(self, delivery: Delivery) -> None:
        try:
            reply = parse_reply(delivery)
        except RemoteError as err:
            log.warning("ignored a malformed reply: %s", err.message)
            return
        if self._impostor(delivery, reply.host, "reply"):
            return
        if self.agent_keys is not None:
            why = self._unverified(delivery, reply.host, REPLY_TYPE, "reply")
            if why is not None:
                log.warning("a reply claiming host %s failed verification: %s", reply.host, why)
                reply = Reply(host=reply.host, agent=reply.agent, method=reply.method,
                              status="error", error={"code": ErrorCode.BAD_SIGNATURE.value,
                                                     "message": why},
                              correlation_id=reply.correlation_id, user_id=reply.user_id,
                              rejected=True)
        with self._lock:
            waiting = self._pending.get(reply.correlation_id or "")
        if waiting is not None:
            waiting.put((reply, time.perf_counter()))

    def _impostor(self, delivery: Delivery, host: str, what: str,
                  routing_key: str | None = None) -> bool:
        """Whether this reply or event speaks for a host other than its sender (or, for
        an event, than its routing key): then it is dropped, logged once per sender and
        claimed host, and counted."""
        user = delivery.properties.user_id
        if routing_key is not None and delivery.routing_key and \
                delivery.routing_key != routing_key:
            why = (f"its routing key {delivery.routing_key!r} does not match its body "
                   f"({routing_key!r})")
        elif user != host and user not in self.multi_host_users:
            why = f"it was sent by broker user {user!r}, and a host may only speak for itself"
        else:
            return False
        self.spoofed += 1
        if (user, host) not in self._spoof_logged and len(self._spoof_logged) < 1000:
            self._spoof_logged.add((user, host))
            log.warning("dropped a %s claiming host %r: %s (further ones are counted, "
                        "not logged)", what, host, why)
        return True

    def _unverified(self, delivery: Delivery, host: str, kind: str, what: str) -> str | None:
        """None if ``host`` signed this message, else why not."""
        assert self.agent_keys is not None
        try:
            signer = self.agent_keys.verify(delivery.exchange, delivery.routing_key,
                                            delivery.properties, delivery.body, kind=kind,
                                            what=what, who="this console")
        except RemoteError as err:
            return err.message
        if signer != host:
            return (f"the {what} names host {host!r} but was sent and signed by {signer!r}; "
                    "a host may only speak for itself")
        return None

    def _on_restored(self) -> None:
        self._lost = None
        self._connected.set()

    def wait_connected(self, timeout: float) -> bool:
        """After a lost connection: wait until it is back (True) or ``timeout`` passed."""
        return self._connected.wait(timeout)

    def _on_lost(self, exc: Exception) -> None:
        self._connected.clear()
        self._lost = exc
        with self._lock:
            waiting = list(self._pending.values())
        for q in waiting:
            q.put(_LOST)

    def _on_refused(self, exchange: str, reason: str) -> None:
        # A refused request publish is refused for every request this identity sends
        # (permissions, or a missing exchange): everyone waiting hears it now, not at
        # their timeout. Provisioning has its own confirm.
        if exchange not in ("", names.REQUEST_EXCHANGE):
            return
        with self._lock:
            waiting = list(self._pending.values())
        for q in waiting:
            q.put(_Refused(reason))

    def check_args(self, agent: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """Validate before sending (a copy: defaults stay the agent's business)."""
        if self.validate:
            spec = self._specs.get((agent, method))
            if spec is None:
                spec = self._specs[(agent, method)] = method_spec(agent, method, self.schemas)
            spec.validate_args(copy.deepcopy(args) if args else {})
        return args

    def _send(self, agent: str, method: str, args: dict[str, Any], *, host: str | None,
              timeout: float, bfilter: dict[str, Any] | None, waiting: queue.SimpleQueue[Any],
              sent: dict[str, tuple[str, float]] | None = None) -> str:
        """Publish one request; ``sent`` gets its message id -> (host, send time) just
        before the publish. The publish wakes the I/O thread, which then waits for the
        interpreter lock until this thread blocks for the reply: the less this thread
        does after it, the sooner the request leaves."""
        if self._lost is not None:
            raise ConnectionLost(f"the broker connection was lost: {self._lost!r}")
        req = new_request(agent, method, args, host=host, filter=bfilter, timeout=timeout,
                          reply_to=self._reply_queue)
        with self._lock:
            self._pending[req.message_id] = waiting
        body, props = req.encode()
        if sent is not None:
            sent[req.message_id] = (host or "", time.perf_counter())
        self.publisher.publish(names.REQUEST_EXCHANGE, req.routing_key(), body, props)
        return req.message_id

    def _next_reply(self, waiting: queue.SimpleQueue[Any],
                    until: float) -> tuple[Reply, float] | None:
        """The next (reply, arrival time), or None once ``until`` (monotonic) has passed."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            item = waiting.get(timeout=remaining)
        except queue.Empty:
            return None
        if item is _LOST:
            raise ConnectionLost(f"the broker connection was lost: {self._lost!r}")
        if isinstance(item, _Refused):
            raise BrokerRefused(f"the broker refused the request: {item.reason}")
        return item

    def _forget(self, ids: Iterable[str]) -> None:
        with self._lock:
            for mid in ids:
                self._pending.pop(mid, None)

    # ------------------------------------------------------------------- calls
    def call(self, agent: str, method: str, args: dict[str, Any] | None = None, *,
             host: str, timeout: float = 10.0) -> HostResult:
        """One request to one host. (A path of its own measured no faster than a
        fan-out to one host: benchmarks/README.md.)"""
        return self.fanout(agent, method, args or {}, [host], timeout=timeout).results[0]

    def fanout(
        self, agent: str, method: str, args: dict[str, Any], hosts: list[str], *,
        timeout: float = 10.0, batch: int = 0,
        on_result: Callable[[HostResult], None] | None = None,
    ) -> FanoutResult:
        """Send to each host (at most ``batch`` outstanding; 0 = all at once) and collect
        replies concurrently until all answered or ``timeout`` passed since the last send."""
        for host in hosts:
            names.validate_host_id(host)
        self.check_args(agent, method, args)
        started = time.perf_counter()
        waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()
        todo = list(dict.fromkeys(hosts))
        window = batch if batch > 0 else len(todo)
        sent: dict[str, tuple[str, float]] = {}  # message id -> (host, send time)
        results: dict[str, HostResult] = {}
        rejected: dict[str, HostResult] = {}  # failed verification: used if nothing better
        next_i = 0
        deadline = time.monotonic() + timeout

        def send_more() -> None:
            nonlocal next_i, deadline
            while next_i < len(todo) and len(sent) - len(results) < window:
                host = todo[next_i]
                next_i += 1
                deadline = time.monotonic() + timeout
                self._send(agent, method, args, host=host, timeout=timeout, bfilter=None,
                           waiting=waiting, sent=sent)

        try:
            send_more()
            while len(results) < len(todo):
                item = self._next_reply(waiting, deadline)
                if item is None:
                    break
                reply, at = item
                origin = sent.get(reply.correlation_id)
                if origin is None or origin[0] in results:
                    continue
                host, t0 = origin
                if reply.host != host:  # a multi-host identity answering for another
                    self.spoofed += 1
                    log.warning("dropped a reply from %s to a request sent to %s",
                                reply.host, host)
                    continue
                res = HostResult(host, reply, (at - t0) * 1000, reply.correlation_id)
                if reply.rejected:
                    rejected.setdefault(host, res)
                    continue
                results[host] = res
                if on_result is not None:
                    on_result(res)
                send_more()
        finally:
            self._forget(sent)
        ordered = []
        request_ids = {host: mid for mid, (host, _) in sent.items()}
        for host in todo:
            res = results.get(host) or rejected.get(host) or \
                HostResult(host, None, request_id=request_ids.get(host))
            if host not in results and on_result is not None:
                on_result(res)
            ordered.append(res)
        return FanoutResult(ordered, (time.perf_counter() - started) * 1000)

    # --------------------------------------------------------------- discovery
    def discover(
        self, *, filter: dict[str, Any] | None = None, timeout: float = 5.0,
        idle: float = 0.3, first_reply_wait: float = 1.0, expect: Iterable[str] = (),
        on_reply: Callable[[AgentInfo], None] | None = None, refusals: bool = False,
    ) -> list[AgentInfo]:
        """Broadcast ``agent.ping`` and collect the answers.

        Stops at the first of: every host in ``expect`` answered; ``idle`` seconds with
        no reply after the last one (``first_reply_wait`` before the first); ``timeout``.
        With ``refusals``, hosts that answered with an error (a signature they do not
        trust, a clock they disagree with) are listed too, ``refused`` with their
        ``error``: they are up, and a person should not go looking for a dead host.
        A host checks signatures before filters: a refusal may come from a host the
        filter would not have matched.
        """
        expected = set(expect)
        waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()
        started = time.perf_counter()
        hard_stop = time.monotonic() + timeout
        mid = self._send(names.BUILTIN_AGENT, "ping", {}, host=None, timeout=timeout,
                         bfilter=filter or None, waiting=waiting)
        found: dict[str, AgentInfo] = {}
        missing = len(expected)  # counted down, not recomputed: thousands of hosts
        try:
            window_end = time.monotonic() + max(idle, first_reply_wait)
            while True:
                if expected and missing <= 0:
                    break
                item = self._next_reply(waiting, min(window_end, hard_stop))
                if item is None:
                    break
                reply, at = item
                earlier = found.get(reply.host)
                if not reply.ok and (not refusals or earlier is not None):
                    continue
                if earlier is not None and not earlier.refused:
                    continue  # a genuine answer wins over a refusal, whichever came first
                info = AgentInfo.from_reply(reply, (at - started) * 1000)
                found[reply.host] = info
                if reply.host in expected and earlier is None:
                    missing -= 1
                if on_reply is not None:
                    on_reply(info)
                window_end = time.monotonic() + idle
        finally:
            self._forget([mid])
        return sorted(found.values(), key=lambda a: a.host)

    def query(
        self, agent: str, class_name: str, *, where: dict[str, Any] | None = None,
        hosts: list[str], limit: int = 1000, timeout: float = 10.0,
        on_result: Callable[[HostResult], None] | None = None,
    ) -> FanoutResult:
        schema = self.schemas.get(agent) or (
            load_agent_schema(agent) if agent in available_agents() else None)
        if self.validate and schema is not None and class_name not in schema.classes:
            raise RemoteError(
                ErrorCode.UNKNOWN_METHOD,
                f"agent {agent!r} has no object class {class_name!r}; classes: "
                f"{', '.join(sorted(schema.classes)) or 'none'}",
            )
        args = {"agent": agent, "class_name": class_name, "where": where or {}, "limit": limit}
        return self.fanout(names.BUILTIN_AGENT, "query", args, hosts, timeout=timeout,
                           on_result=on_result)

    # --------------------------------------------------------------- approvals
    def approvals(self, hosts: list[str], *, state: str = "pending",
                  timeout: float = 10.0) -> tuple[list[dict[str, Any]], FanoutResult]:
        """Parked requests on ``hosts`` (each with its ``host``), oldest first, and the
        fan-out behind them (hosts that failed or did not answer are in it)."""
        result = self.fanout(names.BUILTIN_AGENT, "approvals", {"state": state}, hosts,
                             timeout=timeout)
        found = [a for r in result.by_status("ok")
                 for a in (r.reply.result or {}).get("approvals", []) if r.reply]
        return sorted(found, key=lambda a: a["created"]), result

    def approve(self, approval: dict[str, Any], *, timeout: float = 60.0) -> HostResult:
        """Approve one parked request as listed by ``approvals``: the digest in it binds
        the approval to that exact request. Sign with a key of your own (``signer``)."""
        return self.call(names.BUILTIN_AGENT, "approve",
                         {"approval_id": approval["approval_id"],
                          "digest": approval["digest"]},
                         host=approval["host"], timeout=timeout)

    def deny(self, approval: dict[str, Any], reason: str = "", *,
             timeout: float = 10.0) -> HostResult:
        return self.call(names.BUILTIN_AGENT, "deny",
                         {"approval_id": approval["approval_id"], "reason": reason},
                         host=approval["host"], timeout=timeout)

    # ------------------------------------------------------------ provisioning
    def provision(self, body: dict[str, Any], *, request_id: str | None = None,
                  timeout: float = 300.0, wait: bool = True) -> tuple[str, Reply | None]:
        """Post a provisioning request (persistent) and, with ``wait``, return its reply
        (None if none came within ``timeout``). The request id is the idempotency key:
        posting the same id again never makes more VMs."""
        request = new_provision(body, request_id=request_id, reply_to=self._reply_queue)
        rid = request.request_id
        waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            self._pending[rid] = waiting
        data, props = request.encode()
        confirmed: queue.Queue[bool | None] = queue.Queue()
        earlier_refusal = self.transport.last_refusal
        try:
            # Confirmed before this returns: the broker has the request on disk (the
            # quorum queue's majority, in a cluster), or the caller hears why not.
            self.publisher.publish(names.PROVISION_EXCHANGE, names.PROVISION_KEY, data, props,
                                   persistent=True, confirm=confirmed.put)
            try:
                outcome = confirmed.get(timeout=30)
            except queue.Empty:
                outcome = None
            refusal = self.transport.last_refusal
            if outcome is not True and refusal is not None and refusal is not earlier_refusal \
                    and (names.PROVISION_EXCHANGE in refusal[0] or outcome is False):
                raise BrokerRefused(f"the broker refused provisioning request {rid}: "
                                    f"{refusal[1]}")
            if outcome is not True:
                raise HostbusError(
                    f"the broker did not take provisioning request {rid} ("
                    + ("it refused it" if outcome is False else
                       "the connection was lost before it confirmed")
                    + "); post it again with the same request id: it will not be done twice")
            if not wait:
                return rid, None
            item = self._next_reply(waiting, time.monotonic() + timeout)
            return rid, item[0] if item else None
        finally:
            self._forget([rid])

    # ------------------------------------------------------------------ events
    def subscribe(
        self, patterns: list[str], handler: Callable[[Event, str | None], None], *,
        name: str | None = None, durable: bool = False,
    ) -> str:
        """Call ``handler(event, note)`` for each event, once: repeats (same agent epoch,
        a sequence number already seen) are dropped. ``note`` reports gaps and restarts.
        Runs on the transport's I/O thread: keep the handler short."""
        for pattern in patterns:
            if not pattern or len(pattern) > 255:
                raise SchemaError(f"invalid event pattern {pattern!r}")
        sequencer = Sequencer()

        def on_event(delivery: Delivery) -> None:
            try:
                ev = parse_event(delivery)
            except RemoteError as err:
                log.warning("ignored a malformed event on %s: %s", delivery.routing_key,
                            err.message)
                return
            if self._impostor(delivery, ev.host, "event", ev.routing_key()):
                return
            if self.agent_keys is not None:
                why = self._unverified(delivery, ev.host, EVENT_TYPE, "event")
                if why is not None:
                    log.warning("dropped event %s from %s: %s", ev.full_name, ev.host, why)
                    return
            note = sequencer.check(ev)
            if note is not None and note.startswith("duplicate"):
                # At-least-once delivery: an agent resends what the broker may not have
                # confirmed before a reconnect. The handler sees each event once.
                log.debug("dropped a repeated event: %s", note)
                return
            handler(ev, note)

        return self.transport.subscribe(patterns, on_event, name=name, durable=durable)
