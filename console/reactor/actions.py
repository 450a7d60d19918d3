"""Sending what the engine decided: each fired decision becomes one ordinary request
from the reactor's own identity (signed with its key, when it has one), so the target
agent's policy decides, and a rule's action that policy marks ``requires_approval`` is
parked there for a person (``hostbus approvals approve``).

Before sending, the actor asks the target host for approvals already pending for the
same call from the reactor's identity (``agent.approvals``): one asked by another
instance, or before a restart, is adopted instead of asking a second time.

At most ``workers`` actions are in flight at once; more wait in order. A decision is
marked ``sending`` before its request leaves and never sent twice: after a crash one
left ``sending`` is marked ``interrupted`` (it may or may not have reached its agent;
the agent's audit log says), and one still ``queued`` is sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from console.reactor.handsoff import HandsOff
from console.reactor.rules import NOTICE, Target
from console.reactor.store import ReactorStore
from hostbus import names
from hostbus.envelope import Event
from hostbus.errors import HostbusError, RemoteError

#: The reactor's own events are ``reactor.ID.EVENT`` (schemas/agents/reactor.json).
REACTOR_AGENT = "reactor"

if TYPE_CHECKING:
    from console.client import Console, HostResult
    from hostbus.publisher import Publisher

log = logging.getLogger("hostbus.reactor")

_STOP = object()


class Notices:
    """The reactor's own events, ``reactor.ID.notice``: numbered in one epoch per
    process, published through the console's publisher (so signed with the reactor's
    key, with its broker-checked user), persistent, and confirmed by the broker before
    an action counts as done."""

    def __init__(self, publisher: Publisher, service: str) -> None:
        self.publisher = publisher
        self.service = service
        self._epoch = uuid.uuid4().hex[:16]
        self._seq = 0
        self._lock = threading.Lock()

    def emit(self, data: dict[str, Any], timeout: float = 30.0) -> Event:
        confirmed: queue.Queue[bool | None] = queue.Queue()
        with self._lock:  # numbered and sent in one order
            self._seq += 1
            event = Event(host=self.service, agent=REACTOR_AGENT, event=NOTICE, data=data,
                          seq=self._seq, epoch=self._epoch)
            body, props = event.encode()
            self.publisher.publish(names.EVENT_EXCHANGE, event.routing_key(), body, props,
                                   persistent=True, confirm=confirmed.put)
        try:
            outcome = confirmed.get(timeout=timeout)
        except queue.Empty:
            outcome = None
        if outcome is not True:
            raise HostbusError(f"the broker did not confirm event {event.routing_key()} "
                               f"(seq {event.seq}) within {timeout:g} s"
                               if outcome is None else
                               f"the broker refused event {event.routing_key()}: check the "
                               f"reactor's topic permissions (events as {self.service})")
        return event


class Actor:
    def __init__(self, console: Console, store: ReactorStore, *, workers: int = 4,
                 timeouts: Callable[[str], float] | None = None,
                 hands_off: HandsOff | None = None, notices: Notices | None = None) -> None:
        """``timeouts(rule)``: how long to wait for the reply to a rule's action;
        ``hands_off``: asked again just before sending (the manager may have taken the
        host or VM meanwhile); ``notices``: where the reactor's own events leave."""
        self.hands_off = hands_off
        self._notices = notices
        self.console = console
        self.store = store
        self.workers = workers
        self.timeouts = timeouts or (lambda rule: 30.0)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._done = threading.Condition()
        self.sent = 0

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"hostbus-reactor-act-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads.clear()

    def resume(self) -> None:
        """After a restart (or on becoming active): what a crash left behind."""
        for row in self.store.in_state("sending"):
            self.store.update(row["id"], "interrupted",
                              "the reactor stopped while sending this; not sent again (the "
                              "agent's audit log says whether it arrived)")
            log.warning("decision %s (%s %s on %s) was being sent when the reactor stopped: "
                        "not sent again", row["id"][:8], row["rule"], row["call"], row["host"])
        for row in self.store.in_state("queued"):
            self.submit(row["id"])

    def submit(self, decision_id: str) -> None:
        self._queue.put(decision_id)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self.act(item)
            except Exception:
                log.exception("sending decision %s failed", item)

    def act(self, decision_id: str) -> None:
        row = self.store.get(decision_id)
        if row is None or row["state"] != "queued":
            return  # decided otherwise meanwhile (another worker, or a restart's resume)
        agent, _, method = row["call"].partition(".")
        if self.hands_off is not None:
            held = self.hands_off.why_not(Target(row["host"], agent, method, row["args"]),
                                          time.time())
            if held is not None:
                self.store.update(decision_id, "skipped", f"not sent: {held}")
                log.warning("decision %s: %s on %s not sent: %s", decision_id[:8],
                            row["call"], row["host"], held)
                return
        if row.get("kind") == "provision":
            self._provision(decision_id, row)
            return
        if row.get("kind") == "event":
            self._notice(decision_id, row)
            return
        parked = self._already_parked(row)
        if parked is not None:
            self.store.update(
                decision_id, "awaiting_approval",
                f"not sent: approval {parked['approval_id']} for this call, asked by this "
                f"reactor's identity (another instance, or before a restart), waits at "
                f"{row['host']} already", request_id=parked.get("request_id"),
                approval_id=parked["approval_id"])
            log.warning("decision %s: %s on %s already waits for approval %s: not sent "
                        "again", decision_id[:8], row["call"], row["host"],
                        parked["approval_id"])
            return
        self.store.update(decision_id, "sending")
        log.info("decision %s: calling %s on %s with %s (rule %r)", decision_id[:8],
                 row["call"], row["host"], row["args"], row["rule"])
        try:
            result = self.console.call(agent, method, row["args"], host=row["host"],
                                       timeout=self.timeouts(row["rule"]))
        except HostbusError as exc:
            self.store.update(decision_id, "failed", f"not sent: {exc}")
            log.error("decision %s: %s on %s not sent: %s", decision_id[:8], row["call"],
                      row["host"], exc)
            return
        self.sent += 1
        self._record(decision_id, row, result)

    def _provision(self, decision_id: str, row: dict[str, Any]) -> None:
        """A provisioning request whose request id is the decision's: posted again (by
        hand, or by a later version after a crash), it never makes more VMs."""
        self.store.update(decision_id, "sending")
        timeout = self.timeouts(row["rule"])
        log.info("decision %s: provisioning %s (rule %r)", decision_id[:8], row["args"],
                 row["rule"])
        try:
            rid, reply = self.console.provision({"v": 1, **row["args"]},
                                                request_id=decision_id, timeout=timeout)
        except (HostbusError, RemoteError) as exc:
            message = exc.message if isinstance(exc, RemoteError) else str(exc)
            self.store.update(decision_id, "failed", f"not sent: {message}")
            log.error("decision %s: provisioning request not sent: %s", decision_id[:8],
                      message)
            return
        self.sent += 1
        if reply is None:
            self.store.update(decision_id, "no_reply",
                              f"the provisioner did not answer within {timeout:g} s; "
                              f"hostbus provision status {rid} says how it went",
                              request_id=rid)
        elif reply.ok:
            result = reply.result or {}
            vms = ", ".join(f"{v.get('name')} on {v.get('host')}"
                            for v in result.get("vms", []) if isinstance(v, dict))
            self.store.update(decision_id, "ok", f"provisioned ({result.get('status')}): "
                              f"{vms or 'no VM'}"[:1000], request_id=rid)
        else:
            error = reply.error or {}
            self.store.update(decision_id, "failed",
                              f"{error.get('code')}: {error.get('message', '')}"[:1000],
                              request_id=rid)
        log.warning("decision %s: provisioning request %s: %s", decision_id[:8], rid,
                    (self.store.get(decision_id) or {}).get("detail"))

    @property
    def notices(self) -> Notices:
        if self._notices is None:
            self._notices = Notices(self.console.publisher, self.console.transport.user)
        return self._notices

    def _notice(self, decision_id: str, row: dict[str, Any]) -> None:
        self.store.update(decision_id, "sending")
        _, _, name = row["call"].partition(" ")
        data = {"name": name, "rule": row["rule"], "decision_id": decision_id,
                "triggered_by": row["events"], "data": row["args"]}
        try:
            event = self.notices.emit(data, timeout=self.timeouts(row["rule"]))
        except HostbusError as exc:
            self.store.update(decision_id, "failed", f"not published: {exc}")
            log.error("decision %s: event %s not published: %s", decision_id[:8], name, exc)
            return
        self.sent += 1
        self.store.update(decision_id, "ok", f"published {event.routing_key()} "
                          f"(epoch {event.epoch}, seq {event.seq})")
        log.warning("decision %s: published %s %s", decision_id[:8], event.routing_key(),
                    name)

    def _already_parked(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The same call from this identity, parked at the host for approval: asked by
        another instance of the reactor (each keeps its own store) or before a restart.
        The agent is the one place that knows; an agent whose policy does not let the
        reactor list approvals (``agent.approvals``) lists nothing here."""
        try:
            parked, asked = self.console.approvals([row["host"]], timeout=5.0)
        except HostbusError as exc:
            log.warning("could not learn whether %s already waits for approval at %s (%s); "
                        "sending it", row["call"], row["host"], exc)
            return None
        for result in asked.results:
            if result.status != "ok":
                error = (result.reply.error or {}) if result.reply else {}
                log.warning("could not learn whether %s already waits for approval at %s "
                            "(agent.approvals: %s %s); sending it", row["call"], row["host"],
                            result.status, error.get("code", ""))
        for approval in parked:
            if approval.get("requester") == self.console.transport.user and \
                    approval.get("call") == row["call"] and approval.get("args") == row["args"]:
                return approval
        return None

    def _record(self, decision_id: str, row: dict[str, Any], result: HostResult) -> None:
        status, reply = result.status, result.reply
        request_id = result.request_id
        if status == "ok" and reply is not None:
            self.store.update(decision_id, "ok", "done", request_id=request_id)
            log.warning("decision %s: %s on %s done (request %s)", decision_id[:8],
                        row["call"], row["host"], request_id)
        elif status == "pending" and result.approval is not None:
            approval = str(result.approval["approval_id"])
            self.store.update(decision_id, "awaiting_approval",
                              (reply.error or {}).get("message", "") if reply else "",
                              request_id=request_id, approval_id=approval)
            log.warning("decision %s: %s on %s waits for approval %s (hostbus approvals "
                        "approve %s -H %s)", decision_id[:8], row["call"], row["host"],
                        approval, approval[:8], row["host"])
        elif reply is not None and status in ("error", "pending"):
            error = reply.error or {}
            self.store.update(decision_id, "failed",
                              f"{error.get('code')}: {error.get('message', '')}"[:1000],
                              request_id=request_id)
            log.error("decision %s: %s on %s refused or failed: %s: %s", decision_id[:8],
                      row["call"], row["host"], error.get("code"), error.get("message"))
        else:
            detail = result.not_enrolled or "no reply before the timeout"
            self.store.update(decision_id, status, detail, request_id=request_id)
            log.error("decision %s: %s on %s: %s", decision_id[:8], row["call"], row["host"],
                      detail)

    def approval_decided(self, data: dict[str, Any], by_host: str) -> bool:
        """An ``agent.approval.decided`` event: the outcome of an action that waited for a
        person. True if it was one of ours."""
        approval = str(data.get("approval_id", ""))
        row = self.store.by_approval(approval) if approval else None
        if row is None or row["host"] != by_host:
            return False
        decision, outcome = data.get("decision"), str(data.get("outcome", ""))
        approver = data.get("by")
        if decision == "approved":
            state = "ok" if outcome == "ok" else "failed"
            detail = f"approved by {approver}; the action ran: {outcome}"
        else:
            state = "denied" if decision == "denied" else "expired"
            detail = f"{decision}" + (f" by {approver}" if approver else "")
        self.store.update(row["id"], state, detail, approved_by=approver)
        log.warning("decision %s: approval %s %s: %s", row["id"][:8], approval[:8], decision,
                    detail)
        with self._done:
            self._done.notify_all()
        return True
