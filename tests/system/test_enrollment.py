"""Enrolling boards for real: sleepfed-enroll below a temporary root (the machine's /etc is
never touched), the server's registry, and a TLS federation with node authentication in which
an enrolled board trains, an unknown key is refused and a revoked board is refused next round."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sleepfed.provisioning.pki import fingerprint_sha256
from sleepfed.server.app.history import History
from tests.support.federation_helpers import (
    board_state,
    free_port,
    pki,
    start_agent,
    start_server,
    stop,
    wait_for,
    write_board,
    write_server_config,
)
from tests.support.helpers import run_server

PYTHON = sys.executable
SUBJECTS = ["4426783", "8258170", "9106476"]
HELD_OUT = ["1066528", "2638030"]


def temp_root(tmp_path: Path, name: str) -> Path:
    """A root with copies of this machine's user databases, for useradd --prefix."""
    root = tmp_path / name
    (root / "etc").mkdir(parents=True)
    for file in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", file).exists():
            shutil.copy2(Path("/etc", file), root / "etc" / file)
    return root


def enroll(
    root: Path, board_id: str, ca: Path, fingerprint: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            PYTHON,
            "-m",
            "sleepfed.provisioning.enroll",
            "--board-id",
            board_id,
            "--server",
            "127.0.0.1:9",
            "--ca-file",
            str(ca),
            "--ca-fingerprint",
            fingerprint,
            "--root",
            str(root),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enrollment_on_the_board_is_idempotent(tmp_path: Path) -> None:
    certs = pki(tmp_path)
    root = temp_root(tmp_path, "board")
    unit = Path(__file__).resolve().parents[2] / "systemd" / "sleepfed-agent.service"
    passwd_before = Path("/etc/passwd").read_bytes()
    first = enroll(root, "pi-01", certs["ca"], fingerprint_sha256(certs["ca"]))
    assert first.returncode == 0, first.stderr
    assert Path("/etc/passwd").read_bytes() == passwd_before, "the real /etc was touched"
    etc = root / "etc" / "sleepfed"
    key = etc / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (root / "var" / "lib" / "sleepfed").stat().st_mode & 0o777 == 0o700
    passwd = (root / "etc" / "passwd").read_text()
    assert any(line.startswith("sleepfed:") for line in passwd.splitlines())
    uid = next(int(x.split(":")[2]) for x in passwd.splitlines() if x.startswith("sleepfed:"))
    assert key.stat().st_uid == uid
    assert "sleepfed" in next(
        g for g in (root / "etc" / "group").read_text().splitlines() if g.startswith("dialout:")
    )
    assert (etc / "ca.pem").read_bytes() == certs["ca"].read_bytes()
    config = (etc / "agent.toml").read_text()
    assert 'auth_private_key = "/etc/sleepfed/node.key"' in config
    if unit.exists():
        wants = root / "etc/systemd/system/multi-user.target.wants/sleepfed-agent.service"
        assert wants.is_symlink()
    request = first.stdout.strip().splitlines()[-1]
    assert request.startswith("sleepfed-enroll-request/1 pi-01 ecdsa-sha2-nistp256 ")
    assert "PRIVATE" not in first.stdout and key.read_text() not in first.stdout

    key_before = key.read_bytes()
    second = enroll(root, "pi-01", certs["ca"], fingerprint_sha256(certs["ca"]))
    assert second.returncode == 0, second.stderr
    assert "nothing changed: this board was already enrolled" in second.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith("changed")]
    assert key.read_bytes() == key_before
    assert second.stdout.strip().splitlines()[-1] == request


