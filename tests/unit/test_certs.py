"""The demo PKI: real files in tmp_path and a real TLS handshake on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import grp
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sleepfed.provisioning.pki import (
    check_certificate_pair,
    ensure_demo_pki,
    fingerprint_sha256,
    make_ca,
    make_server_cert,
)

HOSTS = ["localhost", "127.0.0.1", "::1"]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return ensure_demo_pki(tmp_path / "pki", HOSTS)


def test_files_and_key_modes(pki: dict[str, Path]) -> None:
    assert {p.name for p in pki.values()} == {"ca.pem", "ca.key", "server.pem", "server.key"}
    for name in ("ca_key", "key"):
        assert stat.S_IMODE(pki[name].stat().st_mode) == 0o600, name
    # no temporary files left behind
    assert sorted(p.name for p in pki["ca"].parent.iterdir()) == sorted(
        p.name for p in pki.values()
    )


def test_key_mode_is_0600_even_when_replacing_a_world_readable_file(tmp_path: Path) -> None:
    key = tmp_path / "ca.key"
    key.write_text("old")
    key.chmod(0o644)
    _, key_path = make_ca(tmp_path)
    assert key_path == key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_ca_extensions(pki: dict[str, Path]) -> None:
    ca = _cert(pki["ca"])
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    ca.verify_directly_issued_by(ca)  # self-signed
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_server_cert_verifies_against_ca(pki: dict[str, Path]) -> None:
    ca, cert = _cert(pki["ca"]), _cert(pki["cert"])
    cert.verify_directly_issued_by(ca)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca


def test_server_cert_not_issued_by_other_ca(pki: dict[str, Path], tmp_path: Path) -> None:
    # Same default subject name as the real CA, so only the signature check can catch it.
    other_ca, _ = make_ca(tmp_path / "other")
    with pytest.raises(InvalidSignature):
        _cert(pki["cert"]).verify_directly_issued_by(_cert(other_ca))


def test_san_has_ips_and_dns_names(pki: dict[str, Path]) -> None:
    san = _cert(pki["cert"]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]  # IPs are not DNS names


def test_make_server_cert_rejects_empty_hosts(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hosts"):
        make_server_cert(tmp_path / "x", pki["ca"], pki["ca_key"], [])


def test_fingerprint_matches_hashlib(pki: dict[str, Path]) -> None:
    der = _cert(pki["cert"]).public_bytes(serialization.Encoding.DER)
    fp = fingerprint_sha256(pki["cert"])
    assert fp.replace(":", "") == hashlib.sha256(der).hexdigest()
    assert fp == fp.lower()
    assert len(fp.split(":")) == 32 and all(len(part) == 2 for part in fp.split(":"))


def test_ensure_demo_pki_is_idempotent(tmp_path: Path) -> None:
    first = ensure_demo_pki(tmp_path, HOSTS)
    before = {k: p.read_bytes() for k, p in first.items()}
    second = ensure_demo_pki(tmp_path, HOSTS)
    assert second == first
    assert {k: p.read_bytes() for k, p in second.items()} == before


def test_ensure_demo_pki_remakes_only_missing_server_pair(tmp_path: Path) -> None:
    paths = ensure_demo_pki(tmp_path, HOSTS)
    ca_before = paths["ca"].read_bytes()
    old_cert = paths["cert"].read_bytes()
    paths["key"].unlink()
    ensure_demo_pki(tmp_path, HOSTS)
    assert paths["ca"].read_bytes() == ca_before
    assert paths["cert"].read_bytes() != old_cert
    check_certificate_pair(paths["cert"], paths["key"])
    _cert(paths["cert"]).verify_directly_issued_by(_cert(paths["ca"]))


def test_ensure_demo_pki_refuses_half_a_ca(tmp_path: Path) -> None:
    paths = ensure_demo_pki(tmp_path, HOSTS)
    paths["ca_key"].unlink()
    with pytest.raises(ValueError, match=r"ca\.key"):
        ensure_demo_pki(tmp_path, HOSTS)


def test_check_certificate_pair_accepts_matching_pair(pki: dict[str, Path]) -> None:
    check_certificate_pair(pki["cert"], pki["key"])
    check_certificate_pair(pki["ca"], pki["ca_key"])


def test_check_certificate_pair_rejects_mismatched_key(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="does not match"):
        check_certificate_pair(pki["cert"], pki["ca_key"])


def test_check_certificate_pair_rejects_expired_cert(pki: dict[str, Path], tmp_path: Path) -> None:
    ca_key = serialization.load_pem_private_key(pki["ca_key"].read_bytes(), password=None)
    key = serialization.load_pem_private_key(pki["key"].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(_cert(pki["ca"]).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    path = tmp_path / "expired.pem"
    path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ValueError, match="expired"):
        check_certificate_pair(path, pki["key"])


def test_check_certificate_pair_rejects_garbage(pki: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"junk\.pem"):
        check_certificate_pair(junk, pki["key"])


# --- a real TLS handshake ------------------------------------------------------------------


class _EchoServer:
    """One-connection-at-a-time TLS echo server on 127.0.0.1 in a background thread."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile=cert, keyfile=key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.port: int = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return  # listening socket closed
            raw.settimeout(10)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    data = conn.recv(1024)
                    conn.sendall(data)
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(exc)
            finally:
                raw.close()


