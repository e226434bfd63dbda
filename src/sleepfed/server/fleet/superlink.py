"""The Flower SuperLink as a supervised child, and runs submitted to it with ``flwr run``.

Its own state (nodes, runs, messages and their objects) is kept in memory by default
(``server.superlink_state = "memory"``, Flower's ``:flwr-in-memory:``). With a SQLite file
(``"sqlite"``: ``superlink.db``) every Fleet request is a transaction on that one file, and
under a fleet's load the SuperLink answers ``database is locked`` (HTTP 500) once a request
waits out its 5-s busy timeout; Flower's SuperNode does not retry that, so a board's reply
is lost and its round waits out the timeout (docs/benchmarks.md, Load). Nothing of ours
needs that file across restarts: a run resumes from the server's own history, and the
registry registers every board again with each new SuperLink
(sleepfed.server.fleet.supervision). The file mode stays for tests of those faults.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from sleepfed.common.flower_process import (
    descendants,
    flower_bin,
    flower_environment,
    kill_remembered,
    stop_process_group,
)
from sleepfed.common.private_files import ensure_private_dir
from sleepfed.server.app.privacy import run_config_entries
from sleepfed.server.app.strategies import run_config_entries as strategy_run_config
from sleepfed.server.app.update_validation import run_config_entries as validation_run_config
from sleepfed.server.fleet.fleet_proxy import die_with_parent, loopback_tls
from sleepfed.server.ops.config import ServerConfig

log = logging.getLogger("sleepfed.server")

CONNECTION_NAME = "sleepfed"


IN_MEMORY = ":flwr-in-memory:"  # Flower's name for its in-memory link state and objects


def superlink_database(config: ServerConfig) -> Path | None:
    """The SuperLink's SQLite file, or None when its state is in memory."""
    return config.state_dir / "superlink.db" if config.superlink_state == "sqlite" else None


def superlink_command(config: ServerConfig) -> list[str]:
    """The SuperLink on loopback only; the boards reach it through the fleet proxy."""
    database = superlink_database(config)
    command = [
        flower_bin("flower-superlink"),
        "--database",
        str(database) if database is not None else IN_MEMORY,
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(config.superlink_port),
    ]
    if config.insecure:
        command.append("--insecure")
    else:
        loopback = loopback_tls(config)
        command += [
            "--ssl-certfile",
            str(loopback["cert"]),
            "--ssl-keyfile",
            str(loopback["key"]),
            "--ssl-ca-certfile",
            str(loopback["ca"]),
        ]
    if config.node_auth:
        # Without it Flower admits any node: registering keys is not enforcing them.
        command.append("--enable-supernode-auth")
    return command


def write_connection(config: ServerConfig) -> None:
    """The ``flwr`` CLI's connection to our SuperLink (its loopback side), in our own
    FLWR_HOME."""
    home = config.state_dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION_NAME}"',
        "",
        f"[superlink.{CONNECTION_NAME}]",
        f'address = "{config.superlink_address}"',
    ]
    if config.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{loopback_tls(config)["ca"]}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def install_app_bundle(config: ServerConfig) -> Path:
    """The code-free app bundle (a pyproject.toml naming the installed components)."""
    app_dir = config.state_dir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    source = resources.files("sleepfed.server.app") / "flower_app" / "pyproject.toml"
    (app_dir / "pyproject.toml").write_text(source.read_text())
    return app_dir


def mark_leftover_nodes_offline(database: Path, now: float | None = None) -> int:
    """Nodes that a previous SuperLink process left "online" are offline: a SuperLink that is
    not running yet has no live connection. Flower keeps each node online for two heartbeat
    intervals (60 s) after its last heartbeat, across restarts, so without this the first
    round after a restart is sent to nodes that are gone, and fails with "node offline"
    replies, while the returning boards are refused activation as "already online".
    Returns how many nodes were marked; 0 on a new database."""
    if not database.exists():
        return 0
    at = time.time() if now is None else now
    connection = sqlite3.connect(database, timeout=30)
    try:
        with connection:  # one transaction, committed on leaving
            marked = connection.execute(
                "UPDATE node SET status = 'offline', online_until = ?, last_deactivated_at = ? "
                "WHERE status = 'online'",
                (at, datetime.fromtimestamp(at, UTC).isoformat()),
            ).rowcount
    except sqlite3.OperationalError as error:  # no node table yet, or a changed schema
        log.warning("could not reset leftover nodes in %s: %s", database, error)
        return 0
    finally:
        connection.close()
    return marked


class SuperLink:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config.state_dir / "superlink.log"
        self.children: set[tuple[int, int]] = set()

    def start(self, ready_timeout: float = 60.0) -> None:
        ensure_private_dir(self.config.state_dir)  # messages and node keys: owner only
        if self.config.insecure:
            log.warning("SuperLink runs WITHOUT TLS (--insecure): traffic is not encrypted")
        write_connection(self.config)
        database = superlink_database(self.config)
        leftover = mark_leftover_nodes_offline(database) if database is not None else 0
        if leftover:
            log.info("%d nodes left online by the previous SuperLink marked offline", leftover)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                superlink_command(self.config),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=flower_environment(self.config.state_dir / "flwr"),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"SuperLink exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.config.superlink_port), 1).close()
                log.info(
                    "SuperLink listening on %s, loopback only (pid %d)",
                    self.config.superlink_address,
                    self.process.pid,
                )
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"SuperLink did not listen on {self.config.superlink_address} in {ready_timeout:.0f}s"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def remember_children(self) -> None:
        """Note the SuperLink's descendants (its flower-superexec and the run's ServerApp,
        which Flower starts in sessions of their own): a SuperLink that dies leaves them
        behind, and ``stop`` ends them."""
        if self.alive():
            assert self.process is not None
            self.children |= descendants(self.process.pid)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process_group(process, 15.0)
        # A killed SuperLink's orphans: its run's ServerApp would otherwise outlive it and
        # write the run's end after the next run has begun.
        killed = kill_remembered(self.children)
        self.children = set()
        if killed:
            log.info("ended %d process(es) the stopped SuperLink left behind", killed)


def submit_run(config: ServerConfig) -> str:
    """Submit one run of the ServerApp; returns its run id."""
    app_dir = install_app_bundle(config)
    overrides = {
        "num-rounds": config.rounds,
        "min-nodes": config.min_nodes,
        "fraction-train": config.fraction_train,
        "fraction-evaluate": config.fraction_evaluate,
        "local-iterations": config.local_iterations,
        "learning-rate": config.learning_rate,
        "round-timeout": config.round_timeout_seconds,
        "history-path": str(config.history_path),
        "eval-data": str(config.eval_data or ""),
        "eval-subjects": " ".join(config.eval_subjects),
        **validation_run_config(config.validation),
        **run_config_entries(config.privacy),
        **strategy_run_config(config.strategy),
    }
    run_config = config.state_dir / "run-config.toml"
    run_config.write_text(
        "".join(f"{key} = {json.dumps(value)}\n" for key, value in overrides.items())
    )
    result = subprocess.run(
        [
            flower_bin("flwr"),
            "run",
            str(app_dir),
            CONNECTION_NAME,
            "--run-config",
            str(run_config),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=flower_environment(config.state_dir / "flwr"),
        timeout=120,
    )
    try:
        payload = json.loads(result.stdout[result.stdout.index("{") :])
    except ValueError:
        payload = {}
    if result.returncode != 0 or not payload.get("success"):
        output = f"{result.stdout.strip()} {result.stderr.strip()}"[:2000]
        raise RuntimeError(f"flwr run failed ({result.returncode}): {output}")
    return str(payload["run-id"])
