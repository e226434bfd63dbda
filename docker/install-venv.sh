#!/bin/sh
# Build stage of docker/agent.Dockerfile and docker/server.Dockerfile, in two layers so that a
# change to sleepfed's own code does not reinstall its dependencies (under QEMU that took
# 18 min for arm64):
#   install-venv.sh deps SRC VENV COMPONENT   the venv and every dependency that
#                                             SRC/pyproject.toml names (only that file is
#                                             needed), trimmed and byte-compiled
#   install-venv.sh app  SRC VENV COMPONENT   sleepfed itself (--no-deps), then pip removed
# COMPONENT is agent or server (the server adds the report and server extras).
set -eu
mode=$1
src=$2
venv=$3
component=${4:-server}
case "$mode" in deps|app) ;; *) echo "install-venv: mode must be deps or app, not $mode" >&2; exit 2 ;; esac

# A TLS-intercepting proxy's CA, given as the build secret "build_ca", is added to pip's
# bundle for this RUN only (never to a layer).
bundle=""
if [ -s /run/secrets/build_ca ]; then
    bundle=$(mktemp)
    for system in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -s "$system" ]; then cat "$system" >> "$bundle"; break; fi
    done
    if [ ! -s "$bundle" ]; then
        python3 -c 'import pip._vendor.certifi as c; print(open(c.where()).read())' >> "$bundle" 2>/dev/null || true
    fi
    cat /run/secrets/build_ca >> "$bundle"
    export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
    echo "install-venv: using the build_ca secret for TLS (build stage only)"
fi

# sleepfed's own requirements (with the component's extras), read from pyproject.toml alone.
requirements() {
    COMPONENT="$component" "$1" - "$src/pyproject.toml" <<'PY'
import os, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
lines = list(project["dependencies"])
if os.environ["COMPONENT"] == "server":
    for extra in ("report", "server"):
        lines += project["optional-dependencies"][extra]
from packaging.requirements import Requirement
seen = set()
for line in lines:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if str(req) not in seen:
        seen.add(str(req))
        print(req)
PY
}

if [ "$mode" = deps ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip packaging
    # the server also draws `sleepfed-server report`'s plots (matplotlib) and accounts DP
    # (dp-accounting); boards do neither
    requirements "$venv/bin/python" > /tmp/requirements.txt
    cat /tmp/requirements.txt
    "$venv/bin/pip" install -r /tmp/requirements.txt
    rm -f /tmp/requirements.txt

    # Smaller image. Neither side ever installs an app's dependencies at run time (Flower's
    # runtime dependency install is off, and the apps are the ones installed here), so uv,
    # which flwr requires only for that, is removed: 37 MB, and a board cannot pip-install
    # what a server's app asks for. A board's SuperNode serves its local runtime API with
    # uvicorn's pure-Python fallbacks (asyncio loop, h11), so the agent image also drops
    # uvloop, httptools, watchfiles and websockets (uvicorn[standard]'s speed-ups, ~17 MB).
    drop="uv"
    if [ "$component" = agent ]; then drop="$drop uvloop httptools watchfiles websockets"; fi
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip uninstall -y $drop >/dev/null 2>&1 || true
    # No test suites of the dependencies in the shipped venv.
    find "$venv" -depth -type d \( -name tests -o -name __pycache__ \) -path '*/site-packages/*' \
        -exec rm -rf {} + 2>/dev/null || true
    # Not stripped: `strip --strip-unneeded` on the wheels' bundled libraries (auditwheel-
    # patched with patchelf) breaks them; seen here: numpy's libscipy_openblas64_ "ELF load
    # command address/offset not page-aligned" (33 MB would have been saved on amd64).
    # Bytecode compiled once here (the image is read-only to its user): every message a
    # board's SuperNode receives starts a ClientApp process that imports flwr, numpy and
    # scikit-learn; without .pyc files that import took 51 s under QEMU arm64 and 10.7 s on
    # amd64 (on a busy machine; with them, on a quiet one: 8.2 s and 1.0 s,
    # benchmarks/bench_qemu_round.py).
    "$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$venv/lib" \
        >/dev/null
    "$venv/bin/python" -c "import flwr, numpy, sklearn; print('install-venv: dependencies ok, numpy', numpy.__version__, 'sklearn', sklearn.__version__)"
    if [ -n "$bundle" ]; then rm -f "$bundle"; fi
    exit 0
fi

# app: sleepfed itself over the deps layer (the imports below show nothing is missing)
"$venv/bin/pip" install --no-deps "$src"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$venv/bin/python" -m compileall -q --invalidation-mode unchecked-hash "$site/sleepfed" >/dev/null
# No pip, setuptools or wheel in the shipped venv.
"$venv/bin/python" -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true
"$venv/bin/python" -c "import sleepfed.board.service.cli, sleepfed.server.ops.cli; print('install-venv: sleepfed installed')"
if [ -n "$bundle" ]; then rm -f "$bundle"; fi
