"""The trace context crosses between AMQP 0-9-1 and 1.0 on the real broker (RabbitMQ
3.10 carries content_type across, not headers): a console on one protocol and an agent
on the other are one trace. On every broker the suite runs (3.10 and 4.x)."""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from hostbus.tracing import OtelTracer

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]


def test_a_call_across_protocols_is_one_trace(rabbitmq):
    """The console on the protocol under test, the agent on the other one."""
    urls = {"amqp091": rabbitmq.raw_url,
            "amqp10": rabbitmq.raw_url.replace("amqp://", "amqp10://", 1)}
    console_side = rabbitmq.transport
    agent_side = "amqp10" if console_side == "amqp091" else "amqp091"
    spans = InMemorySpanExporter()
    tracer = OtelTracer("test", exporter=spans)
    host_id = f"trace-{console_side}"
    rabbitmq.enroll(host_id, [])
    runtime = AgentRuntime.serve(urls[agent_side], host_id, [], heartbeat_interval=0,
                                 tracer=tracer)
    console = Console.connect(urls[console_side], tracer=tracer)
    try:
        assert console.call("agent", "describe", host=host_id).status == "ok"
    finally:
        console.close()
        runtime.stop("test over")
    tracer.provider.force_flush()
    done = spans.get_finished_spans()
    sent = next(s for s in done if s.name == "publish hostbus.request")
    process = next(s for s in done if s.kind == SpanKind.CONSUMER)
    assert process.context.trace_id == sent.context.trace_id
    assert process.parent.span_id == sent.context.span_id
