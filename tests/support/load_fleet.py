"""A fleet of real boards under load, for the load test and benchmarks/bench_load.py.

Every board is a real ``sleepfed-agent run`` daemon with a serial source on its own PTY,
fed by a replay of real Walch 2019 nights at a fixed rate (readings/s) for the whole run,
and a buffer that already holds one extracted Walch night to train on. Each board has its
own EC node key, registered with the server's board registry (node authentication), and
reaches the TLS SuperLink through its own capture proxy (tests/support/wire_capture.py), so the
bytes every board exchanges with the server are known per board and per Fleet RPC (or only the
first ``captured`` boards do, and the others talk to the server's address directly).
"""

from __future__ import annotations

import contextlib
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flwr.proto.message_pb2 import PullObjectResponse
from google.protobuf.message import DecodeError
from sleepfed_tools.replay import PtyLink, replay, walch_readings

from sleepfed.board.buffer.counter_classes import NODE_FAULT_CLASSES
from sleepfed.board.buffer.store import Buffer
from sleepfed.board.sources.protocol import Reading
from sleepfed.model.walch import walch_subjects
from sleepfed.provisioning.request import EnrollmentRequest
from sleepfed.server.app.history import History
from sleepfed.server.fleet.boards import Registry
from sleepfed.server.ops.config import load_config
from tests.support.federation_helpers import (
    board_state,
    free_port,
    node_key,
    pki,
    start_agent,
    start_server,
    stop,
    wait_for,
    write_board,
    write_server_config,
)
from tests.support.wire_capture import CaptureProxy, HttpMessage, http_exchanges

# Replayed nights are long past and settle only an hour after their last reading: the
# boards ingest without extracting nights while the run lasts.
NIGHT_START = 1_700_000_000.0
SETTLE_SECONDS = 3600
HELD_OUT = ["1066528", "2638030"]


@dataclass
class Board:
    name: str
    config: Path
    subject: str
    link: PtyLink
    proxy: CaptureProxy | None  # None: straight to the server's address, not captured
    sent: int = 0
    replay_error: str = ""

    def readings(self, walch: Path, stop: threading.Event) -> Iterator[Reading]:
        """The board's subject night after night, until ``stop``."""
        night = 0
        while not stop.is_set():
            for reading in walch_readings(walch, self.subject, NIGHT_START + 86400.0 * night):
                if stop.is_set():
                    return
                yield reading
            night += 1


