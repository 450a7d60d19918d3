"""The audit log: one JSON line per request an agent or service decided on, append-only.

Each record is one write to a file opened in append mode, so lines never interleave
and log rotation is safe: after a rename the next record creates a new file. Arguments
are not logged, only a digest of them (they may hold secrets); the digest lets two
records be matched without revealing what they carried.

A flood must not fill the disk: each line is at most ``MAX_LINE_BYTES`` (long values are
cut, and the record says so), and refusals that repeat (same caller, call, decision,
rule and outcome) are written ``REPEATS_WRITTEN`` times per ``WINDOW_S`` seconds, then
counted; one ``repeated`` line per key gives the count when the window closes. Anything
that ran is always written, if the disk lets it: records that cannot be written (a full
disk) are counted (``lost``, in the heartbeat), and the first line written once the disk
has room again says how many were lost and since when.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from hostbus.envelope import now_rfc3339
from hostbus.files import Durability, disk_trouble

log = logging.getLogger("hostbus.audit")

MAX_LINE_BYTES = 4096
MAX_VALUE_CHARS = 300
REPEATS_WRITTEN = 10
WINDOW_S = 60.0
_MAX_KEYS = 10_000  # repeat counters kept at once; more, and the window closes early

_REPEAT_FIELDS = ("caller", "call", "decision", "rule", "outcome")


def args_digest(args: Any) -> str:
    canonical = orjson.dumps(args, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _bounded(record: dict[str, Any]) -> bytes:
    line = orjson.dumps(record)
    if len(line) < MAX_LINE_BYTES:
        return line + b"\n"
    cut = {k: (v[:MAX_VALUE_CHARS] + "...") if isinstance(v, str) and len(v) > MAX_VALUE_CHARS
           else v for k, v in record.items()}
    cut["truncated"] = True
    line = orjson.dumps(cut)
    if len(line) >= MAX_LINE_BYTES:  # many fields: keep the ones that say what happened
        keep = ("time", "host", "request_id", "caller", "call", "decision", "outcome")
        line = orjson.dumps({k: cut.get(k) for k in keep} | {"truncated": True})
    return line + b"\n"


class AuditLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._window_end = 0.0
        self._repeats: dict[tuple[Any, ...], list[Any]] = {}  # key -> [count, example]
        #: Records that could not be written (a full disk), counted; the first line
        #: written after them says how many and since when.
        self.lost = 0
        self._lost_since: str | None = None
        self._lost_pending = 0
        self.durability = Durability("audit_log", self.path,
                                     "audit records are counted, not written")

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": now_rfc3339(), **record}
        with self._lock:
            lines = self._close_window_if_due(time.monotonic())
            if not record.get("executed") and record.get("decision") != "allowed":
                key = tuple(record.get(f) for f in _REPEAT_FIELDS)
                seen = self._repeats.get(key)
                if seen is None:
                    if len(self._repeats) >= _MAX_KEYS:
                        lines += self._summaries()
                    seen = self._repeats[key] = [0, record]
                seen[0] += 1
                if seen[0] > REPEATS_WRITTEN:
                    self._append(lines)
                    return
            lines.append(_bounded(record))
            self._append(lines)

    def close(self) -> None:
        """Write the counts of repeats not yet reported."""
        with self._lock:
            self._append(self._summaries())

    def _close_window_if_due(self, now: float) -> list[bytes]:
        if now < self._window_end:
            return []
        self._window_end = now + WINDOW_S
        return self._summaries()

    def _summaries(self) -> list[bytes]:
        lines = []
        for count, example in self._repeats.values():
            if count > REPEATS_WRITTEN:
                lines.append(_bounded({
                    "time": now_rfc3339(), "event": "repeated",
                    "count": count - REPEATS_WRITTEN, "since": example["time"],
                    **{f: example.get(f) for f in ("host", *_REPEAT_FIELDS)}}))
        self._repeats.clear()
        return lines

    def retry(self) -> None:
        """Periodically, while records could not be written: write the line that says
        how many were lost, once the disk takes it (attempts spaced out)."""
        if self.durability.due():
            with self._lock:
                self._append([])

    def _append(self, lines: list[bytes]) -> None:
        """Under the lock. Losing an audit line is bad; taking the agent down for it is
        worse: a record that cannot be written is counted, and said once."""
        if self._lost_pending:
            lines = [_bounded({"time": now_rfc3339(), "event": "lost",
                               "count": self._lost_pending, "since": self._lost_since,
                               "why": self.durability.reason}), *lines]
        if not lines:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                data = b"".join(lines)
                size = os.fstat(fd).st_size
                if os.write(fd, data) != len(data):
                    # A full disk takes what fits: cut the half line off again, so the
                    # log stays one JSON record per line.
                    os.ftruncate(fd, size)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            finally:
                os.close(fd)
        except OSError as exc:
            counted = len(lines) - (1 if self._lost_pending else 0)
            if not self._lost_pending:
                self._lost_since = now_rfc3339()
            self._lost_pending += counted
            self.lost += counted
            self.durability.failed(disk_trouble(exc) or str(exc))
            return
        self._lost_pending = 0
        self.durability.recovered()
