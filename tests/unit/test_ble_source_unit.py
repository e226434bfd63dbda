"""BleSource in-process against fake bleak backends (tests/support/fake_bleak.py): the real
BleakScanner / BleakClient front ends and bleak-retry-connector's establish_connection run,
only the backends are fakes. Fast; the D-Bus level is covered by tests/system/test_ble_agent.py."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC

import bleak_retry_connector
import pytest
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
)
from bleak_retry_connector import (
    BleakAbortedError,
    BleakClientWithServiceCache,
    BleakConnectionError,
    BleakNotFoundError,
)

from sleepfed.board.sources import Item, SourceEvent, ble_source
from sleepfed.board.sources.ble_link import BACKOFF, DeviceNotFound, classify
from sleepfed.board.sources.ble_parsing import (
    CURRENT_TIME,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    ILLUMINANCE,
    MOVEMENT,
    MOVEMENT_SERVICE,
    format_current_time,
)
from sleepfed.board.sources.ble_source import BleDeviceConfig, BleSource
from sleepfed.board.sources.protocol import Kind, Reading
from tests.support.fake_bleak import FakePeripheral, FakeRadio

ADDRESS = "C0:FF:EE:00:00:01"
OTHER = "C0:FF:EE:00:00:02"
BOARD_TIME = 1_700_000_000.0  # what the injected clock says
DEVICE_TIME = 1_600_000_000.5  # what the device's Current Time says


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ble_source, "POLL_SECONDS", 0.005)
    # bleak-retry-connector sleeps 0.1-4 s between its own attempts; not here.
    monkeypatch.setattr(bleak_retry_connector, "calculate_backoff_time", lambda _exc: 0.0)


@pytest.fixture
def upper_bound_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)


def strap(
    address: str = ADDRESS,
    *,
    heart_rate: bool = True,
    illuminance: bool = True,
    movement: bool = True,
    current_time: bool = True,
    advertised: tuple[str, ...] = ("180d",),
) -> FakePeripheral:
    gatt: dict[str, list[str]] = {}
    if heart_rate:
        gatt["180d"] = ["2a37"]
    if illuminance:
        gatt["181a"] = ["2afb"]
    if movement:
        gatt[MOVEMENT_SERVICE] = [MOVEMENT]
    if current_time:
        gatt["1805"] = ["2a2b"]
    return FakePeripheral(address, advertised=list(advertised), gatt=gatt)


def make_source(
    radio: FakeRadio, devices: list[BleDeviceConfig] | None = None, scan_timeout: float = 0.05
) -> BleSource:
    return BleSource(
        "ble",
        devices or [BleDeviceConfig("strap", address=ADDRESS, movement_characteristic=MOVEMENT)],
        adapter="hci7",
        scan_timeout=scan_timeout,
        timezone=UTC,
        client_backend=radio.client_backend,
        scanner_backend=radio.scanner_backend,
        clock=lambda: BOARD_TIME,
    )


def hrm(bpm: int, *rr_units: int, contact: int = 3) -> bytes:
    flags = contact << 1 | (0x10 if rr_units else 0)
    return bytes([flags, bpm]) + b"".join(struct.pack("<H", v) for v in rr_units)


def lux(centi_lux: int) -> bytes:
    return centi_lux.to_bytes(3, "little")


class Collector:
    """``emit`` for a source; also notes each event's back-off (next attempt - now)."""

    def __init__(self, source: BleSource) -> None:
        self.source = source
        self.items: list[Item] = []
        self.delays: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def emit(self, name: str, items: list[Item]) -> None:
        assert name == self.source.name
        now = time.monotonic()
        with self.lock:
            self.items.extend(items)
            for item in items:
                if isinstance(item, SourceEvent):
                    device = item.detail.split()[0].removeprefix("device=")
                    link = self.source.links[device]
                    self.delays.append((item.counter, link.next_attempt - now))

    def events(self, counter: str | None = None) -> list[SourceEvent]:
        with self.lock:
            return [
                i for i in self.items if isinstance(i, SourceEvent) and counter in (None, i.counter)
            ]

    def readings(self, kind: Kind | None = None) -> list[Reading]:
        with self.lock:
            return [i for i in self.items if isinstance(i, Reading) and kind in (None, i.kind)]