@dataclass
class Fleet:
    root: Path
    walch: Path
    boards: list[Board]
    server_config: Path
    rate: float
    certs: dict[str, Path]
    stop_replay: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def history_path(self) -> Path:
        return self.root / "server" / "state" / "history.db"

    def start_replays(self) -> None:
        for board in self.boards:
            thread = threading.Thread(target=self._replay, args=(board,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _replay(self, board: Board) -> None:
        try:
            board.sent = replay(
                board.readings(self.walch, self.stop_replay),
                board.link.write,
                self.rate,
                drain=board.link.drain,
            )
        except Exception as error:  # reported with the figures, never silent
            board.replay_error = repr(error)

    def end_replays(self, ack_timeout: float = 60.0) -> None:
        """Stop the replays and wait until every board acknowledged all it was sent."""
        self.stop_replay.set()
        for thread in self.threads:
            thread.join(30)
        deadline = time.monotonic() + ack_timeout
        for board in self.boards:
            while time.monotonic() < deadline and self.acked(board) < board.sent:
                board.link.wait(0.1)

    @staticmethod
    def acked(board: Board) -> int:
        ack = board.link.last_ack
        return ack[1] if ack else 0

    def close(self) -> None:
        self.stop_replay.set()
        for board in self.boards:
            board.link.close()
            if board.proxy is not None:
                board.proxy.close()


def build_fleet(
    root: Path,
    walch: Path,
    boards: int,
    rounds: int,
    rate: float,
    curve: str = "p256",
    node_auth: bool = True,
    round_timeout: float = 900.0,
    superlink_state: str = "memory",
    captured: int | None = None,
) -> Fleet:
    """Server config, PKI, registry and ``boards`` board folders; nothing started yet.
    Without ``node_auth`` the boards' SuperNodes make their own keys and register
    themselves (the server's ``node_auth = false``). ``superlink_state``: the server's
    ``superlink_state`` (memory, or sqlite: the SuperLink's state in ``superlink.db``).
    ``captured``: only that many boards (the first) go through a capture proxy."""
    certs = pki(root)
    port = free_port()
    server_config = write_server_config(
        root,
        port,
        certs,
        rounds=rounds,
        min_nodes=boards,
        walch_dir=walch,
        held_out=HELD_OUT,
        round_timeout=round_timeout,
    )
    text = server_config.read_text()
    setting = (
        f'node_auth = {"true" if node_auth else "false"}\nsuperlink_state = "{superlink_state}"\n'
    )
    server_config.write_text(text.replace("[server]\n", f"[server]\n{setting}", 1))
    subjects = [s for s in walch_subjects(walch) if s not in HELD_OUT]
    registry = Registry(load_config(server_config))
    fleet_boards: list[Board] = []
    try:
        for i in range(boards):
            name = f"board{i:02d}"
            subject = subjects[i % len(subjects)]
            proxy = None
            if captured is None or i < captured:
                proxy = CaptureProxy(certs["cert"], certs["key"], certs["ca"], port).start()
            link = PtyLink()
            config = write_board(
                root,
                name,
                proxy.port if proxy is not None else port,
                certs["ca"],
                walch_dir=walch,
                subject=subject,
                enrol=False,
            )
            text = config.read_text().replace(
                "session_idle_seconds = 300", "session_idle_seconds = 3600"
            )
            if node_auth:
                key = config.parent / "node.key"
                registry.add(EnrollmentRequest(name, node_key(key, curve)))
                text += f'auth_private_key = "{key}"\n'
            config.write_text(
                text
                + "\n"
                + f"[nights]\nsettle_seconds = {SETTLE_SECONDS}\n\n"
                + f'[[sources]]\ntype = "serial"\nname = "replay"\nport = "{link.device_path}"\n'
            )
            fleet_boards.append(Board(name, config, subject, link, proxy))
    finally:
        registry.close()
    return Fleet(root, walch, fleet_boards, server_config, rate, certs)


def start_server_synced(fleet: Fleet, timeout: float = 600.0) -> subprocess.Popen[bytes]:
    """Start ``sleepfed-server run --once`` and wait until it registered every board's key
    with its SuperLink (one ``flwr supernode register`` per board): boards started earlier
    would be refused and retry meanwhile. Its run then waits for the boards."""
    server = start_server(fleet.server_config)
    log = fleet.root / "server" / "server.log"

    def synced() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}: {log.read_text()[-2000:]}")
        text = log.read_text(errors="replace") if log.exists() else ""
        return "node authentication on" in text or "submitted" in text

    wait_for(synced, timeout, "the server to register the boards' keys")
    return server


def wait_connected(fleet: Fleet, agents: list, timeout: float = 180.0) -> None:
    """Every daemon has opened its PTY (it reports its sources in the buffer's state)."""

    def connected(board: Board) -> bool:
        with contextlib.suppress(Exception):
            return board_state(board.config).get("sources_connected") == "1/1"
        return False

    def all_connected() -> bool:
        for board in fleet.boards:
            board.link.drain()
        for board, agent in zip(fleet.boards, agents, strict=True):
            if agent.poll() is not None:
                log = (board.config.parent / "agent.log").read_text(errors="replace")
                raise RuntimeError(f"{board.name} exited with {agent.returncode}: {log[-2000:]}")
        return all(connected(b) for b in fleet.boards)

    wait_for(all_connected, timeout, "every agent to open its PTY")


def stored_readings(board: Board) -> int:
    buffer = Buffer(board.config.parent / "buffer.db", readonly=True)
    try:
        counts = buffer.counts()
        return counts.readings + counts.stage_labels
    finally:
        buffer.close()


def node_faults(board: Board) -> dict[str, int]:
    """The board's SuperNode faults: replies it could not send, restarts after a failed pull."""
    counters = board_state(board.config)["counters"]
    return {k: int(counters.get(k, 0)) for k in NODE_FAULT_CLASSES}  # type: ignore[union-attr]


def sessions_finished(fleet: Fleet) -> bool:
    return all(
        board_state(b.config).get("last_session_outcome") == "finished" for b in fleet.boards
    )


def rounds_of(fleet: Fleet) -> list[tuple[int, int, int, float]]:
    """(global round, train nodes, eval nodes, created_at) of every round in the history."""
    history = History(fleet.history_path)
    try:
        return [
            (r.global_round, r.train_nodes, r.eval_nodes, r.created_at) for r in history.rounds()
        ]
    finally:
        history.close()


def run_started_at(fleet: Fleet) -> float:
    history = History(fleet.history_path)
    try:
        return float(history.runs()[0]["started_at"])  # type: ignore[arg-type]
    finally:
        history.close()


# -- bytes on the wire -------------------------------------------------------------------------
FLEET_PATH = re.compile(r"POST /v1/fleet/([a-z-]+) HTTP/1\.1")


@dataclass
class RpcBytes:
    calls: int = 0
    sent: int = 0  # request line + headers + body, board -> server (decrypted)
    sent_headers: int = 0
    received: int = 0  # status line + headers + body, server -> board


def rpc_of(request: HttpMessage) -> str:
    match = FLEET_PATH.fullmatch(request.start_line)
    return match.group(1) if match else request.start_line


def _object_delivered(response: HttpMessage) -> bool:
    try:
        return bool(PullObjectResponse.FromString(response.body).object_available)
    except DecodeError:
        return True  # not a PullObjectResponse: counted with the deliveries, where it shows


def board_bytes(board: Board) -> tuple[dict[str, RpcBytes], int, int]:
    """Per Fleet RPC bytes of one board, how many TLS connections carried requests and how
    many were opened in all (the agent's reachability probes only shake hands).
    Polls (``pull-messages`` answered with no message) are kept apart from deliveries, and so
    are ``pull-object`` requests answered "not yet available": the SuperLink lists a message
    before the ServerApp has pushed all its objects, and a busy server lets a board ask for one
    early; Flower's node asks again (flwr.supercore.inflatable ObjectUnavailableError)."""
    assert board.proxy is not None, f"{board.name} is not captured"
    connections = board.proxy.snapshot()
    table: dict[str, RpcBytes] = {}
    for request, response in http_exchanges(connections):
        rpc = rpc_of(request)
        if rpc == "pull-messages":
            delivered = response is not None and len(response.body) > 8
            rpc = "pull-messages (message)" if delivered else "pull-messages (empty poll)"
        elif rpc == "pull-object" and response is not None and not _object_delivered(response):
            rpc = "pull-object (not yet available)"
        row = table.setdefault(rpc, RpcBytes())
        row.calls += 1
        row.sent += request.raw_size
        row.sent_headers += request.raw_size - len(request.body)
        row.received += response.raw_size if response is not None else 0
    return table, sum(1 for c in connections if c.sent), len(connections)


def tls_handshake_bytes(certs: dict[str, Path]) -> tuple[int, int]:
    """(client -> server, server -> client) bytes of one TLS handshake with the server's
    certificate, as Python's ssl (OpenSSL) does it for httpx; counted over memory BIOs."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs["cert"], certs["key"])
    client_ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    sent = received = 0
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
                    done[name] = True
        out = bios[1].read()  # client -> server
        sent += len(out)
        bios[2].write(out)
        back = bios[3].read()  # server -> client
        received += len(back)
        bios[0].write(back)
        if all(done.values()) and not out and not back:
            break
    return sent, received


__all__ = [
    "Board",
    "Fleet",
    "RpcBytes",
    "board_bytes",
    "build_fleet",
    "rounds_of",
    "run_started_at",
    "sessions_finished",
    "start_agent",
    "start_server",
    "start_server_synced",
    "stop",
    "stored_readings",
    "wait_connected",
]
