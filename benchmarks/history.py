"""The historian, each store against its raw driver in the same run:

- **insert**: the same rows through ``EventStore.insert`` (batches of 1,000) and through
  the raw driver into the same table, 1,000 a transaction (sqlite3 and psycopg
  ``executemany`` of plain INSERTs; for PostgreSQL also ``COPY``, the ceiling).
- **ingest**: an agent's events through the broker into the historian (a process of its
  own), until stored; beside it, the event benchmark's rate into one console
  subscriber (``benchmarks/events.py``) in the same minutes: ingest must keep up.
- **query**: a store filled with ``stored`` events (1,000 hosts over a week: heartbeats,
  host metrics, VM statistics, alerts), then the queries people ask, through the
  history agent's ``query`` (what a request runs, less the round trip), p50 and p90.
- **stream**: the broker-side question. A backlog of events in a classic queue (what
  ``hostbus historian --setup`` makes) against a RabbitMQ stream (``x-queue-type:
  stream``): raw pika publishes with the queue bound, and a raw consumer catching up.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika

from benchmarks import events as event_bench
from benchmarks.harness import Bench, pct, progress
from console.history.agent import HistoryAgent
from console.history.ingest import Ingest
from console.history.store import EventStore, PostgresStore, Row, SQLiteStore, _values
from hostbus import codec

HOUR_MS = 3_600_000
HEARTBEAT = {"agents": ["host", "virt"], "version": "0.1.0", "epoch": "6f1c2a9e0b7d4c11",
             "uptime_s": 3600.2, "interval_s": 10, "requests": 12,
             "events": {"spooled": 0, "dropped": 0, "rejected": 0, "unconfirmed": 0}}
METRICS = {"time": "2026-11-21T10:00:00.000Z", "cpu_percent": 3.5, "load": [0.12, 0.2, 0.18],
           "load_per_cpu": 0.06,
           "memory": {"total_bytes": 25769803776, "available_bytes": 24159191040,
                      "used_bytes": 1073741824, "percent": 6.2},
           "swap": {"total_bytes": 0, "used_bytes": 0, "percent": 0.0},
           "disks": [{"mountpoint": "/", "percent": 8.7}, {"mountpoint": "/var",
                                                            "percent": 41.0}]}
STATS = {"domains": [{"name": f"web-{i}", "uuid": str(uuid.UUID(int=i)), "state": "running",
                      "cpu_time_ns": 123456789 * i, "memory_kib": 2097152}
                     for i in range(3)]}
ALERT = {"metric": "cpu_percent", "resource": "", "state": "raised", "value": 93.5,
         "raise_at": 90.0, "clear_at": 80.0}
#: (agent, event, data, share of all events)
MIX = [("agent", "heartbeat", HEARTBEAT, 0.45), ("host", "metrics", METRICS, 0.45),
       ("virt", "domain.stats", STATS, 0.09), ("host", "alert", ALERT, 0.01)]


def fleet_rows(n: int, *, hosts: int = 1000, span_ms: int = 7 * 24 * HOUR_MS,
               end_ms: int | None = None, seed: int = 7) -> Iterator[Row]:
    """``n`` events of ``hosts`` hosts spread evenly over ``span_ms`` up to ``end_ms``,
    in time order, as they would have arrived."""
    rnd = random.Random(seed)
    end_ms = end_ms or int(time.time() * 1000)
    start = end_ms - span_ms
    step = span_ms / n
    bodies: dict[tuple[str, str], bytes] = {}
    seqs: dict[tuple[str, str], int] = {}
    kinds = [(a, e, d) for a, e, d, _ in MIX]
    weights = [w for *_, w in MIX]
    for i in range(n):
        agent, event, data = rnd.choices(kinds, weights)[0]
        host = f"h{rnd.randrange(hosts):04d}"
        seq = seqs[(host, agent)] = seqs.get((host, agent), 0) + 1
        t = int(start + i * step)
        template = bodies.get((agent, event))
        if template is None:
            template = bodies[(agent, event)] = codec.encode(
                {"v": 1, "host": "HOST_", "agent": agent, "event": event,
                 "time": "TIME_____________________", "seq": 999999999, "epoch": "e1",
                 "data": data})
        body = template.replace(b"HOST_", host.encode()).replace(b"999999999", str(seq).encode())
        yield Row(host, agent, event, "e1", seq, t, t, str(uuid.UUID(int=rnd.getrandbits(128))),
                  host, body)


# ------------------------------------------------------------------- inserts
def _raw_sqlite(path: Path, rows: list[Row]) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SQLiteStore.SCHEMA)
    values = _values(rows)
    started = time.perf_counter()
    for i in range(0, len(values), 1000):
        db.execute("BEGIN")
        db.executemany("INSERT INTO events (host, agent, event, epoch, seq, time_ms, "
                       "received_ms, message_id, user_id, body, size) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values[i:i + 1000])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return len(rows) / elapsed


def _copy_rows(conn: Any, rows: list[Row]) -> None:
    """psycopg's COPY: the fastest way rows go into PostgreSQL."""
    with conn.cursor() as cur, cur.copy(
            "COPY events (host, agent, event, epoch, seq, time_ms, received_ms, "
            "message_id, user_id, body, size) FROM STDIN") as copy:
        for v in _values(rows):
            copy.write_row(v)


