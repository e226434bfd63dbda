"""What the operator sees on a board: ``sleepfed-agent status`` (table, JSON, exit codes) and
the daemon's Prometheus endpoint, scraped with real HTTP GETs on 127.0.0.1 while a real
daemon ingests real lines through a pseudo-terminal."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from sleepfed_tools.replay import PtyLink

from sleepfed.board.buffer.counter_classes import FAILURE_CLASSES, REJECTION_CLASSES
from sleepfed.board.sources.protocol import Kind, Reading, format_reading
from tests.support.federation_helpers import free_port
from tests.support.helpers import run_agent, wait_connected, wait_for, write_agent_config
from tests.support.prometheus_scrape import scrape, try_scrape

T0 = 1_764_000_000.0
Start = Callable[[Path], subprocess.Popen[bytes]]


def status(config: Path, *extra: str) -> tuple[int, str]:
    result = run_agent("status", "--config", str(config), *extra)
    return result.returncode, result.stdout + result.stderr


def test_status_and_metrics_follow_ingest(tmp_path: Path, agent_procs: Start) -> None:
    port = free_port()
    link = PtyLink()
    try:
        config = write_agent_config(
            tmp_path / "agent.toml",
            buffer=tmp_path / "buffer.db",
            ports={"wrist": link.device_path},
            extra=f"\n[metrics]\nport = {port}\n",
        )
        code, text = status(config)
        assert code == 1 and "no buffer" in text  # nothing collected yet

        proc = agent_procs(config)
        wait_connected(config, between=link.wait, proc=proc)
        before = wait_for(lambda: try_scrape(port), 15, 0.2, "the metrics endpoint")
        listening = [
            c.laddr
            for c in psutil.Process(proc.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening == [("127.0.0.1", port)]
        assert before[("sleepfed_agent_readings_ingested_total", (("kind", "hr"),))] == 0
        assert before[("sleepfed_agent_healthy", ())] == 1
        assert before[("sleepfed_agent_sources_connected", ())] == 1
        assert before[("sleepfed_agent_model_version", ())] == 0
        for reason in REJECTION_CLASSES:  # every class is there, at zero
            assert before[("sleepfed_agent_readings_rejected_total", (("reason", reason),))] == 0
        assert before[("sleepfed_agent_rounds_joined_total", ())] == 0
        assert before[("sleepfed_agent_round_duration_seconds_count", ())] == 0
        assert before[("process_resident_memory_bytes", ())] > 10e6

        code, text = status(config, "--json")
        assert code == 0, text
        report = json.loads(text)
        assert report["health"] == "ok" and report["problems"] == []
        assert set(report["rejection_classes"]) == set(REJECTION_CLASSES)
        assert set(FAILURE_CLASSES) <= set(report["failure_classes"])
        assert report["buffer"]["cap_bytes"] is None

        readings = [Reading(T0 + i, (Kind.HR, Kind.MOV)[i % 2], 60.0) for i in range(120)]
        bad = [b"SF1,HR,1764000000.500,60*00\n", b"SF1,HR,1764000000.600,300\n", b"hello\n"]
        link.write(b"".join(format_reading(r) for r in readings) + b"".join(bad), timeout=10)
        wait_for(
            lambda: (
                try_scrape(port).get(
                    ("sleepfed_agent_readings_rejected_total", (("reason", "version"),))
                )
                == 1
                and try_scrape(port)[("sleepfed_agent_readings_ingested_total", (("kind", "mov"),))]
                == 60
            ),
            15,
            0.2,
            "the scrape to show the batch",
            between=link.wait,
        )
        after = scrape(port)
        assert after[("sleepfed_agent_readings_ingested_total", (("kind", "hr"),))] == 60
        assert after[("sleepfed_agent_readings_rejected_total", (("reason", "checksum"),))] == 1
        rejected_total = sum(
            v for (name, _), v in after.items() if name == "sleepfed_agent_readings_rejected_total"
        )
        assert rejected_total == 3
        assert after[("sleepfed_agent_buffer_readings", ())] == 120
        assert (
            after[("sleepfed_agent_buffer_bytes", ())]
            >= before[("sleepfed_agent_buffer_bytes", ())]
        )

        code, text = status(config)  # the human table
        assert code == 0, text
        assert "health          OK" in text
        assert "checksum=1" in text and "value_out_of_range=1" in text and "version=1" in text

        link.close()  # the wearable's cable is pulled: degraded, exit 3
        wait_for(lambda: status(config)[0] == 3, 15, 0.2, "status to exit 3 (degraded)")
        code, text = status(config)
        assert "health          DEGRADED" in text and "sources 0/1" in text
        degraded = scrape(port)
        assert degraded[("sleepfed_agent_healthy", ())] == 0
        assert degraded[("sleepfed_agent_sources_connected", ())] == 0
        assert (
            degraded[("sleepfed_agent_source_failures_total", (("class", "source_disconnects"),))]
            == 1
        )

        proc.terminate()
        assert proc.wait(30) == 0
        code, text = status(config)
        assert code == 1 and "health          NOT RUNNING" in text
        with pytest.raises(OSError):
            scrape(port)
    finally:
        link.close()


def test_status_exit_2_on_bad_metrics_config(tmp_path: Path) -> None:
    config = write_agent_config(
        tmp_path / "agent.toml", buffer=tmp_path / "buffer.db", extra="\n[metrics]\nport = 70000\n"
    )
    code, text = status(config)
    assert code == 2 and "metrics.port" in text
