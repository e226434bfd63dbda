"""The SHA-256 fingerprint that pins the server's CA: how ``sleepfed-server certs`` prints it
and how ``sleepfed-enroll`` compares it with the one an operator gives out of band."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def ca_fingerprint(pem: bytes) -> str:
    """SHA-256 of the DER certificate, lowercase hex with colons."""
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex(":")


def normal_fingerprint(text: str) -> str:
    """``text`` as bare lowercase hex, so ``AB:CD``, ``ab cd`` and ``sha256abcd`` compare equal."""
    return text.strip().lower().replace(":", "").replace(" ", "").removeprefix("sha256")
