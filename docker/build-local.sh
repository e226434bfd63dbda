#!/bin/bash
# Build the sleepfed images on this machine, with no registry: Debian bookworm base images
# made with debootstrap (amd64, arm64), then docker/agent.Dockerfile and
# docker/server.Dockerfile on them via --build-arg BASE_IMAGE=..., arm64 under QEMU.
#
#   docker/build-local.sh [--arch amd64,arm64] [--only agent|server]
#                         [--keep-daemon] [--no-build]
#
# Runs as root; installs docker.io, docker-compose, qemu-user-static, binfmt-support and
# debootstrap when missing. Its own dockerd (socket /run/sleepfed-docker.sock, data root
# /var/lib/sleepfed-docker/data, kept between runs: base images and BuildKit's cache are
# reused), stopped at the end unless --keep-daemon or it was already running.
# Use the same engine afterwards with:
#   DOCKER_HOST=unix:///run/sleepfed-docker.sock /usr/bin/docker image ls 'sleepfed-*'
# The host's proxy CA certificates (/usr/local/share/ca-certificates/*.crt) reach pip in the
# build stage as the BuildKit secret "build_ca" only; no image layer contains them.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
STATE=${SLEEPFED_DOCKER_STATE:-/var/lib/sleepfed-docker}
SOCK=${SLEEPFED_DOCKER_SOCK:-/run/sleepfed-docker.sock}
PIDFILE=$STATE/dockerd.pid
DOCKER=/usr/bin/docker          # Debian's client (20.10, BuildKit built in, no buildx needed)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ARCHES=amd64,arm64
COMPONENTS=agent,server
KEEP_DAEMON=0
BUILD=1

while [ $# -gt 0 ]; do
    case $1 in
        --arch) ARCHES=$2; shift ;;
        --only) COMPONENTS=$2; shift ;;
        --keep-daemon) KEEP_DAEMON=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build-local.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || { echo "build-local.sh: run as root" >&2; exit 1; }
export DOCKER_HOST=unix://$SOCK DOCKER_BUILDKIT=1
mkdir -p "$STATE/rootfs" "$STATE/logs"
SUMMARY=$STATE/logs/last-build.txt
: > "$SUMMARY"
T0=$(date +%s)

log() { printf '[build-local %(%H:%M:%S)T] %s\n' -1 "$*"; }
step() {  # step NAME COMMAND... : run it, print and record how long it took
    local name=$1; shift
    local start; start=$(date +%s)
    log "start: $name"
    "$@"
    local took=$(( $(date +%s) - start ))
    printf '%-44s %4dm %02ds\n' "$name" $((took / 60)) $((took % 60)) | tee -a "$SUMMARY"
}

platform_of() { case $1 in amd64) echo linux/amd64 ;; arm64) echo linux/arm64 ;; esac; }
qemu_of() { case $1 in arm64) echo qemu-aarch64 ;; *) echo "" ;; esac; }
host_arch=$(dpkg --print-architecture)