class Running(Collector):
    """A source's ``run`` in a thread, stopped with a threading.Event."""

    def __init__(self, source: BleSource) -> None:
        super().__init__(source)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ble-source", daemon=True)

    def _run(self) -> None:
        try:
            self.source.run(self.emit, self.stop)
        except BaseException as error:
            self.error = error

    def wait_for(self, predicate: Callable[[], object], message: str, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.thread.is_alive(), f"source died: {self.error!r}"
            assert time.monotonic() < deadline, f"timed out waiting for {message}: {self.items}"
            time.sleep(0.002)


@contextlib.contextmanager
def running(source: BleSource) -> Iterator[Running]:
    run = Running(source)
    run.thread.start()
    try:
        yield run
    finally:
        run.stop.set()
        run.thread.join(5)
    assert not run.thread.is_alive(), "source did not stop"
    assert run.error is None, repr(run.error)


def connect_once(source: BleSource, times: int = 1) -> Collector:
    """Drive ``_connect`` of the (only) link directly, ``times`` times, on a fresh loop."""
    collector = Collector(source)
    (link,) = source.links.values()

    async def go() -> None:
        for _ in range(times):
            await source._connect(link, collector.emit)
            for _ in range(3):  # let scheduled callbacks (disconnect -> _link_lost) run
                await asyncio.sleep(0)

    asyncio.run(go())
    return collector


# -- the happy path --------------------------------------------------------------------------


def test_scan_connect_subscribe_and_notifications_become_readings() -> None:
    radio = FakeRadio([strap()])
    source = make_source(radio)
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
        client = radio.connected_client(ADDRESS)
        assert client is not None
        assert [e.counter for e in run.events()] == ["ble_connects"]
        assert ADDRESS in run.events()[0].detail
        # the configured adapter reaches both backends; the client is bleak's front end
        # as built by bleak-retry-connector
        assert radio.scanners[0].bluez == {"adapter": "hci7"}
        assert client.bluez == {"adapter": "hci7"}
        assert isinstance(source.links["strap"].client, BleakClientWithServiceCache)
        # Current Time first, so the device clock is known before any data
        assert client.subscription_order == [
            CURRENT_TIME,
            HEART_RATE_MEASUREMENT,
            ILLUMINANCE,
            MOVEMENT,
        ]

        client.push("2a37", hrm(62, 1024, 512))  # RR 1000 ms then 500 ms
        client.push("2afb", lux(12345))
        client.push(MOVEMENT, struct.pack("<f", 0.1))
        run.wait_for(lambda: len(run.readings()) == 5, "5 readings")

    mov32 = struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert run.readings() == [
        Reading(BOARD_TIME, Kind.HR, 62.0),
        Reading(BOARD_TIME - 0.5, Kind.RR, 1000.0),  # ends where the next one starts
        Reading(BOARD_TIME, Kind.RR, 500.0),  # the last one ends at the notification
        Reading(BOARD_TIME, Kind.LUX, 123.45),
        Reading(BOARD_TIME, Kind.MOV, mov32),
    ]
    assert mov32 != 0.1  # float32 on the wire, not rounded to a double literal
    # stopping disconnects the client
    assert not client.is_connected
    assert client.disconnects == 1


def test_a_battery_level_that_cannot_be_read_is_counted_and_the_link_stays() -> None:
    peripheral = strap(illuminance=False, movement=False, current_time=False)
    peripheral.gatt["180f"] = ["2a19"]
    peripheral.readable = ["2a19"]  # the fake's reads fail
    radio = FakeRadio([peripheral])
    source = make_source(radio)
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
        client = radio.connected_client(ADDRESS)
        assert client is not None
        assert [e.counter for e in run.events()] == ["ble_battery_unread", "ble_connects"]
        client.push("2a19", bytes([42]))  # its notifications still arrive
        client.push("2a37", hrm(70))
        run.wait_for(lambda: len(run.readings()) == 2, "2 readings")
        assert client.is_connected and client.disconnects == 0
    assert run.readings() == [
        Reading(BOARD_TIME, Kind.BAT, 42.0),
        Reading(BOARD_TIME, Kind.HR, 70.0),
    ]


def test_device_found_by_advertised_service_and_optional_characteristics_skipped() -> None:
    peripheral = strap(illuminance=False, movement=False, current_time=False)
    peripheral.advertised = [HEART_RATE_SERVICE]
    radio = FakeRadio([strap(OTHER, advertised=("181a",)), peripheral])
    source = make_source(
        radio, [BleDeviceConfig("strap", service="0000180D-0000-1000-8000-00805F9B34FB")]
    )
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
        assert radio.connected_client(OTHER) is None
        client = radio.connected_client(ADDRESS)
        assert client is not None
        assert client.subscription_order == [HEART_RATE_MEASUREMENT]
        client.push("2a37", hrm(70))
        run.wait_for(run.readings, "a reading")
    assert run.readings() == [Reading(BOARD_TIME, Kind.HR, 70.0)]


def test_current_time_gives_later_readings_the_device_clock() -> None:
    radio = FakeRadio([strap()])
    source = make_source(radio)
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
        client = radio.connected_client(ADDRESS)
        assert client is not None
        client.push("2a37", hrm(60))
        run.wait_for(lambda: len(run.readings()) == 1, "the first reading")
        client.push("2a2b", format_current_time(DEVICE_TIME, UTC))
        client.push("2a37", hrm(61, 1024))
        client.push("2afb", lux(100))
        client.push(MOVEMENT, struct.pack("<f", 3.0))
        run.wait_for(lambda: len(run.readings()) == 5, "5 readings")
        # a bad Current Time is a rejection and does not touch the clock
        client.push("2a2b", b"\x00" * 10)
        client.push("2a37", hrm(62))
        run.wait_for(lambda: len(run.readings()) == 6, "6 readings")

    first, *after = run.readings()
    assert first == Reading(BOARD_TIME, Kind.HR, 60.0)
    assert [(r.kind, r.value) for r in after] == [
        (Kind.HR, 61.0),
        (Kind.RR, 1000.0),
        (Kind.LUX, 1.0),
        (Kind.MOV, 3.0),
        (Kind.HR, 62.0),
    ]
    for reading in after:  # the device's clock plus the board's monotonic time since
        assert reading.timestamp == pytest.approx(DEVICE_TIME, abs=0.5)
    assert after[0].timestamp == after[1].timestamp  # the RR interval ends at the HR
    assert [i.reason for i in run.items if not isinstance(i, Reading | SourceEvent)] == [
        "ble_bad_time"
    ]


# -- classification and back-off -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"]),
            "in_progress",
        ),
        (
            BleakBluetoothNotAvailableError(
                "No Bluetooth adapters found.", BleakBluetoothNotAvailableReason.NO_BLUETOOTH
            ),
            "adapter_missing",
        ),
        (BleakError("adapter 'hci7' not found"), "adapter_missing"),
        (BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]), "adapter_missing"),
        (
            BleakDeviceNotFoundError(ADDRESS, f"Device with address {ADDRESS} was not found."),
            "not_found",
        ),
        (
            BleakNotFoundError(f"strap - {ADDRESS}: Failed to connect after 2 attempt(s)"),
            "not_found",
        ),
        (DeviceNotFound(f"{ADDRESS} not seen in 10s"), "not_found"),
        (BleakAbortedError(f"strap - {ADDRESS}: le-connection-abort-by-local"), "aborted"),
        (BleakConnectionError(f"strap - {ADDRESS}: Failed to connect: boom"), "connect_failed"),
        (BleakError("Unexpected"), "connect_failed"),
        (TimeoutError(), "connect_failed"),
        (RuntimeError("boom"), "connect_failed"),
    ],
)
def test_classify(error: BaseException, expected: str) -> None:
    assert classify(error) == expected


