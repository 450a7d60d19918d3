"""The dispatcher's checks, cheapest first; nothing refused is ever executed."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from hostbus.envelope import REQUEST_TYPE
from hostbus.schema import load_agent_schema
from hostbus.security.policy import Decision
from hostbus.serving.dispatch import Dispatcher, HostedAgent
from hostbus.transport.base import Delivery, Properties
from tests.fakes import PROBE_SCHEMA, ProbeAgent, make_host_agent


@pytest.fixture
def setup():
    probe = ProbeAgent()
    host, _, power = make_host_agent("web01")
    hosted = {"probe": HostedAgent(probe, PROBE_SCHEMA),
              "host": HostedAgent(host, load_agent_schema("host"))}
    dispatcher = Dispatcher("web01", hosted, facts=lambda: {"os": "linux", "cpus": 4,
                                                           "virtual": False},
                            max_message_bytes=4096, check_results=True)
    return dispatcher, probe, power


def deliver(body, **props):
    base = {"message_id": f"req-{uuid.uuid4().hex}", "content_type": "application/json",
            "type": REQUEST_TYPE,
            "reply_to": "hostbus.reply.t", "user_id": "alice"}
    base.update(props)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(raw, Properties(**base), "hostbus.request", "x")


def request(agent="probe", method="echo", args=None, target=None, deadline_s=5.0):
    return {"v": 1, "agent": agent, "method": method,
            "args": {"text": "hi"} if args is None else args,
            "target": target or {"host": "web01"},
            "deadline": (datetime.now(UTC) + timedelta(seconds=deadline_s)).isoformat()}


def test_a_good_request_runs_and_replies_ok(setup):
    dispatcher, probe, _ = setup
    out = dispatcher.handle(deliver(request(args={"text": "ab", "times": 2})))
    assert out.reply.ok and out.reply.result == {"text": "abab"}
    assert out.reply_to == "hostbus.reply.t" and out.reply.correlation_id.startswith("req-")
    assert probe.executed == ["echo"]


def test_schema_defaults_are_applied_before_the_call(setup):
    dispatcher, _, _ = setup
    assert dispatcher.handle(deliver(request(args={"text": "z"}))).reply.result == {"text": "z"}


# Bodies are built when the test runs (a lambda), so their deadlines are fresh.
@pytest.mark.parametrize(("make_body", "props", "code"), [
    (lambda: b"not json", {}, "bad_message"),
    (lambda: b"\x00\x01\x02", {}, "bad_message"),
    (lambda: b"{" + b" " * 5000 + b"}", {}, "too_large"),
    (lambda: request(), {"content_type": "application/xml"}, "bad_message"),
    (lambda: request(), {"type": "hostbus.request/9"}, "bad_message"),
    (lambda: {"v": 1, "agent": "probe"}, {}, "bad_message"),
    (lambda: request(args={"text": 5}), {}, "invalid_args"),
    (lambda: request(args={"text": "x", "times": 99}), {}, "invalid_args"),
    (lambda: request(args={"text": "x", "rm": "-rf /"}), {}, "invalid_args"),
    (lambda: request(args={}), {}, "invalid_args"),
    (lambda: request(agent="nosuch"), {}, "unknown_agent"),
    (lambda: request(method="nosuch"), {}, "unknown_method"),
    (lambda: request(deadline_s=-1), {}, "expired"),
    (lambda: request(target={"host": "db01"}), {}, "bad_message"),
])
def test_refusals_carry_their_code_and_nothing_runs(setup, make_body, props, code):
    dispatcher, probe, power = setup
    out = dispatcher.handle(deliver(make_body(), **props))
    assert out.reply.status == "error"
    assert out.reply.error["code"] == code
    assert out.reply.error["message"]
    assert out.reply_to == "hostbus.reply.t"
    assert probe.executed == [] and power.calls == []
    assert not out.executed


def test_dangerous_methods_with_bad_arguments_do_not_run(setup):
    dispatcher, _, power = setup
    for args in ({"delay_s": -1}, {"delay_s": "now"}, {"reason": "x" * 500}):
        out = dispatcher.handle(deliver(request("host", "reboot", args)))
        assert out.reply.error["code"] == "invalid_args"
    assert power.calls == []


def test_a_policy_denial_is_reported_and_nothing_runs(setup):
    dispatcher, probe, _ = setup

    class DenyAll:
        def decide(self, request, method):
            return Decision(False, "rule-7", "alice may not call probe.echo")

    dispatcher.policy = DenyAll()
    out = dispatcher.handle(deliver(request()))
    assert out.reply.error == {"code": "unauthorized", "message": "alice may not call probe.echo",
                               "details": {"rule": "rule-7"}}
    assert probe.executed == []


def test_broadcasts_that_do_not_match_stay_silent(setup):
    dispatcher, probe, _ = setup
    for flt in ({"host": "db*"}, {"agent": "virt"}, {"facts": {"os": "windows"}},
                {"facts": {"missing": "x"}}):
        out = dispatcher.handle(deliver(request(target={"all": True, "filter": flt})))
        assert out.reply is None
    assert probe.executed == []


def test_broadcasts_that_match_run(setup):
    dispatcher, probe, _ = setup
    flt = {"host": "web*", "agent": "probe", "facts": {"os": "linux", "cpus": 4,
                                                      "virtual": False}}
    out = dispatcher.handle(deliver(request(target={"all": True, "filter": flt})))
    assert out.reply.ok and probe.executed == ["echo"]


def test_a_failing_method_gives_internal_and_a_wire_error_passes_through(setup):
    dispatcher, probe, _ = setup
    boom = dispatcher.handle(deliver(request(method="boom", args={})))
    assert boom.reply.error["code"] == "internal"
    assert "ZeroDivisionError" in boom.reply.error["message"]
    refused = dispatcher.handle(deliver(request(method="refuse", args={})))
    assert refused.reply.error == {"code": "conflict", "message": "not now"}
    assert probe.executed == ["boom", "refuse"]


def test_methods_asking_for_ctx_see_the_broker_validated_caller(setup):
    dispatcher, _, _ = setup
    out = dispatcher.handle(deliver(request(method="whoami", args={}), user_id="bob",
                                    message_id="req-1"))
    assert out.reply.result == {"caller": "bob", "request_id": "req-1"}


def test_without_reply_to_the_request_still_runs_but_nothing_is_sent(setup):
    dispatcher, probe, _ = setup
    out = dispatcher.handle(deliver(request(), reply_to=None))
    assert out.reply_to is None and probe.executed == ["echo"]


def test_an_integer_sent_as_5_0_is_taken_as_5(setup):
    """JSON Schema counts 5.0 as an integer, and JavaScript or a careless encoder may
    send it: the method gets an int, rather than failing with internal: TypeError."""
    dispatcher, _, _ = setup
    out = dispatcher.handle(deliver(request("host", "processes", {"limit": 5.0})))
    assert out.reply.ok, out.reply.error
    assert 0 < len(out.reply.result["processes"]) <= 5
    times = dispatcher.handle(deliver(request(args={"text": "ab", "times": 2.0})))
    assert times.reply.result == {"text": "abab"}
    refused = dispatcher.handle(deliver(request("host", "processes", {"limit": 5.5})))
    assert refused.reply.error["code"] == "invalid_args"


def test_values_off_the_wire_cannot_forge_log_lines(setup):
    """A message id with a newline once wrote a second, forged line into the agent's
    log. The daemons' formatter escapes control characters in every message."""
    import io
    import logging

    from hostbus.logs import EscapingFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("hostbus.dispatch")
    logger.addHandler(handler)
    try:
        dispatcher, _, _ = setup
        forged = "m1\nCRITICAL hostbus.agent: root password is hunter2\x1b[2J"
        out = dispatcher.handle(deliver(request(method="nosuch"), message_id=forged))
        assert out.reply.error["code"] == "unknown_method"
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING hostbus.dispatch: refused m1\\n")
    assert "\x1b" not in lines[0] and "\\x1b[2J" in lines[0]
