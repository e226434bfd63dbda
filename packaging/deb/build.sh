#!/bin/bash
# Build a Debian package with plain `dpkg-deb --build` (README.md says why): the board's
# sleepfed-agent_<version>_<arch>.deb, or the server's sleepfed-server_<version>_<arch>.deb. The venv is made at its final path,
# /opt/sleepfed/venv, inside a Debian bookworm root of the target architecture (venvs are
# not relocatable), run with systemd-nspawn; arm64 on an amd64 host runs under QEMU
# (binfmt_misc + qemu-user-static, as docker/build-local.sh sets them up).
#
#   packaging/deb/build.sh [--package agent|server] [--arch amd64|arm64] [--build N]
#                          [--out DIR] [--from-head] [--compress xz|zstd|gzip] [--keep-root]
#                          [--no-venv-cache]
#
#   --package    agent (default: the board's) or server (the federation server's)
#   --arch       target architecture (default: this machine's)
#   --build N    append "+N" to pyproject.toml's version (a rebuild that upgrades)
#   --out DIR    where the .deb goes (default: dist/ of the checkout)
#   --from-head  package `git archive HEAD` instead of the working tree's src/
#   --compress   zstd (default, -10: ~20 s for the ~370 MB tree on 2 cores; dpkg >= 1.21.18,
#                i.e. bookworm), xz (~20% smaller, about 3.5 min) or gzip
#   --keep-root  keep the build root (its path is printed) for a look inside
#   --no-venv-cache  install every dependency afresh instead of from the cached venv
#
# Runs as root. The build root (debootstrap --variant=minbase bookworm with python3,
# python3-venv, python3-dev, gcc, pkg-config, libsystemd-dev) is made once and cached as
# $SLEEPFED_DEB_CACHE/bookworm-ARCH-build.tar (default /var/lib/sleepfed-deb), then unpacked
# anew for every build. The venv with its dependencies is cached there too, keyed on
# pyproject.toml, the package and the build root; a build then reinstalls only sleepfed. This machine's TLS-intercepting CA (/usr/local/share/ca-certificates)
# is trusted inside the throw-away build root only; nothing of it reaches the package.
# (The braces make bash read the whole script before running it: an edit or a `git pull`
# during a build cannot change what runs.)
{
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/packaging/deb
CACHE=${SLEEPFED_DEB_CACHE:-/var/lib/sleepfed-deb}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3,python3-venv,python3-dev,gcc,pkg-config,libsystemd-dev,ca-certificates
ARCH=$(dpkg --print-architecture)
BUILD_SUFFIX=""
OUT=$REPO/dist
FROM_HEAD=0
KEEP_ROOT=0
COMPRESS=zstd
PACKAGE=agent
VENV_CACHE=1
VENV=/opt/sleepfed/venv
# What must never be in the package: dev tools, test-only and dbus-python packages.
FORBIDDEN='site-packages/(sleepfed_tools|_?pytest|py|dbus|dbusmock|hypothesis|ruff|psutil)(/|-[0-9]|\.py$)|site-packages/_dbus_|/bin/(ruff|pytest|py\.test)$'

while [ $# -gt 0 ]; do
    case $1 in
        --package) PACKAGE=$2; shift ;;
        --arch) ARCH=$2; shift ;;
        --build) BUILD_SUFFIX=$2; shift ;;
        --out) OUT=$2; shift ;;
        --from-head) FROM_HEAD=1 ;;
        --compress) COMPRESS=$2; shift ;;
        --keep-root) KEEP_ROOT=1 ;;
        --no-venv-cache) VENV_CACHE=0 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
# What each package holds: the project's extras, its commands, its unit, what its smoke test
# imports.
case $PACKAGE in
    agent)
        EXTRAS=systemd
        COMMANDS="sleepfed-agent sleepfed-enroll"
        IMPORTS=sleepfed.board.training.client_app,sleepfed.board.service.daemon,sleepfed.provisioning.enroll,systemd.daemon,systemd.journal,serial,bleak,flwr,sklearn ;;
    server)
        EXTRAS=server,report
        COMMANDS="sleepfed-server"
        IMPORTS=sleepfed.server.ops.run_command,sleepfed.server.app.server_app,sleepfed.server.app.privacy,sleepfed.server.ops.report,dp_accounting,matplotlib.pyplot,flwr,sklearn ;;
    *) echo "build.sh: --package agent or server, not $PACKAGE" >&2; exit 2 ;;
esac
NAME=sleepfed-$PACKAGE
UNIT=$NAME.service
# The server package is built and tested for amd64 only (tests/system/test_deb_server_package.py);
# an arm64 server would be a platform no test has run.
if [ "$PACKAGE" = server ] && [ "$ARCH" != amd64 ]; then
    echo "build.sh: the server package is for amd64 only (the platform its test runs on)" >&2
    exit 2