IN_PROGRESS = BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"])
NO_ADAPTER = BleakBluetoothNotAvailableError(
    "No Bluetooth adapters found.", BleakBluetoothNotAvailableReason.NO_BLUETOOTH
)


@pytest.mark.parametrize(
    ("stage", "error", "expected", "attempts"),
    [
        # raised by the fake backend's connect, classified after bleak-retry-connector
        # wrapped it (max_attempts=2 for ordinary errors, up to 9 for "transient" ones)
        ("connect", IN_PROGRESS, "in_progress", 2),
        ("connect", BleakError("Connection refused"), "connect_failed", 2),
        ("connect", TimeoutError(), "not_found", 2),
        ("connect", BleakDeviceNotFoundError(ADDRESS, "Device was not found."), "not_found", 9),
        (
            "connect",
            BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"]),
            "aborted",
            9,
        ),
        # raised by the fake scanner's start
        ("scan", NO_ADAPTER, "adapter_missing", 0),
        ("scan", IN_PROGRESS, "in_progress", 0),
        ("scan", None, "not_found", 0),  # the device never advertises
    ],
)
@pytest.mark.usefixtures("upper_bound_jitter")
def test_a_failed_attempt_emits_one_event_and_backs_off_per_class(
    stage: str, error: BaseException | None, expected: str, attempts: int
) -> None:
    peripheral = strap()
    radio = FakeRadio([peripheral])
    if stage == "connect":
        peripheral.always_fail = error
    elif error is not None:
        radio.scan_always_fails = error
    else:
        peripheral.advertising = False
    source = make_source(radio, scan_timeout=0.01)
    link = source.links["strap"]
    first, cap = BACKOFF[expected]

    for n in range(7):  # doubling from the class's first delay up to its cap
        before = time.monotonic()
        collector = connect_once(source)
        after = time.monotonic()
        assert collector.items == [
            SourceEvent(f"ble_{expected}", collector.items[0].detail)  # type: ignore[union-attr]
        ]
        assert collector.events()[0].detail.startswith(f"device=strap {stage}: ")
        delay = min(cap, first * 2**n)
        assert before + delay <= link.next_attempt <= after + delay
        assert link.next_attempt - before <= cap + (after - before)
        assert link.client is None
    assert link.failures == {expected: 7}
    if stage == "connect":
        assert [c.connect_attempts for c in radio.clients] == [attempts] * 7
    else:
        assert radio.clients == []


