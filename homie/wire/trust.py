"""Mutual TLS for job channels, with a CA derived from the group key.

Python's TLS-PSK callbacks exist only from 3.13, so instead every node derives
the same Ed25519 CA from the key (Ed25519 signatures are deterministic, so the CA
certificate is byte-identical everywhere) and mints a fresh leaf per process.
Holding the key is what lets a node sign a leaf the others accept; the leaf's
CN is only a claim, since any member can sign any name (design notes, section 2).

`cryptography` is imported inside functions so that importing this module stays
as cheap as importing `ssl`.

Clients must pass server_hostname=SERVER_HOSTNAME (wrap_socket, or
asyncio.open_connection) because the client context checks the hostname.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import ssl
import tempfile

from homie.errors import ProtocolError
from homie.keys import derive

SERVER_HOSTNAME = "homie.invalid"
CA_COMMON_NAME = "homie group CA"
_CA_NOT_BEFORE = _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc)
_CA_NOT_AFTER = _dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.timezone.utc)
# Backdated so a peer whose clock runs slow does not see a not-yet-valid leaf.
_LEAF_BACKDATE = _dt.timedelta(days=1)
_LEAF_LIFETIME = _dt.timedelta(days=3650)


class Trust:
    """The TLS identity of one node process: the group CA plus a fresh leaf.

    name becomes the leaf's CN: 1 to 64 characters (X.509's limit), else ValueError.
    """

    def __init__(self, key: bytes, name: str):
        self.name = name
        ca_key, ca_cert = _build_ca(key)
        leaf_key, leaf_cert = _build_leaf(ca_key, ca_cert, name)

        from cryptography.hazmat.primitives import serialization

        self.ca_pem: str = ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.ca_der: bytes = ca_cert.public_bytes(serialization.Encoding.DER)
        cert_pem = leaf_cert.public_bytes(serialization.Encoding.PEM)
        key_pem = leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Built once: contexts are thread-safe to share, and the leaf private key
        # then lives only inside OpenSSL, not on this object.
        self._server = self._context(ssl.PROTOCOL_TLS_SERVER)
        self._client = self._context(ssl.PROTOCOL_TLS_CLIENT)
        _load_chain((self._server, self._client), cert_pem, key_pem)

    def server_context(self) -> ssl.SSLContext:
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """Use with server_hostname=SERVER_HOSTNAME."""
        return self._client

    def _context(self, protocol: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = True
        # Strict on every version, so what passes here also passes 3.13's
        # stricter defaults rather than failing only on a friend's newer Python.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        # Channels never resume sessions, so tickets would only add post-handshake
        # writes and ticket keys in memory, for nothing.
        ctx.options |= ssl.OP_NO_TICKET
        # The derived CA is the only anchor: no system store, so a certificate a
        # public CA issued for any name is worthless here.
        ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx


def peer_name(ssl_sock) -> str:
    """The CN of the peer's leaf; works on ssl.SSLSocket and ssl.SSLObject."""
    cert = ssl_sock.getpeercert()
    if not cert:
        raise ProtocolError("the peer presented no certificate")
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return value
    raise ProtocolError("the peer's certificate names no node")


def _build_ca(key: bytes):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    ca_key = Ed25519PrivateKey.from_private_bytes(derive(key, "ca-key"))
    # RFC 5280: positive and at most 20 octets; shifting 160 bits right by one
    # keeps the top bit clear so the DER encoding needs no sign byte.
    serial = (int.from_bytes(derive(key, "ca-serial", 20), "big") >> 1) or 1
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    pub = ca_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(ca_key, None)  # Ed25519 takes no separate hash
    )
    return ca_key, cert


def _build_leaf(ca_key, ca_cert, name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    leaf_key = Ed25519PrivateKey.generate()
    pub = leaf_key.public_key()
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _LEAF_BACKDATE)
        .not_valid_after(now + _LEAF_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_HOSTNAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Both usages: every node is a server to some peers and a client to others,
        # and a server rejects a client certificate that lacks clientAuth.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(ca_key, None)
    )
    return leaf_key, cert


def _load_chain(contexts, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl can only load a certificate chain from files. Keep the window small:
    # a private directory (tmpfs where there is one, so the key never reaches a
    # disk), files created 0600, all removed as soon as OpenSSL has read them.
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="homie-tls-", dir=parent)
    try:
        cert_path = os.path.join(d, "cert.pem")
        key_path = os.path.join(d, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for ctx in contexts:
            ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(d, ignore_errors=True)
