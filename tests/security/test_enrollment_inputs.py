"""Attacks on the board's side of the trust boundary and on the files both sides keep.

``sleepfed-enroll`` runs as root on the board with flags an operator may paste from an
untrusted source, into folders someone else may have prepared: every flag is injected into,
symlinks are planted at every path it writes, and the umask is set wide open. The server's
state (messages, node keys, the registry) must stay private under the default umask 022.
Every program runs as a real subprocess below ``tmp_path`` (never the machine's /etc).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sleepfed.common import private_files
from sleepfed.provisioning.enroll_steps import agent_toml
from sleepfed.provisioning.pki import fingerprint_sha256
from tests.support.federation_helpers import free_port, pki
from tests.support.helpers import start_agent, stop_agent, wait_for, write_agent_config
from tests.system.test_enrollment import enroll, temp_root

PYTHON = sys.executable
Attack = Callable[[str, str, str, bool], None]

# Per flag: a lone quote, a trailing newline, and a quote-newline payload that, pasted into
# the old f-string template, turned the board's config into one without TLS.
INJECTIONS = {
    "--board-id": ['pi-01" #', "pi-01\n", 'pi-01"\ninsecure = true\nx = "'],
    "--server": [
        'fl.example.org:9093" #',
        "fl.example.org:9093\n",
        '127.0.0.1:9"\ninsecure = true\nx = "',
    ],
    "--timezone": ['UTC" #', "UTC\n", 'UTC"\n[federation]\ninsecure = true\nx = "'],
    "--window": ['always" #', "always\n", 'always"\ninsecure = true\nx = "'],
}


# strace's line for the creation of the key's temporary file: folder, name, flags, mode, fd
KEY_TEMPORARY_OPEN = re.compile(
    r'openat\((\d+), "(\.node\.key\.[0-9a-f]{16}\.tmp)", ([A-Z_|]+), (0\d+)\) = (\d+)'
)


def server_cli(*args: str, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """``sleepfed-server ...`` as a real process; ``umask`` (-1: inherited) as it starts."""
    return subprocess.run(
        [PYTHON, "-m", "sleepfed.server.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
    )


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path below ``root`` (links not followed) with its mode and content."""
    seen: dict[str, tuple[int, bytes | str | None]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content: bytes | str | None = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes()
            else:
                content = None
            seen[str(path.relative_to(root))] = (info.st_mode, content)
    return seen


@pytest.fixture
def ca(tmp_path: Path) -> tuple[Path, str]:
    certs = pki(tmp_path)
    return certs["ca"], fingerprint_sha256(certs["ca"])


@pytest.mark.parametrize(
    ("flag", "value"),
    [(flag, value) for flag, values in INJECTIONS.items() for value in values],
    ids=[f"{flag}-{i}" for flag, values in INJECTIONS.items() for i in range(len(values))],
)
def test_an_injected_flag_is_refused_and_nothing_is_written(
    tmp_path: Path, ca: tuple[Path, str], attack: Attack, flag: str, value: str
) -> None:
    root = temp_root(tmp_path, "board")
    before = snapshot(root)
    # argparse keeps the last of a repeated flag: the hostile value wins over the helper's
    result = enroll(root, "pi-01", ca[0], ca[1], "--no-unit", flag, value)
    after = snapshot(root)
    lines = result.stderr.splitlines()
    held = (
        result.returncode == 2
        and after == before
        and len(lines) == 1
        and lines[0].startswith(f"sleepfed-enroll: {flag}: ")
    )
    attack(
        f"enroll {flag} {value!r}"[:60],
        "exit 2, one line naming the flag, nothing written",
        f"exit {result.returncode}, {len(lines)} stderr line(s), "
        f"{len(set(after) ^ set(before))} paths changed",
        held,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"sleepfed-enroll: {flag}: "), lines
    assert after == before, "enroll wrote or changed files despite refusing"


def test_hostile_values_cannot_become_toml_keys(attack: Attack) -> None:
    # Defence in depth below the validation: the config is serialised, not formatted.
    args = Namespace(
        board_id='a"\ninsecure = true\n[x]\ny = "',
        server='h:1"\ninsecure = true',
        timezone="UTC\n[federation]\ninsecure = true",
        window='always\' """\ninsecure = true',
        max_mb=512,
    )
    parsed = tomllib.loads(agent_toml(args))
    seen = (
        parsed["board"]["id"] == args.board_id
        and parsed["board"]["timezone"] == args.timezone
        and parsed["federation"]["server"] == args.server
        and parsed["federation"]["window"] == args.window
    )
    keys = sorted(parsed["federation"])
    held = (
        seen
        and "insecure" not in parsed["federation"]
        and set(parsed)
        == {
            "board",
            "buffer",
            "federation",
        }
    )
    attack(
        "agent.toml values with quotes, newlines, tables",
        "values round-trip, no key added",
        f"tables {sorted(parsed)}, federation keys {len(keys)}",
        held,
    )
    assert seen and held, parsed


def test_valid_inputs_are_written_as_given(tmp_path: Path, ca: tuple[Path, str]) -> None:
    root = temp_root(tmp_path, "board")
    extra = ["--no-unit", "--no-system-user", "--timezone", "Europe/Berlin"]
    extra += ["--window", "22:30-06:00", "--server", "[::1]:9093"]
    result = enroll(root, "bedroom-pi.07_a", ca[0], ca[1], *extra)
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((root / "etc" / "sleepfed" / "agent.toml").read_text())
    assert config["board"] == {"id": "bedroom-pi.07_a", "timezone": "Europe/Berlin"}
    assert config["federation"]["server"] == "[::1]:9093"
    assert config["federation"]["window"] == "22:30-06:00"
    assert "insecure" not in config["federation"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--server", "::1:9093"),  # IPv6 without brackets
        ("--server", '[::1%eth0"]:9093'),  # a zone id carries any text
        ("--server", "fl.example.org:70000"),
        ("--server", "fl.example.org"),
        ("--server", "999.1.1.1:9093"),
        ("--server", "bad_host.example:9093"),
        ("--timezone", "Europe"),  # a folder of zones, not a zone
        ("--timezone", "../../etc/passwd"),
        ("--timezone", "Mars/Olympus"),
        ("--window", "25:00-05:00"),
        ("--window", "02:00-02:00"),
        ("--board-id", "x" * 65),
        ("--board-id", "-pi"),
    ],
)
def test_malformed_inputs_exit_2_naming_the_flag(
    tmp_path: Path, ca: tuple[Path, str], flag: str, value: str
) -> None:
    root = temp_root(tmp_path, "board")
    before = snapshot(root)
    # "--flag=value": a value starting with "-" is a value, not another flag
    result = enroll(root, "pi-01", ca[0], ca[1], "--no-unit", f"{flag}={value}")
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"sleepfed-enroll: {flag}: ")
    assert result.stderr.count("\n") == 1
    assert snapshot(root) == before


