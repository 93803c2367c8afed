import socket
import ssl
import threading

import pytest
from cryptography import x509

from homie.keys import generate_key
from homie.wire.trust import SERVER_HOSTNAME, Trust, peer_name

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def key():
    return generate_key()


@pytest.fixture(scope="module")
def alice(key):
    return Trust(key, "alice")


@pytest.fixture(scope="module")
def bob(key):
    return Trust(key, "bob")


@pytest.fixture(scope="module")
def mallory():
    return Trust(generate_key(), "mallory")


class Server:
    """One-connection TLS server in a thread; records what happened."""

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.error: BaseException | None = None
        self.peer: str | None = None
        self.received: bytes | None = None
        self.read_attempted = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.peer = peer_name(tls)
                tls.sendall(b"HELLO")  # server speaks first, as the protocol does
                self.read_attempted = True
                self.received = tls.recv(100)
                tls.sendall(self.received.upper())
        except BaseException as e:
            self.error = e
        finally:
            conn.close()
            self.listener.close()

    def join(self):
        self.thread.join(10)
        assert not self.thread.is_alive()


def connect(ctx: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
    except BaseException:
        raw.close()
        raise


@pytest.mark.parametrize("direction", ["alice->bob", "bob->alice"])
def test_same_key_connects_both_ways(alice, bob, direction):
    client, server = (alice, bob) if direction == "alice->bob" else (bob, alice)
    srv = Server(server.server_context())
    with connect(client.client_context(), srv.port) as tls:
        assert tls.version() == "TLSv1.3"
        assert peer_name(tls) == server.name
        assert tls.recv(5) == b"HELLO"
        tls.sendall(b"ping")
        assert tls.recv(4) == b"PING"
    srv.join()
    assert srv.error is None
    assert srv.peer == client.name


def test_client_with_wrong_key_is_refused_before_any_byte(alice, mallory):
    srv = Server(alice.server_context())
    # The client rejects the server's certificate, so the handshake dies there.
    with pytest.raises(ssl.SSLError):
        with connect(mallory.client_context(), srv.port) as tls:
            tls.sendall(b"secret")
            tls.recv(5)
    srv.join()
    assert isinstance(srv.error, ssl.SSLError)
    assert not srv.read_attempted and srv.received is None


def test_server_refuses_a_foreign_client_certificate(key, alice):
    # A client that trusts the right CA but holds a leaf from another group's CA:
    # only the server's check stands in its way.
    foreign = Trust(generate_key(), "mallory")
    ctx = foreign.client_context()
    ctx.load_verify_locations(cadata=alice.ca_pem)
    srv = Server(alice.server_context())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.3 lets the client finish its side; the alert arrives on first read.
        with connect(ctx, srv.port) as tls:
            tls.sendall(b"secret")
            data = tls.recv(5)
            if not data:
                raise ConnectionError("closed")
    srv.join()
    assert isinstance(srv.error, ssl.SSLError)
    assert not srv.read_attempted and srv.received is None


def test_server_with_wrong_key_fails_the_client_handshake(alice, mallory):
    srv = Server(mallory.server_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(alice.client_context(), srv.port)
    srv.join()
    assert isinstance(srv.error, ssl.SSLError)
    assert not srv.read_attempted


def test_client_without_certificate_is_refused(alice):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=alice.ca_pem)
    srv = Server(alice.server_context())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with connect(ctx, srv.port) as tls:
            tls.sendall(b"secret")
            if not tls.recv(5):
                raise ConnectionError("closed")
    srv.join()
    assert isinstance(srv.error, ssl.SSLError)
    assert not srv.read_attempted and srv.received is None


def test_client_checks_the_hostname(alice, bob):
    srv = Server(alice.server_context())
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        bob.client_context().wrap_socket(raw, server_hostname="example.com")
    raw.close()
    srv.join()


def test_same_key_gives_byte_identical_ca(key, alice, bob, mallory):
    assert alice.ca_der == bob.ca_der == Trust(key, "carol").ca_der
    assert alice.ca_pem == bob.ca_pem
    assert mallory.ca_der != alice.ca_der


def test_ca_certificate_shape(alice):
    ca = x509.load_der_x509_certificate(alice.ca_der)
    assert ca.subject.rfc4514_string() == "CN=homie group CA"
    assert ca.issuer == ca.subject
    assert 0 < ca.serial_number < 2**159
    assert ca.not_valid_before_utc.year == 2000 and ca.not_valid_after_utc.year == 9999
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_contexts_are_cached_and_strict(alice):
    assert alice.server_context() is alice.server_context()
    assert alice.client_context() is alice.client_context()
    for ctx in (alice.server_context(), alice.client_context()):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.options & ssl.OP_NO_TICKET
        assert len(ctx.get_ca_certs()) == 1
    assert alice.client_context().check_hostname


def test_leaf_private_key_files_are_gone(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("homie.wire.trust.os.path.isdir", lambda p: False)
    Trust(generate_key(), "x")
    assert list(tmp_path.iterdir()) == []
