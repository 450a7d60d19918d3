"""Ask hostbus for VMs over AMQP 1.0 with plain python-qpid-proton: no hostbus code, only
the README and schemas/envelope/provision.v1.json. The same request as raw_provision.py
(AMQP 0-9-1), for programs whose broker or library speaks only AMQP 1.0. Usage:

    python examples/raw_provision_amqp10.py --template web --count 2 --owner alice

The URL is the broker's ordinary one (RabbitMQ serves AMQP 1.0 on the same port with the
rabbitmq_amqp1_0 plugin). Addresses are RabbitMQ 3.x's: /exchange/NAME/ROUTING_KEY.
"""

import argparse
import json
import sys
import uuid
from urllib.parse import unquote, urlsplit

from proton import Message
from proton.utils import BlockingConnection, SendException

parser = argparse.ArgumentParser()
parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/hostbus")
parser.add_argument("--template", required=True)
parser.add_argument("--count", type=int, default=1)
parser.add_argument("--owner", required=True)
parser.add_argument("--request-id", default=str(uuid.uuid4()),
                    help="the idempotency key: sending the same id twice makes VMs once")
parser.add_argument("--timeout", type=float, default=120)
opts = parser.parse_args()

url = urlsplit(opts.url)
user = unquote(url.username or "guest")
conn = BlockingConnection(
    f"amqp://{url.hostname}:{url.port or 5672}", timeout=30,
    user=user, password=unquote(url.password or "guest"), allowed_mechs="PLAIN",
    virtual_host=f"vhost:{unquote(url.path.lstrip('/')) or '/'}",  # how RabbitMQ picks it
)
# reply_to is a name, not an address: the provisioner publishes its reply to the
# hostbus.reply exchange with that routing key. Receiving from /exchange/hostbus.reply/NAME
# makes the broker bind a private queue with that key. `hostbus broker enroll-app NAME`
# allows hostbus.reply.NAME.* names and the broker-named queue behind them.
reply_name = f"hostbus.reply.{user}.{uuid.uuid4().hex}"
replies = conn.create_receiver(f"/exchange/hostbus.reply/{reply_name}")

body = {"v": 1, "template": opts.template, "count": opts.count, "owner": opts.owner}
request = Message(
    body=json.dumps(body).encode(), inferred=True,  # one Data section: the JSON bytes
    id=opts.request_id, reply_to=reply_name, content_type="application/json",
    user_id=user.encode(), durable=True,  # AMQP 1.0 has no `type` field; none is needed
)
# send() returns once the broker has accepted the request (it is on disk), and raises if
# the broker refused it. On a lost connection, post again with the same id.
try:
    conn.create_sender("/exchange/hostbus.provision/provision").send(request)
except SendException as exc:
    sys.exit(f"the broker refused the request: {exc}")
print(f"posted request {opts.request_id}", file=sys.stderr)

while True:
    try:
        msg = replies.receive(timeout=opts.timeout)
    except Exception:  # proton's Timeout, among others
        sys.exit(f"no reply within {opts.timeout} s")
    replies.accept()
    if msg.correlation_id == opts.request_id:
        reply = json.loads(bytes(msg.body))
        print(json.dumps(reply, indent=2))
        conn.close()
        sys.exit(0 if reply["status"] == "ok" else 1)