def test_the_registry_applies_the_same_board_id_rule(tmp_path: Path, attack: Attack) -> None:
    certs = pki(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = {free_port()}\n'
        f'certfile = "{certs["cert"]}"\nkeyfile = "{certs["key"]}"\n'
        f'ca_certfile = "{certs["ca"]}"\n'
    )
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(f'board_id,public_key\n"pi-01"" #",{_public_key()}\n')
    result = server_cli("boards", "register", "--config", str(config), "--csv", str(fleet))
    listing = server_cli("boards", "list", "--config", str(config), "--json")
    held = result.returncode != 0 and "board id" in result.stderr and listing.stdout.strip() == "[]"
    attack(
        "register a board id with a quote (CSV)",
        "refused, registry empty",
        f"exit {result.returncode}, registry {listing.stdout.strip()[:20]!r}",
        held,
    )
    assert result.returncode == 1 and "first a letter or digit" in result.stderr, result.stderr
    assert listing.stdout.strip() == "[]"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim" / "shadow-copy"
    victim.parent.mkdir()
    victim.write_bytes(b"the victim's secret\n")
    victim.chmod(0o640)
    return victim


def test_a_symlink_at_the_old_temporary_key_path_is_never_followed(
    tmp_path: Path, ca: tuple[Path, str], attack: Attack
) -> None:
    root = temp_root(tmp_path, "board")
    victim = _victim(tmp_path)
    before = victim.read_bytes(), victim.stat()
    config_dir = root / "etc" / "sleepfed"
    config_dir.mkdir()
    (config_dir / "node.key.new").symlink_to(victim)  # where enroll used to write the key
    result = enroll(root, "pi-01", ca[0], ca[1], "--no-unit")
    after = victim.read_bytes(), victim.stat()
    key = config_dir / "node.key"
    held = (
        result.returncode == 0
        and after[0] == before[0]
        and stat.S_IMODE(after[1].st_mode) == 0o640
        and (after[1].st_uid, after[1].st_gid) == (before[1].st_uid, before[1].st_gid)
        and not key.is_symlink()
        and stat.S_IMODE(key.stat().st_mode) == 0o600
    )
    attack(
        "symlink at node.key.new -> victim",
        "victim unchanged, key 0600",
        f"exit {result.returncode}, victim mode {stat.S_IMODE(after[1].st_mode):o}",
        held,
    )
    assert result.returncode == 0, result.stderr
    assert after[0] == before[0], "the victim was written"
    assert stat.S_IMODE(after[1].st_mode) == 0o640, "the victim was chmod-ed"
    assert after[1].st_uid == before[1].st_uid and after[1].st_gid == before[1].st_gid
    assert b"PRIVATE KEY" in key.read_bytes() and not key.is_symlink()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_symlink_at_the_temporary_name_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: Attack
) -> None:
    # The temporary name has 64 random bits: to plant at it the attacker must know it, so the
    # test hands them the random source, then checks O_EXCL|O_NOFOLLOW still holds.
    victim = _victim(tmp_path)
    folder = tmp_path / "etc"
    folder.mkdir()
    tokens = iter(["0" * 16, "0" * 16, "1" * 16])
    monkeypatch.setattr(private_files.secrets, "token_hex", lambda _n: next(tokens))
    (folder / f".node.key.{'0' * 16}.tmp").symlink_to(victim)
    private_files.write_atomic(folder / "node.key", b"KEY\n", 0o600)
    first = (victim.read_bytes(), stat.S_IMODE(victim.stat().st_mode))
    # and a name that stays planted: the write fails, the victim is still untouched
    monkeypatch.setattr(private_files.secrets, "token_hex", lambda _n: "0" * 16)
    with pytest.raises(FileExistsError):
        private_files.write_atomic(folder / "node.key", b"OTHER\n", 0o600)
    second = (victim.read_bytes(), stat.S_IMODE(victim.stat().st_mode))
    held = first == second == (b"the victim's secret\n", 0o640)
    attack(
        "symlink at the temporary key name -> victim",
        "victim unchanged; retry or refuse",
        f"victim {'unchanged' if held else 'CHANGED'}, key {(folder / 'node.key').read_bytes()!r}",
        held,
    )
    assert held
    assert (folder / "node.key").read_bytes() == b"KEY\n"
    assert stat.S_IMODE((folder / "node.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "planted",
    ["etc/sleepfed/node.key", "etc/sleepfed/agent.toml", "etc/sleepfed/ca.pem", "var/lib/sleepfed"],
)
def test_a_planted_symlink_where_enroll_writes_is_refused(
    tmp_path: Path, ca: tuple[Path, str], attack: Attack, planted: str
) -> None:
    root = temp_root(tmp_path, "board")
    first = enroll(root, "pi-01", ca[0], ca[1], "--no-unit")  # an enrolled board
    assert first.returncode == 0, first.stderr
    victim = _victim(tmp_path)
    if planted == "var/lib/sleepfed":
        victim = victim.parent
        victim.chmod(0o755)
    target = root / planted
    if target.is_dir():
        target.rename(target.with_name("moved-away"))
    else:
        target.unlink()
    target.symlink_to(victim)
    before_victim = snapshot(tmp_path / "victim"), victim.stat()
    before_root = snapshot(root)
    result = enroll(root, "pi-01", ca[0], ca[1], "--no-unit")
    after_victim = snapshot(tmp_path / "victim"), victim.stat()
    held = (
        result.returncode != 0
        and "symbolic link" in result.stderr
        and after_victim[0] == before_victim[0]
        and (after_victim[1].st_uid, after_victim[1].st_mode)
        == (before_victim[1].st_uid, before_victim[1].st_mode)
        and snapshot(root) == before_root
    )
    attack(
        f"{planted} planted as symlink -> victim",
        "refused, victim and board untouched",
        f"exit {result.returncode}, victim mode {stat.S_IMODE(after_victim[1].st_mode):o}",
        held,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(target) in result.stderr and "symbolic link" in result.stderr
    assert after_victim[0] == before_victim[0], "the victim was written or chmod-ed"
    assert after_victim[1].st_uid == before_victim[1].st_uid, "the victim was chown-ed"
    assert snapshot(root) == before_root, "enroll changed the board while refusing"


def test_keys_are_0600_from_the_first_byte_under_umask_000(
    tmp_path: Path, ca: tuple[Path, str], attack: Attack
) -> None:
    root = temp_root(tmp_path, "board")
    trace = tmp_path / "strace.txt"
    command = [
        PYTHON,
        "-m",
        "sleepfed.provisioning.enroll",
        "--board-id",
        "pi-01",
        "--server",
        "127.0.0.1:9",
    ]
    command += ["--ca-file", str(ca[0]), "--ca-fingerprint", ca[1], "--root", str(root)]
    traced = [
        "strace",
        "-f",
        "-e",
        "trace=openat,fchmod,fchown,write,fsync,rename,renameat,renameat2",
        "-o",
        str(trace),
    ]
    result = subprocess.run(
        [*traced, *command, "--no-unit"], capture_output=True, text=True, timeout=120, umask=0
    )
    assert result.returncode == 0, result.stderr
    etc = root / "etc" / "sleepfed"
    # every path enroll made below the root (the copied user databases aside), and its mode
    modes = {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in [*etc.rglob("*"), etc, root / "var" / "lib" / "sleepfed"]
    }
    expected = {
        "etc/sleepfed": 0o755,
        "var/lib/sleepfed": 0o700,
        "etc/sleepfed/node.key": 0o600,
        "etc/sleepfed/node.pub": 0o644,
        "etc/sleepfed/ca.pem": 0o644,
        "etc/sleepfed/agent.toml": 0o640,
        "etc/sleepfed/enrollment-request.txt": 0o644,
    }
    # The key's life in system calls: its temporary file created exclusively, 0600, never
    # through a link; owner and mode set before the first byte; fsync; rename; folder fsync.
    lines = trace.read_text().splitlines()
    created = [(i, m) for i, line in enumerate(lines) if (m := KEY_TEMPORARY_OPEN.search(line))]
    assert len(created) == 1, [line for line in lines if "node.key" in line]
    index, match = created[0]
    folder, name, flags, mode, fd = match.groups()
    pid = lines[index].split()[0]
    calls = [line.split(None, 1)[1] for line in lines[index + 1 :] if line.split()[0] == pid]
    renamed = next(i for i, call in enumerate(calls) if call.startswith("rename") and name in call)
    on_file = [c.split("(")[0] for c in calls[:renamed] if re.match(rf"\w+\({fd}[,)]", c)]
    first_write = on_file.index("write")
    modes_set = [c for c in calls[:renamed] if c.startswith(f"fchmod({fd}, ")]
    life = (
        on_file[first_write:] == ["write", "fsync"]
        and all(c.startswith(f"fchmod({fd}, 0600)") for c in modes_set)
        and "PRIVATE KEY" in next(c for c in calls if c.startswith(f"write({fd}, "))
        and f'"{name}", {folder}, "node.key"' in calls[renamed]
        and calls[renamed + 1].startswith(f"fsync({folder})")
    )
    wide = [
        line for line in lines if "node.key" in line and "O_CREAT" in line and "O_EXCL" not in line
    ]
    held = (
        modes == expected
        and {"O_CREAT", "O_EXCL", "O_NOFOLLOW"} <= set(flags.split("|"))
        and mode == "0600"
        and life
        and not wide
    )
    attack(
        "enroll under umask 000",
        "node.key 0600 from its first byte",
        f"node.key {modes.get('etc/sleepfed/node.key', 0):o}, tmp {mode} "
        f"{flags.replace('O_', '').removeprefix('WRONLY|')}, then {'+'.join(on_file)}",
        held,
    )
    assert modes == expected, {k: f"{v:o}" for k, v in modes.items()}
    assert {"O_CREAT", "O_EXCL", "O_NOFOLLOW"} <= set(flags.split("|")), match.group(0)
    assert mode == "0600", match.group(0)
    assert life, calls[: renamed + 2]
    assert not wide, wide


def _public_key() -> str:
    key = ec.generate_private_key(ec.SECP384R1())
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.mark.parametrize("found_wide", [False, True], ids=["new-state-dir", "found-0755"])
def test_the_server_state_is_private_under_umask_022(
    tmp_path: Path, attack: Attack, found_wide: bool
) -> None:
    state = tmp_path / "srv" / "state"
    if found_wide:
        state.mkdir(parents=True)
        state.chmod(0o755)
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nstate_dir = "{state}"\ninsecure = true\nport = {free_port()}\n')
    request = tmp_path / "request.txt"
    request.write_text(f"sleepfed-enroll-request/1 pi-01 {_public_key()}\n")
    commands = [
        ["boards", "register", "--config", str(config), str(request)],
        ["boards", "list", "--config", str(config)],
        ["history", "--config", str(config)],
        ["certs", "--out", str(state / "pki")],
    ]
    for args in commands:
        result = server_cli(*args, umask=0o022)
        assert result.returncode == 0, (args, result.stderr)
    public = {"ca.pem", "server.pem"}
    wrong = []
    seen = 0
    for folder, dirs, files in os.walk(state):
        for name in [folder, *(Path(folder, d) for d in dirs)]:
            seen += 1
            if stat.S_IMODE(os.lstat(name).st_mode) != 0o700:
                wrong.append(f"{name} {stat.S_IMODE(os.lstat(name).st_mode):o}")
        for name in files:
            seen += 1
            mode = stat.S_IMODE(os.lstat(Path(folder, name)).st_mode)
            if mode != (0o644 if name in public else 0o600):
                wrong.append(f"{Path(folder, name)} {mode:o}")
    names = {p.name for p in state.rglob("*")}
    attack(
        f"server state under umask 022 ({'found 0755' if found_wide else 'new'})",
        "dirs 0700, files 0600",
        f"{seen} paths, {len(wrong)} wrong",
        not wrong,
    )
    assert {"boards.db", "history.db", "ca.key", "server.key"} <= names, names
    assert not wrong, wrong


SERVICE_UID = 65534  # nobody: stands in for the unit's User=sleepfed


@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as root needs root")
def test_a_command_run_as_root_leaves_the_service_user_its_state(attack: Attack) -> None:
    """``sudo sleepfed-server boards register …`` on a packaged server: the state folder is
    the service user's; nothing the root-run commands create there may stay root's, or the
    service could not open its own registry (SQLite needs to write its -shm file)."""
    base = Path(tempfile.mkdtemp(prefix="sleepfed-owner-", dir="/tmp"))
    try:
        base.chmod(0o755)  # the service user reaches its folder, as under /var/lib
        state = base / "state"
        state.mkdir(mode=0o700)
        os.chown(state, SERVICE_UID, SERVICE_UID)
        config = base / "server.toml"
        config.write_text(f'[server]\nstate_dir = "{state}"\ninsecure = true\n')
        config.chmod(0o644)
        request = base / "request.txt"
        request.write_text(f"sleepfed-enroll-request/1 pi-01 {_public_key()}\n")
        # A compromised service plants a hard link to a file of root's (fs.protected_hardlinks
        # stops that on Debian; here root makes it): the link is never handed over.
        secret = base / "secret"
        secret.write_text("root's\n")
        os.link(secret, state / "planted")
        for args in (
            ["boards", "register", "--config", str(config), str(request)],
            ["boards", "list", "--config", str(config)],
            ["history", "--config", str(config)],
        ):
            result = server_cli(*args, umask=0o022)
            assert result.returncode == 0, (args, result.stderr)
        owners = {str(p.relative_to(state)): p.lstat().st_uid for p in state.rglob("*")}
        assert owners.pop("planted") == 0 and secret.stat().st_uid == 0, "a link was handed over"
        roots = sorted(name for name, uid in owners.items() if uid != SERVICE_UID)
        # The service user, after root: lists the boards and revokes one (writes the registry).
        as_service = ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}",
                      "--clear-groups", PYTHON, "-m", "sleepfed.server.ops.cli"]  # fmt: skip
        revoked = subprocess.run(
            [*as_service, "boards", "revoke", "--config", str(config), "pi-01"],
            capture_output=True, text=True, timeout=120, cwd=base,
        )  # fmt: skip
        attack(
            "root runs boards register/list, history in the service user's state",
            "every entry the user's; the service user writes the registry after",
            f"{len(owners)} entries, root's: {roots or 'none'}; revoke exit {revoked.returncode}",
            not roots and revoked.returncode == 0,
        )
        assert {"boards.db", "history.db"} <= set(owners), owners
        assert not roots, roots
        assert revoked.returncode == 0, revoked.stderr
        assert "pi-01: revoked" in revoked.stdout
    finally:
        shutil.rmtree(base)


