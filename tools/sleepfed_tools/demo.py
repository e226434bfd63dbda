"""The demo: one server and several boards on 127.0.0.1, each board a real agent process fed
by its own replayed real subject through its own pseudo-terminal, federated over TLS.

    python -m sleepfed_tools.demo --data ../shared/data

Boards replay Walch 2019 subjects (PSG-labelled); the server scores every round's global
model on the Walch subjects that no board holds. The last board (``--ble-boards``) reads its
wearable over Bluetooth LE: bleak's real BlueZ backend talks over a private D-Bus system bus
to a BlueZ stand-in whose heart-rate sensor sends the subject's night as notifications,
while a reference device sends the PSG labels over serial. At the end each board's predicted night
quality is printed beside its PSG reference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sleepfed.board.sources.ble_parsing import MOVEMENT
from sleepfed.model.features import night_quality, walch_subjects
from sleepfed.provisioning import agent_toml
from sleepfed.provisioning.pki import ensure_demo_pki
from sleepfed_tools.replay import (
    PtyLink,
    default_night_start,
    replay,
    replay_ble,
    walch_ble_notifications,
    walch_labels,
    walch_readings,
)

PYTHON = sys.executable


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _agent_status(config: Path) -> dict[str, object] | None:
    result = subprocess.run(
        [PYTHON, "-m", "sleepfed.board.service.cli", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # 1 (daemon not running) and 3 (degraded) still print the status.
    return json.loads(result.stdout) if result.stdout.strip() else None


def _wait(predicate, timeout: float, what: str, interval: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ble_address(index: int) -> str:
    return f"C0:FF:EE:00:00:{index + 1:02X}"


def _sources(ble: bool, port: str, address: str) -> list[dict[str, object]]:
    """The board's sources: a serial wearable, or a BLE wearable + a serial reference device."""
    if not ble:
        return [{"type": "serial", "name": "wrist", "port": port}]
    strap = {"name": "strap", "address": address, "movement_characteristic": MOVEMENT}
    return [
        {"type": "ble", "name": "wearable", "devices": [strap]},
        {"type": "serial", "name": "reference", "port": port},
    ]


