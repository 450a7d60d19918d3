"""hostbus's signing code against the published test vectors (docs/signing-vectors.json),
so the byte-by-byte specification in docs/protocol.md and the code cannot drift apart."""

import base64
import copy
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hostbus.errors import ErrorCode, RemoteError
from hostbus.security.signing import (
    Signer,
    Verifier,
    read_public_key,
    request_digest,
    signature_of,
    signing_input,
)
from hostbus.transport.base import Properties

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "docs" /
                      "signing-vectors.json").read_text())
CASES = {case["name"]: case for case in VECTORS["cases"]}


def props_of(case: dict, content_type: str = "application/json") -> Properties:
    p = case["properties"]
    return Properties(message_id=p["message_id"], user_id=p["user_id"],
                      reply_to=p["reply_to"], correlation_id=p["correlation_id"],
                      content_type=content_type, type=case["kind"])


def body_of(case: dict) -> bytes:
    body = bytes.fromhex(case["body_hex"])
    assert body == case["body"].encode(), "body and body_hex disagree"
    return body


def verifier(tmp_path: Path) -> Verifier:
    trusted = {}
    for name, key in VECTORS["keys"].items():
        path = tmp_path / f"{name}.pub"
        path.write_text(key["pub_file"] + "\n")
        trusted_name, public = read_public_key(path)
        trusted[trusted_name] = public
    return Verifier(trusted)


@pytest.mark.parametrize("name", VECTORS["keys"])
def test_each_public_key_is_the_one_of_its_seed(name):
    key = VECTORS["keys"][name]
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["seed_hex"]))
    raw = private.public_key().public_bytes_raw()
    assert raw.hex() == key["public_hex"]
    assert key["pub_file"] == f"hostbus-ed25519 {base64.b64encode(raw).decode()} {name}"


@pytest.mark.parametrize("name", CASES)
def test_the_signing_input_is_byte_for_byte_the_vectors(name):
    case = CASES[name]
    got = signing_input(case["exchange"], case["routing_key"], props_of(case), body_of(case),
                        case["kind"])
    assert got.hex() == case["signing_input_hex"]


@pytest.mark.parametrize("name", CASES)
def test_signing_gives_the_vectors_signature_content_type_and_digest(name):
    case = CASES[name]
    seed = bytes.fromhex(VECTORS["keys"][case["signer"]]["seed_hex"])
    props = props_of(case)
    Signer(Ed25519PrivateKey.from_private_bytes(seed)).sign(
        case["exchange"], case["routing_key"], props, body_of(case))
    assert props.content_type == case["content_type"]
    assert signature_of(props) == case["signature"]
    assert request_digest(case["exchange"], case["routing_key"], props_of(case),
                          body_of(case), case["kind"]) == case["request_digest"]


@pytest.mark.parametrize("name", CASES)
def test_each_vector_verifies_as_its_signer(name, tmp_path):
    case = CASES[name]
    signer = verifier(tmp_path).verify(case["exchange"], case["routing_key"],
                                       props_of(case, case["content_type"]), body_of(case),
                                       kind=case["kind"])
    assert signer == case["signer"]


def test_the_approval_vector_binds_the_request_vector():
    approval = json.loads(CASES["approval"]["body"])
    assert approval["args"]["digest"] == CASES["request"]["request_digest"]
    assert CASES["request read without its exchange"]["request_digest"] == \
        CASES["request"]["request_digest"]


@pytest.mark.parametrize("bad", VECTORS["must_not_verify"], ids=lambda b: b["name"])
def test_changed_vectors_are_refused(bad, tmp_path):
    case = copy.deepcopy(CASES[bad["of"]])
    change = bad["change"]
    case["properties"].update(change.get("properties", {}))
    case.update({k: v for k, v in change.items() if k != "properties"})
    body = case["body"].encode()
    with pytest.raises(RemoteError) as refused:
        verifier(tmp_path).verify(case["exchange"], case["routing_key"],
                                  props_of(case, case["content_type"]), body,
                                  kind=case["kind"])
    assert refused.value.code is ErrorCode.BAD_SIGNATURE
