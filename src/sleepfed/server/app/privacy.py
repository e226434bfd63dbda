"""Differential privacy settings and the privacy budget spent by the federation.

Mechanism (Flower's central DP with client-side clipping): each board clips its update (its
trained arrays minus the global model) to L2 norm ``C`` (``flwr.clientapp.mod.
fixedclipping_mod``, enabled by ``sleepfed.board.training.privacy_mods``); the server averages
``n`` clipped
updates with equal weights and adds Gaussian noise of standard deviation ``σ·C/n`` to the
mean (``DifferentialPrivacyClientSideFixedClipping``, ``n`` = ``federation.min_nodes``).
Every round is one Gaussian mechanism with noise multiplier ``σ`` on the sum of updates,
whose sensitivity is ``C`` when one board's whole data is added or removed.

Accounting assumptions (client-level, add-or-remove-one-board adjacency):

* every round released to the boards is one Gaussian mechanism with multiplier ``σ``;
* no privacy amplification by sampling is claimed (boards are not Poisson-sampled: every
  available board is asked; a sample rate of 1 is the conservative choice);
* rounds compose with the RDP accountant of Google's ``dp-accounting`` (the one Flower's own
  ``RdpAccountant`` wraps), converted to (ε, δ) at the configured δ;
* composition runs over every DP round in the history, across runs and including rounds
  later rolled back (their models were published to the boards all the same);
* only the model arrays are released: under DP boards send no scalar metric (loss, accuracy,
  number of examples, good-share; ``sleepfed.board.training.privacy_mods.withhold_scalars_mod``),
  the server
  weighs every update equally and ignores any scalar a board still sends, and no π (the
  boards' good-share) is sent back to the boards (the history's rejection details, e.g. an
  update's norm, stay with the operator, whom central DP trusts as it sees every update);
* the server does not trust the boards to clip: an update longer than ``C`` is rejected
  (``sleepfed.server.app.privacy.dp_rules``) and counts as a zero update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

from sleepfed.common.config_fields import ConfigError, Field, get_field, read_fields
from sleepfed.server.app.update_validation import ValidationRules

SIGMA_SEARCH_RANGE = (0.05, 500.0)


@dataclass(frozen=True)
class PrivacySettings:
    dp: bool = False
    clipping_norm: float = 1.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    target_epsilon: float = 0.0  # > 0: σ chosen to spend it over budget_rounds
    budget_rounds: int = 0
    secure_aggregation: bool = False
    secagg_shares: float = 1.0  # share of the sampled boards each key is split among
    secagg_threshold: float = 0.67  # share of those shares needed to reconstruct
    secagg_timeout_seconds: float = 120.0
    secagg_clipping_range: float = 8.0
    # Weights (num-examples) are quantised as w / max_weight: the sum of a round's weights must
    # stay below 1024 * max_weight (2**32 / 2**22), and a smaller max_weight is more precise.
    secagg_max_weight: float = 1000.0


def epsilon_spent(noise_multipliers: list[float], delta: float) -> float:
    """ε after composing one Gaussian mechanism per entry (each a round's σ)."""
    if not noise_multipliers:
        return 0.0
    try:  # the server's extra (pip install 'sleepfed[server]'), not needed on boards
        from dp_accounting import dp_event, rdp
    except ImportError:
        raise RuntimeError(
            "differential privacy accounting needs dp-accounting: pip install 'sleepfed[server]'"
        ) from None
    accountant = rdp.RdpAccountant()
    for sigma, count in _counts(noise_multipliers):
        accountant.compose(dp_event.GaussianDpEvent(sigma), count=count)
    return float(accountant.get_epsilon(delta))


def _counts(values: list[float]) -> list[tuple[float, int]]:
    counts: dict[float, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return list(counts.items())


def noise_multiplier_for(target_epsilon: float, delta: float, rounds: int) -> float:
    """The smallest noise multiplier σ (to 0.1%) whose ``rounds`` Gaussian rounds spend at
    most ``target_epsilon`` at ``delta`` under the accounting above."""
    if target_epsilon <= 0 or not 0 < delta < 1 or rounds < 1:
        raise ValueError("need target_epsilon > 0, 0 < delta < 1 and rounds >= 1")
    low, high = SIGMA_SEARCH_RANGE
    if epsilon_spent([high] * rounds, delta) > target_epsilon:
        raise ValueError(f"ε = {target_epsilon} over {rounds} rounds needs σ > {high}")
    if epsilon_spent([low] * rounds, delta) <= target_epsilon:
        return low
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        if epsilon_spent([middle] * rounds, delta) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


# Bounds that hold only with DP or SecAgg+ on are checked in parse_privacy.
_OFF = PrivacySettings()
PRIVACY_FIELDS = (
    Field("differential_privacy", bool, _OFF.dp, "central DP with client-side clipping"),
    Field("secure_aggregation", bool, _OFF.secure_aggregation, "SecAgg+ (not with DP)"),
    Field("clipping_norm", float, _OFF.clipping_norm, "DP: the norm C boards clip to (> 0)"),
    Field("noise_multiplier", float, _OFF.noise_multiplier, "DP: σ; or give target_epsilon"),
    Field("delta", float, _OFF.delta, "DP: δ, within (0, 1)"),
    Field("target_epsilon", float, _OFF.target_epsilon, "DP: ε spent over budget_rounds; or σ"),
    Field("budget_rounds", int, None, "DP: rounds the ε is for (default: federation.rounds)"),
    Field("secagg_shares", float, _OFF.secagg_shares, "SecAgg+: share of boards a key goes to"),
    Field("secagg_threshold", float, _OFF.secagg_threshold, "SecAgg+: share to reconstruct"),
    Field("secagg_timeout_seconds", float, _OFF.secagg_timeout_seconds, "SecAgg+: stage timeout"),
    Field("secagg_clipping_range", float, _OFF.secagg_clipping_range, "SecAgg+: clip to ± this"),
    Field("secagg_max_weight", float, _OFF.secagg_max_weight, "SecAgg+: num-examples scale"),
)


def parse_privacy(data: dict[str, Any], rounds: int) -> PrivacySettings:
    """The ``[privacy]`` table of server.toml (absent: no DP, no secure aggregation)."""
    table = get_field(data, "privacy", dict, "config", {})
    values = read_fields(table, "privacy", PRIVACY_FIELDS)
    dp, secagg = values["differential_privacy"], values["secure_aggregation"]
    clipping, sigma, delta = values["clipping_norm"], values["noise_multiplier"], values["delta"]
    target = values["target_epsilon"]
    budget_rounds = rounds if values["budget_rounds"] is None else values["budget_rounds"]
    shares, threshold = values["secagg_shares"], values["secagg_threshold"]
    timeout, clip_range = values["secagg_timeout_seconds"], values["secagg_clipping_range"]
    max_weight = values["secagg_max_weight"]
    if dp and secagg:
        raise ConfigError(
            "privacy: differential_privacy and secure_aggregation cannot be combined yet"
        )
    if dp:
        if clipping <= 0:
            raise ConfigError(f"privacy.clipping_norm: must be > 0, got {clipping}")
        if not 0 < delta < 1:
            raise ConfigError(f"privacy.delta: must be within (0, 1), got {delta}")
        if (sigma > 0) == (target > 0):
            raise ConfigError(
                "privacy: give exactly one of noise_multiplier (> 0) or target_epsilon (> 0)"
            )
        if budget_rounds < 1:
            raise ConfigError(f"privacy.budget_rounds: must be >= 1, got {budget_rounds}")
        if target > 0:
            try:
                sigma = noise_multiplier_for(target, delta, budget_rounds)
            except ValueError as error:
                raise ConfigError(f"privacy.target_epsilon: {error}") from None
    if secagg:
        if not 0 < shares <= 1:
            raise ConfigError(f"privacy.secagg_shares: must be within (0, 1], got {shares}")
        if not 0 < threshold <= 1:
            raise ConfigError(f"privacy.secagg_threshold: must be within (0, 1], got {threshold}")
        if timeout <= 0 or clip_range <= 0 or max_weight <= 0:
            raise ConfigError(
                "privacy.secagg_timeout_seconds/secagg_clipping_range/secagg_max_weight: "
                "must be > 0"
            )
    return PrivacySettings(
        dp=dp,
        clipping_norm=clipping,
        noise_multiplier=sigma,
        delta=delta,
        target_epsilon=target,
        budget_rounds=budget_rounds,
        secure_aggregation=secagg,
        secagg_shares=shares,
        secagg_threshold=threshold,
        secagg_timeout_seconds=timeout,
        secagg_clipping_range=clip_range,
        secagg_max_weight=max_weight,
    )


def run_config_entries(settings: PrivacySettings) -> dict[str, bool | float]:
    """The run-config keys the ServerApp reads (see flower_app/pyproject.toml)."""
    return {
        "dp": settings.dp,
        "dp-clipping-norm": settings.clipping_norm,
        "dp-noise-multiplier": settings.noise_multiplier,
        "dp-delta": settings.delta,
        "secagg": settings.secure_aggregation,
        "secagg-shares": settings.secagg_shares,
        "secagg-threshold": settings.secagg_threshold,
        "secagg-timeout": settings.secagg_timeout_seconds,
        "secagg-clipping-range": settings.secagg_clipping_range,
        "secagg-max-weight": settings.secagg_max_weight,
    }


def settings_from_run_config(cfg: Any) -> PrivacySettings:
    return PrivacySettings(
        dp=bool(cfg.get("dp", False)),
        clipping_norm=float(cfg.get("dp-clipping-norm", 1.0)),
        noise_multiplier=float(cfg.get("dp-noise-multiplier", 0.0)),
        delta=float(cfg.get("dp-delta", 1e-5)),
        secure_aggregation=bool(cfg.get("secagg", False)),
        secagg_shares=float(cfg.get("secagg-shares", 1.0)),
        secagg_threshold=float(cfg.get("secagg-threshold", 0.67)),
        secagg_timeout_seconds=float(cfg.get("secagg-timeout", 120.0)),
        secagg_clipping_range=float(cfg.get("secagg-clipping-range", 8.0)),
        secagg_max_weight=float(cfg.get("secagg-max-weight", 1000.0)),
    )


def wrap_strategy(strategy: Strategy, settings: PrivacySettings, sampled_boards: int) -> Strategy:
    """The strategy wrapped for central DP with client-side clipping (or as it is)."""
    if not settings.dp:
        return strategy
    return DifferentialPrivacyClientSideFixedClipping(
        strategy,
        noise_multiplier=settings.noise_multiplier,
        clipping_norm=settings.clipping_norm,
        num_sampled_clients=sampled_boards,
    )


def round_privacy(earlier: list[dict[str, float]], settings: PrivacySettings) -> dict[str, float]:
    """The history's privacy entry of a new round, given the entries of every earlier round
    (all runs, rolled back ones included): its σ and C, and the cumulative ε at δ."""
    if not settings.dp:
        return {}
    sigmas = [e["noise_multiplier"] for e in earlier if e.get("noise_multiplier", 0) > 0]
    sigmas.append(settings.noise_multiplier)
    return {
        "noise_multiplier": settings.noise_multiplier,
        "clipping_norm": settings.clipping_norm,
        "delta": settings.delta,
        "epsilon": epsilon_spent(sigmas, settings.delta),
        "dp_rounds": float(len(sigmas)),
    }


def describe_round(privacy: dict[str, float], rejected: list[dict[str, object]]) -> str:
    """What ``sleepfed-server history`` adds to a round's line: ε spent and rejections."""
    parts = []
    if privacy:
        parts.append(
            f"DP σ {privacy['noise_multiplier']:.3g} C {privacy['clipping_norm']:.3g} "
            f"ε {privacy['epsilon']:.3g} (δ {privacy['delta']:.0e})"
        )
    if rejected:
        reasons = ", ".join(f"{r['node']}:{r['reason']}" for r in rejected)
        parts.append(f"rejected {len(rejected)} ({reasons})")
    return "".join(f"  {p}" for p in parts)


# An update clipped to C on the board has norm C up to rounding.
CLIP_TOLERANCE = 1e-6


def dp_rules(rules: ValidationRules, clipping_norm: float) -> ValidationRules:
    """Under DP (``clipping_norm`` > 0) an update longer than C breaks the noise's
    calibration (its sensitivity): the board did not clip, so it is rejected (``norm-cap``)."""
    if clipping_norm <= 0:
        return rules
    cap = clipping_norm * (1.0 + CLIP_TOLERANCE)
    if 0 < rules.max_update_norm < cap:
        return rules
    return replace(rules, max_update_norm=cap)
