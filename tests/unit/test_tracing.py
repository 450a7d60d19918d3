"""W3C trace context across components: the console's request, the agent's handling of
it and its reply are one trace; off, nothing is added; the agent daemon imports no
tracing, database or metrics library unless told to."""

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from console.client import Console
from hostbus.security.signing import Signer, signature_of
from hostbus.serving.runtime import AgentRuntime
from hostbus.tracing import OtelTracer, set_traceparent, traceparent_of
from hostbus.transport.base import Properties
from hostbus.transport.memory import MemoryBroker, MemoryTransport
from tests.fakes import make_host_agent

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_trace_context_sits_in_content_type_beside_a_signature():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    props = Properties(message_id="m", content_type="application/json",
                       type="hostbus.request/1", user_id="alice")
    Signer(Ed25519PrivateKey.generate()).sign("hostbus.request", "host.web01", props, b"{}")
    signature = signature_of(props)
    set_traceparent(props, PARENT)
    set_traceparent(props, PARENT.replace("b7ad", "c7ad"))  # sent again: replaced
    assert props.content_type.count("traceparent=") == 1
    assert traceparent_of(props) == PARENT.replace("b7ad", "c7ad")
    assert signature_of(props) == signature and len(props.content_type) <= 255


@pytest.mark.parametrize("bad", ["01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                 "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                                 "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
                                 "x" * 300])
def test_a_malformed_traceparent_is_ignored(bad):
    props = Properties(content_type=f"application/json; traceparent={bad}")
    assert traceparent_of(props) is None


@pytest.fixture
def traced():
    """An agent and a console on the in-memory broker, each recording its spans."""
    broker = MemoryBroker()
    broker.enroll("web01", ["host"])
    spans = {"agent": InMemorySpanExporter(), "console": InMemorySpanExporter()}
    tracers = {side: OtelTracer(f"test-{side}", exporter=exporter)
               for side, exporter in spans.items()}
    agent_transport = MemoryTransport(broker, user="web01")
    agent_transport.start()
    host, _, _ = make_host_agent("web01")
    runtime = AgentRuntime(agent_transport, "web01", [host], heartbeat_interval=0,
                           tracer=tracers["agent"])
    runtime.start()
    console_transport = MemoryTransport(broker, user="alice")
    console_transport.start()
    console = Console(console_transport, tracer=tracers["console"])
    console.open()
    yield console, tracers, spans, broker
    console.close()
    runtime.stop("test over")


def finished(tracers, spans, side):
    tracers[side].provider.force_flush()
    return list(spans[side].get_finished_spans())


def test_a_call_and_the_agents_work_on_it_are_one_trace(traced):
    console, tracers, spans, broker = traced
    with tracers["console"].span("hostbus call"):
        assert console.call("host", "identify", host="web01").status == "ok"
    request = next(d for ex, key, d in broker.published if ex == "hostbus.request")
    sent = [s for s in finished(tracers, spans, "console") if s.kind == SpanKind.PRODUCER]
    assert traceparent_of(request.properties).startswith(
        f"00-{sent[0].context.trace_id:032x}-{sent[0].context.span_id:016x}-")
    agent = finished(tracers, spans, "agent")
    process = next(s for s in agent if s.kind == SpanKind.CONSUMER)
    reply = next(s for s in agent if s.name == "publish hostbus.reply")
    assert process.context.trace_id == sent[0].context.trace_id
    assert process.parent.span_id == sent[0].context.span_id
    assert reply.parent.span_id == process.context.span_id
    assert process.name == "process hostbus.host.web01"
    assert process.attributes["messaging.system"] == "rabbitmq"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == "host.web01"
    assert sent[0].attributes["messaging.destination.name"] == "hostbus.request"
    assert reply.attributes["messaging.message.conversation_id"] == request.properties.message_id


def test_off_nothing_is_added_and_the_agent_starts_a_trace_of_its_own(traced):
    console, tracers, spans, broker = traced
    console.publisher.tracer = None  # this console does not trace
    assert console.call("host", "identify", host="web01").status == "ok"
    request = next(d for ex, key, d in broker.published if ex == "hostbus.request")
    assert request.properties.content_type == "application/json"
    process = next(s for s in finished(tracers, spans, "agent") if s.kind == SpanKind.CONSUMER)
    assert process.parent is None


