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
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hostbus import names
from hostbus.envelope import (
    EVENT_TYPE,
    REPLY_TYPE,
    Event,
    Reply,
    earlier_reply,
    new_provision,
    new_request,
    parse_event,
    parse_reply,
)
from hostbus.errors import (
    BrokerBlocked,
    BrokerRefused,
    ConnectionLost,
    ErrorCode,
    HostbusError,
    RemoteError,
    SchemaError,
    TransportClosed,
)
from hostbus.publisher import Publisher
from hostbus.schema import (
    AgentSchema,
    MethodSpec,
    available_agents,
    load_agent_schema,
)
from hostbus.security.provenance import why_not_from
from hostbus.transport import connect
from hostbus.transport.base import Caller, Delivery, Properties, Transport
from hostbus.transport.url import check_resolvable

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier
    from hostbus.tracing import Tracer

log = logging.getLogger("hostbus.console")

_LOST = object()  # put into waiting queues when the connection drops


@dataclass(frozen=True)
class _Refused:
    """Put into waiting queues when the broker refuses a request publish."""

    reason: str


@dataclass(frozen=True)
class _Blocked:
    """Put into waiting queues when the broker stops taking publishes (an alarm)."""

    reason: str


@dataclass(frozen=True)
class _Unroutable:
    """Put into a request's waiting queue when no queue took it."""

    message_id: str
    routing_key: str


def blocked_message(reason: str, *, sent: bool) -> str:
    """What a caller is told under a resource alarm. A request already handed to the
    connection is not taken back: it goes out when the alarm clears, and an agent
    still runs it if its deadline (the call's timeout) has not passed by then."""
    then = ("the request waits in the connection and may still run if the alarm clears "
            "before its deadline" if sent else "nothing was sent")
    return (f"the broker is refusing publishes: {reason}; {then}. Try again once the "
            "alarm clears (`rabbitmq-diagnostics alarms` on the broker)")


@dataclass
class HostResult:
    host: str
    reply: Reply | None  # None: no reply before the timeout, or not_enrolled
    elapsed_ms: float | None = None  # round trip seen by the console
    request_id: str | None = None  # the request's message id (as in the agent's audit log)
    #: Why the request went nowhere: the broker had no queue for it (no such host, or
    #: the host does not have that agent enrolled); said at once, not at the timeout.
    not_enrolled: str | None = None
    #: Why no reply was waited for: nothing consumes the host's queue (its agent is not
    #: running), seen before sending.
    offline: str | None = None

    @property
    def status(self) -> str:
        """ok, error, no_reply, not_enrolled, or pending: parked on the host until a
        second person approves it (its reply comes then, see ``Console.await_decisions``)."""
        if self.not_enrolled is not None:
            return "not_enrolled"
        if self.reply is None:
            return "no_reply"
        if self.reply.ok:
            return "ok"
        return "pending" if self.approval is not None else "error"

    @property
    def approval(self) -> dict[str, Any] | None:
        """The approval this request waits for (``approval_id``, ``expires``, ``rule``),
        if the host parked it. An agent that cannot take approvals also answers
        ``approval_required``, without an approval id: that is an error."""
        if self.reply is None or self.reply.error is None:
            return None
        error = self.reply.error
        details = error.get("details") or {}
        if error.get("code") != ErrorCode.APPROVAL_REQUIRED.value or \
                not details.get("approval_id"):
            return None
        return dict(details)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "status": self.status}
        if self.request_id is not None:
            out["request_id"] = self.request_id
        if self.approval is not None:
            out["approval_id"] = self.approval["approval_id"]
        if self.not_enrolled is not None or self.offline is not None:
            out["error"] = {"message": self.not_enrolled or self.offline}
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
                "not_enrolled": len(self.by_status("not_enrolled")),
                "pending": len(self.by_status("pending")),
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