@pytest.mark.usefixtures("upper_bound_jitter")
def test_running_source_retries_after_the_class_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKOFF, "in_progress", (0.05, 0.05))
    peripheral = strap()
    peripheral.script_connect(IN_PROGRESS, IN_PROGRESS)  # one establish_connection's worth
    radio = FakeRadio([peripheral])
    source = make_source(radio)
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
        counters = [e.counter for e in run.events()]
        failures = dict(source.links["strap"].failures)
    assert counters == ["ble_in_progress", "ble_connects"]
    assert run.delays[0] == ("ble_in_progress", pytest.approx(0.05, abs=0.01))
    failed, succeeded = radio.clients
    assert (failed.connect_attempts, succeeded.connect_attempts) == (2, 1)
    scans = [i for i in radio.intervals if i.what == "scan"]
    assert scans[1].start - scans[0].end >= 0.05  # the second attempt waited its back-off
    assert failures == {}  # a success forgets the failures


# -- link loss, missing characteristic, shutdown ----------------------------------------------


@pytest.mark.usefixtures("upper_bound_jitter")
def test_link_loss_is_counted_and_the_next_loop_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKOFF, "link_lost", (0.02, 0.04))
    radio = FakeRadio([strap()])
    source = make_source(radio)
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
        first = radio.connected_client(ADDRESS)
        assert first is not None
        first.push("2a2b", format_current_time(DEVICE_TIME, UTC))
        first.push("2a37", hrm(60))
        run.wait_for(run.readings, "a reading")

        first.lose_link()
        run.wait_for(lambda: run.events("ble_link_lost"), "ble_link_lost")
        run.wait_for(lambda: len(run.events("ble_connects")) == 2, "the reconnect")
        second = radio.connected_client(ADDRESS)
        assert second is not None and second is not first
        assert second.subscription_order == first.subscription_order
        second.push("2a37", hrm(61))
        run.wait_for(lambda: len(run.readings()) == 2, "a reading after the reconnect")

        first.lose_link()  # a late callback from the old client changes nothing
        time.sleep(0.03)
        assert source.connected.is_set()
        counters = [e.counter for e in run.events()]

    assert counters == ["ble_connects", "ble_link_lost", "ble_connects"]
    assert run.delays[1] == ("ble_link_lost", pytest.approx(0.02, abs=0.01))
    assert run.delays[1][1] <= BACKOFF["link_lost"][1]
    # the device clock belonged to the old connection
    assert run.readings()[0].timestamp == pytest.approx(DEVICE_TIME, abs=0.5)
    assert run.readings()[1] == Reading(BOARD_TIME, Kind.HR, 61.0)


