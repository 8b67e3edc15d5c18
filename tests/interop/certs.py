"""A throwaway certificate authority for federation tests over TLS on loopback.

Servers are named ``127.0.0.1:PORT`` (an IP literal with a port, so discovery needs no
DNS), which means their certificates must carry the IP ``127.0.0.1`` as a subject
alternative name: both Parley (Twisted's ``optionsForClientTLS``) and Synapse verify an
IP literal against IP SANs. The CA file is what ``federation.tls_ca_file`` (Parley) and
``federation_custom_ca_list`` (Synapse) trust, and nothing else: a certificate from
another CA, or one for another name, must be refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names every leaf certificate is valid for unless told otherwise.
DEFAULT_DNS_NAMES = ("parley1.test", "parley2.test", "synapse.test", "localhost")
DEFAULT_IPS = ("127.0.0.1",)
_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate and its key, as PEM files."""

    certificate_path: str
    private_key_path: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class TestCa:
    """A CA key and self-signed certificate in ``directory`` (``ca.pem``), issuing
    server certificates into the same directory."""

    __test__ = False  # not a test case, whatever its name says

    def __init__(self, directory: str, common_name: str = "Parley federation test CA") -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = os.path.join(directory, "ca.pem")
        _write(self.ca_path, self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, dns_names: tuple[str, ...] = DEFAULT_DNS_NAMES,
              ips: tuple[str, ...] = DEFAULT_IPS) -> IssuedCert:
        """A server certificate for ``dns_names`` and ``ips``, written as
        ``<label>.crt`` / ``<label>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_names[0] if dns_names else label))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_path = os.path.join(self.directory, f"{label}.crt")
        key_path = os.path.join(self.directory, f"{label}.key")
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        return IssuedCert(cert_path, key_path)
