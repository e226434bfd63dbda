#!/bin/sh
# The Debian packages `make demo` and `make test` need, installed when missing.
#
#   tools/system-packages.sh demo|test
#
# Nothing is done when every package is there (dpkg-query, no apt-get and no network). When
# some are missing: as root on an apt-based system (Debian 12, Raspberry Pi OS bookworm) they
# are installed; otherwise one line says what to run, and the exit status is 1.
# tests/system/test_fresh_machine.py runs `make demo` in a fresh bookworm root file system.
set -eu

# Building: dbus-python (python-dbusmock's D-Bus binding, for the BlueZ stand-in) and
# systemd-python (journald and sd_notify) publish no wheels, so pip builds them: a compiler,
# Python's headers, pkg-config and the libraries' headers.
BUILD="python3-venv python3-dev gcc pkg-config libdbus-1-dev libglib2.0-dev libsystemd-dev"
# Running the demo: dbus-daemon for the stand-in's private system bus, bluetoothctl (bleak
# reads BlueZ's version with it), nginx (the server's fleet proxy), ca-certificates for pip.
DEMO="$BUILD make ca-certificates procps dbus bluez nginx-light"
# The tests too: socat (serial PTY pairs), systemd-nspawn (the unit tests boot a real
# systemd), chromium + a font (the report rendered headless), iproute2 (network namespaces
# of the network-cut test), curl (the attacker's tool of tests/security/), debootstrap (the
# fresh root file systems of tests/system/test_fresh_machine.py and the package tests),
# qemu-user-static + binfmt-support (the arm64 package and image run emulated), e2fsprogs (the
# SD card of tests/faults/test_faults_card.py: an ext4 image with errors=remount-ro), sqlite3
# (tests/unit/test_sqlite_recovery.py shows its .recover cannot run on Debian 12), fuse3 +
# libfuse3-3 (fusermount3 and the libfuse3 mfusepy loads: the FUSE file system
# tests/faults/test_power_cut.py records every write and fsync with).
TEST="$DEMO socat systemd-container chromium fonts-dejavu-core iproute2 curl debootstrap \
    qemu-user-static binfmt-support e2fsprogs sqlite3 fuse3 libfuse3-3"

case "${1:-}" in
demo) wanted=$DEMO ;;
test) wanted=$TEST ;;
*)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "sleepfed: not an apt-based system; install these (Debian 12 names) and run make again: $wanted" >&2
    exit 1
fi

missing=""
for package in $wanted; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [ "$status" = installed ] || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "sleepfed: missing system packages; run: sudo apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi
echo "sleepfed: installing system packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "sleepfed: system packages installed"
