"""W3C trace context across components, so one operation is one trace: a console's
call and the agent's work on it, a provisioning request and the provisioner's calls to
the virt agents, and the events published meanwhile.

The context travels as a ``traceparent`` parameter of ``content_type``
(``application/json; traceparent=00-<trace id>-<span id>-<flags>``), beside the
signature's ``hostbus-sig``: content_type is the one property that RabbitMQ 3.10 carries
between AMQP 0-9-1 and 1.0 (headers and application properties do not cross), and a
receiver that knows nothing of tracing ignores the parameter. It is not signed (the
signature covers the body and the routing properties): a trace id says where to look,
never who may do what.

Off by default: components hold ``tracer = None`` and pay one comparison per message
(measured: benchmarks/README.md). With ``[tracing] otlp_endpoint`` set, ``OtelTracer``
records spans with the OpenTelemetry SDK (the ``tracing`` extra) and exports them over
OTLP; spans follow OpenTelemetry's messaging conventions. OpenTelemetry is imported
only then.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from hostbus.errors import ConfigError

if TYPE_CHECKING:
    from hostbus.transport.base import Delivery, Properties

PARAM = "traceparent"
#: version 00: trace id, parent span id, flags (all lower-case hex; all-zero ids invalid)
TRACEPARENT_RE = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def traceparent_of(props: Properties) -> str | None:
    """The well-formed ``traceparent`` parameter of content_type, if there is one."""
    _, _, params = (props.content_type or "").partition(";")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == PARAM:
            value = value.strip('"')
            return value if TRACEPARENT_RE.fullmatch(value) else None
    return None


def set_traceparent(props: Properties, value: str) -> None:
    """Put ``value`` into content_type as its ``traceparent`` (replacing one there)."""
    base, _, params = (props.content_type or "").partition(";")
    kept = [p.strip() for p in params.split(";")
            if p.strip() and p.strip().partition("=")[0].lower() != PARAM]
    props.content_type = "; ".join([base.strip(), *kept, f"{PARAM}={value}"])


class Tracer(Protocol):
    """What the publisher, the agent runtime and the services call when tracing is on."""

    def inject(self, exchange: str, routing_key: str, props: Properties,
               body_size: int) -> None:
        """Record the publish (a producer span, child of the current one) and put its
        context into ``props``."""

    def process(self, delivery: Delivery, destination: str) -> Any:
        """A context manager: the consumer span of handling ``delivery``, child of the
        context it carries, current while it runs."""

    def span(self, name: str, **attributes: Any) -> Any:
        """A context manager: an internal span (one CLI command, one fan-out)."""

    def shutdown(self) -> None:
        """Export what is recorded, then stop."""


class OtelTracer:
    """Spans through the OpenTelemetry SDK with a provider of its own (never the
    process-wide global one), exported in batches."""

    def __init__(self, service_name: str, instance: str = "", *, endpoint: str = "",
                 exporter: Any = None, export_timeout_s: float = 10.0) -> None:
        """``instance``: which one (a host id). ``exporter``: an SDK span exporter; by
        default OTLP over HTTP to ``endpoint`` (``http://collector:4318/v1/traces``),
        giving up on a batch after ``export_timeout_s`` (retries included)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
            if exporter is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout_s)
        except ImportError:
            raise ConfigError("[tracing] otlp_endpoint is set, but OpenTelemetry is not "
                              "installed: pip install 'hostbus[tracing]'") from None
        self._kind = SpanKind
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": service_name, "service.instance.id": instance}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("hostbus")
        self._propagator = TraceContextTextMapPropagator()

    def inject(self, exchange: str, routing_key: str, props: Properties,
               body_size: int) -> None:
        with self._tracer.start_as_current_span(
                f"publish {exchange}", kind=self._kind.PRODUCER, attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "publish",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": exchange,
                    "messaging.rabbitmq.destination.routing_key": routing_key,
                    "messaging.message.id": props.message_id or "",
                    "messaging.message.conversation_id": props.correlation_id or "",
                    "messaging.message.body.size": body_size}):
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
        if PARAM in carrier:
            set_traceparent(props, carrier[PARAM])

    @contextmanager
    def process(self, delivery: Delivery, destination: str) -> Iterator[Any]:
        parent = traceparent_of(delivery.properties)
        context = self._propagator.extract({PARAM: parent} if parent else {})
        props = delivery.properties
        with self._tracer.start_as_current_span(
                f"process {destination}", context=context, kind=self._kind.CONSUMER,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": delivery.exchange,
                    "messaging.rabbitmq.destination.routing_key": delivery.routing_key,
                    "messaging.message.id": props.message_id or "",
                    "messaging.message.conversation_id": props.correlation_id or "",
                    "messaging.message.body.size": len(delivery.body),
                    "messaging.consumer.group.name": destination}) as span:
            yield span

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def shutdown(self) -> None:
        self.provider.shutdown()


def from_config(section: dict[str, Any], service_name: str, instance: str = "", *,
                export_timeout_s: float = 10.0) -> OtelTracer | None:
    """The tracer a ``[tracing]`` section asks for: None (off) unless ``otlp_endpoint``.
    A command line tool gives a short ``export_timeout_s``: it waits for the last export
    when it exits."""
    endpoint = str(section.get("otlp_endpoint", "") or "")
    if not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"[tracing] otlp_endpoint = {endpoint!r}: give the collector's "
                          "OTLP/HTTP URL, such as http://127.0.0.1:4318/v1/traces")
    return OtelTracer(service_name, instance, endpoint=endpoint,
                      export_timeout_s=export_timeout_s)
