"""The historian on the in-memory broker: what it stores, `hostbus history`, and
`hostbus watch --since` going on live without a gap or a repeat."""

import json
import threading
from datetime import UTC, datetime

import pytest

from console.commands.history import parse_since
from console.history.store import Query, Row, SQLiteStore
from hostbus import codec
from hostbus.envelope import Event
from hostbus.transport.base import Properties
from hostbus.transport.memory import MemoryTransport

ALERT = {"metric": "cpu_percent", "resource": "", "state": "raised", "value": 95.0,
         "raise_at": 90.0, "clear_at": 80.0}


def stored(historian, n, timeout=5.0):
    """Wait until the historian has stored ``n`` events besides its own online."""
    done = threading.Event()
    while historian.ingest.counters.stored < n + 1 and not done.wait(0.01):
        timeout -= 0.01
        if timeout <= 0:
            raise AssertionError(f"{historian.ingest.counters.stored} of {n} stored")


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_history_prints_what_was_stored_in_order_with_who_sent_it(fleet, historian):
    web = fleet.add("web01")  # agent.online is #1
    for _ in range(3):
        web.emit("host", "alert", ALERT)
    stored(historian, 4)
    done = fleet.run("history", "host.*.alert", "--since", "1h", "--json")
    assert done.exit_code == 0, done.stderr
    got = lines(done)
    assert [(e["host"], e["event"], e["seq"]) for e in got] == [
        ("web01", "alert", 1), ("web01", "alert", 2), ("web01", "alert", 3)]
    assert got[0]["user_id"] == "web01" and got[0]["data"] == ALERT
    assert got[0]["received"].endswith("Z") and got[0]["message_id"]


def test_history_selects_by_host_event_and_time(fleet, historian):
    fleet.add("web01").emit("host", "alert", ALERT)
    fleet.add("db01").emit("host", "alert", ALERT)
    stored(historian, 4)
    by_host = lines(fleet.run("history", "--host", "db*", "--json"))
    assert {e["host"] for e in by_host} == {"db01"} and len(by_host) == 2
    by_event = lines(fleet.run("history", "--event", "agent.online", "--json"))
    assert sorted(e["host"] for e in by_event) == ["db01", "historian", "web01"]
    future = lines(fleet.run("history", "--since", "2999-01-01T00:00:00Z", "--json"))
    assert future == []


def test_history_pages_through_more_than_one_reply(fleet, historian):
    web = fleet.add("web01")
    for _ in range(2500):  # history.query answers 1,000 rows a page by default
        web.emit("host", "alert", ALERT)
    stored(historian, 2501)
    got = lines(fleet.run("history", "host.web01.alert", "--json"))
    assert [e["seq"] for e in got] == list(range(1, 2501))


def test_history_after_an_agent_restart_has_both_lives(fleet, historian):
    first = fleet.add("web01")
    first.emit("host", "alert", ALERT)
    first.stop("restarting")
    second = fleet.add("web01")
    second.emit("host", "alert", ALERT)
    stored(historian, 5)  # online, alert, offline; online, alert
    got = lines(fleet.run("history", "*.web01.#", "--json"))
    assert [(e["event"], e["seq"]) for e in got] == [
        ("online", 1), ("alert", 1), ("offline", 2), ("online", 1), ("alert", 1)]
    assert got[0]["epoch"] == got[2]["epoch"] != got[3]["epoch"]


def test_an_event_sent_again_is_stored_once(fleet, historian):
    web = fleet.add("web01")
    stored(historian, 1)
    online = next(d for ex, key, d in fleet.broker.published if key == "agent.web01.online")
    fleet.broker.route("hostbus.event", online)  # an at-least-once redelivery
    web.emit("host", "alert", ALERT)
    stored(historian, 2)
    assert historian.ingest.counters.repeats == 1
    assert len(lines(fleet.run("history", "*.web01.#", "--json"))) == 2