def _raw_postgres(url: str, rows: list[Row], *, copy: bool) -> float:
    """Plain INSERTs of the same rows, 1,000 a transaction (psycopg's ``executemany``,
    pipelined), or COPY (the ceiling)."""
    import psycopg

    PostgresStore(url).close()  # the same table and indexes
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for i in range(0, len(rows), 1000):
            with conn.transaction():
                if copy:
                    _copy_rows(conn, rows[i:i + 1000])
                else:
                    conn.cursor().executemany(
                        "INSERT INTO events (host, agent, event, epoch, seq, time_ms, "
                        "received_ms, message_id, user_id, body, size) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        _values(rows[i:i + 1000]))
        return len(rows) / (time.perf_counter() - started)


def _store_rate(store: EventStore, rows: list[Row]) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), 1000):
        store.insert(rows[i:i + 1000])
    return len(rows) / (time.perf_counter() - started)


@contextmanager
def _postgres_db(server: str) -> Iterator[str]:
    import psycopg

    name = f"hostbus_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def inserts(rows: list[Row], folder: Path, postgres: str | None) -> dict[str, Any]:
    """Each side twice, in turns, into a fresh table each time; the better of the two."""
    out: dict[str, Any] = {}
    raw = ours = 0.0
    for turn in range(2):
        raw = max(raw, _raw_sqlite(folder / f"raw{turn}.db", rows))
        store = SQLiteStore(folder / f"store{turn}.db")
        ours = max(ours, _store_rate(store, rows))
        store.close()
    out["sqlite"] = {"raw_per_s": round(raw), "store_per_s": round(ours),
                     "ratio": round(ours / raw, 2)}
    if postgres is None:
        return out
    raw = copy = ours = 0.0
    for _ in range(2):
        with _postgres_db(postgres) as a, _postgres_db(postgres) as b, \
                _postgres_db(postgres) as c:
            raw = max(raw, _raw_postgres(a, rows, copy=False))
            copy = max(copy, _raw_postgres(b, rows, copy=True))
            store = PostgresStore(c)
            ours = max(ours, _store_rate(store, rows))
            store.close()
    out["postgresql"] = {"raw_per_s": round(raw), "copy_per_s": round(copy),
                         "store_per_s": round(ours), "ratio": round(ours / raw, 2)}
    return out


# -------------------------------------------------------------------- ingest
def _historian_child(url: str, host_id: str, where: str, n: int, conn: Any) -> None:
    from console.history.main import Historian
    from console.history.store import open_store
    from hostbus.transport import connect

    store = open_store(where)
    transport = connect(url, connection_name="bench historian", prefetch=2000)
    transport.start()
    historian = Historian(transport, store, host_id, heartbeat_interval=0)
    historian.start()
    conn.send("ready")
    counters = historian.ingest.counters
    while counters.stored < n:
        time.sleep(0.005)  # polling a counter in the benchmark's own child, not a test
    conn.send(time.time())
    historian.stop("benchmark over")
    store.close()


def ingest(bench: Bench, n: int, where: str) -> float:
    """Events/s from an agent's emit to stored, the historian in a process of its own."""
    from console.history.main import HISTORY_QUEUE
    from hostbus.serving.runtime import AgentRuntime

    bench.admin.declare_event_queue(bench.vhost, HISTORY_QUEUE, ["#"], max_length=10_000_000)
    host_id = f"hist{uuid.uuid4().hex[:6]}"
    bench.admin.enroll_host(bench.vhost, host_id, ["history"])
    agent_host = f"ev{uuid.uuid4().hex[:6]}"
    bench.admin.enroll_host(bench.vhost, agent_host, [])
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    # stored counts the historian's own online and the agent's online too
    proc = ctx.Process(target=_historian_child, args=(bench.url, host_id, where, n + 2, child),
                       daemon=True)
    proc.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the historian process did not start")
        runtime = AgentRuntime.serve(bench.url, agent_host, [], heartbeat_interval=0)
        started = time.time()
        for _ in range(n):
            runtime.emit("agent", "heartbeat", event_bench.DATA)
        if not parent.poll(300):
            raise RuntimeError("the historian did not store every event within 300 s")
        rate = n / (parent.recv() - started)
        runtime.stop("benchmark over")
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
        bench.admin.delete_queue(bench.vhost, HISTORY_QUEUE)
    return rate


