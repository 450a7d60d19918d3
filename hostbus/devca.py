"""A development certificate authority: a CA, the broker's certificate and client
certificates, for TLS and SASL EXTERNAL on a test or lab broker.

Production brokers use the organisation's own CA; the files this writes have the same
shape (PEM; keys mode 0600), so nothing else changes. A client certificate's common name
is the broker user it authenticates as (``ssl_cert_login_from = common_name``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hostbus.errors import ConfigError

CA_CERT, CA_KEY = "ca.pem", "ca.key"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostbus development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def create_ca(folder: str | Path, *, days: int = 825) -> Path:
    """A new CA in ``folder`` (ca.pem, ca.key); refuses to overwrite one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / CA_KEY).exists():
        raise ConfigError(f"{folder / CA_KEY} exists already; use that CA or another folder")
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("hostbus development CA")
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(folder / CA_KEY, key)
    (folder / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / CA_CERT


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no usable CA in {folder} ({exc}); make one with `hostbus broker "
                          "dev-ca`") from None
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def issue(folder: str | Path, name: str, *, server_names: list[str] | None = None,
          days: int = 825) -> tuple[Path, Path]:
    """Sign a certificate for ``name`` with the CA in ``folder``: a server certificate
    (for the broker) when ``server_names`` are given, else a client certificate whose
    common name is the broker user. Writes NAME.pem and NAME.key (0600)."""
    folder = Path(folder)
    ca_cert, ca_key = _load_ca(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(_name(name), ca_cert.subject, key.public_key(), days).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server_names:
        alt: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alt.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False) \
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