# ------------------------------------------------------------------ host packages, binfmt
install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    [ -x /usr/bin/docker ] || missing+=(docker.io)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    # Debian's docker-compose 1.29: the compose fleet and its isolation test
    # (tests/security/test_compose_isolation.py)
    [ -x /usr/bin/docker-compose ] || missing+=(docker-compose)
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
}
setup_binfmt() {
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    local arch q
    for arch in ${ARCHES//,/ }; do
        q=$(qemu_of "$arch")
        [ -z "$q" ] || [ -e "/proc/sys/fs/binfmt_misc/$q" ] || update-binfmts --enable "$q"
    done
}

# ------------------------------------------------------------------ our own dockerd
STARTED_DAEMON=0
daemon_alive() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
start_daemon() {
    if daemon_alive && $DOCKER version >/dev/null 2>&1; then
        log "dockerd already running (pid $(cat "$PIDFILE")), reusing it"
        return
    fi
    dockerd --bridge=none --iptables=false --ip-masq=false \
        --data-root "$STATE/data" --exec-root /run/sleepfed-docker \
        --pidfile "$PIDFILE" -H "unix://$SOCK" >"$STATE/logs/dockerd.log" 2>&1 &
    STARTED_DAEMON=1
    local i
    for i in $(seq 60); do
        $DOCKER version >/dev/null 2>&1 && { log "dockerd up (pid $(cat "$PIDFILE"))"; return; }
        sleep 1
    done
    echo "build-local.sh: dockerd did not come up; see $STATE/logs/dockerd.log" >&2
    exit 1
}
stop_daemon() {
    if [ "$STARTED_DAEMON" = 1 ] && [ "$KEEP_DAEMON" = 0 ] && daemon_alive; then
        local pid; pid=$(cat "$PIDFILE")
        log "stopping dockerd (pid $pid)"
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
}
trap stop_daemon EXIT

# ------------------------------------------------------------------ the build-only CA
BUILD_CA=$STATE/build-ca.pem
collect_ca() {
    rm -f "$BUILD_CA"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        (umask 077; cat /usr/local/share/ca-certificates/*.crt > "$BUILD_CA")
        log "proxy CA: $(ls /usr/local/share/ca-certificates/*.crt | wc -l) certificate file(s) as build secret build_ca"
    fi
}

# ------------------------------------------------------------------ base images
debootstrap_rootfs() {  # ARCH -> $STATE/rootfs/bookworm-ARCH.tar
    local arch=$1 dir=$STATE/rootfs/bookworm-$1.dir tar=$STATE/rootfs/bookworm-$1.tar
    if [ ! -x "$dir/usr/bin/python3" ] || [ ! -e "$dir/etc/debian_version" ] \
        || [ -e "$dir/debootstrap" ]; then
        rm -rf "$dir"
        debootstrap --variant=minbase --arch="$arch" \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$dir" "$MIRROR" >"$STATE/logs/debootstrap-$arch.log" 2>&1
    fi
    # no package caches or lists in the image (a build that needs packages runs apt-get update)
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar --numeric-owner -C "$dir" -cf "$tar.new" . && mv "$tar.new" "$tar"
}
base_image() {  # ARCH: sleepfed-base:bookworm-ARCH, skipped when it exists
    local arch=$1 tag=sleepfed-base:bookworm-$1 ctx=$STATE/rootfs/ctx-$1
    if $DOCKER image inspect "$tag" >/dev/null 2>&1; then
        log "$tag exists, skipped"
        printf '%-44s cached\n' "base $arch" | tee -a "$SUMMARY"
        return
    fi
    [ -s "$STATE/rootfs/bookworm-$arch.tar" ] || step "debootstrap bookworm $arch" debootstrap_rootfs "$arch"
    mkdir -p "$ctx"
    ln -f "$STATE/rootfs/bookworm-$arch.tar" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n' > "$ctx/Dockerfile"
    # FROM scratch + ADD with --platform: "docker import --platform" is ignored by engine 20.10
    step "import base $arch" $DOCKER build --platform "$(platform_of "$arch")" -t "$tag" "$ctx"
    rm -f "$ctx/rootfs.tar"
    $DOCKER image rm "sleepfed-runtime:bookworm-$arch" >/dev/null 2>&1 || true  # made anew below
}
runtime_build() {  # ARCH: the build itself, its log in $STATE/logs
    local arch=$1 ctx=$STATE/rootfs/ctx-runtime
    mkdir -p "$ctx"
    $DOCKER build --network host --platform "$(platform_of "$arch")" \
        -f "$REPO/docker/runtime-base.Dockerfile" \
        --build-arg BASE_IMAGE="sleepfed-base:bookworm-$arch" \
        -t "sleepfed-runtime:bookworm-$arch" "$ctx" \
        >"$STATE/logs/runtime-base-$arch.log" 2>&1 || {
        tail -n 30 "$STATE/logs/runtime-base-$arch.log" >&2
        echo "build-local.sh: sleepfed-runtime:bookworm-$arch failed" >&2
        exit 1
    }
}
runtime_image() {  # ARCH: sleepfed-runtime:bookworm-ARCH (the final stages' trimmed base)
    if $DOCKER image inspect "sleepfed-runtime:bookworm-$1" >/dev/null 2>&1; then
        log "sleepfed-runtime:bookworm-$1 exists, skipped"
        printf '%-44s cached\n' "runtime base $1" | tee -a "$SUMMARY"
        return
    fi
    step "runtime base $1" runtime_build "$1"
}

# ------------------------------------------------------------------ project images
docker_build() {  # COMPONENT ARCH: the build itself, its full log in $STATE/logs
    local component=$1 arch=$2 secret=()
    [ -s "$BUILD_CA" ] && secret=(--secret "id=build_ca,src=$BUILD_CA")
    $DOCKER build --network host --platform "$(platform_of "$arch")" \
        -f "$REPO/docker/$component.Dockerfile" \
        --build-arg BASE_IMAGE="sleepfed-base:bookworm-$arch" \
        --build-arg RUNTIME_IMAGE="sleepfed-runtime:bookworm-$arch" \
        --build-arg REVISION="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "${secret[@]}" --progress plain -t "sleepfed-$component:$arch" "$REPO" \
        >"$STATE/logs/build-$component-$arch.log" 2>&1 || {
        tail -n 40 "$STATE/logs/build-$component-$arch.log" >&2
        echo "build-local.sh: sleepfed-$component:$arch failed; see $STATE/logs/build-$component-$arch.log" >&2
        exit 1
    }
    grep -E 'install-venv:|^#[0-9]+ DONE [0-9]{2,}\.[0-9]s' "$STATE/logs/build-$component-$arch.log" | tail -n 8 || true
}
build_image() {  # COMPONENT ARCH
    step "image sleepfed-$1:$2" docker_build "$1" "$2"
}

step "host packages" install_packages
setup_binfmt
step "dockerd" start_daemon
collect_ca
for arch in ${ARCHES//,/ }; do
    base_image "$arch"
    runtime_image "$arch"
done
if [ "$BUILD" = 1 ]; then
    for arch in ${ARCHES//,/ }; do
        for component in ${COMPONENTS//,/ }; do
            build_image "$component" "$arch"
        done
    done
fi
rm -f "$BUILD_CA"

# The images these builds replaced (now untagged) would fill the engine's disk build after
# build; BuildKit's layer cache is kept.
if [ "$BUILD" = 1 ]; then $DOCKER image prune -f >/dev/null || true; fi

echo
echo "== step times (host $host_arch) =="
cat "$SUMMARY"
printf '%-44s %4dm %02ds\n' total $(( ($(date +%s) - T0) / 60 )) $(( ($(date +%s) - T0) % 60 ))
echo
echo "== image sizes (uncompressed, as docker reports them) =="
$DOCKER image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^sleepfed-' | sort | tee -a "$SUMMARY"
for image in $($DOCKER image ls --format '{{.Repository}}:{{.Tag}}' | grep -E '^sleepfed-(agent|server):' | sort); do
    printf '%s\tarch %s\n' "$image" "$($DOCKER image inspect -f '{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}' "$image")"
done
