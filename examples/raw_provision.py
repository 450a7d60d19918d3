"""Ask hostbus for VMs, or give them back, with a plain AMQP client: no hostbus code, only
the README and schemas/envelope/provision.v1.json. Usage:

    python examples/raw_provision.py --template web --count 2 --owner alice
    python examples/raw_provision.py --release REQUEST_ID
"""

import argparse
import json
import sys
import uuid

import pika

parser = argparse.ArgumentParser()
parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/hostbus")
parser.add_argument("--template")
parser.add_argument("--count", type=int, default=1)
parser.add_argument("--owner")
parser.add_argument("--release", metavar="REQUEST_ID",
                    help="give back (destroy and undefine) the VMs of this earlier request")
parser.add_argument("--request-id", default=str(uuid.uuid4()),
                    help="the idempotency key: sending the same id twice does the work once")
parser.add_argument("--timeout", type=float, default=120)
opts = parser.parse_args()
if opts.release:
    # The same exchange and properties; the body's "action" says it is a release.
    body = {"v": 1, "action": "release", "request_id": opts.release}
elif opts.template and opts.owner:
    body = {"v": 1, "template": opts.template, "count": opts.count, "owner": opts.owner}
else:
    parser.error("give --template and --owner to ask for VMs, or --release REQUEST_ID")

params = pika.URLParameters(opts.url)
conn = pika.BlockingConnection(params)
channel = conn.channel()
# Named after our broker user: `hostbus broker enroll-app NAME` lets NAME declare
# hostbus.reply.NAME.* and nothing else.
reply_queue = f"hostbus.reply.{params.credentials.username}.{uuid.uuid4().hex}"
channel.queue_declare(reply_queue, exclusive=True)
channel.queue_bind(reply_queue, "hostbus.reply", routing_key=reply_queue)

# Publisher confirms: basic_publish returns once the broker has the request on disk, and
# raises if it refused it. On a lost connection, post again with the same message_id.
channel.confirm_delivery()
channel.basic_publish(
    exchange="hostbus.provision",
    routing_key="provision",
    body=json.dumps(body).encode(),
    properties=pika.BasicProperties(
        message_id=opts.request_id, reply_to=reply_queue, content_type="application/json",
        type="hostbus.provision/1", delivery_mode=2,
        user_id=params.credentials.username,  # required; the broker checks it
    ),
)
print(f"posted request {opts.request_id}", file=sys.stderr)
for _method, props, payload in channel.consume(reply_queue, inactivity_timeout=opts.timeout):
    if payload is None:
        sys.exit(f"no reply within {opts.timeout} s")
    if props.correlation_id == opts.request_id:
        reply = json.loads(payload)
        print(json.dumps(reply, indent=2))
        sys.exit(0 if reply["status"] == "ok" else 1)
