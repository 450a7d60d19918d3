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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from console.reactor.handsoff import HandsOff
from console.reactor.rules import Target
from console.reactor.store import ReactorStore
from hostbus.errors import HostbusError

if TYPE_CHECKING:
    from console.client import Console, HostResult

log = logging.getLogger("hostbus.reactor")

_STOP = object()


class Actor:
    def __init__(self, console: Console, store: ReactorStore, *, workers: int = 4,
                 timeouts: Callable[[str], float] | None = None,
                 hands_off: HandsOff | None = None) -> None:
        """``timeouts(rule)``: how long to wait for the reply to a rule's action;
        ``hands_off``: asked again just before sending (the manager may have taken the
        host or VM meanwhile)."""
        self.hands_off = hands_off
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
