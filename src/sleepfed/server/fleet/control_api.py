"""Registering and unregistering boards' node keys with our SuperLink, over Flower's Control
API from this process.

The same requests ``flwr supernode register`` / ``unregister`` send (Flower's
``ControlHttpClient`` with the CLI's interceptors), through one client kept open: a board
costs one HTTPS request on the loopback instead of a ``flwr`` process (~1.4 s of Python
start-up each), which is what a SuperLink whose state is in memory costs at every start, for
every enrolled board.
"""

from __future__ import annotations

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.proto.control_pb2 import RegisterNodeRequest, UnregisterNodeRequest
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from sleepfed.server.fleet.fleet_proxy import loopback_tls
from sleepfed.server.ops.config import ServerConfig


class ControlApiError(RuntimeError):
    """The SuperLink refused or did not answer a Control API request."""


def _detail(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}: {error.response.text.strip()[:300]}"
    return f"{type(error).__name__}: {error}"


class ControlApi:
    """A Control API client to our SuperLink, opened at first use."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._client: ControlHttpClient | None = None

    def _open(self) -> ControlHttpClient:
        if self._client is None:
            insecure = self.config.insecure
            ca = None if insecure else loopback_tls(self.config)["ca"].read_bytes()
            self._client = ControlHttpClient.from_server_address(
                server_address=self.config.superlink_address,
                insecure=insecure,
                root_certificates=ca,
                interceptors=[
                    CliClientHttpInterceptor(),
                    RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
                ],
            )
        return self._client

    def register(self, public_key: str, board_id: str) -> int:
        """The node id of the newly registered key (``public_key``: its OpenSSH line, as the
        registry keeps it; sent as ``flwr supernode register`` sends a key file's)."""
        try:
            key = serialization.load_ssh_public_key(public_key.encode())
        except (ValueError, UnsupportedAlgorithm) as error:
            raise ControlApiError(f"register {board_id}: its key does not load: {error}") from None
        try:
            response = self._open().RegisterNode(
                RegisterNodeRequest(public_key=public_key_to_bytes(key))  # type: ignore[arg-type]
            )
        except (httpx.HTTPError, ValueError, OSError) as error:
            raise ControlApiError(f"register {board_id}: {_detail(error)}") from error
        if not response.node_id:
            raise ControlApiError(f"register {board_id}: the SuperLink gave no node id")
        return int(response.node_id)

    def unregister(self, node_id: int) -> None:
        try:
            self._open().UnregisterNode(UnregisterNodeRequest(node_id=node_id))
        except (httpx.HTTPError, ValueError, OSError) as error:
            raise ControlApiError(f"unregister node {node_id}: {_detail(error)}") from error

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
