"""A plain pika client that posts hostbus requests and collects their replies, as any
program would: for tests that need many requests at once, or the same one twice."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pika

from hostbus import names
from tests.fakes import raw_connection


class RawCaller:
    """A plain pika client: posts requests (each confirmed, so it is in its queue before
    the next step of the test) and collects the replies."""

    def __init__(self, url: str) -> None:
        self.conn = raw_connection(url)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.key = f"hostbus.reply.guest.{uuid.uuid4().hex}"
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.queue, names.REPLY_EXCHANGE, routing_key=self.key)

    def post(self, agent: str, method: str, host: str, args: dict[str, Any] | None = None,
             message_id: str | None = None) -> str:
        mid = message_id or str(uuid.uuid4())
        body = json.dumps({"v": 1, "agent": agent, "method": method, "args": args or {},
                           "target": {"host": host},
                           "deadline": (datetime.now(UTC) + timedelta(seconds=240)).isoformat(),
                           }).encode()
        self.ch.basic_publish(names.REQUEST_EXCHANGE, f"{agent}.{host}", body,
                              pika.BasicProperties(
                                  message_id=mid, user_id="guest", reply_to=self.key,
                                  content_type="application/json", type="hostbus.request/1"))
        return mid

    def replies(self, wanted: set[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
        got: dict[str, list[dict[str, Any]]] = {}
        for _m, props, body in self.ch.consume(self.queue, auto_ack=True,
                                               inactivity_timeout=timeout):
            if body is None:
                break
            got.setdefault(props.correlation_id, []).append(json.loads(body))
            if wanted <= set(got):
                break
        self.ch.cancel()
        return got

    def close(self) -> None:
        self.conn.close()
