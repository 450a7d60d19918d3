"""What the code puts on the wire follows what schemas/ and docs/protocol.md promise to
programs in other languages: the AMQP properties of each kind, and the provisioning
result."""

import dataclasses
from pathlib import Path

import jsonschema
import pytest

from console.provisioner.store import RequestStore
from hostbus import codec
from hostbus.envelope import Event, Reply, new_request
from hostbus.schema import envelope_schema, load_agent_schema
from hostbus.security.signing import Signer, generate
from hostbus.transport.base import Properties

ROOT = Path(__file__).resolve().parents[2]


def amqp_properties(kind: str) -> dict:
    schema = envelope_schema(kind)
    return {**schema["definitions"]["amqp_properties"], "definitions": schema["definitions"]}


def as_dict(props: Properties) -> dict:
    """The properties as a 0-9-1 receiver sees them: set fields only."""
    return {k: v for k, v in dataclasses.asdict(props).items() if v not in (None, {})}


def signed(props: Properties, tmp_path: Path, exchange: str, key: str, body: bytes) -> None:
    key_path, _ = generate(props.user_id, tmp_path)
    Signer.load(key_path).sign(exchange, key, props, body)


@pytest.mark.parametrize("sign", [False, True], ids=["unsigned", "signed"])
def test_the_properties_hostbus_sends_follow_each_kinds_amqp_properties(sign, tmp_path):
    request = new_request("host", "identify", host="web01", reply_to="hostbus.reply.alice.1f2e")
    reply = Reply(host="web01", agent="host", method="identify", status="ok", result={},
                  correlation_id=request.message_id)
    event = Event(host="web01", agent="host", event="alert", data={}, seq=1, epoch="e1")
    for kind, (body, props), user, (exchange, key) in (
            ("request", request.encode(), "alice", ("hostbus.request", "host.web01")),
            ("reply", reply.encode(), "web01", ("hostbus.reply", request.reply_to)),
            ("event", event.encode(), "web01", ("hostbus.event", "host.web01.alert"))):
        props.user_id = user  # the transports set it on every publish
        if sign:
            signed(props, tmp_path / kind, exchange, key, body)
        jsonschema.validate(as_dict(props), amqp_properties(kind))
        jsonschema.validate(codec.decode_object(body), envelope_schema(kind))


def test_a_request_without_user_id_does_not_follow_the_contract():
    _, props = new_request("host", "identify", host="web01").encode()
    with pytest.raises(jsonschema.ValidationError, match="'user_id' is a required property"):
        jsonschema.validate(as_dict(props), amqp_properties("request"))


def test_the_provisioners_completed_record_is_a_provision_result(tmp_path):
    store = RequestStore(tmp_path / "provisioner.db")
    rid = "9b2f6a4e-1c3d-4e5f-8a7b-6c5d4e3f2a1b"
    store.accept(rid, "alice", "web", 2)
    store.complete(rid, [{"name": "web-9b2f6a4e-1", "host": "kvm01", "state": "running"},
                         {"name": "web-9b2f6a4e-2", "host": "kvm02", "state": "running"}])
    record = store.get(rid).to_dict()
    store.close()
    jsonschema.validate(record, envelope_schema("provision-result"))
    # provision.status answers with the same record
    status = load_agent_schema("provision").methods["status"]
    status.result_validator.validate(record)


def test_the_provisioners_finished_release_is_a_release_result(tmp_path):
    store = RequestStore(tmp_path / "provisioner.db")
    rid = "4c1d8e2f-7a6b-4f3e-9d2c-1b0a9f8e7d6c"
    store.accept_release(rid, "alice", "9b2f6a4e-1c3d-4e5f-8a7b-6c5d4e3f2a1b", [
        {"name": "web-9b2f6a4e-1", "host": "kvm01", "uuid": "u1", "owner": "alice",
         "request_id": "9b2f6a4e-1c3d-4e5f-8a7b-6c5d4e3f2a1b", "outcome": "released",
         "removed_volumes": ["default/web-9b2f6a4e-1.qcow2"]},
        {"name": "web-9b2f6a4e-2", "host": "kvm02", "uuid": None, "owner": "alice",
         "request_id": "9b2f6a4e-1c3d-4e5f-8a7b-6c5d4e3f2a1b", "outcome": "already_gone"}])
    store.complete_release(rid)
    record = store.get_release(rid).to_dict()
    store.close()
    jsonschema.validate(record, envelope_schema("provision-release-result"),
                        format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize(("body", "valid"), [
    ({"v": 1, "template": "web", "owner": "alice"}, True),
    ({"v": 1, "action": "submit", "template": "web", "owner": "alice"}, True),
    ({"v": 1, "action": "release", "request_id": "9b2f6a4e"}, True),
    ({"v": 1, "action": "release", "vms": ["web-9b2f6a4e-1"]}, True),
    ({"v": 1, "action": "release"}, False),
    ({"v": 1, "action": "release", "request_id": "9b2f6a4e", "vms": ["a"]}, False),
    ({"v": 1, "action": "release", "request_id": "9b2f6a4e", "owner": "alice"}, False),
    ({"v": 1, "template": "web", "owner": "alice", "request_id": "9b2f6a4e"}, False),
    ({"v": 1, "action": "destroy", "request_id": "9b2f6a4e"}, False),
])
def test_one_schema_tells_a_submit_from_a_release_strictly(body, valid):
    """The kind is in the body (the AMQP type property is the same for both and may not
    cross protocols); neither kind accepts the other's fields."""
    errors = list(jsonschema.Draft7Validator(envelope_schema("provision")).iter_errors(body))
    assert (errors == []) is valid, errors


def test_the_provision_result_examples_are_valid():
    schema = envelope_schema("provision-result")
    jsonschema.Draft7Validator.check_schema(schema)
    for example in schema["examples"]:
        jsonschema.validate(example, schema, format_checker=jsonschema.FormatChecker())


def test_protocol_md_names_every_schema_and_links_the_vectors():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for path in sorted((ROOT / "schemas" / "envelope").glob("*.json")):
        assert f"schemas/envelope/{path.name}" in doc
    assert "signing-vectors.json" in doc
