"""The demo: one server and several boards on 127.0.0.1, each board a real agent process fed
by its own replayed real subject through its own pseudo-terminal, federated over TLS.

    python -m sleepfed_tools.demo --data ../shared/data

Boards replay Walch 2019 subjects (PSG-labelled); the server scores every round's global
model on the Walch subjects that no board holds. The last board (``--ble-boards``) reads a
Polar-H10-like strap over BLE (bleak's real BlueZ backend, a private D-Bus, the BlueZ stand-in):
heart rate and PMD accelerometer frames (sleepfed_tools.replay.walch_polar), the PSG labels
from a reference device over serial. At the end each board's predicted night
quality is printed beside its PSG reference.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sleepfed.board.sources.polar_pmd import PMD_DATA
from sleepfed.model.walch import walch_subjects
from sleepfed.provisioning import agent_toml
from sleepfed.provisioning.pki import ensure_demo_pki
from sleepfed_tools.demo_report import night_predicted, print_results
from sleepfed_tools.demo_setup import (
    PYTHON,
    agent_status,
    ble_address,
    board_settings,
    board_sources,
    choose_subjects,
    enroll_boards,
    server_toml,
    wait_until,
    write_file,
)
from sleepfed_tools.replay import (
    PtyLink,
    default_night_start,
    replay,
    walch_labels,
    walch_readings,
)
from sleepfed_tools.replay.walch_polar import replay_polar, walch_polar_notifications

if TYPE_CHECKING:
    from sleepfed_tools.bluez_standin import BlueZStandIn


@dataclass
class Demo:
    """One demo run: what it was asked for, and the processes and links it has started."""

    args: argparse.Namespace
    walch_dir: Path
    workdir: Path
    board_subjects: list[str]
    held_out: list[str]
    pki: dict[str, Path]
    server_config: Path
    ble_boards: set[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    links: list[PtyLink] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    standin: BlueZStandIn | None = None

    def run(self, started: float) -> int:
        """Every step in order; 0 when the federation finished and every board predicted."""
        if self.ble_boards:
            from sleepfed_tools.bluez_standin import BlueZStandIn

            # A private D-Bus system bus; the agents started below inherit its address.
            self.standin = BlueZStandIn(log_dir=self.workdir).start()
        keys = enroll_boards(self.workdir, self.server_config, self.pki, self.args)
        server = self.start_server()
        for index, subject in enumerate(self.board_subjects):
            self.start_board(index, subject, keys[index])
        wait_until(
            lambda: all(self.connected(i) for i in range(len(self.configs))),
            90,
            "every agent to open its serial port and connect its BLE wearable",
        )
        self.replay_nights()
        code = self.relay_server(server)
        if code != 0:
            print(f"server exited with {code}; see {self.workdir / 'server'}")
            return 1
        wait_until(
            lambda: all(night_predicted(c) for c in self.configs),
            60,
            "every board's night prediction",
        )
        agree = print_results(self.configs, self.board_subjects, self.ble_boards)
        print(
            f"\n{agree}/{len(self.configs)} boards' night quality agrees with PSG; "
            f"demo took {time.time() - started:.0f}s. Files: {self.workdir}"
        )
        return 0

    def start_server(self) -> subprocess.Popen[bytes]:
        """``sleepfed-server run --once``; its stdout is relayed once the nights are in."""
        server_log = (self.workdir / "server" / "server.log").open("wb")
        server = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "sleepfed.server.ops.cli",
                "run",
                "--once",
                "--config",
                str(self.server_config),
            ],
            stdout=subprocess.PIPE,
            stderr=server_log,
            start_new_session=True,
        )
        self.processes.append(server)
        return server

    def start_board(self, index: int, subject: str, key: Path) -> None:
        """A board: its PTY, its agent.toml and agent process, and for a BLE board its
        wearable on the stand-in, advertising."""
        link = PtyLink()
        self.links.append(link)
        board_dir = self.workdir / f"board{index + 1}"
        ble = index in self.ble_boards
        sources = board_sources(ble, link.device_path, ble_address(index))
        settings = board_settings(index, board_dir, sources, self.pki["ca"], key, self.args.port)
        config = agent_toml.write(board_dir / "agent.toml", settings)
        self.configs.append(config)
        log = (board_dir / "agent.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [PYTHON, "-m", "sleepfed.board.service.cli", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        if ble:
            assert self.standin is not None
            self.standin.add_heart_rate_sensor(
                ble_address(index),
                "Polar H10 DEM0",
                with_illuminance=False,
                with_movement=False,
                with_current_time=True,
            )
            self.standin.add_pmd(ble_address(index))
            self.standin.advertise(ble_address(index))
            how = (
                f"Polar-H10-like strap {ble_address(index)} (Heart Rate 0x2A37 + RR, PMD "
                f"accelerometer frames, Current Time) + reference labels over serial "
                f"{link.device_path}"
            )
        else:
            how = f"serial {link.device_path}"
        print(
            f"board{index + 1}: agent pid {self.processes[-1].pid}, {how}, "
            f"replaying Walch subject {subject} (no light channel in this data set)"
        )

    def connected(self, index: int) -> bool:
        status = agent_status(self.configs[index])
        expected = "2/2" if index in self.ble_boards else "1/1"
        return bool(status and status["daemon"]["sources_connected"] == expected)

    def replay_nights(self) -> None:
        """Every board's night at once, one thread each; then wait until each committed some."""
        night_start = default_night_start()
        counts: dict[int, int] = {}
        feeders = [
            threading.Thread(target=self.feed, args=(i, night_start, counts))
            for i in range(len(self.configs))
        ]
        replay_started = time.time()
        for thread in feeders:
            thread.start()
        for thread in feeders:
            thread.join()
        for config in self.configs:
            wait_until(
                lambda c=config: (agent_status(c) or {}).get("buffer", {}).get("readings", 0) > 0,
                30,
                "readings to be committed",
            )
        print(
            f"replayed {sum(counts.values())} readings and notifications into "
            f"{len(self.configs)} boards in "
            f"{time.time() - replay_started:.1f}s; boards extract their nights and join"
        )

    def feed(self, index: int, night_start: float, counts: dict[int, int]) -> None:
        """One board's night: serial readings, or PSG labels over serial + BLE notifications."""
        link, subject = self.links[index], self.board_subjects[index]
        if index not in self.ble_boards:
            counts[index] = replay(
                walch_readings(self.walch_dir, subject, night_start),
                link.write,
                rate=None,
                drain=link.drain,
            )
            return
        standin = self.standin
        assert standin is not None
        address = ble_address(index)
        labels = replay(
            walch_labels(self.walch_dir, subject, night_start), link.write, None, drain=link.drain
        )

        def wait_ready(uuid: str) -> None:
            standin.wait_until_notifying(address, uuid, timeout=60)
            if uuid == PMD_DATA:
                wait_until(lambda: standin.pmd_measuring(address), 60, "the PMD measurement")

        counts[index] = labels + replay_polar(
            walch_polar_notifications(self.walch_dir, subject, night_start),
            lambda uuid, values: standin.notify_many(address, uuid, values),
            wait_ready,
        )

    def relay_server(self, server: subprocess.Popen[bytes]) -> int:
        """Print the server's output as it federates; its exit code."""
        assert server.stdout is not None
        for raw in server.stdout:
            line = raw.decode().rstrip()
            print(f"  server | {line}", flush=True)
        return server.wait()

    def stop(self) -> None:
        """SIGTERM every process (boards first), kill what has not exited in 20 s, close the
        links and stop the stand-in."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for link in self.links:
            link.close()
        if self.standin is not None:
            self.standin.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleepfed-demo", description=__doc__)
    parser.add_argument("--data", required=True, help="the shared data folder (holds walch2019/)")
    parser.add_argument("--boards", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="demo-run")
    parser.add_argument("--port", type=int, default=9093)
    parser.add_argument(
        "--ble-boards", type=int, default=1, help="how many boards read a BLE wearable"
    )
    return parser


def prepare(args: argparse.Namespace, walch_dir: Path) -> Demo:
    """A fresh work directory, the subjects, the demo PKI and the server's configuration."""
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    board_subjects, held_out = choose_subjects(walch_dir, args.boards)
    pki = ensure_demo_pki(workdir / "pki", ["127.0.0.1", "localhost"])
    server_config = write_file(
        workdir / "server" / "server.toml", server_toml(workdir, pki, args, walch_dir, held_out)
    )
    ble_boards = set(range(max(args.boards - args.ble_boards, 0), args.boards))
    return Demo(args, walch_dir, workdir, board_subjects, held_out, pki, server_config, ble_boards)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.time()
    walch_dir = Path(args.data).resolve() / "walch2019"
    if not walch_subjects(walch_dir):
        parser.error(f"no Walch 2019 subjects in {walch_dir}")
    demo = prepare(args, walch_dir)
    print(
        f"sleepfed demo: {args.boards} boards, {args.rounds} rounds, TLS on 127.0.0.1:{args.port}"
    )
    print(f"held-out subjects scored by the server: {', '.join(demo.held_out)}")
    try:
        return demo.run(started)
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