fi
case $ARCH in amd64|arm64) ;; *) echo "build.sh: --arch amd64 or arm64, not $ARCH" >&2; exit 2 ;; esac
case $COMPRESS in xz|zstd|gzip) ;; *) echo "build.sh: --compress xz, zstd or gzip" >&2; exit 2 ;; esac
case $BUILD_SUFFIX in ''|[0-9]|[0-9][0-9]|[0-9][0-9][0-9]) ;;
    *) echo "build.sh: --build takes a number, not $BUILD_SUFFIX" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (debootstrap, systemd-nspawn)" >&2; exit 1; }

T0=$(date +%s)
log() { printf '[build-deb %(%H:%M:%S)T] %s\n' -1 "$*"; }
step() {  # step NAME COMMAND...: run it and say how long it took
    local name=$1 start; shift
    start=$(date +%s)
    "$@"
    log "$(printf '%-28s %4ds' "$name" $(( $(date +%s) - start )))"
}

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$REPO/pyproject.toml" | head -n 1)
[ -n "$VERSION" ] || { echo "build.sh: no version in pyproject.toml" >&2; exit 1; }
DEB_VERSION=$VERSION${BUILD_SUFFIX:++$BUILD_SUFFIX}

# ------------------------------------------------------------------ host tools, QEMU
host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
        command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
        command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
        mountpoint -q /proc/sys/fs/binfmt_misc \
            || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    fi
}

# ------------------------------------------------------------------ the cached build root
BASE=$CACHE/bookworm-$ARCH-build.tar
make_base() {
    local dir=$CACHE/bookworm-$ARCH.dir
    mkdir -p "$CACHE/logs"
    if [ ! -x "$dir/usr/bin/gcc" ] || [ ! -e "$dir/etc/debian_version" ] || [ -e "$dir/debootstrap" ]; then
        rm -rf "$dir"
        log "debootstrap bookworm $ARCH (once; log in $CACHE/logs/debootstrap-$ARCH.log)"
        debootstrap --variant=minbase --arch="$ARCH" --include="$INCLUDE" bookworm "$dir" \
            "$MIRROR" >"$CACHE/logs/debootstrap-$ARCH.log" 2>&1 || {
            tail -n 20 "$CACHE/logs/debootstrap-$ARCH.log" >&2; exit 1; }
    fi
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar --numeric-owner -C "$dir" -cf "$BASE.new" . && mv "$BASE.new" "$BASE"
    rm -rf "$dir"
}

WORK=""
cleanup() {
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP_ROOT" = 1 ]; then log "build root kept: $WORK/root"; else rm -rf "$WORK"; fi
    fi
}
trap cleanup EXIT

unpack_root() {
    mkdir -p "$ROOT"
    tar --numeric-owner -C "$ROOT" -xf "$BASE"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
        in_root update-ca-certificates >/dev/null
    fi
}

# systemd-nspawn, not booted: a plain container sharing the host's network
in_root() {
    local env=() key
    for key in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
               PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_DEFAULT_TIMEOUT PIP_INDEX_URL; do
        if [ -n "${!key:-}" ]; then env+=("--setenv=$key=${!key}"); fi
    done
    systemd-nspawn --quiet --register=no --keep-unit --resolv-conf=copy-host -D "$ROOT" \
        "${env[@]}" --setenv=PYTHONDONTWRITEBYTECODE=1 --setenv=LC_ALL=C.UTF-8 \
        -- "$@" </dev/null 2> >(grep -v '^Attempted to remove disk file system under' >&2)
}

# ------------------------------------------------------------------ the venv
copy_source() {  # what pip needs, nothing else: pyproject.toml, README.md, src/
    mkdir -p "$ROOT/src"
    if [ "$FROM_HEAD" = 1 ]; then
        git -C "$REPO" archive HEAD pyproject.toml README.md src | tar -C "$ROOT/src" -x
    else
        tar -C "$REPO" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
            -c pyproject.toml README.md src | tar -C "$ROOT/src" -x
    fi
}

pip_install() {  # pip_install ARGS...: in the root's venv, its output in $WORK/pip.log
    in_root "$VENV/bin/python" -m pip install --no-cache-dir --no-compile --progress-bar off \
        --no-warn-script-location --no-color --use-pep517 "$@" >>"$WORK/pip.log" 2>&1 || {
        tail -n 40 "$WORK/pip.log" >&2; echo "build.sh: pip install failed" >&2; exit 1; }
}

