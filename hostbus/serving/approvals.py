"""Approvals: the two-person rule, kept by the agent that will act.

A request whose policy rule says ``requires_approval`` is parked here, durably (SQLite,
synchronous=FULL: a parked request must survive a crash), exactly as it arrived: body,
properties with the requester's signature, exchange and routing key. The requester is
told ``approval_required`` with the approval id. An approver lists what is pending
(``agent.approvals``) and approves it with ``agent.approve``, a request signed with the
approver's own key whose body names the approval id and the digest of the parked
request, so the approval is bound to those exact bytes. Before acting the agent checks:

- the approval request's signature (like every request: the dispatcher does it),
- that the approver is not the requester (broker-checked user ids, not names in bodies),
- that the digest is the parked request's,
- the parked request's own signature, again, against the keys trusted now,
- that the approval has not expired and was not decided before.

Only then does the parked request run, once; its reply goes to the requester's reply
queue (if it still exists) and, inside the approve reply, to the approver.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hostbus.envelope import REQUEST_TYPE, Request, now_rfc3339, usable_reply_to
from hostbus.errors import ErrorCode, RemoteError
from hostbus.files import Durability, disk_trouble, open_database
from hostbus.transport.base import Delivery, Properties

if TYPE_CHECKING:
    from hostbus.security.signing import Verifier

#: How long a decided approval stays listable (``approvals list --all``).
KEEP_DECIDED_S = 7 * 86400


@dataclass
class Parked:
    approval_id: str
    request_id: str
    requester: str
    call: str
    args: dict[str, Any]
    digest: str
    rule: str
    created: float
    expires: float
    state: str  # pending | approved | denied | expired
    decided_by: str | None = None
    outcome: str | None = None  # the executed call's status or error code
    exchange: str = ""
    routing_key: str = ""
    properties: dict[str, Any] | None = None
    body: bytes = b""

    def delivery(self) -> Delivery:
        """The parked request as it arrived, to be checked and run again."""
        return Delivery(self.body, Properties(**(self.properties or {})), self.exchange,
                        self.routing_key)

    @property
    def expires_at(self) -> str:
        return _rfc3339(self.expires)

    @property
    def reply_to(self) -> str | None:
        """The requester's reply queue, if it is one hostbus may route to."""
        return usable_reply_to(Properties(reply_to=(self.properties or {}).get("reply_to")))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "approval_id": self.approval_id, "request_id": self.request_id,
            "requester": self.requester, "call": self.call, "args": self.args,
            "digest": self.digest, "rule": self.rule,
            "created": _rfc3339(self.created), "expires": self.expires_at,
            "state": self.state,
        }
        if self.decided_by is not None:
            out["decided_by"] = self.decided_by
        if self.outcome is not None:
            out["outcome"] = self.outcome
        return out


def _rfc3339(epoch: float) -> str:
    return now_rfc3339(datetime.fromtimestamp(epoch, UTC))


_COLUMNS = ("approval_id, request_id, requester, call, args, digest, rule, created, expires, "
            "state, decided_by, outcome, exchange, routing_key, properties, body")


