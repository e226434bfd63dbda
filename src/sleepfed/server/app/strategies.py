"""The aggregation strategies the server offers, all Flower's own classes.

``[federation] strategy`` in server.toml picks one:

* ``fedavg`` (default): weighted mean of the boards' models (McMahan et al. 2017);
* ``fedprox``: FedAvg whose train config carries ``proximal-mu``; each board's gradient
  steps then carry the proximal term (``sleepfed.model.objective``)
  (``federation.proximal_mu``, default 0.1);
* ``fedmedian``: coordinate-wise median of the boards' models (Yin et al. 2018);
* ``fedtrimmedavg``: coordinate-wise mean after dropping the ``federation.trimmed_beta``
  share (default 0.2) of highest and lowest values (Yin et al. 2018);
* ``krum``: the one model closest to its n − f − 2 nearest others, f =
  ``federation.krum_malicious_nodes`` (default 0; Blanchard et al. 2017);
* ``fedbuff``: asynchronous, buffered (Nguyen et al. 2022; sleepfed.server.app.fedbuff and
  fedbuff_loop): a board gets the current model whenever it is online and idle, and every
  ``federation.buffer_size`` updates make a new version, each discounted by its staleness;
  updates over ``federation.max_staleness`` versions old are rejected. Not with SecAgg+
  (synchronous cohorts); under DP one update per board a version, noise per version.

The server's recording (history, update screening) is kept for each: :func:`build_strategy`
puts the server's recording FedAvg subclass in front of the chosen Flower class, whose own
``aggregate_train`` then does the aggregation (all of them subclass FedAvg).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from sleepfed.common.config_fields import ConfigError, Field, read_fields

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


# Strategies that are no Flower class: the ServerApp runs their own loop.
ASYNCHRONOUS = ("fedbuff",)
NAMES = (*STRATEGIES, *ASYNCHRONOUS)


@dataclass(frozen=True)
class StrategySettings:
    name: str = "fedavg"
    proximal_mu: float = 0.1
    trimmed_beta: float = 0.2
    krum_malicious_nodes: int = 0
    buffer_size: int = 20  # FedBuff: K (benchmarks/bench_time_zones.py)
    max_staleness: int = 10
    server_learning_rate: float = 0.5

    @property
    def asynchronous(self) -> bool:
        return self.name in ASYNCHRONOUS

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ConfigError(
                f"federation.strategy: unknown strategy {self.name!r} (one of {', '.join(NAMES)})"
            )
        if self.buffer_size < 1 or self.max_staleness < 0:
            raise ConfigError(
                "federation.buffer_size must be >= 1 and federation.max_staleness >= 0, got "
                f"{self.buffer_size} and {self.max_staleness}"
            )
        if not 0.0 < self.server_learning_rate <= 1.0:
            raise ConfigError(
                "federation.server_learning_rate: must be within (0, 1], got "
                f"{self.server_learning_rate}"
            )
        if self.proximal_mu < 0:
            raise ConfigError(f"federation.proximal_mu: must be >= 0, got {self.proximal_mu}")
        if not 0.0 <= self.trimmed_beta < 0.5:
            raise ConfigError(
                f"federation.trimmed_beta: must be within 0..0.5 (excluded), "
                f"got {self.trimmed_beta}"
            )
        if self.krum_malicious_nodes < 0:
            raise ConfigError(
                f"federation.krum_malicious_nodes: must be >= 0, got {self.krum_malicious_nodes}"
            )


_DEFAULT = StrategySettings()
# Checked by StrategySettings; part of the [federation] table.
STRATEGY_FIELDS = (
    Field("strategy", str, _DEFAULT.name, f"aggregation: {', '.join(NAMES)}"),
    Field("proximal_mu", float, _DEFAULT.proximal_mu, "FedProx: μ", low=0),
    Field("trimmed_beta", float, _DEFAULT.trimmed_beta, "FedTrimmedAvg: β, below 0.5", low=0),
    Field("krum_malicious_nodes", int, _DEFAULT.krum_malicious_nodes, "Krum: f", low=0),
    Field("buffer_size", int, _DEFAULT.buffer_size, "FedBuff: updates per version (K)", low=1),
    Field(
        "max_staleness", int, _DEFAULT.max_staleness, "FedBuff: versions an update may lag", low=0
    ),
    Field(
        "server_learning_rate",
        float,
        _DEFAULT.server_learning_rate,
        "FedBuff: step towards the buffered mean, (0, 1]",
        low=0,
    ),
)
STRATEGY_KEYS = tuple(f.key for f in STRATEGY_FIELDS)


def parse_strategy(federation: dict[str, Any]) -> StrategySettings:
    """The strategy fields of the ``[federation]`` table."""
    values = read_fields(federation, "federation", STRATEGY_FIELDS)
    return StrategySettings(name=values.pop("strategy"), **values)


def run_config_entries(settings: StrategySettings) -> dict[str, str | float | int]:
    """The run config keys the ServerApp reads back with :func:`settings_from_run_config`."""
    return {
        "strategy": settings.name,
        "proximal-mu": settings.proximal_mu,
        "trimmed-beta": settings.trimmed_beta,
        "krum-malicious-nodes": settings.krum_malicious_nodes,
        "buffer-size": settings.buffer_size,
        "max-staleness": settings.max_staleness,
        "server-learning-rate": settings.server_learning_rate,
    }


def settings_from_run_config(cfg: Any) -> StrategySettings:
    default = StrategySettings()
    return StrategySettings(
        name=str(cfg.get("strategy", default.name)),
        proximal_mu=float(cfg.get("proximal-mu", default.proximal_mu)),
        trimmed_beta=float(cfg.get("trimmed-beta", default.trimmed_beta)),
        krum_malicious_nodes=int(cfg.get("krum-malicious-nodes", default.krum_malicious_nodes)),
        buffer_size=int(cfg.get("buffer-size", default.buffer_size)),
        max_staleness=int(cfg.get("max-staleness", default.max_staleness)),
        server_learning_rate=float(cfg.get("server-learning-rate", default.server_learning_rate)),
    )


def strategy_class(name: str, recording: type[FedAvg] | None = None) -> type[FedAvg]:
    """Flower's class for ``name``, behind ``recording`` (a FedAvg subclass) when given."""
    if name not in STRATEGIES:
        raise ConfigError(f"federation.strategy: unknown strategy {name!r}")
    flower_class = STRATEGIES[name]
    if recording is None:
        return flower_class
    if flower_class is FedAvg:
        return recording
    return type(f"{recording.__name__}{flower_class.__name__}", (recording, flower_class), {})


def build_strategy(
    settings: StrategySettings, recording: type[FedAvg] | None = None, **common: Any
) -> FedAvg:
    """The chosen strategy; ``common`` holds the FedAvg arguments (fractions, minimums, …)
    and any the recording class takes."""
    extra: dict[str, Any] = {}
    if settings.name == "fedprox":
        extra["proximal_mu"] = settings.proximal_mu
    elif settings.name == "fedtrimmedavg":
        extra["beta"] = settings.trimmed_beta
    elif settings.name == "krum":
        extra["num_malicious_nodes"] = settings.krum_malicious_nodes
    return strategy_class(settings.name, recording)(**common, **extra)
