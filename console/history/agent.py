"""The ``history`` agent: the historian's face on the bus (``query``, ``stats``)."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from console.history.ingest import Ingest
from console.history.store import EventStore, Query, Row, ms_to_rfc3339, time_ms
from hostbus import names
from hostbus.errors import ErrorCode, RemoteError
from hostbus.serving.agent import Agent, method, periodic

log = logging.getLogger("hostbus.historian")

_GLOB = set("*?[")


def _literal(word: str) -> bool:
    return word not in ("*", "#")


def narrow(patterns: list[str], hosts: list[str], events: list[str]
           ) -> tuple[Query, Callable[[Row], bool]]:
    """The SQL side of a query (what an index can serve) and the exact test each row
    read must pass (topic patterns, host globs, several event names)."""
    q = Query()
    plain_hosts = [h for h in hosts if not _GLOB & set(h)]
    if hosts and len(plain_hosts) == len(hosts):
        q = replace(q, hosts=tuple(dict.fromkeys(hosts)))
    if len(events) == 1:
        agent, _, event = events[0].partition(".")
        q = replace(q, agent=agent, event=event)
    elif len(patterns) == 1:
        # A word's position says what it is (agent, host, event) only before any '#'.
        words = patterns[0].split(".")
        fixed = words[:words.index("#")] if "#" in words else words
        if fixed and _literal(fixed[0]):
            q = replace(q, agent=fixed[0])
        if len(fixed) > 1 and _literal(fixed[1]) and not hosts:
            q = replace(q, hosts=(fixed[1],))
        rest = words[2:]
        if len(fixed) > 2 and all(_literal(w) for w in rest):
            q = replace(q, event=".".join(rest))
        elif len(fixed) > 2 and rest[-1] == "#" and all(_literal(w) for w in rest[:-1]):
            q = replace(q, event_prefix=".".join(rest[:-1]))
    wanted_events = set(events)

    def keep(row: Row) -> bool:
        key = names.event_key(row.agent, row.host, row.event)
        if not any(names.topic_matches(p, key) for p in patterns):
            return False
        if hosts and not any(fnmatch.fnmatchcase(row.host, h) for h in hosts):
            return False
        return not wanted_events or f"{row.agent}.{row.event}" in wanted_events

    return q, keep


def _time(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return time_ms(text)
    except ValueError:
        raise RemoteError(ErrorCode.INVALID_ARGS,
                          f"{what} {text!r} is not an RFC 3339 time") from None


class HistoryAgent(Agent):
    name = "history"

    def __init__(self, store: EventStore, ingest: Ingest, *, sync_timeout: float = 10.0,
                 max_age_s: float = 0.0, max_bytes: int = 0) -> None:
        """``max_age_s`` and ``max_bytes`` (0: no limit) are the retention."""
        super().__init__()
        self.store = store
        self.ingest = ingest
        self.sync_timeout = sync_timeout
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes

    @periodic("retention_interval")
    def apply_retention(self) -> None:
        gone = self.store.apply_retention(max_age_s=self.max_age_s, max_bytes=self.max_bytes)
        if gone:
            log.info("retention: %d events removed (older than %.0f days or over %d MB)",
                     gone, self.max_age_s / 86400, self.max_bytes // (1 << 20))

    @method()
    def query(self, patterns: list[str], hosts: list[str], events: list[str], limit: int,
              sync: bool, since: str | None = None, until: str | None = None,
              after: str | None = None) -> dict[str, Any]:
        synced = self._sync() if sync else False
        q, keep = narrow(patterns, hosts, events)
        cursor = None
        if after is not None:
            t, _, i = after.partition(":")
            cursor = (int(t), int(i))
        q = replace(q, since_ms=_time(since, "since"), until_ms=_time(until, "until"),
                    after=cursor, limit=limit)
        found = self.store.query(q)
        rows = [row.record() for _, row in found if keep(row)]
        last = found[-1] if len(found) == limit else None
        return {"events": rows, "synced": synced,
                "next": f"{last[1].time_ms}:{last[0]}" if last is not None else None}

    def _sync(self) -> bool:
        """Send our own marker through the bus and wait until it is stored: everything
        routed to our queue before it (every event published before this request
        reached us) is then stored too."""
        token, done = self.ingest.expect_marker()
        try:
            self.emit("sync", {"token": token})
            return done.wait(self.sync_timeout)
        finally:
            self.ingest.forget_marker(token)

    @method()
    def stats(self) -> dict[str, Any]:
        st = self.store.stats()
        c = self.ingest.counters
        return {"store": "postgresql" if self.store.url.startswith("postgres") else "sqlite",
                "events": st.events, "bytes": st.bytes,
                "oldest": ms_to_rfc3339(st.oldest_ms) if st.oldest_ms is not None else None,
                "newest": ms_to_rfc3339(st.newest_ms) if st.newest_ms is not None else None,
                "stored": c.stored, "repeats": c.repeats, "refused": c.refused}

    def heartbeat_status(self) -> dict[str, Any] | None:
        c = self.ingest.counters
        return {"stored": c.stored, "repeats": c.repeats, "refused": c.refused}
