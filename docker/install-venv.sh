#!/bin/sh
# Build stage of docker/agent.Dockerfile and docker/server.Dockerfile: make the venv and
# install sleepfed into it.   install-venv.sh SRC VENV
#
# linux/arm/v7 (or DEBIAN_SCIENTIFIC=yes): PyPI has no armv7 wheels for numpy, scipy or
# scikit-learn and building them under QEMU takes hours, so the venv is made from Debian's
# /usr/bin/python3 with --system-site-packages over python3-numpy/scipy/sklearn, and pip
# installs everything else without letting the resolver replace those three (Debian
# bookworm ships numpy 1.24 / scikit-learn 1.2, below the versions pyproject asks for), and
# without the requirements' extras (uvloop, httptools, greenlet: no armv7 wheels).
set -eu
src=$1
venv=$2
component=${3:-server}

scientific=${DEBIAN_SCIENTIFIC:-auto}
if [ "$scientific" = auto ]; then
    if [ "${TARGETARCH:-}" = arm ]; then scientific=yes; else scientific=no; fi
fi

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

if [ "$scientific" = yes ]; then
    echo "install-venv: Debian's numpy/scipy/scikit-learn + --system-site-packages"
    apt-get update
    # compilers only here, in the build stage, for any sdist without an armv7 wheel
    apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
        python3-numpy python3-scipy python3-sklearn build-essential libffi-dev
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install --upgrade pip wheel
    "$venv/bin/pip" install --no-deps "$src" "flwr==1.42.*"
    # the rest of sleepfed's and flwr's requirements, minus what Debian provides
    "$venv/bin/python" - > /tmp/requirements.txt <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"numpy", "scipy", "scikit-learn", "flwr"}
seen = set()
for dist in ("sleepfed", "flwr"):
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in skip or str(req) in seen:
            continue
        # no extras: uvicorn[standard] (uvloop, httptools) and sqlalchemy[asyncio] (greenlet)
        # have no armv7 wheels and serve the SuperLink side of flwr, not a board
        req.extras = set()
        seen.add(str(req))
        print(req)
PY
    cat /tmp/requirements.txt
    "$venv/bin/pip" install -r /tmp/requirements.txt
    rm -f /tmp/requirements.txt
    "$venv/bin/pip" check || echo "install-venv: pip check reports the Debian versions above (expected)"
else
    python3 -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip
    # the server also draws `sleepfed-server report`'s plots (matplotlib) and accounts DP
    # (dp-accounting); boards do neither
    extras=""
    if [ "$component" = server ]; then extras="[report,server]"; fi
    "$venv/bin/pip" install "$src$extras"
fi

# Smaller image. Neither side ever installs an app's dependencies at run time (Flower's
# runtime dependency install is off, and the apps are the ones installed here), so uv, which
# flwr requires only for that, is removed: 37 MB, and a board cannot pip-install what a
# server's app asks for. A board's SuperNode serves its local runtime API with uvicorn's
# pure-Python fallbacks (asyncio loop, h11), so the agent image also drops uvloop, httptools,
# watchfiles and websockets (uvicorn[standard]'s speed-ups, ~17 MB).
drop="uv"
if [ "$component" = agent ]; then drop="$drop uvloop httptools watchfiles websockets"; fi
# shellcheck disable=SC2086
"$venv/bin/python" -m pip uninstall -y $drop >/dev/null 2>&1 || true
# No test suites of the dependencies, no pip/setuptools in the shipped venv.
find "$venv" -depth -type d \( -name tests -o -name __pycache__ \) -path '*/site-packages/*' \
    -exec rm -rf {} + 2>/dev/null || true
"$venv/bin/python" -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true
# Not stripped: `strip --strip-unneeded` on the wheels' bundled libraries (auditwheel-patched
# with patchelf) breaks them; seen here: numpy's libscipy_openblas64_ "ELF load command
# address/offset not page-aligned" (33 MB would have been saved on amd64).
# Bytecode compiled once here (the image is read-only to its user): every message a board's
# SuperNode receives starts a ClientApp process that imports flwr, numpy and scikit-learn;
# without .pyc files that import took 51 s under QEMU arm64 and 10.7 s on amd64 (on a busy
# machine; with them, on a quiet one: 8.2 s and 1.0 s, benchmarks/bench_qemu_round.py).
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$venv/lib" >/dev/null
"$venv/bin/python" -c "import agent.cli, server.cli, numpy, sklearn; print('install-venv: imports ok, numpy', numpy.__version__, 'sklearn', sklearn.__version__)"
if [ -n "$bundle" ]; then rm -f "$bundle"; fi
if [ "$scientific" = yes ]; then rm -rf /var/lib/apt/lists/*; fi
