"""TLS settings travel in the broker URL, so every component takes them the same way."""

import pytest

from hostbus.errors import ConfigError
from hostbus.transport.base import parse_url


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
