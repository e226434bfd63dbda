"""A small demo PKI for the federation's TLS: one CA, one server certificate.

Everything is done in-process with the ``cryptography`` package (no ``openssl`` binary).
Keys are EC P-256, written as unencrypted PKCS#8 PEM files that are created with mode 0600
and never exist with looser permissions, not even for a moment.

The layout in ``out_dir`` is fixed::

    ca.pem      CA certificate (give this to the clients)
    ca.key      CA private key (keep it off the server if you can)
    server.pem  server certificate, signed by the CA
    server.key  server private key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sleepfed.common.private_files import write_atomic
from sleepfed.provisioning.fingerprint import ca_fingerprint

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server.key"

# Backdate notBefore a little so that boards with a slightly slow clock accept a fresh cert.
CLOCK_SKEW = dt.timedelta(minutes=5)

_CURVE = ec.SECP256R1()
_HASH = hashes.SHA256()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through sleepfed.common.private_files (the one writer of
    secrets): a
    fresh O_EXCL|O_NOFOLLOW temporary file with exactly ``mode`` from its first byte, fsync,
    rename, fsync of the folder; a symlink planted at ``path`` is refused, not replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM X.509 certificate ({exc})") from exc


def _load_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from exc


def _check_days(days: int) -> None:
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")


def _san_entry(host: str) -> x509.GeneralName:
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):  # "[::1]" as written in URLs
        name = name[1:-1]
    if not name:
        raise ValueError(f"empty host name in {host!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name.lower())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sleepfed"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a TLS server only signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    out_dir: Path, common_name: str = "sleepfed demo CA", days: int = 825
) -> tuple[Path, Path]:
    """Create a self-signed CA in ``out_dir``; return ``(ca.pem path, ca.key path)``.

    Existing files are replaced; use :func:`ensure_demo_pki` to keep them.
    """
    _check_days(days)
    out_dir = Path(out_dir)
    key = ec.generate_private_key(_CURVE)
    name = _name(common_name)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _HASH)
    )
    cert_path = out_dir / CA_CERT_NAME
    key_path = out_dir / CA_KEY_NAME
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _load_issuer(
    ca_cert: Path, ca_key: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's certificate and its EC key, checked to belong together."""
    issuer = _load_cert(ca_cert)
    issuer_key = _load_key(ca_key)
    if not isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key}: expected an EC private key, got {type(issuer_key).__name__}")
    _check_pair(issuer, issuer_key, ca_cert, ca_key)
    return issuer, issuer_key


def _unique_sans(hosts: list[str]) -> list[x509.GeneralName]:
    """One subjectAltName entry per distinct host, in the order given."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        entry = _san_entry(host)
        if entry not in sans:
            sans.append(entry)
    return sans


def _authority_key_id(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    """The CA's own subject key id if it has one (a CA made elsewhere may not)."""
    try:
        ca_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def make_server_cert(
    out_dir: Path, ca_cert: Path, ca_key: Path, hosts: list[str], days: int = 397
) -> tuple[Path, Path]:
    """Create a server key and a certificate for ``hosts`` signed by the CA.

    ``hosts`` are DNS names or IP addresses (``"localhost"``, ``"127.0.0.1"``, ``"::1"``);
    all go into the subjectAltName, the first one is also the subject CN.
    Returns ``(server.pem path, server.key path)``. Existing files are replaced.
    """
    _check_days(days)
    if not hosts:
        raise ValueError("hosts must name at least one DNS name or IP address")
    out_dir = Path(out_dir)
    issuer, issuer_key = _load_issuer(ca_cert, ca_key)
    sans = _unique_sans(hosts)
    key = ec.generate_private_key(_CURVE)
    now = _now()
    # never outlive the CA
    not_after = min(now + dt.timedelta(days=days), issuer.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0].strip()[:64]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(issuer, issuer_key), critical=False)
        .sign(issuer_key, _HASH)
    )
    cert_path = out_dir / SERVER_CERT_NAME
    key_path = out_dir / SERVER_KEY_NAME
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def fingerprint_sha256(cert_path: Path) -> str:
    """SHA-256 of the DER certificate, lowercase hex with colons (``ab:cd:...``)."""
    return ca_fingerprint(Path(cert_path).read_bytes())


def ensure_demo_pki(out_dir: Path, hosts: list[str]) -> dict[str, Path]:
    """Create the CA and the server certificate in ``out_dir`` unless they already exist.

    Existing files are never rewritten, so calling this again is a no-op. The server pair is
    (re)made when either of its files is missing or the CA had to be created. A CA with only
    one of its two files present is an error: silently replacing it would break every client
    that already trusts the old ``ca.pem``.
    """
    out_dir = Path(out_dir)
    ca_cert = out_dir / CA_CERT_NAME
    ca_key = out_dir / CA_KEY_NAME
    cert = out_dir / SERVER_CERT_NAME
    key = out_dir / SERVER_KEY_NAME

    made_ca = False
    if ca_cert.exists() != ca_key.exists():
        present, missing = (ca_cert, ca_key) if ca_cert.exists() else (ca_key, ca_cert)
        raise ValueError(
            f"incomplete CA in {out_dir}: {present.name} exists but {missing.name} is missing; "
            "restore it or delete both to create a new CA"
        )
    if not ca_cert.exists():
        make_ca(out_dir)
        made_ca = True
    if made_ca or not (cert.exists() and key.exists()):
        make_server_cert(out_dir, ca_cert, ca_key, hosts)
    return {"ca": ca_cert, "ca_key": ca_key, "cert": cert, "key": key}


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_pair(
    cert: x509.Certificate, key: PrivateKeyTypes, cert_path: Path, key_path: Path
) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ValueError(f"private key {key_path} does not match certificate {cert_path}")


def check_certificate_pair(cert: Path, key: Path) -> None:
    """Raise ``ValueError`` unless ``key`` belongs to ``cert`` and ``cert`` is valid now."""
    certificate = _load_cert(cert)
    private_key = _load_key(key)
    _check_pair(certificate, private_key, cert, key)
    now = _now()
    if now > certificate.not_valid_after_utc:
        raise ValueError(
            f"certificate {cert} expired on {certificate.not_valid_after_utc.isoformat()}"
        )
    if now < certificate.not_valid_before_utc:
        raise ValueError(
            f"certificate {cert} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()} (check the clock)"
        )
