"""Over AMQP 0-9-1 a console's call goes out and is answered on the calling thread's own
connection, with no hand-off to the console's I/O thread (docs/design.md, "Threads")."""

import threading
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]


def _only_amqp091(rabbitmq) -> None:
    if rabbitmq.transport != "amqp091":
        pytest.skip("over AMQP 1.0 a call goes through the console's I/O thread")


def test_a_call_is_answered_while_an_event_handler_holds_the_io_thread(rabbitmq, console,
                                                                      start_agent):
    """A slow subscription handler holds the console's I/O thread; a call made meanwhile
    is still answered, since it needs no other thread."""
    _only_amqp091(rabbitmq)
    entered, release = threading.Event(), threading.Event()

    def slow(event, note) -> None:
        entered.set()
        release.wait(60)

    runtime, _ = start_agent()
    # A thread's first call goes through the I/O thread; its second opens its own.
    for _ in range(2):
        assert console.call("agent", "ping", host=runtime.host_id, timeout=20).status == "ok"
    console.subscribe(["agent.*.online"], slow)
    try:
        start_agent()  # its online event holds the console's I/O thread
        assert entered.wait(30), "the online event did not reach the subscriber"
        res = console.call("agent", "ping", host=runtime.host_id, timeout=20)
        assert res.status == "ok"
        assert res.reply.host == runtime.host_id
    finally:
        release.set()


def test_a_one_off_call_opens_no_second_connection(rabbitmq, console, start_agent):
    """A command line makes one call: it goes through the console's own connection."""
    _only_amqp091(rabbitmq)
    runtime, _ = start_agent()
    assert console.call("agent", "ping", host=runtime.host_id, timeout=20).status == "ok"
    assert console._callers == {}


def test_a_thread_waits_for_its_replies_without_pikas_loop(rabbitmq, console, start_agent):
    """Over a plain socket the caller polls its socket and hands what arrived to pika's
    transport itself (no timer, no event dispatch a call): pika's loop is not run while a
    call waits for its reply, and every reply still finds its call. This also pins the
    pika internals the direct read relies on (``_transport._sock``,
    ``_on_socket_readable``, ``_on_socket_writable``, ``_tx_buffers``, ``_state``): if a
    pika release changes them, the caller falls back to pika's loop and this fails."""
    _only_amqp091(rabbitmq)
    runtime, _ = start_agent()
    assert console.call("agent", "ping", host=runtime.host_id, timeout=20).status == "ok"
    assert console.call("agent", "ping", host=runtime.host_id, timeout=20).status == "ok"
    [(caller, _)] = console._callers.values()
    loops = []
    real = caller._conn.process_data_events

    def counted(*args, **kwargs):
        loops.append(kwargs)
        return real(*args, **kwargs)

    caller._conn.process_data_events = counted
    for i in range(20):
        res = console.call("host", "identify", host=runtime.host_id, timeout=20)
        assert res.status == "ok" and res.reply.result["host_id"] == runtime.host_id, i
    assert loops == []


def test_calls_from_several_threads_each_get_their_own_answer(console, start_agent):
    runtime, _ = start_agent()
    results: dict[int, str] = {}

    def calls(i: int) -> None:
        for _ in range(5):
            res = console.call("host", "identify", host=runtime.host_id, timeout=20)
            results[i] = f"{res.status} {res.reply.result['host_id'] if res.reply else ''}"

    threads = [threading.Thread(target=calls, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == dict.fromkeys(range(4), f"ok {runtime.host_id}")


def test_a_call_after_the_broker_closed_the_callers_connection_is_answered(
        rabbitmq, console, start_agent):
    """An administrator (or the broker) closes the connection a thread's calls use while
    it sits between calls: the next call opens another and is answered."""
    _only_amqp091(rabbitmq)
    runtime, _ = start_agent()
    for _ in range(2):  # the second opens this thread's own connection
        assert console.call("agent", "ping", host=runtime.host_id, timeout=20).status == "ok"
    admin = rabbitmq.admin

    def callers() -> list[str]:
        return [c["name"] for c in admin.connections(rabbitmq.vhost)
                if c.get("client_properties", {}).get("connection_name")
                == "hostbus-console (calls)"]

    assert until(callers), "the call went out on no connection of its own"
    caller, _ = console._callers[threading.get_ident()]
    assert not caller.unread()
    closing = callers()
    for name in closing:
        admin._exists("DELETE", f"/api/connections/{admin._q(name)}")
    # The broker's connection.close has reached the idle connection. (The broker lists
    # the connection for 30 s more, waiting for a close-ok nobody sends while nobody
    # reads it; then it drops the socket. Either way the next call reads the close
    # first: what is awaited here is what that call meets in both cases.)
    assert until(caller.unread), "the broker's close never arrived"
    res = console.call("agent", "ping", host=runtime.host_id, timeout=20)
    assert res.status == "ok"


def until(condition, timeout: float = 60) -> bool:
    """Whether ``condition`` came true within ``timeout`` (checked every 50 ms: the
    management API's listing has no event to wait on)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        pause.wait(0.05)
    return bool(condition())


def test_a_call_to_an_agent_no_queue_takes_is_not_enrolled_at_once(rabbitmq, console,
                                                                   start_agent):
    _only_amqp091(rabbitmq)
    runtime, _ = start_agent()
    assert console.call("agent", "ping", host=runtime.host_id, timeout=20).status == "ok"
    res = console.call("virt", "node.info", host=runtime.host_id, timeout=600)
    assert res.status == "not_enrolled" and "'virt'" in res.not_enrolled
    ghost = f"it-ghost-{uuid.uuid4().hex[:6]}"
    assert console.call("agent", "ping", host=ghost, timeout=600).status == "not_enrolled"