def test_events_that_speak_for_another_host_or_are_too_large_are_not_stored(fleet,
                                                                          historian):
    fleet.broker.enroll("mallory", [])
    forged = Event(host="web01", agent="host", event="alert", data=ALERT, seq=1, epoch="e")
    body, props = forged.encode()
    props.user_id = "mallory"
    sender = MemoryTransport(fleet.broker, user="mallory")
    sender.start()
    sender.publish("hostbus.event", "host.web01.alert", body, props)
    sender.publish("hostbus.event", "host.web01.alert", b"not json",
                   Properties(user_id="mallory"))
    fleet.broker.enroll("web01", [])
    huge = Event(host="web01", agent="host", event="alert",
                 data={**ALERT, "pad": "x" * (1 << 20)}, seq=1, epoch="e")
    body, props = huge.encode()
    props.user_id = "web01"
    web = MemoryTransport(fleet.broker, user="web01")
    web.start()
    web.publish("hostbus.event", "host.web01.alert", body, props)
    pause, waited = threading.Event(), 0.0
    while historian.ingest.counters.refused < 3 and waited < 5:
        pause.wait(0.01)
        waited += 0.01
    web.close()
    assert historian.ingest.counters.refused == 3
    assert lines(fleet.run("history", "*.web01.#", "--json")) == []
    sender.close()


def test_another_historians_marker_is_not_stored(fleet, historian):
    fleet.broker.enroll("hist2", [])
    marker = Event(host="hist2", agent="history", event="sync", data={"token": "t"}, seq=1,
                   epoch="e")
    body, props = marker.encode()
    props.user_id = "hist2"
    sender = MemoryTransport(fleet.broker, user="hist2")
    sender.start()
    sender.publish("hostbus.event", "history.hist2.sync", body, props)
    fleet.add("web01")  # published after the marker: once it is stored, the marker was read
    stored(historian, 1)
    assert lines(fleet.run("history", "history.*.sync", "--json")) == []
    assert historian.ingest.counters.refused == 0
    sender.close()


def test_setup_takes_only_a_shared_queue_name(fleet):
    done = fleet.run("historian", "--setup", "--queue", "hostbus.host.web01")
    assert done.exit_code == 2 and "hostbus.WORD" in done.stderr


def test_without_a_historian_history_says_how_to_start_one(fleet):
    fleet.add("web01")
    done = fleet.run("history")
    assert done.exit_code == 3
    assert "no historian answered" in done.stderr and "hostbus historian" in done.stderr


def test_a_bad_since_is_refused_before_anything_is_asked(fleet):
    done = fleet.run("history", "--since", "yesterday")
    assert done.exit_code == 2
    assert "30s, 10m, 1h" in done.stderr


@pytest.mark.parametrize(("args", "said"), [
    (["host.metrics"], "did you mean host.*.metrics?"),
    (["--event", "host.metric"], "--event 'host.metric': no such event"),
])
def test_a_pattern_or_event_that_matches_nothing_is_refused_unless_asked(fleet, historian,
                                                                        args, said):
    done = fleet.run("history", *args)
    assert done.exit_code == 2 and said in done.stderr and "--no-validate" in done.stderr
    assert fleet.run("history", *args, "--no-validate").exit_code == 0


def test_since_takes_spans_and_times():
    now = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    assert parse_since("90m", now=now) == "2026-11-21T08:30:00.000Z"
    assert parse_since("2d", now=now) == "2026-11-19T10:00:00.000Z"
    assert parse_since("2026-11-21T11:00:00+01:00", now=now) == "2026-11-21T10:00:00.000Z"


class GatedStore(SQLiteStore):
    """Stores only while ``gate`` is set: a historian that lags behind the bus."""

    def __init__(self, path):
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()

    def insert(self, rows):
        self.gate.wait(10)
        return super().insert(rows)