def test_certs_never_write_a_key_through_a_planted_link(tmp_path: Path, attack: Attack) -> None:
    out = tmp_path / "pki"
    out.mkdir()
    stolen = tmp_path / "attacker-readable" / "ca.key"  # does not exist yet: a dangling link
    stolen.parent.mkdir()
    (out / "ca.key").symlink_to(stolen)
    result = server_cli("certs", "--out", str(out), umask=0o022)
    held = result.returncode != 0 and not stolen.exists() and (out / "ca.key").is_symlink()
    attack(
        "certs: ca.key planted as link -> attacker path",
        "refused, no key at the attacker's path",
        f"exit {result.returncode}, stolen key {'exists' if stolen.exists() else 'absent'}",
        held,
    )
    assert result.returncode != 0 and "symbolic link" in result.stderr, result.stderr[-500:]
    assert not stolen.exists()


@pytest.mark.parametrize("insecure", [True, False], ids=["insecure", "tls"])
def test_an_insecure_board_warns_at_start(tmp_path: Path, attack: Attack, insecure: bool) -> None:
    ca = pki(tmp_path)["ca"]
    transport = "insecure = true" if insecure else f'root_certificates = "{ca}"'
    config = write_agent_config(
        tmp_path / "agent.toml",
        buffer=tmp_path / "buffer.db",
        extra=(
            f'[federation]\nserver = "127.0.0.1:{free_port()}"\n{transport}\n'
            'window = "always"\nmin_new_labelled_windows = 100000\n'
        ),
    )
    log_path = tmp_path / "agent.log"
    agent = start_agent(config, log_path)
    try:
        wait_for(lambda: "ready" in log_path.read_text(), 30, message="the agent's ready line")
    finally:
        code = stop_agent(agent)
    warnings = [
        line
        for line in log_path.read_text().splitlines()
        if re.search(
            r" WARNING sleepfed\.agent federation\.insecure = true: .*WITHOUT TLS: traffic is "
            r"unencrypted and the board's identity is not authenticated; for tests only$",
            line,
        )
    ]
    if insecure:
        attack(
            "a board configured federation.insecure = true",
            "one WARNING at start",
            f"{len(warnings)} WARNING lines, exit {code}",
            len(warnings) == 1,
        )
        assert len(warnings) == 1, log_path.read_text()[-2000:]
    else:
        assert warnings == [] and "WITHOUT TLS" not in log_path.read_text()
    assert code == 0