def _backlog(bench: Bench, n: int) -> None:
    """A fresh history queue holding ``n`` events of one agent."""
    from console.history.main import HISTORY_QUEUE
    from hostbus.serving.runtime import AgentRuntime

    bench.admin.delete_queue(bench.vhost, HISTORY_QUEUE)
    bench.admin.declare_event_queue(bench.vhost, HISTORY_QUEUE, ["#"], max_length=10_000_000)
    host = f"ev{uuid.uuid4().hex[:6]}"
    bench.admin.enroll_host(bench.vhost, host, [])
    runtime = AgentRuntime.serve(bench.url, host, [], heartbeat_interval=0)
    for _ in range(n):
        runtime.emit("agent", "heartbeat", event_bench.DATA)
    runtime.outbox.wait_confirmed(120)
    runtime.stop("benchmark over")


def drain(bench: Bench, n: int, folder: Path) -> dict[str, Any]:
    """A backlog of ``n`` events, nothing publishing: consumed through the transport with
    an acknowledgement each and nothing else (the floor), then by the historian's
    ingest into SQLite; in turns, twice each, the better of each."""
    import threading

    from console.history.main import HISTORY_QUEUE
    from hostbus.transport import connect

    best = {"transport_ack_only_per_s": 0.0, "historian_sqlite_per_s": 0.0}
    for turn in range(2):
        for side in best:
            _backlog(bench, n)
            total = n + 2  # the agent's online and offline
            transport = connect(bench.url, connection_name="bench drain", prefetch=2000)
            transport.start()
            done = threading.Event()
            if side == "historian_sqlite_per_s":
                store = SQLiteStore(folder / f"drain{turn}.db")
                ingest = Ingest(store, "bench", ack_all=transport.ack_all)
                ingest.start()
                handler = ingest.on_delivery
            else:
                got = [0]

                def handler(delivery: Any, got: list[int] = got, total: int = total,
                            done: threading.Event = done) -> None:
                    delivery.ack()
                    got[0] += 1
                    if got[0] >= total:
                        done.set()
            started = time.perf_counter()
            transport.consume(HISTORY_QUEUE, handler, manual_ack=True)
            if side == "historian_sqlite_per_s":
                while ingest.counters.stored < total:
                    time.sleep(0.005)  # polling a counter in the benchmark, not a test
                ingest.stop()
                store.close()
            elif not done.wait(300):
                raise RuntimeError("the backlog was not drained within 300 s")
            best[side] = max(best[side], n / (time.perf_counter() - started))
            transport.close()
    return {k: round(v) for k, v in best.items()}


# --------------------------------------------------------------------- query
def _fill_sqlite(path: Path, n: int, end_ms: int) -> None:
    store = SQLiteStore(path)  # the schema, then without its indexes while filling
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    for index in ("events_time", "events_host_time", "events_name_time"):
        db.execute(f"DROP INDEX {index}")
    batch: list[Row] = []
    total = size = 0
    for row in fleet_rows(n, end_ms=end_ms):
        batch.append(row)
        if len(batch) == 100_000:
            total, size = _flush_sqlite(db, batch, total, size)
            batch = []
    total, size = _flush_sqlite(db, batch, total, size)
    db.executescript(SQLiteStore.SCHEMA)  # the indexes, built once
    db.execute("UPDATE totals SET events = ?, bytes = ?", (total, size))
    db.execute("ANALYZE")
    db.close()


