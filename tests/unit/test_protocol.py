"""The SF1 line protocol: what parse_line accepts, and the exact reason for what it rejects."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleepfed.board.sources.protocol import (
    MAX_LINE_BYTES,
    Kind,
    LineRejected,
    Reading,
    RejectReason,
    checksum,
    format_ack,
    format_reading,
    parse_ack,
    parse_line,
)

TS = 1_764_000_000.25


def with_sum(body: str) -> bytes:
    return f"{body}*{checksum(body.encode('ascii')):02X}".encode("ascii")


@pytest.mark.parametrize(
    ("body", "kind", "value"),
    [
        (f"SF1,HR,{TS},61.5", Kind.HR, 61.5),
        (f"SF1,RR,{TS},987", Kind.RR, 987.0),
        (f"SF1,MOV,{TS},0", Kind.MOV, 0.0),
        (f"SF1,LUX,{TS},12.25", Kind.LUX, 12.25),
        (f"SF1,LBL,{TS},5", Kind.LBL, 5.0),
        (f"SF1,HR,{TS},25", Kind.HR, 25.0),  # range ends are inclusive
        (f"SF1,HR,{TS},250", Kind.HR, 250.0),
    ],
)
@pytest.mark.parametrize("summed", [False, True])
def test_accepts_each_kind(body: str, kind: Kind, value: float, summed: bool) -> None:
    raw = with_sum(body) if summed else body.encode("ascii")
    assert parse_line(raw) == Reading(TS, kind, value)
    assert parse_line(raw + b"\r") == Reading(TS, kind, value)


def test_lower_case_checksum_and_ack_echo_and_blank() -> None:
    body = f"SF1,HR,{TS},70"
    lower = f"{body}*{checksum(body.encode()):02x}".encode()
    assert parse_line(lower) == Reading(TS, Kind.HR, 70.0)
    assert parse_line(b"SF1,ACK,1764000000.000,12") is None
    assert parse_line(b"") is None
    assert parse_line(b"  \r") is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"SF1,HR,{TS},60*00".encode(), RejectReason.CHECKSUM),
        (f"SF1,HR,{TS},60*ZZ".encode(), RejectReason.CHECKSUM),
        (f"SF1,HR,{TS},60*".encode(), RejectReason.CHECKSUM),
        (with_sum(f"SF1,HR,{TS},60").replace(b"60*", b"61*"), RejectReason.CHECKSUM),
        (f"SF2,HR,{TS},60".encode(), RejectReason.VERSION),
        (f"sf1,HR,{TS},60".encode(), RejectReason.VERSION),
        (b"hello world", RejectReason.VERSION),
        (f"SF1,SPO2,{TS},97".encode(), RejectReason.UNKNOWN_KIND),
        (f"SF1,hr,{TS},60".encode(), RejectReason.UNKNOWN_KIND),
        (f"SF1,HR,{TS},nan".encode(), RejectReason.NOT_A_NUMBER),
        (f"SF1,HR,{TS},NaN".encode(), RejectReason.NOT_A_NUMBER),
        (f"SF1,HR,{TS},inf".encode(), RejectReason.NOT_A_NUMBER),
        (f"SF1,HR,{TS},-inf".encode(), RejectReason.NOT_A_NUMBER),
        (b"SF1,HR,inf,60", RejectReason.NOT_A_NUMBER),
        (f"SF1,HR,{TS},sixty".encode(), RejectReason.NOT_A_NUMBER),
        (f"SF1,HR,{TS},24".encode(), RejectReason.OUT_OF_RANGE),
        (f"SF1,HR,{TS},24.999".encode(), RejectReason.OUT_OF_RANGE),
        (f"SF1,HR,{TS},251".encode(), RejectReason.OUT_OF_RANGE),
        (f"SF1,LUX,{TS},-1".encode(), RejectReason.OUT_OF_RANGE),
        (f"SF1,LUX,{TS},-0.001".encode(), RejectReason.OUT_OF_RANGE),
        (f"SF1,LBL,{TS},6".encode(), RejectReason.OUT_OF_RANGE),
        (f"SF1,LBL,{TS},2.5".encode(), RejectReason.NOT_INTEGER),
        (b"SF1,HR,999999999,60", RejectReason.TIMESTAMP),
        (b"SF1,HR,4102444801,60", RejectReason.TIMESTAMP),
        (b"SF1,HR," + b"1" * 200 + b",60", RejectReason.TOO_LONG),
        (b"x" * (MAX_LINE_BYTES + 1), RejectReason.TOO_LONG),
        ("SF1,HR,1764000000,60°".encode(), RejectReason.ENCODING),
        (b"SF1,HR,1764000000,\xff60", RejectReason.ENCODING),
        (b"SF1,HR,1764000000", RejectReason.SYNTAX),
        (b"SF1,HR,1764000000,60,1", RejectReason.SYNTAX),
        (b"SF1", RejectReason.SYNTAX),
    ],
)
def test_rejects_with_exact_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(LineRejected) as caught:
        parse_line(raw)
    assert caught.value.reason == reason
    assert reason in RejectReason.ALL
    assert str(caught.value).startswith(f"{reason}: ")


def test_length_limit_is_exact() -> None:
    ok = f"SF1,MOV,{TS},1".encode()
    padded = ok.replace(b"SF1,MOV,", b"SF1,MOV," + b"0" * (MAX_LINE_BYTES - len(ok)))
    assert len(padded) == MAX_LINE_BYTES
    assert parse_line(padded) == Reading(TS, Kind.MOV, 1.0)
    longer = padded.replace(b"SF1,MOV,", b"SF1,MOV,0")
    assert len(longer) == MAX_LINE_BYTES + 1
    with pytest.raises(LineRejected) as caught:
        parse_line(longer)
    assert caught.value.reason == RejectReason.TOO_LONG


@pytest.mark.parametrize("summed", [False, True])
@pytest.mark.parametrize(
    "reading",
    [
        Reading(1_764_000_000.123, Kind.HR, 72.5),
        Reading(1_764_000_000.0, Kind.RR, 812.25),
        Reading(1_764_000_001.5, Kind.MOV, 123456.0),
        Reading(1_764_000_002.999, Kind.LUX, 0.0),
        Reading(1_764_000_003.0, Kind.LBL, 3.0),
    ],
)
def test_format_parse_round_trip(reading: Reading, summed: bool) -> None:
    line = format_reading(reading, with_checksum=summed)
    assert line.endswith(b"\n")
    assert (b"*" in line) is summed
    assert parse_line(line[:-1]) == reading


@given(
    ts=st.floats(min_value=1_000_000_000, max_value=4_000_000_000),
    kind=st.sampled_from(list(Kind)),
    fraction=st.floats(min_value=0, max_value=1),
    summed=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_round_trip_property(ts: float, kind: Kind, fraction: float, summed: bool) -> None:
    low, high = {Kind.HR: (25, 250), Kind.RR: (200, 3000), Kind.MOV: (0, 1e6),
                 Kind.LUX: (0, 2e5), Kind.LBL: (0, 5), Kind.BAT: (0, 100)}[kind]  # fmt: skip
    value = low + fraction * (high - low)
    value = float(round(value)) if kind is Kind.LBL else float(f"{value:.6g}")
    value = min(max(value, low), high)
    ts = round(ts, 3)
    parsed = parse_line(format_reading(Reading(ts, kind, value), with_checksum=summed)[:-1])
    assert parsed is not None
    assert parsed.kind is kind
    assert parsed.value == value
    assert math.isclose(parsed.timestamp, ts, abs_tol=5e-4)


def test_ack_round_trip() -> None:
    line = format_ack(1_764_000_000.5, 42)
    assert line == b"SF1,ACK,1764000000.500,42\n"
    assert parse_ack(line) == (1_764_000_000.5, 42)
    assert parse_line(line[:-1]) is None
    assert parse_ack(b"SF1,HR,1764000000.5,42") is None


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        result = parse_line(raw)
    except LineRejected as rejected:
        assert rejected.reason in RejectReason.ALL
        return
    assert result is None or isinstance(result, Reading)
    if isinstance(result, Reading):
        assert math.isfinite(result.timestamp) and math.isfinite(result.value)


@given(st.text(alphabet="SF1,HRLBUXMOVACK*0123456789.-+eEinfa_ \r", max_size=60))
@settings(max_examples=1000, deadline=None)
def test_near_miss_text_never_crashes(text: str) -> None:
    try:
        result = parse_line(text.encode("ascii"))
    except LineRejected as rejected:
        assert rejected.reason in RejectReason.ALL
        return
    assert result is None or isinstance(result, Reading)


def test_a_line_of_the_maximum_length_with_crlf_is_accepted() -> None:
    prefix = b"SF1,HR,1795557602.000,61."
    body = prefix + b"0" * (MAX_LINE_BYTES - len(prefix))
    assert len(body) == MAX_LINE_BYTES
    reading = parse_line(body + b"\r")
    assert reading is not None and reading.value == 61.0
