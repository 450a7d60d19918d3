"""The agent runtime: one daemon, one connection, several agents.

Where a message enters: the transport hands each delivery from the host's queues (the
host queue for the agents' work, the agent queue for the built-in agent) to
``_on_delivery`` (on the I/O thread), which checks it and passes it to a worker; the
worker runs the call and publishes the reply. Events from agents and
the runtime's own lifecycle events (online, heartbeat, offline) go out through
``emit``, numbered per agent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hostbus import __version__, names
from hostbus.envelope import Event, error_reply, now_rfc3339, parse_request
from hostbus.errors import BrokerRefused, ErrorCode, RemoteError, SchemaError
from hostbus.files import Durability
from hostbus.publisher import Publisher
from hostbus.schema import AgentSchema, load_agent_schema
from hostbus.security.audit import AuditLog, args_digest
from hostbus.security.policy import Decision, Policy
from hostbus.security.replay import ReplayGuard
from hostbus.serving.agent import Agent, check_agent_against_schema
from hostbus.serving.builtin import BuiltinAgent, RuntimeInfo
from hostbus.serving.dispatch import Checked, Dispatcher, HostedAgent, Outcome
from hostbus.serving.outbox import EventOutbox, Spool
from hostbus.transport import connect
from hostbus.transport.base import Delivery, Transport

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier
    from hostbus.serving.approvals import Approvals, Parked

log = logging.getLogger("hostbus.agent")


class AgentRuntime:
    def __init__(
        self,
        transport: Transport,
        host_id: str,
        agents: list[Agent],
        *,
        heartbeat_interval: float = 10.0,
        intervals: dict[str, dict[str, Any]] | None = None,
        max_message_bytes: int = 1 << 20,
        workers: int = 4,
        policy: Policy | None = None,
        facts: dict[str, Any] | None = None,
        check_results: bool = False,
        schemas: dict[str, AgentSchema] | None = None,
        executor: Executor | None = None,
        audit: AuditLog | None = None,
        verifier: Verifier | None = None,
        replay: ReplayGuard | None = None,
        approvals: Approvals | None = None,
        signer: Signer | None = None,
        spool: Spool | None = None,
    ) -> None:
        """``schemas`` supplies schemas not shipped in ``schemas/agents`` (test agents,
        third-party agents); the shipped files are used otherwise. ``executor`` shares
        one worker pool among many runtimes in a process (simulated fleets in
        benchmarks); by default each runtime has its own. ``heartbeat_interval`` 0 sends
        no heartbeats. ``approvals`` parks requests that need a second person's approval
        (it needs ``verifier``). ``signer`` signs every reply and event. ``spool`` keeps
        events while the broker is away (in memory by default; the daemon's is a file)."""
        names.validate_host_id(host_id)
        self.transport = transport
        self.host_id = host_id
        self.epoch = uuid.uuid4().hex[:16]
        self.started_at = now_rfc3339()
        self._started_mono = time.monotonic()
        self.heartbeat_interval = heartbeat_interval
        self._intervals = intervals or {}
        self._extra_facts = dict(facts or {})
        self._facts: dict[str, Any] | None = None
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._own_pool = executor is None
        self._pool: Executor = executor or ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="hostbus-worker")
        self.requests_handled = 0
        self.audit = audit
        self.publisher = Publisher(transport, signer)
        self.outbox = EventOutbox(self.publisher, spool)
        if approvals is not None and verifier is None:
            raise ValueError("approvals need signature checks: pass a verifier too")

        self.hosted: dict[str, HostedAgent] = {}
        info = RuntimeInfo(host_id, self.epoch, self.started_at, self.hosted, self.facts,
                           approvals, self._release, self._expire_approvals)
        for agent in [BuiltinAgent(info), *agents]:
            schema = (schemas or {}).get(agent.name) or load_agent_schema(agent.name)
            check_agent_against_schema(agent, schema)
            agent.attach(self.emit)
            self.hosted[agent.name] = HostedAgent(agent, schema)
        self.dispatcher = Dispatcher(
            host_id, self.hosted, facts=self.facts, policy=policy,
            max_message_bytes=max_message_bytes, check_results=check_results,
            verifier=verifier, replay=replay, approvals=approvals,
        )

    @classmethod
    def serve(cls, url: str, host_id: str, agents: list[Agent], *,
              connection_name: str | None = None, prefetch: int = 64,
              **options: Any) -> AgentRuntime:
        """Connect to ``url`` and start serving: for embedding a runtime in a program
        (services, tests, benchmarks). ``options`` are the constructor's. The host must
        be enrolled. ``stop()`` closes the connection."""
        transport = connect(url, connection_name=connection_name or f"hostbus {host_id}",
                            prefetch=prefetch)
        transport.start()
        try:
            runtime = cls(transport, host_id, agents, **options)
            runtime.start()
        except Exception:
            transport.close()
            raise
        return runtime

    @property
    def agent_names(self) -> list[str]:
        return sorted(n for n in self.hosted if n != names.BUILTIN_AGENT)

    def facts(self) -> dict[str, Any]:
        """Collected once: facts describe the host for the daemon's life, and pings are
        answered on the I/O thread, where asking libvirt every time would not belong."""
        if self._facts is None:
            merged: dict[str, Any] = {}
            for hosted in self.hosted.values():
                merged.update(hosted.agent.facts())
            merged.update(self._extra_facts)  # configured facts win
            self._facts = merged
        return self._facts

    # ------------------------------------------------------------------ events
    def emit(self, agent: str, event: str, data: dict[str, Any]) -> None:
        hosted = self.hosted.get(agent)
        if hosted is None or event not in hosted.schema.events:
            raise SchemaError(f"event {agent}.{event} is not declared in the agent's schema")
        # Numbering and handing to the outbox in one step: events from several threads
        # leave in the order of their numbers (consumers drop a number seen before).
        with self._seq_lock:
            seq = self._seq.get(agent, 0) + 1
            self._seq[agent] = seq
            ev = Event(host=self.host_id, agent=agent, event=event, data=data, seq=seq,
                       epoch=self.epoch)
            body, props = ev.encode()
            self.outbox.send(names.EVENT_EXCHANGE, ev.routing_key(), body, props,
                             periodic=hosted.schema.events[event].periodic)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        queue = names.host_queue(self.host_id)
        if not self.transport.queue_exists(queue):
            raise BrokerRefused(
                f"queue {queue} does not exist, so this host is not enrolled. Run "
                f"`hostbus broker enroll {self.host_id} --agents {','.join(self.agent_names)}`"
            )
        for hosted in self.hosted.values():
            hosted.agent.start()
        # The agent queue first: over AMQP 0-9-1 a refused probe or consume closes the
        # channel, which would hand back whatever the host queue had delivered by then.
        self._consume_agent_queue()
        self.transport.consume(queue, self._on_delivery, manual_ack=True)
        self.outbox.resume()
        self.emit(names.BUILTIN_AGENT, "online", {
            "agents": self.agent_names, "version": __version__, "epoch": self.epoch,
            "facts": self.facts(),
        })
        log.info("online as host %s with agents %s (epoch %s)", self.host_id,
                 ", ".join(self.agent_names) or "none", self.epoch)
        if self.heartbeat_interval > 0:
            self._every(self.heartbeat_interval, self._heartbeat, "heartbeat")
        if any(d.on_disk for d in self._durabilities()):  # not for a fleet in memory
            self._every(1.0, self._retry_state, "state-disk")
        if self.dispatcher.approvals is not None:
            ttl = self.dispatcher.approvals.store.ttl_s
            self._every(min(60.0, max(1.0, ttl / 10)), self._expire_approvals,
                        "approval-expiry")
        for hosted in self.hosted.values():
            settings = self._intervals.get(hosted.agent.name, {})
            for setting, task in hosted.agent.periodic_tasks():
                interval = float(settings.get(setting, 0) or 0)
                if interval > 0:
                    self._every(interval, task, f"{hosted.agent.name}.{task.__name__}")

    def _consume_agent_queue(self) -> None:
        """The built-in agent's own queue, where an enrollment made it. A host enrolled by
        an earlier release has none: its discovery keeps arriving in the host queue,
        behind the host's work, until it is enrolled again."""
        queue = names.agent_queue(self.host_id)
        why = None
        try:
            if self.transport.queue_exists(queue):
                self.transport.consume(queue, self._on_delivery, manual_ack=True)
                return
            why = f"there is no queue {queue}"
        except BrokerRefused as exc:
            why = f"this agent may not read {queue} ({exc})"
        agents = f" --agents {','.join(self.agent_names)}" if self.agent_names else ""
        log.warning("%s, so pings and other requests to the built-in agent wait behind this "
                    "host's work: run `hostbus broker enroll %s%s --no-user` (it adds the "
                    "queue and keeps this host's password), then restart this agent", why,
                    self.host_id, agents)

    def stop(self, reason: str = "stopped", *, close_transport: bool = True) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._own_pool:
            self._pool.shutdown(wait=True, cancel_futures=False)
        try:
            self.emit(names.BUILTIN_AGENT, "offline", {"reason": reason})
        except Exception:
            log.warning("could not announce going offline", exc_info=True)
        if not self.outbox.wait_confirmed(5.0):
            log.warning("stopping with events unconfirmed by the broker (they may be lost)")
        for hosted in self.hosted.values():
            try:
                hosted.agent.stop()
            except Exception:
                log.exception("agent %s failed to stop cleanly", hosted.agent.name)
        if self.audit is not None:
            self.audit.close()
        if close_transport:
            self.transport.close()
        log.info("offline (%s); handled %d requests", reason, self.requests_handled)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    # ---------------------------------------------------------------- requests
    def _on_delivery(self, delivery: Delivery) -> None:
        """On the I/O thread: every check runs here (microseconds, bounded), so refusals
        never wait behind slow work; inline methods run here too. The rest goes to a
        worker. This never blocks: the broker hands out at most a consumer window
        (prefetch) of unacknowledged requests per queue, which bounds what waits for a
        worker. A request is acknowledged only once answered: if this process dies
        while a method runs, the broker hands the request to the next start, whose
        recent-ids store answers it as interrupted instead of running it again."""
        checked = self.dispatcher.check(delivery)
        if isinstance(checked, Outcome):
            self._answer(checked)
            delivery.ack()
            return
        if checked.inline:
            self._answer(self.dispatcher.run(checked))
            delivery.ack()
            return
        # RuntimeError: the pool is shut down, we are stopping; the broker redelivers.
        with contextlib.suppress(RuntimeError):
            self._pool.submit(self._serve, checked, delivery)

    def _serve(self, checked: Checked, delivery: Delivery) -> None:
        try:
            late = self.dispatcher.late(checked)
            if late is not None:  # it waited for a worker past its deadline: not run
                self._answer(late)
                return
            request = checked.request
            # From here a crash leaves it "interrupted"; before, it runs after a restart.
            self.dispatcher.replay.started(request.user_id or "", request.message_id)
            self._answer(self.dispatcher.run(checked))
        finally:
            delivery.ack()

    def _answer(self, outcome: Outcome) -> None:
        if self.audit is not None and (outcome.reply is not None or outcome.executed):
            self._audit(outcome)
        try:
            self.requests_handled += 1
            if outcome.reply is not None:
                if outcome.reply_to is not None:
                    body = self.publisher.reply(outcome.reply_to, outcome.reply)
                else:
                    body = outcome.reply.encode()[0]
                if outcome.request is not None and not outcome.repeat:
                    # A repeat's refusal is not the request's reply: kept, it would
                    # replace the real one (or stand for it, if the real one is running).
                    self.dispatcher.replay.remember_reply(outcome.request.user_id or "",
                                                          outcome.request.message_id, body)
        except Exception:
            log.exception("failed to send a reply")
        if outcome.parked is not None:
            parked = outcome.parked
            self.emit(names.BUILTIN_AGENT, "approval.pending", {
                "approval_id": parked.approval_id, "requester": parked.requester,
                "call": parked.call, "expires": parked.expires_at,
                "rule": parked.rule})

    # --------------------------------------------------------------- approvals
    def _release(self, parked: Parked, reason: str) -> dict[str, Any]:
        """On a worker, for ``agent.approve`` or ``agent.deny``: run the parked request
        (approved) or refuse it (denied), answer its requester at its own reply queue
        with its own correlation id, and return the reply body."""
        if parked.state == "approved":
            try:
                outcome = self.dispatcher.run(self.dispatcher.prepare_approved(parked))
            except RemoteError as err:  # the policy or the keys changed while it waited
                outcome = self._refusal(parked, err)
        else:
            outcome = self._refusal(parked, RemoteError(
                ErrorCode.UNAUTHORIZED,
                f"{parked.decided_by} denied approval {parked.approval_id}"
                + (f": {reason}" if reason else "")))
        outcome.approved_by = parked.decided_by if parked.state == "approved" else None
        self._answer(outcome)
        assert outcome.reply is not None
        status = "ok" if outcome.reply.ok else (outcome.reply.error_code or "error")
        assert self.dispatcher.approvals is not None
        self.dispatcher.approvals.store.record_outcome(parked.approval_id, status)
        self.emit(names.BUILTIN_AGENT, "approval.decided", {
            "approval_id": parked.approval_id, "requester": parked.requester,
            "call": parked.call, "decision": parked.state, "by": parked.decided_by,
            "outcome": status})
        return outcome.reply.to_body()

    def _refusal(self, parked: Parked, err: RemoteError) -> Outcome:
        agent, _, method = parked.call.partition(".")
        try:
            request = parse_request(parked.delivery(),
                                    max_bytes=self.dispatcher.max_message_bytes)
        except RemoteError:
            request = None
        reply = error_reply(self.host_id, agent, method, err, parked.request_id)
        return Outcome(reply, parked.reply_to, request,
                       decision=Decision(False, parked.rule, err.message))

    def _expire_approvals(self) -> None:
        """Tells each requester whose approval ran out, and watchers, once."""
        approvals = self.dispatcher.approvals
        if approvals is None:
            return
        for parked in approvals.store.expire_due():
            self._answer(self._refusal(parked, RemoteError(
                ErrorCode.EXPIRED,
                f"nobody approved {parked.call} ({parked.approval_id}) before "
                f"{parked.expires_at}; ask again if it is still needed")))
            self.emit(names.BUILTIN_AGENT, "approval.decided", {
                "approval_id": parked.approval_id, "requester": parked.requester,
                "call": parked.call, "decision": "expired", "outcome": "expired"})

    def _audit(self, outcome: Outcome) -> None:
        assert self.audit is not None
        req, reply, decision = outcome.request, outcome.reply, outcome.decision
        self.audit.write({
            "host": self.host_id,
            "request_id": req.message_id if req else (reply.correlation_id if reply else None),
            "caller": req.user_id if req else outcome.caller,
            "call": f"{req.agent}.{req.method}" if req else None,
            "args_digest": args_digest(req.args) if req else None,
            "decision": ("allowed" if decision.allowed else "denied") if decision
            else "refused",
            "rule": decision.rule if decision else None,
            "outcome": "ok" if reply is not None and reply.ok else (
                reply.error_code if reply is not None else "ok"),
            "executed": outcome.executed,
            **({"approved_by": outcome.approved_by} if outcome.approved_by else {}),
        })

    # ---------------------------------------------------------------- periodic
    def _durabilities(self) -> list[Durability]:
        found = [self.dispatcher.replay.durability, self.outbox.spool.durability,
                 self.dispatcher.approvals.store.durability if self.dispatcher.approvals
                 else None, self.audit.durability if self.audit else None]
        return [d for d in found if d is not None]

    def state_disk(self) -> dict[str, Any]:
        """For the heartbeat: whether every state file takes writes, the reason of each
        that does not (its store carries on in memory meanwhile), and audit records
        lost to a full disk since start."""
        failing = {d.store: d.reason for d in self._durabilities() if d.reason is not None}
        return {"ok": not failing, "failing": failing,
                "audit_records_lost": self.audit.lost if self.audit else 0}

    def _retry_state(self) -> None:
        """Each store that could not write tries again (each spaces out its attempts)."""
        self.dispatcher.replay.retry()
        self.outbox.retry()
        if self.dispatcher.approvals is not None:
            self.dispatcher.approvals.store.retry()
        if self.audit is not None:
            self.audit.retry()

    def _heartbeat(self) -> None:
        data: dict[str, Any] = {
            "agents": self.agent_names, "version": __version__, "epoch": self.epoch,
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "interval_s": self.heartbeat_interval, "requests": self.requests_handled,
            "events": self.outbox.status(), "state_disk": self.state_disk(),
        }
        if self.transport.blocked is not None:  # sent once the broker takes it again
            data["broker_blocked"] = self.transport.blocked
        status = {}
        for name, hosted in self.hosted.items():
            try:
                extra = hosted.agent.heartbeat_status()
            except Exception:
                log.exception("agent %s failed to report its heartbeat status", name)
                continue
            if extra:
                status[name] = extra
        if status:
            data["status"] = status
        self.emit(names.BUILTIN_AGENT, "heartbeat", data)

    def _every(self, interval: float, task: Callable[[], None], label: str) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    task()
                except Exception:
                    log.exception("periodic task %s failed", label)

        thread = threading.Thread(target=loop, name=f"hostbus-{label}", daemon=True)
        thread.start()
        self._threads.append(thread)
