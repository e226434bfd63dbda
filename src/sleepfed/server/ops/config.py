"""The server's configuration file (TOML). Every error names the field it is about."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepfed.common.config_fields import (
    METRICS_FIELDS,
    ConfigError,
    Field,
    checked_path,
    get_field,
    parse_metrics,
    parse_strictly,
    read_fields,
    read_toml,
)
from sleepfed.model import objective
from sleepfed.server.app.privacy import PRIVACY_FIELDS, PrivacySettings, parse_privacy
from sleepfed.server.app.strategies import STRATEGY_FIELDS, StrategySettings, parse_strategy
from sleepfed.server.app.update_validation import (
    VALIDATION_FIELDS,
    ValidationRules,
    parse_validation,
)

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
    superlink_state: str = "memory"  # the SuperLink's own state (sleepfed.server.fleet.superlink)

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


SERVER_FIELDS = (
    Field("state_dir", str, help="history, registry, SuperLink state (relative: to this file)"),
    Field("host", str, "127.0.0.1", "the boards' address: the fleet proxy listens here"),
    Field("port", int, 9093, "its port", 1, 65535),
    Field("superlink_port", int, DEFAULT_SUPERLINK_PORT, "the SuperLink's, on 127.0.0.1", 1,
          65535),
    Field("insecure", bool, False, "no TLS (tests only)"),
    Field("node_auth", bool, None, "only enrolled boards join (default: on unless insecure)"),
    Field("certfile", str, None, "the server's certificate (PEM); required unless insecure"),
    Field("keyfile", str, None, "its key (PEM); required unless insecure"),
    Field("ca_certfile", str, None, "the CA boards pin (PEM); required unless insecure"),
    Field("reconcile_seconds", float, 30.0, "apply the board registry this often", 1, 60),
    Field("superlink_state", str, "memory", "the SuperLink's own state: memory, or sqlite "
          "(superlink.db; for tests of its faults)", choices=("memory", "sqlite")),
)  # fmt: skip
RUN_FIELDS = (
    Field("rounds", int, 5, "rounds per run (0: the latest model scored by the boards)", low=0),
    Field("min_nodes", int, 2, "boards a round needs", low=1),
    Field("fraction_train", float, 1.0, "share of boards sampled to train", 0, 1),
    Field("fraction_evaluate", float, 1.0, "share of boards sampled to evaluate", 0, 1),
    Field("local_iterations", int, objective.DEFAULT_STEPS, "a board's steps per round", low=1),
    Field("learning_rate", float, objective.DEFAULT_LEARNING_RATE, "their step size", high=2,
          above=0),
    Field("round_timeout_seconds", float, 600.0, "a round waits this long for replies"),
    Field("run_interval_minutes", float, 0.0, "start a new run this often; 0: one run"),
)  # fmt: skip
FEDERATION_FIELDS = (*RUN_FIELDS, *STRATEGY_FIELDS)
EVALUATION_FIELDS = (
    Field("data", str, "", "the Walch 2019 folder for held-out scoring; empty: none"),
    Field("subjects", list, [], "held-out subject ids"),
)
# (label, fields) in the order docs/configuration.md lists them
REFERENCE = (
    ("`[server]`", SERVER_FIELDS),
    ("`[federation]`", FEDERATION_FIELDS),
    ("`[evaluation]`", EVALUATION_FIELDS),
    ("`[validation]`", VALIDATION_FIELDS),
    ("`[privacy]`", PRIVACY_FIELDS),
    ("`[metrics]`", METRICS_FIELDS),
)


def _tls_paths(server: dict[str, Any], path_of: Callable[[str, str], Path]) -> dict[str, Any]:
    if server["insecure"]:
        return {key: None for key in ("certfile", "keyfile", "ca_certfile")}
    paths = {}
    for key in ("certfile", "keyfile", "ca_certfile"):
        if server[key] is None:
            raise ConfigError(f"server.{key}: missing")
        paths[key] = path_of(server[key], f"server.{key}")
    return paths


def parse_config(data: dict[str, Any], base: Path) -> ServerConfig:
    def path_of(text: str, name: str) -> Path:
        return checked_path(text, name, base).resolve()

    server = read_fields(get_field(data, "server", dict, "config"), "server", SERVER_FIELDS)
    fed = get_field(data, "federation", dict, "config", {})
    core = read_fields(fed, "federation", RUN_FIELDS)
    evaluation = read_fields(
        get_field(data, "evaluation", dict, "config", {}), "evaluation", EVALUATION_FIELDS
    )
    node_auth = not server["insecure"] if server["node_auth"] is None else server["node_auth"]
    if node_auth and server["insecure"]:
        raise ConfigError("server.node_auth: needs TLS (server.insecure = false)")
    tls = _tls_paths(server, path_of)
    if server["superlink_port"] == server["port"]:
        raise ConfigError(
            f"server.superlink_port: a free port other than server.port, got "
            f"{server['superlink_port']}"
        )
    if not all(isinstance(s, str) for s in evaluation["subjects"]):
        raise ConfigError("evaluation.subjects: expected a list of strings")
    metrics = parse_metrics(data)
    privacy, strategy = parse_privacy(data, core["rounds"]), parse_strategy(fed)
    if strategy.asynchronous and privacy.secure_aggregation:
        raise ConfigError(
            f"federation.strategy = {strategy.name!r}: SecAgg+ needs synchronous cohorts "
            "(privacy.secure_aggregation = false, or a synchronous strategy)"
        )
    return ServerConfig(
        state_dir=path_of(server["state_dir"], "server.state_dir"),
        host=server["host"],
        port=server["port"],
        insecure=server["insecure"],
        node_auth=node_auth,
        **tls,
        rounds=core["rounds"],
        min_nodes=core["min_nodes"],
        fraction_train=core["fraction_train"],
        fraction_evaluate=core["fraction_evaluate"],
        local_iterations=core["local_iterations"],
        learning_rate=core["learning_rate"],
        round_timeout_seconds=core["round_timeout_seconds"],
        run_interval_seconds=60.0 * core["run_interval_minutes"],
        eval_data=path_of(evaluation["data"], "evaluation.data") if evaluation["data"] else None,
        eval_subjects=evaluation["subjects"],
        privacy=privacy,
        validation=parse_validation(data),
        strategy=strategy,
        metrics_host=metrics[0],
        metrics_port=metrics[1],
        superlink_port=server["superlink_port"],
        reconcile_seconds=server["reconcile_seconds"],
        superlink_state=server["superlink_state"],
    )


def load_config(path: str | Path) -> ServerConfig:
    path = Path(path)
    base = path.parent.resolve()
    return parse_strictly(read_toml(path), lambda data: parse_config(data, base))
