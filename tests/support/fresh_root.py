"""A fresh Debian 12 root file system, as a new user's machine is: debootstrap's minimal
bookworm with Python 3.11 and what a clone and the README's commands take for granted (git,
make, ca-certificates), nothing else. Made once and kept as a tarball (about 1-2 min with
the network), unpacked anew for each test; commands run in it with systemd-nspawn."""

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
# This machine's TLS interception CA and proxy settings: the network a fresh machine here
# would have (an operator sets the same on a real one). Not project set-up.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
NETWORK_ENV = (
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_DEFAULT_TIMEOUT",
)  # fmt: skip


def bookworm_tarball() -> Path:
    """The cached minimal bookworm (amd64) tarball, made with debootstrap when missing."""
    tar = CACHE / f"bookworm-minbase-{INCLUDE.replace(',', '-')}.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "debootstrap.dir"
    shutil.rmtree(work, ignore_errors=True)
    log = CACHE / "debootstrap.log"
    with log.open("w") as out:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", "bookworm", str(work),
             MIRROR],
            stdout=out, stderr=subprocess.STDOUT, timeout=900,
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


def unpack(dest: Path) -> Path:
    """A new copy of the fresh root at ``dest``, trusting this machine's network CA."""
    dest.mkdir(parents=True)
    with tarfile.open(bookworm_tarball()) as tar:
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