def test_a_board_enrolled_with_a_p384_key_keeps_it(tmp_path: Path) -> None:
    """New keys are P-256; a board enrolled before with a P-384 key (``--key-curve p384``)
    keeps it when enroll runs again without the flag: nothing changes, the same request."""
    certs = pki(tmp_path)
    root = temp_root(tmp_path, "board")
    fingerprint = fingerprint_sha256(certs["ca"])
    first = enroll(root, "pi-02", certs["ca"], fingerprint, "--key-curve", "p384")
    assert first.returncode == 0, first.stderr
    request = first.stdout.strip().splitlines()[-1]
    assert request.startswith("sleepfed-enroll-request/1 pi-02 ecdsa-sha2-nistp384 ")
    key = root / "etc" / "sleepfed" / "node.key"
    key_before = key.read_bytes()
    again = enroll(root, "pi-02", certs["ca"], fingerprint)
    assert again.returncode == 0, again.stderr
    assert "nothing changed: this board was already enrolled" in again.stdout
    assert key.read_bytes() == key_before
    assert again.stdout.strip().splitlines()[-1] == request
    unknown = enroll(root, "pi-02", certs["ca"], fingerprint, "--key-curve", "p521")
    assert unknown.returncode == 2 and "--key-curve" in unknown.stderr
    assert key.read_bytes() == key_before


def test_a_wrong_ca_fingerprint_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    certs = pki(tmp_path)
    other = pki(tmp_path / "other")
    root = temp_root(tmp_path, "board")
    result = enroll(root, "pi-01", certs["ca"], fingerprint_sha256(other["ca"]))
    assert result.returncode == 2
    assert "REFUSED" in result.stderr
    assert not (root / "etc" / "sleepfed").exists()


def test_the_registry_takes_requests_and_a_fleet_csv(tmp_path: Path) -> None:
    certs = pki(tmp_path)
    config = write_server_config(
        tmp_path, free_port(), certs, rounds=1, min_nodes=1, walch_dir=tmp_path, held_out=[]
    )
    requests = []
    for name in ("pi-01", "pi-02"):
        root = temp_root(tmp_path, name)
        result = enroll(
            root,
            name,
            certs["ca"],
            fingerprint_sha256(certs["ca"]),
            "--no-system-user",
            "--no-unit",
        )
        assert result.returncode == 0, result.stderr
        requests.append(root / "etc" / "sleepfed" / "enrollment-request.txt")
    registered = run_server("boards", "register", "--config", str(config), str(requests[0]))
    assert registered.returncode == 0, registered.stderr
    assert "pi-01: added" in registered.stdout and "applies when it starts" in registered.stdout
    key = requests[1].read_text().split(maxsplit=2)[2].strip()
    fleet = tmp_path / "fleet.csv"  # a fleet's requests as a spreadsheet would export them
    fleet.write_text(f"board_id,public_key\npi-02,{key}\n")
    assert (
        "pi-02: added"
        in run_server("boards", "register", "--config", str(config), "--csv", str(fleet)).stdout
    )
    again = run_server("boards", "register", "--config", str(config), str(requests[0]))
    assert "pi-01: unchanged" in again.stdout
    # another board claiming pi-01's name with a different key is refused
    clash = tmp_path / "clash.txt"
    clash.write_text(f"sleepfed-enroll-request/1 pi-01 {key}\n")
    refused = run_server("boards", "register", "--config", str(config), str(clash))
    assert refused.returncode == 1 and "another key" in refused.stderr
    listing = run_server("boards", "list", "--config", str(config))
    assert [line.split()[:2] for line in listing.stdout.splitlines()] == [
        ["pi-01", "pending"],
        ["pi-02", "pending"],
    ]
    assert (tmp_path / "server" / "state" / "boards.db").stat().st_mode & 0o777 == 0o600


def _enrolled_board(
    tmp_path: Path, name: str, port: int, certs: dict[str, Path], walch_dir: Path, subject: str
) -> tuple[Path, Path]:
    """A board enrolled below its own root; its agent.toml points at that root's key."""
    root = temp_root(tmp_path, f"{name}-root")
    result = enroll(
        root, name, certs["ca"], fingerprint_sha256(certs["ca"]), "--no-system-user", "--no-unit"
    )
    assert result.returncode == 0, result.stderr
    config = write_board(
        tmp_path, name, port, certs["ca"], walch_dir=walch_dir, subject=subject, enrol=False
    )
    text = config.read_text().replace(
        "min_new_labelled_windows = 1",
        f'min_new_labelled_windows = 0\nauth_private_key = "{root / "etc/sleepfed/node.key"}"',
    )
    config.write_text(text)
    return config, root / "etc" / "sleepfed" / "enrollment-request.txt"


