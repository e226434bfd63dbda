"""FedAvg and FedBuff across time zones on a simulated clock
(sleepfed.server.research.time_zones): windows in local time, stragglers, and real people's
nights on 100 virtual boards in 7 zones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sleepfed.model import logistic as model
from sleepfed.model.features import NightWindows
from sleepfed.model.walch import walch_dataset
from sleepfed.server.research.partitions import VirtualBoard, resample_boards
from sleepfed.server.research.time_zones import (
    HOUR,
    FleetSettings,
    SimBoard,
    auc_on,
    make_fleet,
    online,
    run_fedavg,
    run_fedbuff,
)

TEST_PEOPLE = ["1066528", "2638030", "8000685", "8692923"]


def _board(offset: float, seconds: float = 60.0) -> SimBoard:
    return SimBoard(np.zeros((0, model.N_FEATURES)), np.zeros(0, dtype=int), offset, seconds)


def test_a_board_is_online_in_its_own_nights_window() -> None:
    tokyo = _board(9.0)  # 01:00-05:00 in Tokyo is 16:00-20:00 UTC
    hours = [h for h in range(24) if online(tokyo, h * HOUR, (1.0, 5.0))]
    assert hours == [16, 17, 18, 19]
    overnight = [h for h in range(24) if online(_board(0.0), h * HOUR, (22.0, 2.0))]
    assert overnight == [0, 1, 22, 23]
    # the next day, the same hours
    assert online(tokyo, (24 + 16) * HOUR, (1.0, 5.0))


def _synthetic_boards(count: int, seed: int) -> list[VirtualBoard]:
    rng = np.random.default_rng(seed)
    boards = []
    for _ in range(count):
        features = rng.normal(size=(60, model.N_FEATURES))
        labels = (features[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
        starts = np.arange(60)
        boards.append(VirtualBoard("s", NightWindows(features, labels, starts)))
    return boards


def test_a_straggler_holds_fedavg_to_its_timeout_and_fedbuff_keeps_going() -> None:
    settings = FleetSettings(zones=(0.0,), window=(0.0, 4.0), horizon_hours=4.0, slow_share=0.0)
    fleet = make_fleet(_synthetic_boards(6, 1), settings, seed=0)
    fleet[0] = SimBoard(fleet[0].features, fleet[0].labels, 0.0, 1200.0)  # 10x slower
    test = _synthetic_boards(1, 2)[0].windows
    score = auc_on(test.features, test.labels)
    initial = model.initial_arrays()
    fedavg = run_fedavg(fleet, initial, score, settings, min_nodes=6, round_timeout=600.0)
    fedbuff = run_fedbuff(fleet, initial, score, settings, buffer_size=3, max_staleness=20)
    # every FedAvg round waited 600 s for the straggler, whose reply was lost each time
    rounds = len(fedavg.points) - 1
    assert rounds == 24 and fedavg.timed_out == rounds and fedavg.lost == rounds
    assert fedavg.boards_counted == {1, 2, 3, 4, 5}
    # FedBuff: the 5 fast boards reply every 120 s for 4 h, the straggler every 1200 s
    assert len(fedbuff.points) - 1 == (5 * 120 + 12) // 3
    assert fedbuff.boards_counted == set(range(6)) and fedbuff.rejected_stale == 0
    assert fedbuff.points[-1][2] > 0.9 and fedavg.points[-1][2] > 0.9


def test_real_nights_over_seven_time_zones(walch_dir: Path) -> None:
    nights = walch_dataset(walch_dir)
    test = [nights[s] for s in TEST_PEOPLE]
    score = auc_on(
        np.concatenate([n.features[n.labelled] for n in test]),
        np.concatenate([n.labels[n.labelled] for n in test]),
    )
    boards = resample_boards({s: n for s, n in nights.items() if s not in TEST_PEOPLE}, 100)
    settings = FleetSettings(horizon_hours=24.0)
    fleet = make_fleet(boards, settings, seed=0)
    assert len({b.utc_offset_hours for b in fleet}) == 7
    slow = sum(b.train_seconds == 1200.0 for b in fleet)
    assert 3 <= slow <= 20  # about 10% of the boards are 10x slower
    initial = model.initial_arrays()
    fedavg = run_fedavg(fleet, initial, score, settings, min_nodes=20, round_timeout=600.0)
    fedbuff = run_fedbuff(fleet, initial, score, settings, buffer_size=50, max_staleness=10)
    start = score(initial)
    for curve in (fedavg, fedbuff):
        assert curve.points[-1][2] > max(start, 0.85), (curve.strategy, curve.points[-1])
    # in a day every zone's night came: every board's reply counted in FedBuff; FedAvg lost
    # the slow boards' replies to its timeout
    assert len(fedbuff.boards_counted) == 100
    assert fedavg.timed_out > 0 and len(fedavg.boards_counted) == 100 - slow
