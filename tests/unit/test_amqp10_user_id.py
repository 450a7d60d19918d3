"""RabbitMQ 3.10 forwards a 0-9-1 publish's user_id to AMQP 1.0 receivers as a string,
where AMQP 1.0 says binary, and proton's Message decoder drops it. The transport reads it
from the raw bytes; without it, a mixed fleet loses the broker-checked caller."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proton import Message, ulong

from hostbus.transport.amqp10_messages import decoded_user_id as _decoded_user_id
from hostbus.transport.amqp10_messages import text_user_id as _text_user_id

# Captured from RabbitMQ 3.10.8: a 0-9-1 publish with user_id "guest", read over 1.0.
FROM_RABBITMQ = (
    b"\x00Sp\xc0\x06\x05B@@A@\x00Ss\xc0R\r@\xa1\x05guest@\xa1\x02q1\xa1\x1c/queue/hostbus."
    b"reply.guest.x@\xa3\x1dapplication/json; sig=AbC+/==@@@@@@\x00Su\xa0\x07{\"a\":1}")


def test_proton_drops_the_string_user_id_and_the_transport_recovers_it():
    msg = Message()
    msg.decode(FROM_RABBITMQ)
    assert not msg.user_id  # the reason this code exists
    assert _text_user_id(FROM_RABBITMQ) == "guest"
    assert _decoded_user_id(FROM_RABBITMQ) == "guest"


def _with_string_user_id(message_id: object, user: str, **sections: object) -> bytes:
    """A frame as RabbitMQ would send it: proton encodes user_id as binary, so encode
    a message without one and splice the string form in its place."""
    msg = Message(body=b"{}", inferred=True, id=message_id, **sections)
    msg.user_id = b"\x01" * len(user)
    encoded = msg.encode()
    binary = bytes([0xA0, len(user)]) + b"\x01" * len(user)
    return encoded.replace(binary, bytes([0xA1, len(user)]) + user.encode(), 1)


@pytest.mark.parametrize("message_id", ["abc", uuid.uuid4(), ulong(7), b"raw-id",
                                        "x" * 300])
@pytest.mark.parametrize("sections", [{}, {"durable": True},
                                      {"annotations": {"x-opt-routing-key": "k" * 300}}])
def test_the_user_id_is_found_whatever_comes_before_it(message_id, sections):
    frame = _with_string_user_id(message_id, "web01", **sections)
    assert _text_user_id(frame) == "web01"


@pytest.mark.parametrize("frame", [b"", b"garbage", FROM_RABBITMQ[:21], b"\x00Ss\x45",
                                   Message(body=b"{}", inferred=True).encode()])
def test_no_user_id_or_a_broken_frame_gives_none(frame):
    assert _text_user_id(frame) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_none_or_a_user_that_is_in_them_and_never_raise(frame):
    user = _text_user_id(frame)
    assert user is None or (user and user.encode() in frame)  # read, never made up


_AFTER_USER = FROM_RABBITMQ.index(b"guest") + len(b"guest")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 400))
def test_a_real_frame_cut_or_corrupted_never_raises(noise, at):
    frame = FROM_RABBITMQ[:at] + noise + FROM_RABBITMQ[at + len(noise):]
    result = _text_user_id(frame)
    if at >= _AFTER_USER:  # damage after the field does not hide it
        assert result == "guest"
    else:
        assert result is None or (result and result.encode() in frame)