def test_watch_since_replays_then_goes_live_each_event_once(fleet, tmp_path):
    """Events published before the watch, some not yet stored by a lagging historian,
    and events published while it starts: each is printed once, in order, none missing
    where the history meets the live events."""
    from tests.history_fleet import start_historian

    store = GatedStore(tmp_path / "h.db")
    hist = start_historian(fleet.broker, store, tmp_path)
    web = fleet.add("web01")
    for _ in range(1000):
        web.emit("host", "alert", ALERT)
    stored(hist, 1001)
    store.gate.clear()  # the historian falls behind: these wait in its queue
    for _ in range(500):
        web.emit("host", "alert", ALERT)

    def published(key: str) -> bool:
        return any(k == key for _, k, _ in list(fleet.broker.published))

    def while_the_watch_starts() -> None:
        pause = threading.Event()
        while not any(key == "host.web01.alert" for _, key, _ in fleet.broker.bindings):
            pause.wait(0.01)  # the watch has not subscribed yet
        for _ in range(1000):  # published after its subscription: also stored
            web.emit("host", "alert", ALERT)
        # The historian catches up only once the watch asked it (and it sent itself
        # its marker): a history read earlier would end before the 500 it had not stored.
        for key, wait in (("history.historian", 10.0), ("history.historian.sync", 2.0)):
            while not published(key) and wait > 0:
                pause.wait(0.01)
                wait -= 0.01
        store.gate.set()
        for _ in range(500):  # live only
            web.emit("host", "alert", ALERT)

    publisher = threading.Thread(target=while_the_watch_starts)
    publisher.start()
    try:
        done = fleet.run("watch", "host.web01.alert", "--since", "1h", "-n", "3000", "--json")
    finally:
        store.gate.set()
        publisher.join(10)
        hist.stop("test over")
        store.close()
    assert done.exit_code == 0, done.stderr
    assert [e["seq"] for e in lines(done)] == list(range(1, 3001))
    assert "gap" not in done.stderr


# ---------------------------------------------------------------- the store itself
def row(seq, t_ms, host="web01", event="alert", body_size=100):
    body = codec.encode({"seq": seq, "pad": "x" * body_size})
    return Row(host, "host", event, "e1", seq, t_ms, t_ms, f"m{seq}", host, body)


def test_retention_by_age_removes_events_older_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("console.history.store.DELETE_BATCH", 4)  # more than one pass
    store = SQLiteStore(tmp_path / "h.db")
    store.insert([row(i, i * 1000) for i in range(1, 11)])
    gone = store.apply_retention(max_age_s=3.5, max_bytes=0, now_ms=10_000)
    assert gone == 6
    assert [r.seq for _, r in store.query(Query())] == [7, 8, 9, 10]
    assert store.stats().events == 4


def test_retention_by_size_keeps_the_newest_within_the_limit(tmp_path):
    store = SQLiteStore(tmp_path / "h.db")
    rows = [row(i, i) for i in range(1, 101)]
    store.insert(rows)
    limit = sum(r.size for r in rows[-30:])
    store.apply_retention(max_age_s=0, max_bytes=limit)
    left = [r.seq for _, r in store.query(Query(limit=1000))]
    assert left == list(range(71, 101))
    assert store.stats().bytes == limit


@pytest.mark.parametrize(("pattern", "expect"), [
    ("host.*.alert", {"host.web01.alert", "host.db01.alert"}),
    ("host.web01.#", {"host.web01.alert", "host.web01.metrics"}),
    ("*.*.metrics", {"host.web01.metrics"}),
    ("#.alert", {"host.web01.alert", "host.db01.alert"}),
    ("host.#.alert", {"host.web01.alert", "host.db01.alert"}),
    ("host.web01.alert.#", {"host.web01.alert"}),
])
def test_patterns_select_what_a_subscription_would(tmp_path, pattern, expect):
    from console.history.agent import HistoryAgent, narrow
    from console.history.ingest import Ingest

    store = SQLiteStore(tmp_path / "h.db")
    store.insert([row(1, 1, "web01", "alert"), row(2, 2, "web01", "metrics"),
                  row(1, 3, "db01", "alert")])
    agent = HistoryAgent(store, Ingest(store, "historian"))
    q, keep = narrow([pattern], [], [])
    found = {f"{r.agent}.{r.host}.{r.event}" for _, r in store.query(q) if keep(r)}
    assert found == expect
    assert agent.stats()["events"] == 3


def test_the_seam_drops_live_events_already_replayed_and_tells_a_gap():
    from console.history.client import Seam

    def ev(seq, epoch="e1", host="web01"):
        return Event(host=host, agent="host", event="alert", data={}, seq=seq, epoch=epoch)

    seam = Seam()
    for seq in range(1, 11):
        seam.replayed(ev(seq))
    assert [seam.live(ev(s))[0] for s in (8, 9, 10, 11, 12)] == [False] * 3 + [True] * 2
    assert seam.live(ev(3, epoch="e2")) == (True, None)  # a restart: its own numbers
    assert seam.live(ev(1, host="db01")) == (True, None)  # nothing replayed from it
    other = Seam()
    other.replayed(ev(10))
    fresh, note = other.live(ev(14))
    assert fresh and note is not None and "3 events" in note and "seq 11..13" in note