def test_a_device_without_heart_rate_is_notify_failed_and_disconnected() -> None:
    radio = FakeRadio([strap(heart_rate=False)])
    source = make_source(radio)
    collector = connect_once(source)
    link = source.links["strap"]
    assert collector.events()[0].counter == "ble_notify_failed"
    assert "0x2A37" in collector.events()[0].detail
    assert "ble_connects" not in [e.counter for e in collector.events()]
    (client,) = radio.clients
    assert client.disconnects == 1
    assert not client.is_connected
    assert link.client is None
    assert "notify_failed" in link.failures


# bleak's BlueZ backend (and the fake, like it) calls the disconnected callback on a
# disconnect() we asked for too: that must not count as a lost link.
@pytest.mark.usefixtures("upper_bound_jitter")
def test_notify_failed_is_one_event_with_its_own_backoff() -> None:
    radio = FakeRadio([strap(heart_rate=False)])
    source = make_source(radio)
    before = time.monotonic()
    collector = connect_once(source)
    link = source.links["strap"]
    assert [e.counter for e in collector.events()] == ["ble_notify_failed"]
    assert link.failures == {"notify_failed": 1}
    first, _cap = BACKOFF["notify_failed"]
    assert link.next_attempt >= before + first  # not overwritten by link_lost's back-off


def test_stopping_disconnects_without_counting_a_link_loss() -> None:
    radio = FakeRadio([strap()])
    source = make_source(radio)
    with running(source) as run:
        run.wait_for(source.connected.is_set, "connected")
    (client,) = radio.clients
    assert not client.is_connected
    assert client.disconnects == 1
    assert not source.connected.is_set()
    assert [e.counter for e in run.events()] == ["ble_connects"]


# -- one adapter, one operation at a time ----------------------------------------------------


@pytest.mark.usefixtures("upper_bound_jitter")
def test_never_a_scan_and_a_connect_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKOFF, "link_lost", (0.0, 0.0))
    monkeypatch.setitem(BACKOFF, "in_progress", (0.0, 0.0))
    wristband = strap(OTHER, advertised=("181a", MOVEMENT_SERVICE))
    wristband.script_connect(IN_PROGRESS, IN_PROGRESS)
    radio = FakeRadio([strap(), wristband], connect_seconds=0.01)
    source = make_source(
        radio,
        [
            BleDeviceConfig("strap", address=ADDRESS),
            BleDeviceConfig("band", service=MOVEMENT_SERVICE, movement_characteristic=MOVEMENT),
        ],
    )
    with running(source) as run:
        run.wait_for(source.connected.is_set, "both connected")
        for lost, address in enumerate((ADDRESS, OTHER, ADDRESS), start=1):
            client = radio.connected_client(address)
            assert client is not None
            client.lose_link()
            run.wait_for(lambda n=lost: len(run.events("ble_link_lost")) == n, f"loss {lost}")
            run.wait_for(lambda a=address: radio.connected_client(a), f"{address} back")
        run.wait_for(source.connected.is_set, "both connected again")
        counters = [e.counter for e in run.events()]

    assert counters.count("ble_connects") == 5
    assert counters.count("ble_link_lost") == 3
    assert counters.count("ble_in_progress") == 1
    assert len([i for i in radio.intervals if i.what == "scan"]) >= 6
    assert len([i for i in radio.intervals if i.what == "connect"]) >= 7
    assert radio.clashes == []
    assert radio.overlapping() == []
