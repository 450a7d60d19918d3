"""Call a hostbus agent with a plain AMQP client: no hostbus code, only the contract in
the README and schemas/. Usage:

    python examples/raw_call.py --host web01 host.identify
    python examples/raw_call.py --host web01 host.processes '{"limit": 3}'
"""

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pika

parser = argparse.ArgumentParser()
parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/hostbus")
parser.add_argument("--host", required=True)
parser.add_argument("target", help="AGENT.METHOD, e.g. host.identify")
parser.add_argument("args", nargs="?", default="{}", help="JSON object of arguments")
opts = parser.parse_args()
agent, method = opts.target.split(".", 1)

params = pika.URLParameters(opts.url)
conn = pika.BlockingConnection(params)
channel = conn.channel()
# A reply queue of our own, named after our broker user (what an enrolled identity may
# declare), bound to the reply exchange under its own name.
reply_queue = f"hostbus.reply.{params.credentials.username}.{uuid.uuid4().hex}"
channel.queue_declare(reply_queue, exclusive=True)
channel.queue_bind(reply_queue, "hostbus.reply", routing_key=reply_queue)

request_id = str(uuid.uuid4())
body = {
    "v": 1, "agent": agent, "method": method, "args": json.loads(opts.args),
    "target": {"host": opts.host},
    "deadline": (datetime.now(UTC) + timedelta(seconds=10)).isoformat(),
}
channel.basic_publish(
    exchange="hostbus.request",
    routing_key=f"{agent}.{opts.host}",
    body=json.dumps(body).encode(),
    properties=pika.BasicProperties(
        message_id=request_id, reply_to=reply_queue, content_type="application/json",
        type="hostbus.request/1", expiration="10000",
        user_id=params.credentials.username,  # required; the broker checks it
    ),
)
for _method, props, payload in channel.consume(reply_queue, inactivity_timeout=10):
    if payload is None:
        sys.exit("no reply within 10 s")
    if props.correlation_id == request_id:
        reply = json.loads(payload)
        print(json.dumps(reply, indent=2))
        sys.exit(0 if reply["status"] == "ok" else 1)
