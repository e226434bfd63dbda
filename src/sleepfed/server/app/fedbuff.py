"""FedBuff's arithmetic: buffered asynchronous aggregation (Nguyen et al., "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022).

A board trains from the global model of some version v and returns its new arrays; its update
is their difference to version v's model. Updates are buffered as they arrive, whoever sends
them and whenever; every ``buffer_size`` updates the server makes version + 1:

    x ← x + η · Σ wᵢ · s(τᵢ) · Δᵢ / Σ wᵢ,    s(τ) = 1 / √(1 + τ)

where τᵢ is the number of versions made since the one board i trained from (its staleness),
wᵢ its examples, capped at ``max_weight`` (a board claiming more counts as that many), and η
the server's learning rate. An update more than ``max_staleness`` versions old is rejected
and counted. With η = 1, fresh updates only and ``buffer_size`` boards, a version is exactly
FedAvg's example-weighted mean of the boards' arrays.

Under differential privacy (sleepfed.server.app.privacy) the boards clip their updates to C
and the buffer runs with ``one_update_per_board`` (a board's second update waits for the next
version, so one board moves a version's sum by at most C, s(τ) ≤ 1) and ``noise_stddev`` =
σ·C/K: every version adds Gaussian noise of that standard deviation to the buffer's mean
update, one Gaussian mechanism per version. The boards' examples are then withheld, and every
update weighs 1.

This module holds the numbers only: who may train, validation of an update's structure and
values, and persistence belong to the ServerApp around it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

Arrays = list[np.ndarray]


def staleness_discount(staleness: int) -> float:
    """FedBuff's s(τ) = 1 / √(1 + τ)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


@dataclass(frozen=True)
class Contribution:
    """One buffered update as it counted in a version."""

    node_id: int
    base_version: int
    staleness: int
    weight: float  # examples, capped


@dataclass
class FedBuffBuffer:
    """The global model's versions and the buffer of updates towards the next one."""

    initial: Arrays
    buffer_size: int
    max_staleness: int
    max_weight: float | None = None
    server_learning_rate: float = 1.0
    one_update_per_board: bool = False
    noise_stddev: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)
    version: int = 0
    rejected_stale: int = 0
    last_contributions: list[Contribution] = field(default_factory=list)
    _models: dict[int, Arrays] = field(default_factory=dict)
    _pending: list[tuple[Contribution, Arrays]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.max_staleness < 0:
            raise ValueError("buffer_size must be >= 1 and max_staleness >= 0")
        if not math.isfinite(self.server_learning_rate) or self.server_learning_rate <= 0:
            raise ValueError("server_learning_rate must be a positive number")
        if not math.isfinite(self.noise_stddev) or self.noise_stddev < 0:
            raise ValueError("noise_stddev must be a number >= 0")
        self._models[self.version] = [np.array(a, dtype=float) for a in self.initial]

    @property
    def model(self) -> Arrays:
        """The current global model (version ``version``)."""
        return self._models[self.version]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def holds_update_of(self, node_id: int) -> bool:
        """Whether an update of ``node_id`` waits in the buffer for the next version."""
        return any(c.node_id == node_id for c, _ in self._pending)

    def model_of(self, version: int) -> Arrays | None:
        """Version ``version``'s model, while an update may still be trained from it."""
        return self._models.get(version)

    @property
    def kept_versions(self) -> list[int]:
        """The versions an update may still be trained from (the last ``max_staleness`` + 1)."""
        return sorted(self._models)

    def refuse_if_stale(self, base_version: int) -> bool:
        """Whether an update trained from ``base_version`` is refused: over ``max_staleness``
        versions old, or from a version never made (counted in ``rejected_stale``)."""
        if base_version in self._models and self.version - base_version <= self.max_staleness:
            return False
        self.rejected_stale += 1
        return True

    def offer(self, node_id: int, base_version: int, arrays: Arrays, examples: float) -> str:
        """Buffer a board's new arrays, trained from version ``base_version``: returns
        "stale" (rejected, counted), "duplicate" (``one_update_per_board`` and the board's last
        update still waits: refused), "buffered", or "aggregated" (a new version was made)."""
        if self.refuse_if_stale(base_version):
            return "stale"
        if self.one_update_per_board and self.holds_update_of(node_id):
            return "duplicate"
        staleness = self.version - base_version
        if not math.isfinite(examples) or examples <= 0:
            raise ValueError(f"node {node_id}: examples must be a positive number")
        base = self._models[base_version]
        if [a.shape for a in arrays] != [b.shape for b in base]:
            raise ValueError(f"node {node_id}: arrays of another shape than the model's")
        weight = min(examples, self.max_weight) if self.max_weight is not None else examples
        delta = [np.asarray(a, dtype=float) - b for a, b in zip(arrays, base, strict=True)]
        self._pending.append((Contribution(node_id, base_version, staleness, weight), delta))
        if len(self._pending) < self.buffer_size:
            return "buffered"
        self._aggregate()
        return "aggregated"

    def staleness_histogram(self) -> dict[int, int]:
        """How stale the updates of the last version were: staleness → count."""
        return dict(sorted(Counter(c.staleness for c in self.last_contributions).items()))

    def _aggregate(self) -> None:
        total = sum(c.weight for c, _ in self._pending)
        step = [np.zeros_like(a) for a in self.model]
        for contribution, delta in self._pending:
            scale = contribution.weight * staleness_discount(contribution.staleness) / total
            for s, d in zip(step, delta, strict=True):
                s += scale * d
        if self.noise_stddev > 0:
            for s in step:
                s += self.rng.normal(0.0, self.noise_stddev, size=s.shape)
        rate = self.server_learning_rate
        new = [g + rate * s for g, s in zip(self.model, step, strict=True)]
        self.last_contributions = [c for c, _ in self._pending]
        self._pending.clear()
        self.version += 1
        self._models[self.version] = new
        # a board may still return an update trained from any of the last max_staleness
        # versions; older ones are rejected, so their models can go
        for old in [v for v in self._models if v < self.version - self.max_staleness]:
            del self._models[old]
