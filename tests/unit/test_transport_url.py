"""TLS settings travel in the broker URL, so every component takes them the same way."""

import pytest

from hostbus.errors import ConfigError
from hostbus.transport.url import parse_url


@pytest.fixture
def files(tmp_path):
    for name in ("ca.pem", "web01.pem", "web01.key"):
        (tmp_path / name).write_text("x")
    return tmp_path


def test_a_client_certificate_without_a_password_means_sasl_external(files):
    url = parse_url(f"amqps://web01@broker:5671/hostbus?cafile={files}/ca.pem"
                    f"&certfile={files}/web01.pem&keyfile={files}/web01.key")
    assert url.external and url.user == "web01" and url.vhost == "hostbus"
    assert url.cafile == f"{files}/ca.pem" and url.port == 5671


def test_a_password_over_tls_stays_plain(files):
    url = parse_url(f"amqps://ops:pw@broker/hostbus?cafile={files}/ca.pem")
    assert not url.external and url.password == "pw" and url.port == 5671


@pytest.mark.parametrize(("query", "fragment"), [
    ("cafile={f}/ca.pem", "use amqps://"),
    ("certfile={f}/web01.pem", "together"),
    ("cafile={f}/missing.pem", "no such file"),
    ("verify=no", "unknown"),
])
def test_bad_tls_options_say_what_to_fix(files, query, fragment):
    scheme = "amqp" if "use amqps" in fragment else "amqps"
    with pytest.raises(ConfigError, match=fragment):
        parse_url(f"{scheme}://web01@broker/hostbus?{query.format(f=files)}")


def test_amqp10_urls_choose_the_proton_transport_and_take_the_same_options(files):
    from hostbus.transport import connect
    from hostbus.transport.addresses import RabbitMQv1
    from hostbus.transport.amqp10 import ProtonTransport

    url = parse_url(f"amqps10://web01@broker/hostbus?cafile={files}/ca.pem"
                    f"&certfile={files}/web01.pem&keyfile={files}/web01.key")
    assert url.port == 5671 and url.external
    assert isinstance(connect("amqp10://u:p@broker:5672/hostbus"), ProtonTransport)
    v1 = RabbitMQv1()
    assert v1.send_to("hostbus.request", "host.web01") == "/exchange/hostbus.request/host.web01"
    assert v1.send_to_exchange("hostbus.request") == "/exchange/hostbus.request"
    assert v1.queue("hostbus.host.web01") == "/amq/queue/hostbus.host.web01"
    assert v1.route_of("/exchange/hostbus.event/host.web01.alert", None) == \
        ("hostbus.event", "host.web01.alert")
    assert v1.route_of(None, "host.web01.alert") == ("", "host.web01.alert")
    assert v1.reply_to_name("/queue/hostbus.reply.ops.1") == "hostbus.reply.ops.1"


@pytest.mark.parametrize("detail", [
    "SSLError(1, '[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate')",
    "SSLEOFError(8, 'EOF occurred in violation of protocol (_ssl.c:2427)')",
])
def test_a_refused_client_certificate_reads_as_a_tls_failure_however_it_surfaces(detail):
    """TLS 1.3 refuses a client certificate after the handshake: the client sees an
    alert or, by timing, only an EOF (CI saw the second)."""
    from pika.exceptions import IncompatibleProtocolError

    from hostbus.transport.amqp091 import translate_error

    exc = IncompatibleProtocolError(f'StreamLostError: ("Stream connection lost: {detail}",)')
    err = translate_error(exc, "amqps://web01@broker:5671/hostbus")
    assert "the TLS handshake failed" in str(err) and "trust the CA" in str(err)


def test_a_lone_slash_is_refused_and_no_path_is_hostbus():
    with pytest.raises(ConfigError, match="empty vhost path"):
        parse_url("amqp://guest:guest@broker:5672/")
    assert parse_url("amqp://guest:guest@broker:5672").vhost == "hostbus"
    assert parse_url("amqp://guest:guest@broker:5672/%2F").vhost == "/"


def test_an_agent_reconnecting_to_a_name_that_does_not_resolve_is_told_so():
    import socket

    from hostbus.transport.amqp091 import translate_error

    err = translate_error(socket.gaierror(-2, "Name or service not known"),
                          "amqp://web01@nosuchhost.invalid:5672/hostbus")
    assert "cannot resolve the broker's host name 'nosuchhost.invalid'" in str(err)
