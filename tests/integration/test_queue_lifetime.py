"""No queue outlives its console by more than a minute, on either protocol and broker
version. On RabbitMQ 3.10 an AMQP 1.0 consumer of /exchange/X/PATTERN gets an amq.gen-*
queue that is neither exclusive nor auto-delete: it stayed bound after its console
went, and kept filling (the hostbus-broker-named-queues policy now expires it). On 4.x
hostbus declares its queues exclusive to the connection."""

import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core, pytest.mark.timeout(300)]
BIN = Path(sys.executable).parent
RUNS = 20  # CLI runs, half `call`, half `watch`
PROMISE_S = 60  # how long a queue may outlive its console


def queue_names(rabbitmq) -> set[str]:
    admin = urlsplit(rabbitmq.admin_url)
    request = urllib.request.Request(
        f"http://{admin.hostname}:{admin.port}/api/queues/{quote(rabbitmq.vhost, safe='')}"
        "?columns=name")
    token = base64.b64encode(f"{admin.username}:{admin.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return {q["name"] for q in json.load(answer)}


def test_no_queue_outlives_its_console(rabbitmq, start_agent):
    runtime, _ = start_agent()
    before = queue_names(rabbitmq)
    for n in range(RUNS):
        command = (["call", "agent.ping", "-H", runtime.host_id] if n % 2 == 0
                   else ["watch", "agent.*.heartbeat", "-d", "0.2"])
        done = subprocess.run([str(BIN / "hostbus"), *command], capture_output=True,
                              text=True, env=rabbitmq.env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    # The broker deletes an expired queue on its own schedule: look until the promise
    # (plus the time the runs took) has passed, more slowly as time goes on.
    deadline, pause, left = time.monotonic() + PROMISE_S + 15, 0.2, set()
    while time.monotonic() < deadline:
        left = queue_names(rabbitmq) - before
        if not left:
            break
        time.sleep(pause)
        pause = min(pause * 2, 5)
    assert not left, f"{len(left)} queues outlived their consoles: {sorted(left)[:5]}"
