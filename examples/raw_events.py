"""Print hostbus events with a plain AMQP client (no hostbus code). Usage:

    python examples/raw_events.py 'host.*.alert' --count 5
"""

import argparse
import json

import pika

parser = argparse.ArgumentParser()
parser.add_argument("patterns", nargs="*", default=["#"],
                    help="topic patterns on <agent>.<host>.<event>")
parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/hostbus")
parser.add_argument("--count", type=int, default=10)
opts = parser.parse_args()

params = pika.URLParameters(opts.url)
conn = pika.BlockingConnection(params)
channel = conn.channel()
# Subscription queues are hostbus.sub.<broker user>.<name>; exclusive ones vanish with us.
queue = f"hostbus.sub.{params.credentials.username}.raw-example"
channel.queue_declare(queue, exclusive=True)
for pattern in opts.patterns:
    channel.queue_bind(queue, "hostbus.event", routing_key=pattern)

for seen, (method, _props, payload) in enumerate(channel.consume(queue, auto_ack=True), 1):
    event = json.loads(payload)
    print(method.routing_key, event["seq"], json.dumps(event["data"])[:100])
    if seen >= opts.count:
        break
conn.close()
