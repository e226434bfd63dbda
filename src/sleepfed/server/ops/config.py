"""The server's configuration file (TOML). Every error names the field it is about."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepfed.common.config_fields import ConfigError, get_field, parse_metrics
from sleepfed.model import objective
from sleepfed.server.app.privacy import PrivacySettings, parse_privacy
from sleepfed.server.app.strategies import StrategySettings, parse_strategy
from sleepfed.server.app.update_validation import ValidationRules, parse_validation

__all__ = ["ConfigError", "ServerConfig", "load_config", "parse_config"]


# Not 9094: a SuperNode's own API listens there by default (boards and server may share a
# machine in tests and demos).
DEFAULT_SUPERLINK_PORT = 9099


@dataclass(frozen=True)
class ServerConfig:
    state_dir: Path
    host: str
    port: int  # the boards' address: the fleet proxy (sleepfed.server.fleet.fleet_proxy)
    insecure: bool
    node_auth: bool
    certfile: Path | None
    keyfile: Path | None
    ca_certfile: Path | None
    rounds: int
    min_nodes: int
    fraction_train: float
    fraction_evaluate: float
    local_iterations: int
    learning_rate: float
    round_timeout_seconds: float
    run_interval_seconds: float
    eval_data: Path | None
    eval_subjects: list[str]
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    validation: ValidationRules = field(default_factory=ValidationRules)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # Prometheus endpoint of `sleepfed-server run`; 0 = off
    superlink_port: int = DEFAULT_SUPERLINK_PORT  # the SuperLink's port, on 127.0.0.1 only
    reconcile_seconds: float = 30.0  # how often `run` applies the registry to the SuperLink

    @property
    def history_path(self) -> Path:
        return self.state_dir / "history.db"

    @property
    def address(self) -> str:
        """Where boards connect: the fleet proxy."""
        return f"{self.host}:{self.port}"

    @property
    def superlink_address(self) -> str:
        """The SuperLink itself, on loopback only: where operator commands connect."""
        return f"127.0.0.1:{self.superlink_port}"


def parse_config(data: dict[str, Any], base: Path) -> ServerConfig:
    from sleepfed.common.config_fields import checked_path

    def path_of(text: str, name: str) -> Path:
        return checked_path(text, name, base).resolve()

    server = get_field(data, "server", dict, "config")
    fed = get_field(data, "federation", dict, "config", {})
    evaluation = get_field(data, "evaluation", dict, "config", {})
    insecure = get_field(server, "insecure", bool, "server", False)
    node_auth = get_field(server, "node_auth", bool, "server", not insecure)
    if node_auth and insecure:
        raise ConfigError("server.node_auth: needs TLS (server.insecure = false)")
    tls = {
        key: (
            path_of(get_field(server, key, str, "server"), f"server.{key}")
            if not insecure
            else None
        )
        for key in ("certfile", "keyfile", "ca_certfile")
    }
    rounds = get_field(fed, "rounds", int, "federation", 5)
    min_nodes = get_field(fed, "min_nodes", int, "federation", 2)
    if rounds < 1:
        raise ConfigError(f"federation.rounds: must be >= 1, got {rounds}")
    if min_nodes < 1:
        raise ConfigError(f"federation.min_nodes: must be >= 1, got {min_nodes}")
    fractions = {}
    for key in ("fraction_train", "fraction_evaluate"):
        value = get_field(fed, key, float, "federation", 1.0)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"federation.{key}: must be within 0..1, got {value}")
        fractions[key] = value
    local_iterations = get_field(
        fed, "local_iterations", int, "federation", objective.DEFAULT_STEPS
    )
    if local_iterations < 1:
        raise ConfigError(f"federation.local_iterations: must be >= 1, got {local_iterations}")
    learning_rate = get_field(
        fed, "learning_rate", float, "federation", objective.DEFAULT_LEARNING_RATE
    )
    if not 0.0 < learning_rate <= 2.0:
        raise ConfigError(f"federation.learning_rate: must be within (0, 2], got {learning_rate}")
    port = get_field(server, "port", int, "server", 9093)
    if not 0 < port < 65536:
        raise ConfigError(f"server.port: no such port {port}")
    superlink_port = get_field(server, "superlink_port", int, "server", DEFAULT_SUPERLINK_PORT)
    if not 0 < superlink_port < 65536 or superlink_port == port:
        raise ConfigError(
            f"server.superlink_port: a free port other than server.port, got {superlink_port}"
        )
    reconcile = get_field(server, "reconcile_seconds", float, "server", 30.0)
    if not 1.0 <= reconcile <= 60.0:
        raise ConfigError(f"server.reconcile_seconds: must be within 1..60, got {reconcile}")
    data_dir = get_field(evaluation, "data", str, "evaluation", "")
    subjects = get_field(evaluation, "subjects", list, "evaluation", [])
    if not all(isinstance(s, str) for s in subjects):
        raise ConfigError("evaluation.subjects: expected a list of strings")
    metrics = parse_metrics(data)
    return ServerConfig(
        state_dir=path_of(get_field(server, "state_dir", str, "server"), "server.state_dir"),
        host=get_field(server, "host", str, "server", "127.0.0.1"),
        port=port,
        insecure=insecure,
        node_auth=node_auth,
        certfile=tls["certfile"],
        keyfile=tls["keyfile"],
        ca_certfile=tls["ca_certfile"],
        rounds=rounds,
        min_nodes=min_nodes,
        fraction_train=fractions["fraction_train"],
        fraction_evaluate=fractions["fraction_evaluate"],
        local_iterations=local_iterations,
        learning_rate=learning_rate,
        round_timeout_seconds=get_field(fed, "round_timeout_seconds", float, "federation", 600.0),
        run_interval_seconds=60.0
        * get_field(fed, "run_interval_minutes", float, "federation", 0.0),
        eval_data=path_of(data_dir, "evaluation.data") if data_dir else None,
        eval_subjects=subjects,
        privacy=parse_privacy(data, rounds),
        validation=parse_validation(data),
        strategy=parse_strategy(fed),
        metrics_host=metrics[0],
        metrics_port=metrics[1],
        superlink_port=superlink_port,
        reconcile_seconds=reconcile,
    )


def load_config(path: str | Path) -> ServerConfig:
    from sleepfed.common.config_fields import parse_strictly, read_toml

    path = Path(path)
    base = path.parent.resolve()
    return parse_strictly(read_toml(path), lambda data: parse_config(data, base))
