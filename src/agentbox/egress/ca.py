"""The egress proxy's certificate authority: one per server, made once, kept in the server's data dir.

Workspaces trust its certificate (installed in their image at create, next part) so that the proxy can
terminate TLS for the few names that have header rules. Its key never leaves the data dir (0600, the
directory 0700). Leaf certificates are made on demand per name, short-lived, and kept in memory only
(as `ssl.SSLContext`s; OpenSSL loads a chain from files, so each is written to a private temporary
file and removed at once).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "egress-ca.pem"
CA_KEY = "egress-ca-key.pem"
_LEAF_DAYS = 7
_CA_YEARS = 10
_CACHE = 512


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ensure_ca(directory: Path, common_name: str = "agentbox egress CA") -> tuple[Path, Path]:
    """The CA's (certificate, key) paths in `directory`, made the first time (key 0600, directory 0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        os.chmod(key_path, 0o600)
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * _CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key is 0600 from its first byte: a half-made CA (a key without its certificate) is made anew.
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class LeafMinter:
    """Server-side TLS contexts for names, each with a leaf certificate signed by the CA (cached)."""

    def __init__(self, ca_cert: Path, ca_key: Path, scratch: Path | None = None) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key}: the egress CA's key is not an EC key")
        self._ca_key = key
        # One leaf key for every name: a leaf's key is only as secret as the CA's, and one key saves
        # a key generation per new name.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._scratch = scratch
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def context(self, name: str) -> ssl.SSLContext:
        """A server context presenting a certificate for `name` (HTTP/1.1 only: ALPN offers nothing else)."""
        with self._lock:
            cached = self._contexts.get(name)
            if cached is not None and cached[1] > _now() + datetime.timedelta(hours=1):
                self._contexts.move_to_end(name)
                return cached[0]
        context, expires = self._make(name)
        with self._lock:
            self._contexts[name] = (context, expires)
            while len(self._contexts) > _CACHE:
                self._contexts.popitem(last=False)
        return context

    def _make(self, name: str) -> tuple[ssl.SSLContext, datetime.datetime]:
        now = _now()
        expires = now + datetime.timedelta(days=_LEAF_DAYS)
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            alt = x509.DNSName(name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self._ca.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        with tempfile.NamedTemporaryFile(dir=self._scratch, prefix="leaf-", suffix=".pem") as chain:
            # NamedTemporaryFile is 0600: the leaf key is on disk only for the load below.
            chain.write(cert.public_bytes(serialization.Encoding.PEM) + self._key_pem)
            chain.flush()
            context.load_cert_chain(chain.name)
        return context, expires
