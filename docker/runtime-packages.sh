#!/bin/sh
# Final stage of the sleepfed images: runtime system packages only (no compilers).
# linux/arm/v7 (or DEBIAN_SCIENTIFIC=yes): Debian's numpy/scipy/scikit-learn, which the venv
# (made with --system-site-packages) imports. Elsewhere: nothing.
set -eu
scientific=${DEBIAN_SCIENTIFIC:-auto}
if [ "$scientific" = auto ]; then
    if [ "${TARGETARCH:-}" = arm ]; then scientific=yes; else scientific=no; fi
fi
if [ "$scientific" = yes ]; then
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-numpy python3-scipy python3-sklearn
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