def test_the_agent_daemon_imports_no_tracing_database_or_metrics_library(tmp_path):
    code = f"""
import sys
from agents.daemon import build_runtime, load_config
from hostbus.transport.memory import MemoryBroker, MemoryTransport
cfg = load_config(None)
cfg["agent"]["state_dir"] = {str(tmp_path)!r}
cfg["agent"]["host_id"] = "web01"
build_runtime(cfg, MemoryTransport(MemoryBroker(), user="web01"))
print(sorted(m for m in sys.modules if m.split(".")[0] in
             ("opentelemetry", "psycopg", "prometheus_client", "console")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_provisioning_request_and_the_calls_to_the_virt_agents_are_one_trace(tmp_path):
    import copy
    import json
    import threading

    from agents import virt
    from console.provisioner.agent import ProvisionAgent
    from console.provisioner.ledger import VmLedger
    from console.provisioner.quotas import Quotas
    from console.provisioner.service import Provisioner
    from console.provisioner.store import RequestStore
    from hostbus.envelope import PROVISION_TYPE
    from hostbus.security.policy import AllowAll
    from hostbus.transport.base import Delivery

    broker = MemoryBroker()
    spans = InMemorySpanExporter()
    tracer = OtelTracer("test", exporter=spans)
    broker.enroll("kvm01", ["virt"])
    vt = MemoryTransport(broker, user="kvm01")
    vt.start()
    virt_rt = AgentRuntime(vt, "kvm01", [virt.create(copy.deepcopy(virt.CONFIG_DEFAULTS),
                                                     host_id="kvm01")],
                           heartbeat_interval=0, tracer=tracer)
    virt_rt.start()
    broker.enroll("provisioner", ["provision"])
    pt = MemoryTransport(broker, user="provisioner")
    pt.start()
    store = RequestStore(tmp_path / "prov.db")
    ledger = VmLedger(store.path)
    quotas = Quotas(5, {})
    prov_agent = ProvisionAgent(store, ledger, quotas)
    prov_rt = AgentRuntime(pt, "provisioner", [prov_agent], heartbeat_interval=0, tracer=tracer)
    prov_rt.start()
    ct = MemoryTransport(broker, user="provisioner")
    ct.start()
    console = Console(ct, tracer=tracer)
    console.open()
    prov = Provisioner(console=console, publisher=prov_rt.publisher, store=store,
                       ledger=ledger, agent=prov_agent, host_id="provisioner", quotas=quotas,
                       policy=AllowAll(), audit=None, call_timeout=10, discovery_idle=0.1,
                       reconcile_interval=3600, tracer=tracer)
    acked = threading.Event()
    body = {"v": 1, "template": "web", "count": 1, "owner": "alice"}
    props = Properties(message_id="22222222-bbbb", reply_to="hostbus.reply.app",
                       user_id="app", type=PROVISION_TYPE,
                       content_type=f"application/json; traceparent={PARENT}")
    try:
        prov.on_message(Delivery(json.dumps(body).encode(), props, "hostbus.provision",
                                 "provision", ack=acked.set))
        assert acked.wait(30)
    finally:
        prov.close()
        for rt in (virt_rt, prov_rt):
            rt.stop("test over")
        console.close()
    tracer.provider.force_flush()
    trace_id = int(PARENT.split("-")[1], 16)
    ours = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    virt_work = {s.attributes["messaging.rabbitmq.destination.routing_key"] for s in ours
                 if s.name == "process hostbus.host.kvm01"}
    # the discovery broadcast, and the virt agent's work (define, start)
    assert {"agent._all", "virt.kvm01"} <= virt_work
    assert any(s.name == "process hostbus.provision" for s in ours)
    assert any(s.name == "publish hostbus.event" for s in ours)  # provision.* progress


def test_a_command_is_exported_over_otlp_when_an_endpoint_is_configured(fleet, tmp_path):
    """The CLI's [tracing] otlp_endpoint: its command span reaches an OTLP/HTTP receiver
    (a stand-in collector on loopback) by the time the command exits."""
    import http.server
    import threading

    received = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "traced.toml"
    config.write_text(fleet.config.read_text() + "[tracing]\notlp_endpoint = "
                      f'"http://127.0.0.1:{server.server_port}/v1/traces"\n')
    fleet.config = config
    fleet.add("web01")
    try:
        done = fleet.run("ping", "-H", "web01")
    finally:
        server.shutdown()
    assert done.exit_code == 0, done.stderr
    assert [(path, kind) for path, kind, _ in received] == [
        ("/v1/traces", "application/x-protobuf")]
    assert b"hostbus ping" in received[0][2]  # the command's span, by name
