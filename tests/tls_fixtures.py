"""A throwaway certificate authority and an HTTPS variant of the loopback server, for tests.

Keys and certificates are made at test time with `cryptography` (EC P-256: fast to generate), so nothing
secret is checked in and nothing expires in the repository.

Example:
    >>> ca = LocalCA()
    >>> with HttpsLoopbackServer(ca, hostnames=("localhost",)) as server:
    ...     settings = FetchSettings(allow_loopback=True, ca_bundle=ca.write_pem(tmp_path / "ca.pem"))
    ...     Fetcher(settings).fetch(server.url("/image/0", host="localhost"))
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from http_fixtures import LoopbackServer, _Server

_VALIDITY = datetime.timedelta(days=2)
_HANDSHAKE_TIMEOUT_S = 5.0


class LocalCA:
    """A self-signed root CA that issues server certificates.

    Args:
        name: Common name of the root certificate.
    """

    def __init__(self, name: str = "visprep test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def write_pem(self, path: str | os.PathLike[str]) -> str:
        """Write the root certificate to `path` (a CA bundle to trust) and return the path as a str."""
        Path(path).write_bytes(self.cert_pem)
        return str(path)

    def issue(self, hostnames: Sequence[str]) -> tuple[bytes, bytes]:
        """A server certificate for `hostnames` (DNS names or IP literals) signed by this CA.

        Returns:
            (certificate chain PEM: leaf then root, private key PEM).
        """
        if not hostnames:
            raise ValueError("LocalCA.issue: hostnames must not be empty")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return chain, key_pem

    def server_context(self, hostnames: Sequence[str]) -> ssl.SSLContext:
        """A server-side TLS context presenting a fresh certificate for `hostnames`."""
        chain, key_pem = self.issue(hostnames)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # load_cert_chain reads files only; they live just long enough to be loaded.
        with tempfile.TemporaryDirectory(prefix="visprep-tls-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert_path.write_bytes(chain)
            key_path.write_bytes(key_pem)
            context.load_cert_chain(cert_path, key_path)
        return context


class HttpsLoopbackServer(LoopbackServer):
    """`LoopbackServer` (same routes) speaking TLS with a certificate from `ca` for `hostnames`.

    The handshake runs in the connection's worker thread, so a client that rejects the certificate (or never
    handshakes) cannot stall the accept loop. Records the SNI name of every handshake (`sni_names`; None when
    the client sent none, as for IP literals) and how many handshakes failed (`tls_failures`).

    Args:
        ca: The authority that signs the server certificate.
        hostnames: Names (DNS or IP literal) the certificate covers.
        images: As for `LoopbackServer`.
    """

    scheme = "https"

    def __init__(
        self,
        ca: LocalCA,
        *,
        hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
        images: list[bytes] | None = None,
    ) -> None:
        self.sni_names: list[str | None] = []
        self.tls_failures = 0
        self._tls_lock = threading.Lock()
        self._context = ca.server_context(hostnames)
        self._context.sni_callback = self._record_sni
        super().__init__(images)

    def _make_server(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        return _TlsServer(("127.0.0.1", 0), handler, owner=self)

    def _record_sni(self, _sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        with self._tls_lock:
            self.sni_names.append(name)

    def _handshake_failed(self) -> None:
        with self._tls_lock:
            self.tls_failures += 1


class _TlsServer(_Server):
    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, owner: HttpsLoopbackServer
    ) -> None:
        self._owner = owner
        super().__init__(address, handler)

    def finish_request(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        request.settimeout(_HANDSHAKE_TIMEOUT_S)
        try:
            tls = self._owner._context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self._owner._handshake_failed()  # the client refused our certificate, or went away
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()
