"""The demo's outcome: each board's predicted night beside its PSG reference."""

from __future__ import annotations

from pathlib import Path

from sleepfed.model.features import night_quality
from sleepfed_tools.demo_setup import agent_status


def night_predicted(config: Path) -> bool:
    """The board predicted its night with the latest model it holds."""
    status = agent_status(config) or {}
    night = status.get("last_night", {})
    model = status.get("model", {})
    return bool(night.get("predicted_quality")) and night.get("model_version") == model.get(
        "version"
    )


def print_results(configs: list[Path], subjects: list[str], ble_boards: set[int]) -> int:
    """Each board's predicted night beside PSG; how many agree on the night's quality."""
    print()
    print("SE = estimated sleep efficiency, the share of 10-min windows predicted Good;")
    print("PSG: the share of windows that are Good by polysomnography, and the PSG SE")
    print("model: the federation's (global) or the person's own (personal), whichever")
    print("scored better on the board's held-out windows")
    print(
        "board   via     subject   night        predicted        PSG windows   PSG SE"
        "      trained in  model"
    )
    agree = 0
    for index, config in enumerate(configs):
        status = agent_status(config) or {}
        night = status["last_night"]
        trained = status["counters"].get("rounds_trained", 0)
        via = "BLE" if index in ble_boards else "serial"
        reference = night["reference_efficiency"]
        predicted_q = night["predicted_quality"]
        agree += predicted_q == night_quality(reference)
        print(
            f"board{index + 1:<2d} {via:7s} {subjects[index]:>8s}  {night['night']}   "
            f"{predicted_q:4s} {100 * night['predicted_efficiency']:5.1f}%    "
            f"{100 * night['reference_good_share']:5.1f}%       "
            f"{night_quality(reference):4s} {100 * reference:5.1f}%   {trained} rounds"
            f"    {night['model_kind']}"
        )
    return agree