@pytest.mark.slow
def test_only_enrolled_boards_join_and_a_revoked_board_is_refused_next_round(
    tmp_path: Path, walch_dir: Path
) -> None:
    certs = pki(tmp_path)
    port = free_port()
    server_config = write_server_config(
        tmp_path, port, certs, rounds=1, min_nodes=2, walch_dir=walch_dir, held_out=HELD_OUT
    )
    (a, request_a), (b, request_b), (stranger, _) = (
        _enrolled_board(tmp_path, name, port, certs, walch_dir, subject)
        for name, subject in zip(("board-a", "board-b", "stranger"), SUBJECTS, strict=True)
    )
    # The stranger was never registered: no patience for a server that may still count an
    # earlier connection of it as online. It must be refused while the one-round run lasts.
    stranger.write_text(
        stranger.read_text().replace(
            "activation_patience_seconds = 8", "activation_patience_seconds = 0.5"
        )
    )
    assert (
        run_server(
            "boards", "register", "--config", str(server_config), str(request_a), str(request_b)
        ).returncode
        == 0
    )
    agents = [start_agent(c) for c in (a, b, stranger)]
    server = start_server(server_config)
    try:
        assert server.wait(240) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        history = History(tmp_path / "server" / "state" / "history.db")
        assert [(r.global_round, r.train_nodes) for r in history.rounds()] == [(1, 2)]
        wait_for(
            lambda: board_state(stranger).get("last_session_outcome") == "refused",
            60,
            "the unknown key to be refused",
        )
        assert "Exit Code: 305" in (stranger.parent / "supernode.log").read_text()
        assert board_state(stranger)["counters"].get("rounds_trained", 0) == 0  # type: ignore[union-attr]
        for config in (a, b):
            assert board_state(config)["counters"]["rounds_trained"] == 1  # type: ignore[index]

        # The operator revokes board-b while the server is down: it applies at the next start.
        revoked = run_server("boards", "revoke", "--config", str(server_config), "board-b")
        assert revoked.returncode == 0 and "applies when it starts" in revoked.stdout
        # board-a alone is enough for the next round. It is held back until the running server
        # has refused the revoked board: otherwise the round can end the server before
        # board-b's next attempt, and an absent server is not a refusal.
        stop([agents[0]])
        server_config.write_text(
            server_config.read_text().replace("min_nodes = 2", "min_nodes = 1")
        )
        server = start_server(server_config)
        wait_for(
            lambda: board_state(b).get("last_session_outcome") == "refused",
            150,
            "the revoked board to be refused",
        )
        assert server.poll() is None, "the server ended before board-a joined"
        agents[0] = start_agent(a)
        assert server.wait(240) == 0, (tmp_path / "server" / "server.log").read_text()[-3000:]
        assert "revoked board-b" in (tmp_path / "server" / "server.log").read_text()
        history = History(tmp_path / "server" / "state" / "history.db")
        rounds = [(r.global_round, r.train_nodes) for r in history.rounds()]
        assert rounds == [(1, 2), (2, 1)], rounds
        assert board_state(b)["counters"]["rounds_trained"] == 1  # type: ignore[index]
        assert board_state(a)["counters"]["rounds_trained"] == 2  # type: ignore[index]
        listing = run_server("boards", "list", "--config", str(server_config))
        assert "board-b" in listing.stdout and "revoked" in listing.stdout
        # No secret in any log: the private keys' bodies appear in no file but the keys.
        secrets = [
            line
            for key in tmp_path.rglob("node.key")
            for line in key.read_text().splitlines()
            if line and not line.startswith("-----")
        ]
        logs = [p for p in tmp_path.rglob("*.log") if p.is_file()]
        assert logs and secrets
        for log in logs:
            text = log.read_text(errors="replace")
            assert not any(secret in text for secret in secrets), f"a key leaked into {log}"
    finally:
        stop([*agents, server])