# The dependencies change with pyproject.toml, not with every commit: the venv as pip made it
# (before stripping) is kept per package, architecture and build root, and reused by
# reinstalling only sleepfed into it (under QEMU the full install takes about 7 min).
make_venv() {
    local key
    key=$( { cat "$REPO/pyproject.toml"; echo "$PACKAGE $ARCH"; stat -c %Y "$BASE"; } \
        | sha256sum | cut -c1-16)
    VENV_TAR=$CACHE/venv-$PACKAGE-$ARCH-$key.tar
    if [ "$VENV_CACHE" = 1 ] && [ -s "$VENV_TAR" ]; then
        log "venv: cached $(basename "$VENV_TAR"); reinstalling sleepfed only"
        mkdir -p "$ROOT$VENV"
        tar --numeric-owner -C "$ROOT$VENV" -xf "$VENV_TAR"
        pip_install --no-deps --force-reinstall /src
    else
        in_root python3 -m venv "$VENV"
        pip_install "/src[$EXTRAS]"
        if [ "$VENV_CACHE" = 1 ]; then
            rm -f "$CACHE/venv-$PACKAGE-$ARCH-"*.tar
            tar --numeric-owner -C "$ROOT$VENV" -cf "$VENV_TAR.new" . && mv "$VENV_TAR.new" "$VENV_TAR"
        fi
    fi
    grep -o 'Successfully installed.*' "$WORK/pip.log" | fold -s -w 100 || true
    # The board needs no installer: setuptools and pip go (pip last, by itself; Debian's
    # venv brings no wheel).
    in_root "$VENV/bin/python" -m pip uninstall -y -q setuptools
    in_root "$VENV/bin/python" -m pip uninstall -y -q pip
    find "$ROOT$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
    find "$ROOT$VENV" -name '*.pyc' -delete
}

smoke() {  # the stripped venv still runs its commands and imports what the package runs
    local command
    in_root "$VENV/bin/python" -c "import ${IMPORTS//,/, }; print('imports ok')"
    for command in $COMMANDS; do in_root "$VENV/bin/$command" --help >/dev/null; done
    if find "$ROOT$VENV" -name __pycache__ | grep -q .; then
        echo "build.sh: the smoke test left __pycache__ in the venv" >&2; exit 1
    fi
}

# ------------------------------------------------------------------ the package tree
assemble() {
    local pkg=$WORK/pkg doc=$WORK/pkg/usr/share/doc/$NAME command script
    mkdir -p "$pkg/opt/sleepfed" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
        "$pkg/opt/sleepfed/systemd" "$doc" "$pkg/DEBIAN"
    if [ "$KEEP_ROOT" = 1 ]; then cp -a "$ROOT$VENV" "$pkg$VENV"; else mv "$ROOT$VENV" "$pkg$VENV"; fi
    for command in $COMMANDS; do ln -s "$VENV/bin/$command" "$pkg/usr/bin/$command"; done
    install -m 0644 "$REPO/systemd/$UNIT" "$pkg/lib/systemd/system/"
    install -m 0644 "$REPO/systemd/README.md" "$pkg/opt/sleepfed/systemd/README.md"
    install -m 0644 "$HERE/debian/copyright" "$doc/copyright"
    for script in postinst postrm; do
        install -m 0755 "$HERE/debian/$PACKAGE/$script" "$pkg/DEBIAN/$script"
    done
    install -m 0755 "$HERE/debian/prerm" "$pkg/DEBIAN/prerm"  # the same for both
    local size
    size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
    sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" \
        "$HERE/debian/$PACKAGE/control" >"$pkg/DEBIAN/control"
    (cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
        | xargs -0 md5sum >DEBIAN/md5sums)
    chmod 0644 "$pkg/DEBIAN/md5sums" "$pkg/DEBIAN/control"
}

build_deb() {
    mkdir -p "$OUT"
    DEB=$OUT/${NAME}_${DEB_VERSION}_$ARCH.deb
    local level=()
    [ "$COMPRESS" = zstd ] && level=(-z10)
    dpkg-deb --root-owner-group "-Z$COMPRESS" "${level[@]}" --build "$WORK/pkg" "$DEB.new" >/dev/null
    mv "$DEB.new" "$DEB"
}

check_deb() {
    local listing bad
    listing=$(dpkg-deb -c "$DEB")
    bad=$(printf '%s\n' "$listing" | awk '{print $6}' | grep -E "$FORBIDDEN" | head -n 5 || true)
    if [ -n "$bad" ]; then
        printf 'build.sh: forbidden content in %s:\n%s\n' "$DEB" "$bad" >&2
        exit 1
    fi
    if printf '%s\n' "$listing" | grep -q '__pycache__'; then
        echo "build.sh: __pycache__ in $DEB" >&2; exit 1
    fi
}

step "host tools" host_tools
if [ -s "$BASE" ]; then log "build root: cached $BASE"; else step "build root (debootstrap)" make_base; fi
WORK=$(mktemp -d "$CACHE/work-$ARCH.XXXXXX")
ROOT=$WORK/root
step "unpack build root" unpack_root
copy_source
step "venv (pip install)" make_venv
step "smoke test" smoke
step "assemble" assemble
step "dpkg-deb --build" build_deb
check_deb
log "$(printf '%-28s %4ds' total $(( $(date +%s) - T0 )))"
printf '%s %s\n' "$DEB" "$(du -h "$DEB" | cut -f1) ($(stat -c %s "$DEB") bytes)"
exit 0
}