class ApprovalStore:
    """Parked requests on disk (or in memory without a path, for tests).

    Parking needs the disk: while the file cannot be written (a full disk), a request
    that needs approval is refused with the reason instead of parked, and a decision
    cannot be taken; what is parked stays listable. ``retry`` notices the disk is back."""

    def __init__(self, path: str | Path | None, ttl_s: float = 3600.0) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        self._ready = False
        self._probe = 0
        self.durability = Durability(
            "approvals", path or ":memory:",
            "requests that need approval are refused instead of parked, and approvals "
            "cannot be decided")
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:
            self._trouble(exc)

    def _open(self) -> None:
        if self._db is None:  # rare writes; each one must stay
            self._db = open_database(self._path, synchronous="FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS parked (approval_id TEXT PRIMARY KEY, request_id TEXT,"
            " requester TEXT, call TEXT, args BLOB, digest TEXT, rule TEXT, created REAL,"
            " expires REAL, state TEXT, decided_by TEXT, outcome TEXT, exchange TEXT,"
            " routing_key TEXT, properties BLOB, body BLOB)")
        self._ready = True

    def _trouble(self, exc: BaseException) -> str:
        reason = disk_trouble(exc)
        if reason is None:
            raise exc
        self.durability.failed(reason)
        return reason

    def _write(self, sql: str, params: tuple[Any, ...], doing: str) -> sqlite3.Cursor:
        """Under the lock: a write the caller cannot do without; a full disk becomes a
        ``failed`` answer that says what to do."""
        try:
            if not self._ready:
                self._open()
            assert self._db is not None
            cur = self._db.execute(sql, params)
        except (sqlite3.Error, OSError) as exc:
            reason = self._trouble(exc)
            raise RemoteError(ErrorCode.FAILED,
                              f"cannot {doing}: this agent cannot write its approvals file "
                              f"({reason}); ask again once its disk has room",
                              {"state_disk": reason}) from None
        self.durability.recovered()
        return cur

    def retry(self) -> None:
        """Periodically, while the file could not be written: a small write tells
        whether it can again (spaced out by ``durability``)."""
        if not self.durability.due():
            return
        with self._lock:
            try:
                self._open()
                assert self._db is not None
                self._probe = 1 - self._probe
                self._db.execute(f"PRAGMA user_version = {self._probe}")
            except (sqlite3.Error, OSError) as exc:
                self._trouble(exc)
                return
        self.durability.recovered()

    def park(self, delivery: Delivery, request: Request, rule: str, digest: str) -> Parked:
        now = time.time()
        props = delivery.properties
        parked = Parked(
            approval_id=secrets.token_hex(6), request_id=request.message_id,
            requester=request.user_id or "", call=f"{request.agent}.{request.method}",
            args=request.args, digest=digest, rule=rule, created=now,
            expires=now + self.ttl_s, state="pending", exchange=delivery.exchange,
            routing_key=delivery.routing_key, body=delivery.body,
            properties={f: getattr(props, f) for f in props.__slots__},
        )
        with self._lock:
            self._write(
                f"INSERT INTO parked ({_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                (parked.approval_id, parked.request_id, parked.requester, parked.call,
                 orjson.dumps(parked.args), parked.digest, parked.rule, parked.created,
                 parked.expires, parked.state, None, None, parked.exchange,
                 parked.routing_key, orjson.dumps(parked.properties), parked.body),
                f"park {parked.call} for approval")
        return parked

    def get(self, approval_id: str) -> Parked | None:
        if not self._ready:
            return None
        assert self._db is not None
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM parked WHERE approval_id = ?",
                                   (approval_id,)).fetchone()
        return _row(row) if row else None

    def list(self, *, include_decided: bool = False) -> list[Parked]:
        if not self._ready:
            return []
        assert self._db is not None
        where = "" if include_decided else "WHERE state = 'pending'"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM parked {where} ORDER BY created").fetchall()
        return [_row(r) for r in rows]

    def decide(self, approval_id: str, state: str, by: str) -> bool:
        """Moves a pending approval to ``state``; False if it was no longer pending (so
        two approvers racing run the request once)."""
        with self._lock:
            cur = self._write(
                "UPDATE parked SET state = ?, decided_by = ? "
                "WHERE approval_id = ? AND state = 'pending'", (state, by, approval_id),
                f"record the decision on approval {approval_id}")
        return cur.rowcount == 1

    def record_outcome(self, approval_id: str, outcome: str) -> None:
        # The call ran and was answered; on a full disk only the listing misses this.
        with self._lock, contextlib.suppress(RemoteError):
            self._write("UPDATE parked SET outcome = ?, body = x'' WHERE approval_id = ?",
                        (outcome, approval_id), "record an outcome")

    def expire_due(self, now: float | None = None) -> list[Parked]:
        """Marks overdue pending approvals expired and returns them; forgets decided
        ones after ``KEEP_DECIDED_S``. While the file cannot be written nothing expires
        (the next run after the disk is back does it)."""
        if not self._ready or not self.durability.ok:
            return []
        assert self._db is not None
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM parked WHERE state = 'pending' AND expires <= ?",
                (now,)).fetchall()
            try:
                self._db.execute("BEGIN")
                self._db.execute("UPDATE parked SET state = 'expired', body = x'' "
                                 "WHERE state = 'pending' AND expires <= ?", (now,))
                self._db.execute("DELETE FROM parked WHERE state != 'pending' AND "
                                 "expires <= ?", (now - KEEP_DECIDED_S,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                self._trouble(exc)
                return []
        expired = [_row(r) for r in rows]
        for parked in expired:
            parked.state = "expired"
        return expired


def _row(row: tuple[Any, ...]) -> Parked:
    (approval_id, request_id, requester, call, args, digest, rule, created, expires, state,
     decided_by, outcome, exchange, routing_key, properties, body) = row
    return Parked(approval_id, request_id, requester, call, orjson.loads(args), digest, rule,
                  created, expires, state, decided_by, outcome, exchange, routing_key,
                  orjson.loads(properties) if properties else None, body or b"")


class Approvals:
    """The agent's side of the two-person rule: parking, and checking an approval."""

    def __init__(self, store: ApprovalStore, verifier: Verifier) -> None:
        self.store = store
        self.verifier = verifier

    def park(self, delivery: Delivery, request: Request, rule: str) -> Parked:
        from hostbus.security.signing import request_digest

        digest = request_digest(delivery.exchange, delivery.routing_key,
                                delivery.properties, delivery.body, REQUEST_TYPE)
        return self.store.park(delivery, request, rule, digest)

    def take(self, approval_id: str, digest: str, approver: str) -> Parked:
        """The parked request an approval may release, marked approved; raises a
        ``RemoteError`` saying why not. Nothing has run yet when this returns."""
        parked = self._pending(approval_id)
        if approver == parked.requester:
            raise RemoteError(ErrorCode.UNAUTHORIZED,
                              f"{approver} asked for {parked.call} and cannot also approve "
                              "it: a second person must (two-person rule)")
        if digest != parked.digest:
            raise RemoteError(ErrorCode.UNAUTHORIZED,
                              f"the approval is for a different request than {approval_id} "
                              f"(digest {digest[:16]}... is not {parked.digest[:16]}...); "
                              "list the approval again and approve what it shows")
        # The requester's signature, checked again: its key may have been revoked since.
        self.verifier.verify(parked.exchange, parked.routing_key,
                             Properties(**(parked.properties or {})), parked.body,
                             kind=REQUEST_TYPE)
        if not self.store.decide(approval_id, "approved", approver):
            raise RemoteError(ErrorCode.REPLAYED,
                              f"approval {approval_id} was decided a moment ago by someone "
                              "else")
        parked.state, parked.decided_by = "approved", approver
        return parked

    def deny(self, approval_id: str, by: str) -> Parked:
        parked = self._pending(approval_id)
        if not self.store.decide(approval_id, "denied", by):
            raise RemoteError(ErrorCode.REPLAYED,
                              f"approval {approval_id} was decided a moment ago")
        parked.state, parked.decided_by = "denied", by
        return parked

    def _pending(self, approval_id: str) -> Parked:
        self.store.expire_due()
        parked = self.store.get(approval_id)
        if parked is None:
            raise RemoteError(ErrorCode.INVALID_ARGS,
                              f"no approval {approval_id!r} on this host; see `hostbus "
                              "approvals list`", {"path": "args.approval_id"})
        if parked.state == "expired":
            raise RemoteError(ErrorCode.EXPIRED,
                              f"approval {approval_id} expired at {_rfc3339(parked.expires)}"
                              "; the requester must ask again")
        if parked.state != "pending":
            raise RemoteError(ErrorCode.REPLAYED,
                              f"approval {approval_id} was already {parked.state} by "
                              f"{parked.decided_by}")
        return parked
