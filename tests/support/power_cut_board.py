"""The board side of tests/faults/test_power_cut.py: the real agent on the recording mount
(tests/support/power_cut_fs.py), a flood of readings over a real PTY with the moment each
ACK was read, and the power cut that ends every process of the board at once."""

from __future__ import annotations

import bisect
import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from sleepfed_tools.replay import PtyLink

from sleepfed.provisioning import agent_toml
from tests.support.federation_helpers import start_agent, start_server, stop
from tests.support.power_cut_fs import Op, PowerCutMount, read_log
from tests.support.power_cut_replay import database_file

STEP_MS = 10
# Readings per second, CHUNK lines at a time; the agent commits at most every 50 ms (~8 commits
# and WAL fsyncs a second here, on the FUSE mount). Faster only makes a bigger file, and every
# one of the thousands of checks of it slower.
RATE = 1000
CHUNK = 20
FLOOD_SECONDS = (2.0, 5.0)  # after the port is open (and after the round, in the round's run)


@dataclass
class Run:
    """One run of the agent: the readings sent to it (``first_ms`` up to ``next_ms``), the
    ACKs the test read back (when, last committed timestamp, count), the federated round's
    start and end as the test saw them (inf: no round in this run)."""

    first_ms: int
    next_ms: int
    acks: list[tuple[float, float, int]] = field(default_factory=list)
    round_started: float = float("inf")
    round_ended: float = float("inf")

    def note(self, ack: tuple[float, int] | None) -> None:
        # time.monotonic() after the read: never before the ACK came, so never before the
        # fsync that made its readings durable was recorded
        if ack is not None and (not self.acks or self.acks[-1][1:] != ack):
            self.acks.append((time.monotonic(), *ack))

    def acked_at(self, moment: float) -> tuple[float, int] | None:
        """The last ACK the test had read at ``moment``."""
        at = bisect.bisect_right([read for read, _, _ in self.acks], moment)
        return self.acks[at - 1][1:] if at else None


def lines(first_ms: int, count: int) -> bytes:
    return "".join(
        f"SF1,HR,{(first_ms + STEP_MS * k) / 1000:.3f},70\n" for k in range(count)
    ).encode()


def configure(
    path: Path, document: agent_toml.Document, buffer: Path, device: str, extra: dict[str, str]
) -> None:
    """The board's agent.toml with its buffer on the mount (``extra``: more [buffer] keys) and
    the flood's serial source; small batches, so that the flood makes many commits."""
    document = {k: dict(v) if isinstance(v, dict) else v for k, v in document.items()}
    document["buffer"].update(path=str(buffer), batch_max_readings=200, batch_max_seconds=0.05)
    document["buffer"].update(extra)
    document["sources"] = [{"type": "serial", "name": "wrist", "port": device}]
    agent_toml.write(path, document)


def flood(link: PtyLink, run: Run, seconds: float, server: subprocess.Popen[bytes] | None) -> None:
    """Send readings at ``RATE`` for ``seconds`` once the agent has opened its port and, with
    a server, until that has ended its run too."""
    assert link.wait_opened(60), "the agent did not open its port"
    stop_at = time.monotonic() + seconds
    deadline = time.monotonic() + 300
    while time.monotonic() < stop_at or (server is not None and run.round_ended == float("inf")):
        link.write(lines(run.next_ms, CHUNK), timeout=10)
        run.next_ms += CHUNK * STEP_MS
        run.note(link.last_ack)
        link.wait(CHUNK / RATE)  # reads the ACKs meanwhile
        run.note(link.last_ack)
        if server is not None and run.round_ended == float("inf") and server.poll() is not None:
            run.round_ended = time.monotonic()
            assert server.returncode == 0, "the server's run failed"
            stop_at = max(stop_at, run.round_ended + seconds)
        assert time.monotonic() < deadline, "the federated round did not end within 300 s"


def cut_power(agent: subprocess.Popen[bytes]) -> None:
    """SIGKILL the agent and every process it started (its SuperNode has a session of its
    own, the ClientApps are the SuperNode's): all stopped first, so that none of them runs on
    after another has died, as none does when the power goes."""
    board = psutil.Process(agent.pid)
    frozen: dict[int, psutil.Process] = {}
    while new := [p for p in [board, *board.children(recursive=True)] if p.pid not in frozen]:
        for process in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGSTOP)
            frozen[process.pid] = process
    for process in frozen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    agent.wait(10)
    psutil.wait_procs([p for pid, p in frozen.items() if pid != agent.pid], timeout=10)


def agent_run(
    folder: Path, log: Path, config: Path, document: agent_toml.Document, run: Run,
    seconds: float, server_config: Path | None = None, buffer_extra: dict[str, str] | None = None,
) -> list[Op]:  # fmt: skip
    """One run of the agent with its buffer on the mount of ``folder/backing``, flooded for
    ``seconds`` (with a federated round when ``server_config``: a SuperLink started with it),
    ended by a power cut. Returns its operations on the buffer's files."""
    with PowerCutMount(folder / "backing", folder / "mount", log), PtyLink() as link:
        buffer = folder / "mount" / "buffer.db"
        configure(config, document, buffer, link.device_path, buffer_extra or {})
        agent = start_agent(config)
        server = None
        try:
            if server_config is not None:
                server, run.round_started = start_server(server_config), time.monotonic()
            flood(link, run, seconds, server)
        finally:
            cut_power(agent)
            if server is not None:
                stop([server])
        link.drain()  # the ACKs written just before the cut count too
        run.note(link.last_ack)
    return [op for op in read_log(log) if database_file(op.path, "buffer.db")]