def enroll_boards(
    workdir: Path, server_config: Path, pki: dict[str, Path], args: argparse.Namespace
) -> list[Path]:
    """Each board makes its own key pair (sleepfed-enroll, below a root of its own: the demo
    does not touch this machine's /etc), the operator registers the requests."""
    from sleepfed.provisioning.pki import fingerprint_sha256

    fingerprint = fingerprint_sha256(pki["ca"])
    requests, keys = [], []
    for index in range(args.boards):
        root = workdir / f"board{index + 1}" / "root"
        result = subprocess.run(
            [
                PYTHON,
                "-m",
                "sleepfed.provisioning.enroll",
                "--board-id",
                f"board{index + 1}",
                "--server",
                f"127.0.0.1:{args.port}",
                "--ca-file",
                str(pki["ca"]),
                "--ca-fingerprint",
                fingerprint,
                "--root",
                str(root),
                "--no-system-user",
                "--no-unit",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        request = root / "etc" / "sleepfed" / "enrollment-request.txt"
        assert request.read_text().strip() == result.stdout.strip().splitlines()[-1]
        requests.append(str(request))
        keys.append(root / "etc" / "sleepfed" / "node.key")
    subprocess.run(
        [
            PYTHON,
            "-m",
            "sleepfed.server.ops.cli",
            "boards",
            "register",
            "--config",
            str(server_config),
            *requests,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    print(
        f"{args.boards} boards enrolled: each made its key pair, the server registered them "
        f"(node authentication on; CA fingerprint {fingerprint[:23]}...)"
    )
    return keys


def choose_subjects(walch_dir: Path, boards: int) -> tuple[list[str], list[str]]:
    """Boards get the subjects with the longest nights; the rest are the held-out set."""
    subjects = walch_subjects(walch_dir)
    lengths = {s: sum(1 for _ in (walch_dir / f"{s}_psg_labels.out").open()) for s in subjects}
    ranked = sorted(subjects, key=lambda s: (-lengths[s], s))
    return ranked[:boards], [s for s in subjects if s not in ranked[:boards]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sleepfed-demo", description=__doc__)
    parser.add_argument("--data", required=True, help="the shared data folder (holds walch2019/)")
    parser.add_argument("--boards", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="demo-run")
    parser.add_argument("--port", type=int, default=9093)
    parser.add_argument(
        "--ble-boards", type=int, default=1, help="how many boards read a BLE wearable"
    )
    args = parser.parse_args(argv)
    started = time.time()
    walch_dir = Path(args.data).resolve() / "walch2019"
    if not walch_subjects(walch_dir):
        parser.error(f"no Walch 2019 subjects in {walch_dir}")
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    board_subjects, held_out = choose_subjects(walch_dir, args.boards)
    pki = ensure_demo_pki(workdir / "pki", ["127.0.0.1", "localhost"])
    server_config = _write(
        workdir / "server" / "server.toml",
        f"""[server]
state_dir = "{workdir / "server" / "state"}"
host = "127.0.0.1"
port = {args.port}
certfile = "{pki["cert"]}"
keyfile = "{pki["key"]}"
ca_certfile = "{pki["ca"]}"

[federation]
rounds = {args.rounds}
min_nodes = {args.boards}
local_iterations = 20
round_timeout_seconds = 300

[evaluation]
data = "{walch_dir}"
subjects = {json.dumps(held_out)}
""",
    )
    print(
        f"sleepfed demo: {args.boards} boards, {args.rounds} rounds, TLS on 127.0.0.1:{args.port}"
    )
    print(f"held-out subjects scored by the server: {', '.join(held_out)}")
    processes: list[subprocess.Popen[bytes]] = []
    links: list[PtyLink] = []
    ble_boards = set(range(max(args.boards - args.ble_boards, 0), args.boards))
    standin = None
    if ble_boards:
        from sleepfed_tools.bluez_standin import BlueZStandIn

        # A private D-Bus system bus; the agents started below inherit its address.
        standin = BlueZStandIn(log_dir=workdir).start()
    try:
        keys = enroll_boards(workdir, server_config, pki, args)
        server_log = (workdir / "server" / "server.log").open("wb")
        server = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "sleepfed.server.ops.cli",
                "run",
                "--once",
                "--config",
                str(server_config),
            ],
            stdout=subprocess.PIPE,
            stderr=server_log,
            start_new_session=True,
        )
        processes.append(server)
        configs = []
        for index, subject in enumerate(board_subjects):
            link = PtyLink()
            links.append(link)
            board_dir = workdir / f"board{index + 1}"
            config = agent_toml.write(
                board_dir / "agent.toml",
                {
                    "board": {"id": f"board{index + 1}", "timezone": "UTC"},
                    "buffer": {
                        "path": str(board_dir / "buffer.db"),
                        "synchronous": "full",
                        "max_mb": 256,
                    },
                    "sources": _sources(index in ble_boards, link.device_path, _ble_address(index)),
                    "nights": {"settle_seconds": 3},
                    "federation": {
                        "server": f"127.0.0.1:{args.port}",
                        "root_certificates": str(pki["ca"]),
                        "auth_private_key": str(keys[index]),
                        "window": "always",
                        "min_new_labelled_windows": 10,
                        "retry_initial_seconds": 1,
                        "retry_max_seconds": 10,
                        "session_idle_seconds": 600,
                        "refused_retry_minutes": 0.2,
                        "supernode_port": 9200 + index,
                    },
                },
            )
            configs.append(config)
            log = (board_dir / "agent.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [PYTHON, "-m", "sleepfed.board.service.cli", "run", "--config", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if index in ble_boards:
                assert standin is not None
                standin.add_heart_rate_sensor(
                    _ble_address(index), with_illuminance=False, with_current_time=True
                )
                standin.advertise(_ble_address(index))
                how = (
                    f"BLE wearable {_ble_address(index)} (Heart Rate 0x2A37 + RR, movement, "
                    f"Current Time) + reference labels over serial {link.device_path}"
                )
            else:
                how = f"serial {link.device_path}"
            print(
                f"board{index + 1}: agent pid {processes[-1].pid}, {how}, "
                f"replaying Walch subject {subject} (no light channel in this data set)"
            )

        def connected(index: int) -> bool:
            status = _agent_status(configs[index])
            expected = "2/2" if index in ble_boards else "1/1"
            return bool(status and status["daemon"]["sources_connected"] == expected)  # type: ignore[index]

        _wait(
            lambda: all(connected(i) for i in range(len(configs))),
            90,
            "every agent to open its serial port and connect its BLE wearable",
        )
        night_start = default_night_start()
        counts: dict[int, int] = {}

        def feed(index: int) -> None:
            link, subject = links[index], board_subjects[index]
            if index not in ble_boards:
                counts[index] = replay(
                    walch_readings(walch_dir, subject, night_start),
                    link.write,
                    rate=None,
                    drain=link.drain,
                )
                return
            assert standin is not None
            address = _ble_address(index)
            labels = replay(
                walch_labels(walch_dir, subject, night_start), link.write, None, drain=link.drain
            )
            counts[index] = labels + replay_ble(
                walch_ble_notifications(walch_dir, subject, night_start),
                lambda uuid, value: standin.notify(address, uuid, value),
                lambda uuid: standin.wait_until_notifying(address, uuid, timeout=60),
            )

        feeders = [threading.Thread(target=feed, args=(i,)) for i in range(len(configs))]
        replay_started = time.time()
        for thread in feeders:
            thread.start()
        for thread in feeders:
            thread.join()
        for index, config in enumerate(configs):
            _wait(
                lambda c=config, n=counts[index]: (
                    (_agent_status(c) or {}).get("buffer", {}).get("readings", 0) > 0
                ),
                30,
                "readings to be committed",
            )
        print(
            f"replayed {sum(counts.values())} readings and notifications into "
            f"{len(configs)} boards in "
            f"{time.time() - replay_started:.1f}s; boards extract their nights and join"
        )

        assert server.stdout is not None
        for raw in server.stdout:
            line = raw.decode().rstrip()
            print(f"  server | {line}", flush=True)
        code = server.wait()
        if code != 0:
            print(f"server exited with {code}; see {workdir / 'server'}")
            return 1

        def predicted(config: Path) -> bool:
            status = _agent_status(config) or {}
            night = status.get("last_night", {})
            model = status.get("model", {})
            return bool(night.get("predicted_quality")) and night.get("model_version") == model.get(
                "version"
            )  # type: ignore[union-attr]

        _wait(lambda: all(predicted(c) for c in configs), 60, "every board's night prediction")
        print()
        print("SE = estimated sleep efficiency, the share of 10-min windows predicted Good;")
        print("PSG: the share of windows that are Good by polysomnography, and the PSG SE")
        print(
            "board   via     subject   night        predicted        PSG windows   PSG SE"
            "      trained in"
        )
        agree = 0
        for index, config in enumerate(configs):
            status = _agent_status(config) or {}
            night = status["last_night"]
            trained = status["counters"].get("rounds_trained", 0)  # type: ignore[union-attr]
            via = "BLE" if index in ble_boards else "serial"
            reference = night["reference_efficiency"]  # type: ignore[index]
            predicted_q = night["predicted_quality"]  # type: ignore[index]
            agree += predicted_q == night_quality(reference)
            print(
                f"board{index + 1:<2d} {via:7s} {board_subjects[index]:>8s}  {night['night']}   "  # type: ignore[index]
                f"{predicted_q:4s} {100 * night['predicted_efficiency']:5.1f}%    "  # type: ignore[index]
                f"{100 * night['reference_good_share']:5.1f}%       "  # type: ignore[index]
                f"{night_quality(reference):4s} {100 * reference:5.1f}%   {trained} rounds"
            )
        print(
            f"\n{agree}/{len(configs)} boards' night quality agrees with PSG; "
            f"demo took {time.time() - started:.0f}s. Files: {workdir}"
        )
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for link in links:
            link.close()
        if standin is not None:
            standin.stop()


if __name__ == "__main__":
    sys.exit(main())
