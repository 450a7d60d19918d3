"""Whatever arrives, the dispatcher answers or stays silent; it never raises and never
executes anything that should have been refused.

Examples a test: 200 locally, 2,000 with CI=true, N with HOSTBUS_FUZZ_EXAMPLES=N (a long
session, before a release say: ``HOSTBUS_FUZZ_EXAMPLES=100000 pytest tests/fuzz``);
tests/conftest.py sets them."""

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hostbus.envelope import REQUEST_TYPE
from hostbus.schema import envelope_validator, load_agent_schema
from hostbus.serving.dispatch import Dispatcher, HostedAgent
from hostbus.transport.base import Delivery, Properties
from tests.fakes import PROBE_SCHEMA, ProbeAgent, make_host_agent

# 2,000 examples a test in CI: about 7 s each on a quiet machine of two cores, a minute
# or more on a busy one. The suite's 120 s per test is for tests that wait on something;
# a longer session (HOSTBUS_FUZZ_EXAMPLES) gets time in proportion.
pytestmark = pytest.mark.timeout(max(900, int(os.environ.get("HOSTBUS_FUZZ_EXAMPLES") or 0)
                                     // 10))

ERROR_CODES = set(envelope_validator("reply").schema["properties"]["error"]["properties"]
                  ["code"]["enum"])


def build():
    probe = ProbeAgent()
    host, _, power = make_host_agent("web01")
    hosted = {"probe": HostedAgent(probe, PROBE_SCHEMA),
              "host": HostedAgent(host, load_agent_schema("host"))}
    return Dispatcher("web01", hosted, facts=lambda: {"os": "linux"},
                      max_message_bytes=4096), probe, power


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
hostile_text = st.sampled_from(["a'; rm -rf /", "</name><devices>", "$(reboot)", "../../etc",
                                "web01\x00", "x" * 300, "", "*", "#", "agent._all"])
names_ = hostile_text | st.text(max_size=40) | st.sampled_from(["host", "probe", "agent"])
methods = hostile_text | st.sampled_from(["reboot", "shutdown", "echo", "boom", "ping"])


@st.composite
def request_bodies(draw):
    body = {"v": draw(st.sampled_from([1, 1, 1, 2, "1", None])),
            "agent": draw(names_), "method": draw(methods),
            "args": draw(st.dictionaries(st.sampled_from(["delay_s", "reason", "text", "times",
                                                          "x"]) | st.text(max_size=5),
                                         json_values, max_size=3) | json_values),
            "target": draw(st.sampled_from([{"host": "web01"}, {"host": "other"},
                                            {"all": True}, {"all": True, "filter": {}}, {}])
                           | json_values),
            "deadline": draw(st.sampled_from([
                (datetime.now(UTC) + timedelta(seconds=30)).isoformat(),
                "2000-01-01T00:00:00Z", "soon"]) | st.text(max_size=30))}
    for key in draw(st.lists(st.sampled_from(list(body)), max_size=2)):
        body.pop(key, None)
    return json.dumps(body).encode()


bodies = request_bodies() | st.binary(max_size=300) | \
    st.builds(lambda v: json.dumps(v).encode(), json_values)
# What an AMQP 1.0 sender can put in a property: any length, and numbers where 0-9-1 has
# strings (a ulong message-id).
odd_property = st.text(min_size=250, max_size=700) | st.integers() | st.binary(max_size=10)
signable_properties = st.builds(
    Properties,
    message_id=st.none() | st.text(max_size=40),
    reply_to=st.none() | hostile_text | st.just("hostbus.reply.fuzz"),
    content_type=st.sampled_from(["application/json", "application/json", "text/plain", None]),
    type=st.sampled_from([REQUEST_TYPE, REQUEST_TYPE, "hostbus.request/2", None]),
)
properties = st.builds(
    Properties,
    message_id=st.none() | st.text(max_size=40) | odd_property,
    reply_to=st.none() | hostile_text | st.just("hostbus.reply.fuzz") | odd_property,
    correlation_id=st.none() | st.text(max_size=20) | odd_property,
    content_type=st.sampled_from(["application/json", "application/json", "text/plain", None])
    | odd_property,
    type=st.sampled_from([REQUEST_TYPE, REQUEST_TYPE, "hostbus.request/2", None]),
    user_id=st.none() | st.text(max_size=10) | st.sampled_from(["alice", "mallory"]),
)


def bounded_text(value):
    return value is None or (isinstance(value, str) and len(value.encode()) <= 255)


@given(body=bodies, props=properties)
def test_the_dispatcher_never_raises_and_refusals_never_run(body, props):
    dispatcher, probe, power = build()
    outcome = dispatcher.handle(Delivery(body, props, "hostbus.request", "host.web01"))
    reply = outcome.reply
    if reply is None:
        assert not outcome.executed
        return
    assert reply.status in ("ok", "error")
    if reply.status == "error":
        assert reply.error["code"] in ERROR_CODES
        if not outcome.executed:
            assert probe.executed == [] and power.calls == []
    envelope_validator("reply").validate(reply.to_body())
    # Nothing unbounded is kept or sent back: the replay guard's keys and the reply's
    # correlation id are bounded strings; a request without a user never runs.
    assert bounded_text(reply.correlation_id)
    assert all(bounded_text(c) and bounded_text(m) for c, m in dispatcher.replay._seen)
    if outcome.executed:
        assert isinstance(props.user_id, str) and props.user_id
        assert bounded_text(props.message_id) and props.message_id
    # A dangerous call only ever runs with arguments its schema allows.
    for action, delay, reason in power.calls:
        assert action in ("reboot", "shutdown") and 0 <= delay <= 86400 and len(reason) <= 200


@given(body=bodies, props=properties)
def test_with_signatures_required_nothing_unsigned_ever_runs(body, props):
    """Random messages carry no valid signature: every one is refused, none runs."""
    dispatcher, probe, power = build()
    dispatcher.verifier = VERIFIER
    outcome = dispatcher.handle(Delivery(body, props, "hostbus.request", "host.web01"))
    assert not outcome.executed and probe.executed == [] and power.calls == []
    if outcome.reply is not None:
        assert outcome.reply.error["code"] in ERROR_CODES


def _verifier():
    import tempfile

    from hostbus.security.signing import Verifier, generate, read_public_key

    with tempfile.TemporaryDirectory() as folder:
        _, pub = generate("trusted", folder)
        return Verifier({"mallory": read_public_key(pub)[1]})


VERIFIER = _verifier()


def _signed_setup():
    """Signatures required and valid (mallory's key is trusted), a policy that parks
    every host call for approval, and an approval desk: the path a signed attacker
    reaches. Nothing on the host may run without a second person."""
    import tempfile

    from hostbus.security.policy import Rule, RulesPolicy
    from hostbus.security.signing import Signer, Verifier, generate, read_public_key
    from hostbus.serving.approvals import Approvals, ApprovalStore

    folder = tempfile.mkdtemp()
    key, pub = generate("mallory", folder)
    verifier = Verifier({"mallory": read_public_key(pub)[1]})
    return Signer.load(key), verifier, Approvals(ApprovalStore(None), verifier), RulesPolicy(
        [Rule("park host calls", True, agents=("host", "probe"), requires_approval=True),
         Rule("approvals", True, agents=("agent",))], {}, "web01")


SIGNER, SIGNED_VERIFIER, APPROVALS, PARKING = _signed_setup()
approve_args = st.fixed_dictionaries({
    "approval_id": st.sampled_from(["000000000000", "zz", ""]) | st.text(max_size=14),
    "digest": st.sampled_from(["sha256:" + "0" * 64, ""]) | st.text(max_size=71)})


@given(body=bodies, props=signable_properties, approve=approve_args, as_approval=st.booleans())
def test_signed_requests_and_approvals_by_the_requester_never_run(body, props, approve,
                                                                   as_approval):
    from hostbus import names
    from hostbus.envelope import new_request

    dispatcher, probe, power = build()
    dispatcher.verifier, dispatcher.policy = SIGNED_VERIFIER, PARKING
    dispatcher.approvals = APPROVALS
    routing_key = "host.web01"
    if as_approval:  # the requester tries to approve something: never their own
        req = new_request("agent", "approve", approve, host="web01", reply_to="hostbus.reply.x")
        body, props = req.encode()
        routing_key = req.routing_key()
    props.user_id = "mallory"
    assume("\n" not in (props.message_id or "") + (props.reply_to or ""))  # unsignable
    SIGNER.sign(names.REQUEST_EXCHANGE, routing_key, props, body)
    outcome = dispatcher.handle(Delivery(body, props, names.REQUEST_EXCHANGE, routing_key))
    assert probe.executed == [] and power.calls == []
    if outcome.reply is not None:
        assert outcome.reply.error is None or outcome.reply.error["code"] in ERROR_CODES


@given(body=bodies, props=properties)
def test_a_provisioning_message_is_read_or_refused_with_a_documented_code(body, props):
    from hostbus.envelope import parse_provision
    from hostbus.errors import RemoteError

    try:
        request = parse_provision(Delivery(body, props, "hostbus.provision", "provision"))
    except RemoteError as err:
        assert err.code.value in ERROR_CODES
        return
    assert request.user_id and bounded_text(request.request_id)
