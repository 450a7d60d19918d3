"""Every AMQP 1.0 message hostbus sends says whether it is durable, in a header section
of its own: a broker's default for a message without one is not to be relied on
(RabbitMQ 4.2 changed it). Persistent publishes (events, provisioning requests) are
durable; requests and replies are not (see docs/amqp10-interop.md, "Durability")."""

import pytest
from proton import Message

from hostbus.transport.amqp10_messages import encode_message
from hostbus.transport.base import Properties

HEADER = b"\x00\x53\x70"  # described type 0x70: the header section, first in a message


@pytest.mark.parametrize("persistent", [True, False])
def test_each_message_has_a_header_that_says_if_it_is_durable(persistent):
    data = bytes(encode_message(Properties(message_id="m1"), b"{}", persistent,
                                "/exchanges/hostbus.event/host.h1.alert", "host.h1.alert"))
    assert data.startswith(HEADER)
    decoded = Message()
    decoded.decode(data)
    assert decoded.durable is persistent
