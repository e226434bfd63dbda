"""A fresh Debian 12 root file system, as a new user's machine is: debootstrap's minimal
bookworm with Python 3.11 and what a clone and the README's commands take for granted (git,
make, ca-certificates), nothing else. Made once and kept as a tarball (about 1-2 min with
the network), unpacked anew for each test; commands run in it with systemd-nspawn.

``arch="arm64"`` gives the same root for a board (a Raspberry Pi, a Jetson) on this amd64
host: its binaries run under QEMU user emulation (qemu-user-static, registered with
binfmt_misc and the F flag, so the interpreter is found inside the container too);
debootstrap's second stage runs emulated, hence several minutes, once."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("SLEEPFED_FRESH_ROOT_CACHE", "/var/lib/sleepfed-fresh"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
INCLUDE = "python3,git,make,ca-certificates"
# Debian architecture -> the binfmt_misc entry of its QEMU user emulator (qemu-user-static).
QEMU = {"arm64": "qemu-aarch64"}
# This machine's TLS interception CA and proxy settings: the network a fresh machine here
# would have (an operator sets the same on a real one). Not project set-up.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
NETWORK_ENV = (
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_DEFAULT_TIMEOUT",
)  # fmt: skip


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def ensure_emulation(arch: str) -> None:
    """For a foreign ``arch`` (only arm64 is known): QEMU registered with binfmt_misc, as
    packaging/deb/build.sh's host_tools does it (qemu-user-static, binfmt-support)."""
    if arch == host_arch():
        return
    assert arch in QEMU, f"no QEMU emulation known for {arch}"
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=True)
    entry = binfmt / QEMU[arch]
    if not entry.exists():
        subprocess.run(["update-binfmts", "--enable", QEMU[arch]], check=True)
    # F: the kernel opens the emulator now, so a container's root need not contain it.
    text = entry.read_text()
    assert text.startswith("enabled") and "F" in text.split("flags:")[1].split()[0], text


def bookworm_tarball(arch: str = "amd64") -> Path:
    """The cached minimal bookworm tarball of ``arch``, made with debootstrap when missing.
    The amd64 names are those from before arm64 (an existing cache stays valid)."""
    prefix = "bookworm" if arch == "amd64" else f"bookworm-{arch}"
    tar = CACHE / f"{prefix}-minbase-{INCLUDE.replace(',', '-')}.tar"
    if tar.exists():
        return tar
    ensure_emulation(arch)
    CACHE.mkdir(parents=True, exist_ok=True)
    suffix = "" if arch == "amd64" else f"-{arch}"
    work = CACHE / f"debootstrap{suffix}.dir"
    shutil.rmtree(work, ignore_errors=True)
    log = CACHE / f"debootstrap{suffix}.log"
    # A foreign root's second stage runs under QEMU: about 8 min instead of 1-2.
    foreign = arch != host_arch()
    with log.open("w") as out:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", *([f"--arch={arch}"] if foreign else []),
             f"--include={INCLUDE}", "bookworm", str(work), MIRROR],
            stdout=out, stderr=subprocess.STDOUT, timeout=1800 if foreign else 900,
        )  # fmt: skip
    assert done.returncode == 0, log.read_text()[-3000:]
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (work / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    subprocess.run(["tar", "--numeric-owner", "-C", str(work), "-cf", f"{tar}.new", "."],
                   check=True)  # fmt: skip
    os.replace(f"{tar}.new", tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


def unpack(dest: Path, arch: str = "amd64") -> Path:
    """A new copy of the fresh root (of ``arch``) at ``dest``, trusting this machine's
    network CA."""
    tarball = bookworm_tarball(arch)
    ensure_emulation(arch)  # also when the tarball was cached: binfmt is lost on reboot
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="fully_trusted")
    cas = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    if cas:
        target = dest / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for ca in cas:
            shutil.copy(ca, target / ca.name)
        run_in(dest, ["update-ca-certificates"], timeout=120, check=True)
    return dest


def run_in(
    root: Path,
    command: Sequence[str],
    *,
    binds_ro: Sequence[tuple[Path, str]] = (),
    timeout: float,
    check: bool = False,
    user: str | None = None,
    chdir: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``command`` in the root (not booted: a plain container sharing the host's network).
    In a private mount namespace with a tmpfs on /run/systemd: this host runs no systemd,
    and nspawn keeps its per-machine state there."""
    nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root),
              "-M", f"sleepfed-fresh-{os.getpid()}", "--resolv-conf=copy-host"]  # fmt: skip
    nspawn += [f"--bind-ro={source}:{target}" for source, target in binds_ro]
    nspawn += [f"--setenv={k}={os.environ[k]}" for k in NETWORK_ENV if k in os.environ]
    if user:
        nspawn += [f"--user={user}"]
    if chdir:
        nspawn += [f"--chdir={chdir}"]
    script = 'mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && exec "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *nspawn, "--", *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, f"{command}: rc {done.returncode}\n{done.stderr[-3000:]}"
    return done
