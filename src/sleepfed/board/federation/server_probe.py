"""Is the federation server there? A TCP connect to its Fleet endpoint and, unless
insecure, a verified TLS handshake with the pinned CA, sorted into errors worth retrying
(``TransientError``) and errors that are not, in this window (``PermanentError``)."""

from __future__ import annotations

import socket
import ssl

from sleepfed.board.service.config import FederationConfig

PROBE_TIMEOUT_SECONDS = 5.0


class TransientError(Exception):
    """Worth retrying: the server is unreachable or the node lost it."""


class PermanentError(Exception):
    """Not worth retrying in this window: configuration, TLS or authentication."""


def probe_server(config: FederationConfig, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Reach the server's Fleet endpoint and, unless insecure, complete a verified TLS
    handshake with the pinned CA. Raises TransientError or PermanentError."""
    host, _, port_text = config.server.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise PermanentError(f"bad server address {config.server!r}") from None
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as error:
        raise TransientError(f"{config.server}: timed out ({error})") from None
    except OSError as error:
        if isinstance(error, socket.gaierror):
            raise TransientError(f"{config.server}: name lookup failed ({error})") from None
        raise TransientError(f"{config.server}: {error.strerror or error}") from None
    with raw:
        if config.insecure:
            return
        assert config.root_certificates is not None
        try:
            context = ssl.create_default_context(cafile=str(config.root_certificates))
        except (OSError, ssl.SSLError) as error:
            raise PermanentError(f"CA file {config.root_certificates}: {error}") from None
        try:
            with context.wrap_socket(raw, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as error:
            raise PermanentError(
                f"{config.server}: TLS verification failed ({error.verify_message})"
            ) from None
        except (ssl.SSLError, OSError) as error:
            raise TransientError(f"{config.server}: TLS handshake: {error}") from None