class _Stream:
    """One agent epoch's numbers: the highest seen, and those below it not seen yet
    (holes, kept for the last ``window`` numbers)."""

    __slots__ = ("high", "holes", "order")

    def __init__(self, seq: int) -> None:
        self.high = seq
        self.holes: set[int] = set()
        self.order: deque[int] = deque()  # the holes in increasing order, for pruning

    def skip(self, upto: int, window: int) -> None:
        """Numbers high+1 .. upto-1 did not come (yet); upto is the new high."""
        for n in range(max(self.high + 1, upto - window), upto):
            self.holes.add(n)
            self.order.append(n)
        self.high = upto
        floor = upto - window
        while self.order and self.order[0] <= floor:
            self.holes.discard(self.order.popleft())


@dataclass(frozen=True, slots=True)
class Seen:
    """What the sequencer made of one event: ``fresh`` unless it is a repeat (deliver
    it), and what a person should know (a gap, a late arrival, a restart)."""

    fresh: bool
    note: str | None = None


@dataclass
class Sequencer:
    """Follows (epoch, seq) per host and agent. Every event not seen before is
    delivered, in the order it arrives; only a repeat (an epoch and number seen
    before, as an at-least-once resend brings) is dropped. Notes say when numbers are
    skipped (a gap: lost, or still on their way), when a skipped one arrives late, and
    when an agent restarted (a new epoch). The numbers seen are remembered for the
    last ``window`` below the highest; an older one cannot be told from a repeat and
    is delivered, with a note. A few epochs per agent are remembered, so an event from
    before a restart that arrives after it is judged against its own epoch."""

    window: int = 4096
    epochs: int = 4
    streams: dict[tuple[str, str], dict[str, _Stream]] = field(default_factory=dict)

    def check(self, ev: Event) -> Seen:
        who = f"{ev.host}/{ev.agent}"
        known = self.streams.setdefault((ev.host, ev.agent), {})
        stream = known.get(ev.epoch)
        if stream is None:
            current = next(reversed(known), None)
            known[ev.epoch] = _Stream(ev.seq)
            if len(known) > self.epochs:
                del known[next(iter(known))]
            if current is None:
                return Seen(True)
            return Seen(True, f"{who} restarted (epoch {current} -> {ev.epoch})")
        seq, high = ev.seq, stream.high
        if seq == high + 1:
            stream.high = seq
            return Seen(True)
        if seq > high:
            stream.skip(seq, self.window)
            missing = seq - high - 1
            return Seen(True, f"gap: {missing} event{'s' if missing > 1 else ''} from {who} "
                              f"missing so far (seq {high + 1}..{seq - 1})")
        if seq in stream.holes:
            stream.holes.discard(seq)
            return Seen(True, f"late: seq {seq} from {who} arrived after seq {high} (it was "
                              "counted missing)")
        if seq <= high - self.window:
            return Seen(True, f"seq {seq} from {who} is older than the last {self.window} "
                              "numbers; delivered, though it may be a repeat")
        return Seen(False, f"repeat of seq {seq} from {who}")


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
                 multi_host_users: Iterable[str] = MULTI_HOST_USERS,
                 tracer: Tracer | None = None) -> None:
        """``signer`` signs requests.

        A host may only speak for itself. A reply or event whose body names a host other
        than its broker-checked sender (``user_id``; unless the sender is one of
        ``multi_host_users``), or an event whose routing key names another host or
        event than its body, is dropped, logged and counted in ``spoofed``. With
        ``agent_keys`` every reply and event must moreover be signed by the key trusted
        for its sender: a reply that fails counts only if nothing genuine arrives, as
        ``bad_signature``; an event that fails is dropped (logged). With ``tracer``
        (hostbus.tracing) each request carries the trace context of its publish."""
        self.transport = transport
        self.publisher = Publisher(transport, signer, tracer)
        self.agent_keys = agent_keys
        self.multi_host_users = frozenset(multi_host_users)
        self.spoofed = 0
        self._spoof_logged: set[tuple[str | None, str]] = set()
        self.validate = validate
        self.schemas = dict(schemas or {})
        self._specs: dict[tuple[str, str], MethodSpec] = {}
        self._pending: dict[str, queue.SimpleQueue[Any]] = {}
        # Where the later replies of requests parked for approval go (fanout's
        # keep_parked), until await_decisions reads them.
        self._decisions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._reply_queue: str | None = None
        self._notices: dict[str, Callable[[str], None]] = {}  # subscription -> on_notice
        self._lost: Exception | None = None
        # Calls' own connections, one per calling thread: thread id -> (caller, the
        # connection generation it was opened in; one lost connection later, it is
        # replaced).
        self._callers: dict[int, tuple[Caller, int]] = {}
        self._generation = 0
        self._called: set[int] = set()  # threads that made a call
        self._closed = False
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
    def connect(cls, url: str, *, connect_timeout: float = 5.0, reconnect: bool = True,
                **kwargs: Any) -> Console:
        """``reconnect=False``: a lost connection ends this console's work (its waiting
        calls fail at once) instead of being retried, for a program that would only
        report it and stop (a command line)."""
        check_resolvable(url)  # a typo in the host: said now, not after retries
        transport = connect(url, connection_name="hostbus-console",
                            connect_timeout=connect_timeout, reconnect=reconnect)
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
        self.transport.on_unroutable(self._on_unroutable)
        self.transport.on_blocked(self._on_blocked)
        self.transport.on_consumer_lost(self._on_consumer_lost)
        self.transport.on_consumer_restored(self._on_consumer_restored)
        self._reply_queue = self.transport.open_reply_queue(self._on_reply)

    def close(self) -> None:
        """Close the calling threads' connections and the console's own. Call it once
        no call is running."""
        self._closed = True
        with self._lock:
            callers, self._callers = list(self._callers.values()), {}
        for caller, _ in callers:
            caller.close()
        self.transport.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing
    def _on_reply(self, delivery: Delivery) -> None:
        outcome = self._judge_reply(delivery)
        if outcome is None:
            return
        with self._lock:
            waiting = self._pending.get(outcome.correlation_id or "")
        if waiting is not None:
            waiting.put((outcome, time.perf_counter()))

    def _judge_reply(self, delivery: Delivery) -> Reply | None:
        """The reply this delivery carries, as its request should see it: None if it is
        malformed, speaks for another host than its sender, or is a ``replayed`` answer
        whose first copy is still running; ``rejected`` if its signature fails."""
        try:
            reply = parse_reply(delivery)
        except RemoteError as err:
            log.warning("ignored a malformed reply: %s", err.message)
            return None
        if self._impostor(delivery, reply.host, "reply"):
            return None
        if self.agent_keys is not None:
            why = self._unverified(delivery, reply.host, REPLY_TYPE, "reply")
            if why is not None:
                log.warning("a reply claiming host %s failed verification: %s", reply.host, why)
                return Reply(host=reply.host, agent=reply.agent, method=reply.method,
                             status="error", error={"code": ErrorCode.BAD_SIGNATURE.value,
                                                    "message": why},
                             correlation_id=reply.correlation_id, user_id=reply.user_id,
                             rejected=True)
        outcome = earlier_reply(reply)
        if outcome is None:  # a copy of our request, the first still running: wait for it
            log.debug("host %s is still handling request %s", reply.host,
                      reply.correlation_id)
        return outcome

    def _impostor(self, delivery: Delivery, host: str, what: str,
                  routing_key: str | None = None) -> bool:
        """Whether this reply or event speaks for a host other than its sender (or, for
        an event, than its routing key): then it is dropped, logged once per sender and
        claimed host, and counted."""
        # The signature (with agent keys) is checked apart: a bad one is answered, not
        # dropped (_unverified).
        why = why_not_from(delivery, host, routing_key=routing_key,
                           multi_host_users=self.multi_host_users)
        if why is None:
            return False
        user = delivery.properties.user_id
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
            self._generation += 1  # each calling thread opens a new connection
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

    def _on_unroutable(self, exchange: str, routing_key: str, props: Properties) -> None:
        # A request no queue took: no host has that agent enrolled (the broker knows
        # at once, so the caller does too, instead of waiting out its timeout).
        if exchange != names.REQUEST_EXCHANGE:
            return
        with self._lock:
            waiting = self._pending.get(props.message_id or "")
        if waiting is not None:
            waiting.put(_Unroutable(props.message_id or "", routing_key))

    def _on_blocked(self, reason: str) -> None:
        with self._lock:
            waiting = list(self._pending.values())
        for q in waiting:
            q.put(_Blocked(reason))

    def _on_consumer_lost(self, queue_name: str, reason: str) -> None:
        notice = self._notices.get(queue_name)
        if notice is not None:
            notice(f"subscription {queue_name} lost ({reason}); restoring it")
        elif queue_name == self._reply_queue:
            log.warning("the broker ended this console's reply queue (%s); declaring it "
                        "again: replies sent meanwhile are lost", reason)

    def _on_consumer_restored(self, queue_name: str) -> None:
        notice = self._notices.get(queue_name)
        if notice is not None:
            notice(f"subscription {queue_name} restored; events published while it was "
                   "gone are lost")

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
        if self.transport.blocked is not None:
            raise BrokerBlocked(blocked_message(self.transport.blocked, sent=False))
        req = new_request(agent, method, args, host=host, filter=bfilter, timeout=timeout,
                          reply_to=self._reply_queue)
        with self._lock:
            self._pending[req.message_id] = waiting
        body, props = req.encode()
        if sent is not None:
            sent[req.message_id] = (host or "", time.perf_counter())
        self.publisher.publish(names.REQUEST_EXCHANGE, req.routing_key(), body, props,
                               mandatory=True)
        return req.message_id

    def _next_reply(self, waiting: queue.SimpleQueue[Any],
                    until: float) -> tuple[Reply, float] | _Unroutable | None:
        """The next (reply, arrival time), a request no queue took, or None once
        ``until`` (monotonic) has passed."""
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
        if isinstance(item, _Blocked):
            raise BrokerBlocked(blocked_message(item.reason, sent=True))
        return item

    def _forget(self, ids: Iterable[str]) -> None:
        with self._lock:
            for mid in ids:
                self._pending.pop(mid, None)

    # ------------------------------------------------------------------- calls
    def call(self, agent: str, method: str, args: dict[str, Any] | None = None, *,
             host: str, timeout: float = 10.0) -> HostResult:
        """One request to one host. From a thread's second call on, where the transport
        offers it (AMQP 0-9-1), the request goes out and its reply comes back on a
        connection of the calling thread's own, driven by this thread: no hand-off to the
        I/O thread either way (docs/design.md, "Threads"). Otherwise (a thread's first
        call, AMQP 1.0) it is a fan-out to one host."""
        caller = self._thread_caller()
        if caller is None:
            return self.fanout(agent, method, args or {}, [host], timeout=timeout).results[0]
        names.validate_host_id(host)
        args = self.check_args(agent, method, args or {})
        try:
            return self._call_on(caller, agent, method, args, host, timeout)
        finally:
            if caller.broken:
                self._drop_caller(caller)

    def _thread_caller(self) -> Caller | None:
        """This thread's caller connection (opened on its first call; replaced once the
        console's connection was lost since it was opened), or None where the transport
        has none."""
        if self._closed:
            raise TransportClosed("the console is closed")
        if self._lost is not None:
            raise ConnectionLost(f"the broker connection was lost: {self._lost!r}")
        if self.transport.blocked is not None:
            raise BrokerBlocked(blocked_message(self.transport.blocked, sent=False))
        ident = threading.get_ident()
        with self._lock:
            entry = self._callers.get(ident)
            generation = self._generation
            if entry is None and ident not in self._called:
                # A thread's first call goes through the I/O thread: a one-off call (a
                # command line's) would wait longer for a second connection to open
                # than the hand-offs cost. A thread that calls again gets its own.
                self._called.add(ident)
                return None
        if entry is not None:
            caller, opened_in = entry
            if opened_in == generation and not caller.broken and self._alive(caller):
                return caller
            self._drop_caller(caller)
        fresh = self.transport.caller()
        if fresh is None:
            return None
        try:
            fresh.open()
        except HostbusError as err:
            # The console's own connection is up (checked above): this one could not
            # be made. Said as a lost connection: the caller may try again.
            raise ConnectionLost(f"cannot open this thread's connection: {err}") from None
        with self._lock:
            self._callers[ident] = (fresh, generation)
        return fresh

    @staticmethod
    def _alive(caller: Caller) -> bool:
        """Whether a caller connection is still open. Nothing reads it between calls:
        whatever the broker sent meanwhile (it closed the connection, an alarm ended) is
        read first, without waiting, so it is learned before a request goes out on it."""
        if not caller.unread():
            return True
        try:
            caller.pump()
        except HostbusError:
            return False
        return True

    def _drop_caller(self, caller: Caller) -> None:
        with self._lock:
            for ident, (known, _) in list(self._callers.items()):
                if known is caller:
                    del self._callers[ident]
        caller.close()

    def _call_on(self, caller: Caller, agent: str, method: str, args: dict[str, Any],
                 host: str, timeout: float) -> HostResult:
        """Publish on ``caller`` and wait on it for the reply, on this thread."""
        if caller.blocked is not None:
            caller.pump()  # an alarm that ended while nobody read the connection
            if caller.blocked is not None:
                raise BrokerBlocked(blocked_message(caller.blocked, sent=False))
        req = new_request(agent, method, args, host=host, filter=None, timeout=timeout,
                          reply_to=caller.reply_to)
        mid = req.message_id
        body, props = req.encode()
        caller.replies.clear()
        caller.returned.clear()
        publisher = Publisher(caller, self.publisher.signer, self.publisher.tracer)
        sent_at = time.perf_counter()
        publisher.publish(names.REQUEST_EXCHANGE, req.routing_key(), body, props,
                          mandatory=True)
        deadline = time.monotonic() + timeout
        rejected: HostResult | None = None  # failed verification: used if nothing better

        def arrived() -> bool:
            return bool(caller.replies or caller.returned or caller.blocked)

        while True:
            caller.wait(deadline, arrived)
            if caller.blocked is not None:
                raise BrokerBlocked(blocked_message(caller.blocked, sent=True))
            returned, caller.returned = caller.returned, []
            for exchange, _key, returned_props in returned:
                if exchange == names.REQUEST_EXCHANGE and returned_props.message_id == mid:
                    return HostResult(host, None, request_id=mid, not_enrolled=(
                        f"no host {host!r} has the agent {agent!r} enrolled"))
            replies, caller.replies = caller.replies, []
            for delivery, at in replies:
                reply = self._judge_reply(delivery)
                if reply is None or reply.correlation_id != mid:
                    continue  # not ours: a late answer to an earlier call, say
                if reply.host != host:  # a multi-host identity answering for another
                    self.spoofed += 1
                    log.warning("dropped a reply from %s to a request sent to %s",
                                reply.host, host)
                    continue
                res = HostResult(host, reply, (at - sent_at) * 1000, mid)
                if not reply.rejected:
                    return res
                rejected = rejected or res
            if time.monotonic() >= deadline:
                return rejected or HostResult(host, None, request_id=mid)

    def fanout(
        self, agent: str, method: str, args: dict[str, Any], hosts: list[str], *,
        timeout: float = 10.0, batch: int = 0,
        on_result: Callable[[HostResult], None] | None = None, keep_parked: bool = False,
    ) -> FanoutResult:
        """Send to each host (at most ``batch`` outstanding; 0 = all at once) and collect
        replies concurrently until all answered or ``timeout`` passed since the last send.
        With ``keep_parked`` the console goes on listening for the outcome of requests
        parked for approval (status pending): ``await_decisions`` waits for it."""
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
        parked: set[str] = set()  # request ids kept for await_decisions
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
                if isinstance(item, _Unroutable):
                    origin = sent.get(item.message_id)
                    if origin is not None and origin[0] not in results:
                        host = origin[0]
                        results[host] = HostResult(
                            host, None, request_id=item.message_id, not_enrolled=(
                                f"no host {host!r} has the agent {agent!r} enrolled"))
                        if on_result is not None:
                            on_result(results[host])
                        send_more()
                    continue
                reply, at = item
                if reply.correlation_id in parked:  # decided before we moved it
                    self._decisions.put(item)
                    continue
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
                if keep_parked and res.status == "pending":
                    with self._lock:  # its decision, whenever it comes, is kept
                        self._pending[reply.correlation_id] = self._decisions
                    parked.add(reply.correlation_id)
                if on_result is not None:
                    on_result(res)
                send_more()
        finally:
            self._forget(mid for mid in sent if mid not in parked)
        ordered = []
        request_ids = {host: mid for mid, (host, _) in sent.items()}
        for host in todo:
            res = results.get(host) or rejected.get(host) or \
                HostResult(host, None, request_id=request_ids.get(host))
            if host not in results and on_result is not None:
                on_result(res)
            ordered.append(res)
        return FanoutResult(ordered, (time.perf_counter() - started) * 1000)

    def await_decisions(self, parked: list[HostResult], *, until: float,
                        on_result: Callable[[HostResult], None] | None = None
                        ) -> list[HostResult]:
        """The outcomes of requests a ``fanout(keep_parked=True)`` left pending: each
        host's second reply (its result once approved; ``unauthorized`` if denied,
        ``expired`` if nobody decided), as they come, until ``until`` (monotonic).
        Those still undecided then are returned as they were."""
        waiting = {r.request_id: r for r in parked if r.status == "pending" and r.request_id}
        decided: dict[str, HostResult] = {}
        try:
            while len(decided) < len(waiting):
                item = self._next_reply(self._decisions, until)
                if item is None:
                    break
                if isinstance(item, _Unroutable):
                    continue
                reply, _at = item
                mid = reply.correlation_id or ""
                first = waiting.get(mid)
                if first is None or mid in decided or reply.host != first.host \
                        or reply.rejected:
                    continue
                decided[mid] = HostResult(first.host, reply, first.elapsed_ms, mid)
                if on_result is not None:
                    on_result(decided[mid])
        finally:
            self._forget(waiting)
        return [decided.get(r.request_id or "", r) for r in parked]

    def offline_hosts(self, agent: str, hosts: Iterable[str]) -> dict[str, str]:
        """The hosts among ``hosts`` whose queue for ``agent`` nobody consumes (their
        agent is not running), each with what to say: a request there would wait in the
        queue, unanswered, for its whole timeout. One passive check per host; hosts the
        protocol cannot tell about (AMQP 1.0) are not listed."""
        found = {}
        for host in hosts:
            queue = names.agent_queue(host) if agent == names.BUILTIN_AGENT else \
                names.host_queue(host)
            try:
                consumers = self.transport.queue_consumers(queue)
            except HostbusError:  # cannot tell: the call goes out and says what happens
                consumers = None
            if consumers == 0:
                found[host] = (f"{host} is offline: nothing consumes its queue {queue} "
                               "(is hostbus-agent running there? `hostbus watch "
                               f"'agent.{host}.*'` tells when it is back)")
        return found

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
                if isinstance(item, _Unroutable):
                    # Every enrolled host's queue takes broadcasts: there is none.
                    log.info("no host is enrolled: nothing took the discovery broadcast")
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
            return rid, item[0] if isinstance(item, tuple) else None
        finally:
            self._forget([rid])

    # ------------------------------------------------------------------ events
    def subscribe(
        self, patterns: list[str], handler: Callable[[Event, str | None], None], *,
        name: str | None = None, durable: bool = False,
        on_notice: Callable[[str], None] | None = None,
    ) -> str:
        """Call ``handler(event, note)`` for each event not seen before, in the order
        they arrive: only repeats (an agent epoch and sequence number already seen) are
        dropped. ``note`` reports gaps, events arriving late, and restarts.
        ``on_notice(text)`` hears when the broker ends the subscription (its queue
        deleted) and when it is restored, by itself, within seconds (events published
        in between are lost: the next one's note shows the gap). Both run on the
        transport's I/O thread: keep them short."""
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
            seen = sequencer.check(ev)
            if not seen.fresh:
                # At-least-once delivery: an agent resends what the broker may not have
                # confirmed before a reconnect. The handler sees each event once.
                log.debug("dropped a repeated event: %s", seen.note)
                return
            handler(ev, seen.note)

        label = self.transport.subscribe(patterns, on_event, name=name, durable=durable)
        if on_notice is not None:
            self._notices[label] = on_notice
        return label