def test_a_revoked_key_stays_out_of_every_new_superlink(tmp_path: Path, attack: Attack) -> None:
    """With the SuperLink's state in memory, each new SuperLink learns the boards from the
    registry alone: a revoked board presenting its old key again, before or after the revocation
    was applied, is never made pending (never registered with the next SuperLink)."""
    from sleepfed.provisioning.request import EnrollmentRequest
    from sleepfed.server.fleet.boards import Registry, RegistryError
    from sleepfed.server.ops.config import load_config

    certs = pki(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = {free_port()}\n'
        f'certfile = "{certs["cert"]}"\nkeyfile = "{certs["key"]}"\n'
        f'ca_certfile = "{certs["ca"]}"\n'
    )
    registry = Registry(load_config(config))
    try:
        key_a, key_b = _public_key(), _public_key()
        registry.add(EnrollmentRequest("board-a", key_a))
        registry.add(EnrollmentRequest("board-b", key_b))
        # as a sync would leave them: board-a registered, then revoked while the server is down
        registry.conn.execute("UPDATE boards SET status = 'registered', node_id = '7'")
        registry.revoke("board-a")
        assert registry.forget_superlink() == [
            "revoked board-a (never registered with this SuperLink)"
        ]
        statuses = {b["board_id"]: b["status"] for b in registry.boards()}
        refused = []
        for board_id in ("board-a", "board-c"):  # its own id, and a new one
            try:
                registry.add(EnrollmentRequest(board_id, key_a))
            except RegistryError as error:
                refused.append(str(error))
        after = {b["board_id"]: b["status"] for b in registry.boards()}
        registry.forget_superlink()
        again = {b["board_id"]: b["status"] for b in registry.boards()}
    finally:
        registry.close()
    held = (
        statuses == {"board-a": "revoked", "board-b": "pending"}
        and len(refused) == 2
        and after == statuses == again
    )
    attack("revoked key re-enrolled for a new SuperLink", "refused; never pending",
           f"{len(refused)} of 2 refused; board-a {again.get('board-a')}", held)  # fmt: skip
    assert statuses == {"board-a": "revoked", "board-b": "pending"}, statuses
    assert "this key was revoked" in refused[0] and "already belongs to board board-a" in refused[1]
    assert after == statuses == again, (after, again)