def _client_ctx(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=cafile)  # only our CA, no system store
    return ctx


def test_real_tls_handshake(pki: dict[str, Path], tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "unrelated", common_name="unrelated CA")
    with _EchoServer(pki["cert"], pki["key"]) as server:
        ctx = _client_ctx(pki["ca"])
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            peer = tls.getpeercert(binary_form=True)
            assert peer is not None
            assert hashlib.sha256(peer).hexdigest() == fingerprint_sha256(pki["cert"]).replace(
                ":", ""
            )
            tls.sendall(b"sleepfed ping")
            received = b""
            while len(received) < len(b"sleepfed ping"):
                chunk = tls.recv(1024)
                if not chunk:
                    break
                received += chunk
            assert received == b"sleepfed ping"

        bad = _client_ctx(other_ca)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            bad.wrap_socket(raw, server_hostname="127.0.0.1")


def test_tls_rejects_hostname_not_in_san(pki: dict[str, Path]) -> None:
    with _EchoServer(pki["cert"], pki["key"]) as server:
        ctx = _client_ctx(pki["ca"])
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            ctx.wrap_socket(raw, server_hostname="10.9.8.7")


def test_certs_group_lets_the_service_read_the_server_key_and_nothing_else(
    tmp_path: Path,
) -> None:
    """``sleepfed-server certs --group sleepfed`` as the package's quickstart runs it (here
    with the group ``nogroup``, which every Debian system has): the service's group may enter
    the folder and read server.key; ca.key stays 0600, not the group's; the folders made
    above it are 0755."""
    out = tmp_path / "etc" / "sleepfed" / "tls"  # server.toml goes in /etc/sleepfed
    done = subprocess.run(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "certs", "--out", str(out),
         "--host", "fl.example.org", "--group", "nogroup"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    group = grp.getgrnam("nogroup").gr_gid
    modes = {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid) for p in out.iterdir()}
    assert modes["server.key"] == (0o640, group)
    assert modes["ca.key"] == (0o600, os.getgid())
    assert (stat.S_IMODE(out.stat().st_mode), out.stat().st_gid) == (0o750, group)
    # the folders it made above (under the command's umask 077) stay enterable by the service
    assert [stat.S_IMODE(d.stat().st_mode) for d in (out.parent, out.parent.parent)] == [0o755] * 2
    unknown = subprocess.run(
        [sys.executable, "-m", "sleepfed.server.ops.cli", "certs", "--out",
         str(tmp_path / "other"), "--group", "no-such-group"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "--group: no group 'no-such-group'" in unknown.stderr
    assert not (tmp_path / "other").exists()