def _flush_sqlite(db: sqlite3.Connection, batch: list[Row], total: int, size: int
                  ) -> tuple[int, int]:
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (host, agent, event, epoch, seq, time_ms, "
                   "received_ms, message_id, user_id, body, size) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(batch))
    db.execute("COMMIT")
    return total + len(batch), size + sum(r.size for r in batch)


def _fill_postgres(url: str, n: int, end_ms: int) -> None:
    import psycopg

    PostgresStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        for index in ("events_time", "events_host_time", "events_name_time"):
            conn.execute(f"DROP INDEX {index}")  # type: ignore[arg-type]
        batch: list[Row] = []
        total = size = 0
        for row in fleet_rows(n, end_ms=end_ms):
            batch.append(row)
            if len(batch) == 100_000:
                with conn.transaction():
                    _copy_rows(conn, batch)
                total, size = total + len(batch), size + sum(r.size for r in batch)
                batch = []
        with conn.transaction():
            _copy_rows(conn, batch)
        total, size = total + len(batch), size + sum(r.size for r in batch)
    PostgresStore(url).close()  # the indexes, built once
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE totals SET events = %s, bytes = %s", (total, size))
        conn.execute("VACUUM ANALYZE events")


def _iso(ms: int) -> str:
    from console.history.store import ms_to_rfc3339

    return ms_to_rfc3339(ms)


def queries(store: EventStore, end_ms: int, repeat: int) -> dict[str, Any]:
    """Each query people ask, ``repeat`` times with other hosts and times."""
    agent = HistoryAgent(store, Ingest(store, "bench"))
    rnd = random.Random(11)
    asks = {
        "one host, last hour": lambda: dict(
            hosts=[f"h{rnd.randrange(1000):04d}"], since=_iso(end_ms - HOUR_MS)),
        "every host's alerts, last day (first page)": lambda: dict(
            patterns=["host.*.alert"], since=_iso(end_ms - 24 * HOUR_MS)),
        "everything, a 10-minute window (first page)": lambda: dict(
            since=_iso(end_ms - rnd.randrange(1, 160) * HOUR_MS)),
        "one host's alerts, the whole week": lambda: dict(
            patterns=[f"host.h{rnd.randrange(1000):04d}.alert"]),
    }
    out: dict[str, Any] = {}
    for label, make in asks.items():
        samples = []
        found = []
        for _ in range(repeat):
            args = {"patterns": ["#"], "hosts": [], "events": [], "limit": 1000,
                    "sync": False, **make()}
            if "10-minute" in label:
                args["until"] = _iso(int(_ms(args["since"])) + 10 * 60_000)
            started = time.perf_counter()
            result = agent.query(**args)
            samples.append((time.perf_counter() - started) * 1000)
            found.append(len(result["events"]))
        out[label] = {"p50_ms": round(pct(samples, 50), 2), "p90_ms": round(pct(samples, 90), 2),
                      "events_p50": int(statistics.median(found))}
    return out


def _ms(text: str) -> int:
    from console.history.store import time_ms

    return time_ms(text)


def query_benchmark(stored: int, folder: Path, postgres: str | None, repeat: int
                    ) -> dict[str, Any]:
    end_ms = int(time.time() * 1000)
    out: dict[str, Any] = {}
    path = folder / "filled.db"
    progress(f"history: filling SQLite with {stored:,} events")
    started = time.perf_counter()
    _fill_sqlite(path, stored, end_ms)
    fill_s = time.perf_counter() - started
    store = SQLiteStore(path)
    out["sqlite"] = {"stored": stored, "fill_s": round(fill_s, 1),
                     "file_mb": round(path.stat().st_size / 1e6),
                     "stored_mb": round(store.stats().bytes / 1e6),
                     "queries": queries(store, end_ms, repeat)}
    store.close()
    path.unlink()
    if postgres is not None:
        with _postgres_db(postgres) as url:
            progress(f"history: filling PostgreSQL with {stored:,} events")
            started = time.perf_counter()
            _fill_postgres(url, stored, end_ms)
            fill_s = time.perf_counter() - started
            store = PostgresStore(url)
            import psycopg

            with psycopg.connect(url) as conn:
                size = conn.execute("SELECT pg_total_relation_size('events')").fetchone()
            out["postgresql"] = {"stored": stored, "fill_s": round(fill_s, 1),
                                 "table_mb": round(size[0] / 1e6) if size else None,
                                 "stored_mb": round(store.stats().bytes / 1e6),
                                 "queries": queries(store, end_ms, repeat)}
            store.close()
    return out


# -------------------------------------------------------------------- stream
def _catch_up(ch: Any, queue: str, n: int, arguments: dict[str, Any] | None) -> None:
    """Consume ``n`` messages of ``queue`` (prefetch 1,000, acks per 500)."""
    ch.basic_qos(prefetch_count=1000)
    got = [0]

    def on(channel: Any, method: Any, _props: Any, _body: bytes) -> None:
        got[0] += 1
        if got[0] % 500 == 0 or got[0] == n:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if got[0] == n:
            channel.stop_consuming()

    ch.basic_consume(queue, on, arguments=arguments)
    ch.start_consuming()


def stream_vs_classic(bench: Bench, n: int) -> dict[str, Any]:
    """Raw pika: a backlog of ``n`` events in a classic queue or a stream bound to every
    event (what a historian that was down finds), then a consumer catching up on it."""
    url = bench.url
    body = codec.encode({"v": 1, "host": "h0001", "agent": "host", "event": "metrics",
                         "time": "2026-11-21T10:00:00.000Z", "seq": 1, "epoch": "e1",
                         "data": METRICS})
    out: dict[str, Any] = {}
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for kind, args in (("classic", {"x-queue-type": "classic"}),
                           ("stream", {"x-queue-type": "stream", "x-max-age": "1h"})):
            ch = conn.channel()
            queue = f"bench.{kind}.{uuid.uuid4().hex[:6]}"
            ch.queue_declare(queue, durable=True, arguments=args)
            ch.queue_bind(queue, "hostbus.event", "#")
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
            for _ in range(n):
                ch.basic_publish("hostbus.event", "host.h0001.metrics", body, props)
            ch.queue_unbind(queue, "hostbus.event", "#")
            waited = time.monotonic() + 60
            while ch.queue_declare(queue, passive=True).method.message_count < n:
                if time.monotonic() > waited:
                    raise RuntimeError(f"the {kind} queue did not take {n} messages in 60 s")
                time.sleep(0.1)  # the broker writes the backlog: poll its count
            started = time.perf_counter()
            _catch_up(ch, queue, n, {"x-stream-offset": "first"} if kind == "stream" else None)
            catch_up = n / (time.perf_counter() - started)
            ch.queue_delete(queue)
            ch.close()
            out[kind] = {"catch_up_per_s": round(catch_up)}
    finally:
        conn.close()
    return out


def run(bench: Bench, n: int, stored: int, postgres: str | None,
        repeat: int = 50) -> dict[str, Any]:
    results: dict[str, Any] = {"events": n}
    rows = list(fleet_rows(n))
    with tempfile.TemporaryDirectory(prefix="hostbus-bench-history-") as tmp:
        folder = Path(tmp)
        progress(f"history: {n:,} rows into each store, raw driver and EventStore")
        results["insert"] = inserts(rows, folder, postgres)
        progress(f"history: {n:,} events through the broker into the historian")
        results["ingest"] = {"subscriber_per_s": round(event_bench.hostbus_rate(bench, n))}
        results["ingest"]["sqlite_per_s"] = round(ingest(bench, n, str(folder / "ingest.db")))
        if postgres is not None:
            with _postgres_db(postgres) as url:
                results["ingest"]["postgresql_per_s"] = round(ingest(bench, n, url))
        progress(f"history: a backlog of {n:,} events drained, transport and historian")
        results["drain"] = drain(bench, n, folder)
        results["query"] = query_benchmark(stored, folder, postgres, repeat)
    progress(f"history: the stream question, {n:,} events")
    results["stream"] = stream_vs_classic(bench, n)
    return results


def text(h: dict[str, Any]) -> list[str]:
    lines = [f"history: {h['events']:,} events"]
    for store, r in h["insert"].items():
        copy = f", COPY {r['copy_per_s']:,}/s" if "copy_per_s" in r else ""
        lines.append(f"  insert {store:10} EventStore {r['store_per_s']:>9,}/s, raw driver "
                     f"{r['raw_per_s']:>9,}/s: {r['ratio']}x{copy}")
    ing = h["ingest"]
    lines.append(f"  through the broker: one console subscriber {ing['subscriber_per_s']:,}/s; "
                 "historian " + ", ".join(f"{k.removesuffix('_per_s')} {v:,}/s"
                                          for k, v in ing.items() if k != "subscriber_per_s"))
    if "drain" in h:
        d = h["drain"]
        lines.append(f"  a backlog drained, nothing publishing: the transport acknowledging "
                     f"each {d['transport_ack_only_per_s']:,}/s, the historian into SQLite "
                     f"{d['historian_sqlite_per_s']:,}/s")
    for store, q in h["query"].items():
        size = q.get("file_mb") or q.get("table_mb")
        lines.append(f"  query {store}, {q['stored']:,} events ({size:,} MB on disk, "
                     f"{q['stored_mb']:,} MB of events, filled in {q['fill_s']} s):")
        for label, r in q["queries"].items():
            lines.append(f"    {label:46} p50 {r['p50_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
                         f"({r['events_p50']} events)")
    st = h["stream"]
    lines.append("  a backlog caught up by a raw consumer: " + ", ".join(
        f"{kind} {r['catch_up_per_s']:,}/s" for kind, r in st.items()))
    return lines
