"""A TLS-terminating capture proxy for tests: it stands between a board and the SuperLink
and records every byte each side sends, after TLS decryption.

Flower 1.42's SuperNode talks to the SuperLink's Fleet API as protobuf over plain HTTP/1.1
(httpx, ``POST /v1/fleet/<rpc>``, ``content-type: application/protobuf``), inside TLS. The
proxy is a byte pipe, not an HTTP client: it accepts the board's TLS connection with the
server's own certificate and key (the test owns the demo PKI), opens its own verified TLS
connection to the real SuperLink, and copies bytes both ways, keeping a copy. Parsing the
recorded streams into HTTP requests and responses happens afterwards (``http_exchanges``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Connection:
    """One TCP connection through the proxy, decrypted."""

    sent: bytearray = field(default_factory=bytearray)  # board -> server
    received: bytearray = field(default_factory=bytearray)  # server -> board


@dataclass
class HttpMessage:
    start_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_size: int  # start line + headers + body, as on the wire

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def path(self) -> str:
        return self.start_line.split(" ")[1]


class CaptureProxy:
    """``127.0.0.1:<port>`` -> TLS -> ``127.0.0.1:<upstream_port>``, recording both ways.

    An asyncio loop in one background thread: asyncio's TLS (memory BIOs, one thread) is
    safe for full-duplex use, unlike one ``ssl.SSLSocket`` shared by two threads."""

    def __init__(self, certfile: Path, keyfile: Path, cafile: Path, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(certfile, keyfile)
        self.client_context = ssl.create_default_context(cafile=str(cafile))
        self.connections: list[Connection] = []
        self.refused = 0  # board connections closed because the upstream was unreachable
        self.unforwarded: list[bytes] = []  # what the board sent on those, never forwarded
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> CaptureProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.server_context),
            self.loop,
        ).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def close(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
        self.loop.close()

    async def _serve(self, board_in: asyncio.StreamReader, board_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                server_in, server_out = await asyncio.open_connection(
                    "127.0.0.1",
                    self.upstream_port,
                    ssl=self.client_context,
                    server_hostname="127.0.0.1",
                )
            except (OSError, ssl.SSLError):
                # Nothing reaches the server; still keep what the board tried to send.
                attempt = bytearray()
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                    while data := await asyncio.wait_for(board_in.read(65536), 1.0):
                        attempt.extend(data)
                with self.lock:
                    self.refused += 1
                    self.unforwarded.append(bytes(attempt))
                return
            connection = Connection()
            with self.lock:
                self.connections.append(connection)
            try:
                await asyncio.gather(
                    self._pump(board_in, server_out, connection.sent),
                    self._pump(server_in, board_out, connection.received),
                )
            finally:
                server_out.close()
        finally:
            board_out.close()
            self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray
    ) -> None:
        try:
            while data := await source.read(65536):
                with self.lock:
                    record.extend(data)
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            sink.close()  # the other side learns of the end as it would without the proxy

    def snapshot(self) -> list[Connection]:
        with self.lock:
            return [Connection(bytearray(c.sent), bytearray(c.received)) for c in self.connections]


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if encoding in (None, "", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise AssertionError(f"unexpected content-encoding {encoding!r}")


def parse_http_stream(data: bytes, cut_tail: bool = False) -> list[HttpMessage]:
    """Split one direction of an HTTP/1.1 connection into messages (Content-Length or
    chunked bodies; no bodies without either, which is how Fleet requests/replies go).
    ``cut_tail``: the connection may have been cut mid-message (a node stopped while it
    sent): its last, incomplete message is counted with the bytes that did cross."""
    messages: list[HttpMessage] = []
    offset = 0
    while offset < len(data):
        try:
            message = _parse_http_message(data, offset)
        except (AssertionError, ValueError):
            if not cut_tail:
                raise
            messages.append(HttpMessage("(cut)", [], b"", len(data) - offset))
            break
        messages.append(message)
        offset += message.raw_size
    return messages


def _parse_http_message(data: bytes, offset: int) -> HttpMessage:
    end = data.find(b"\r\n\r\n", offset)
    assert end >= 0, f"incomplete HTTP head at byte {offset} of {len(data)}"
    head = data[offset:end].decode("latin-1").split("\r\n")
    headers = [
        (key.strip(), value.strip()) for key, value in (line.split(":", 1) for line in head[1:])
    ]
    names = {key.lower(): value for key, value in headers}
    position = end + 4
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            line_end = data.index(b"\r\n", position)
            size = int(data[position:line_end].split(b";")[0], 16)
            position = line_end + 2
            chunk = data[position : position + size]
            assert len(chunk) == size, "truncated HTTP chunk"
            body.extend(chunk)
            position += size + 2
            if size == 0:
                break
    else:
        length = int(names.get("content-length", "0"))
        body = bytearray(data[position : position + length])
        assert len(body) == length, "truncated HTTP body"
        position += length
    return HttpMessage(
        start_line=head[0],
        headers=headers,
        body=_decode_body(bytes(body), names.get("content-encoding")),
        raw_size=position - offset,
    )


def http_exchanges(connections: list[Connection]) -> list[tuple[HttpMessage, HttpMessage | None]]:
    """(request, response) pairs in order, per connection (no pipelining in httpx)."""
    pairs: list[tuple[HttpMessage, HttpMessage | None]] = []
    for connection in connections:
        requests = parse_http_stream(bytes(connection.sent), cut_tail=True)
        responses = parse_http_stream(bytes(connection.received), cut_tail=True)
        for index, request in enumerate(requests):
            pairs.append((request, responses[index] if index < len(responses) else None))
    return pairs
