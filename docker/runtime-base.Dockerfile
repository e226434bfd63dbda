# A trimmed runtime base made from docker/build-local.sh's debootstrapped Debian base, as the
# official python:3.11-slim is trimmed: the final stage of the agent and server images needs
# Python only (no pip, venv module, setuptools, wheels, documentation, manual pages or
# locales). Flattened into one layer (FROM scratch + COPY), so what is removed is gone.
#
#   docker build --platform linux/arm64 -f docker/runtime-base.Dockerfile \
#       --build-arg BASE_IMAGE=sleepfed-base:bookworm-arm64 -t sleepfed-runtime:bookworm-arm64 .

ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS trim
ENV DEBIAN_FRONTEND=noninteractive
# Packages installed later (the server image's nginx-light) bring no documentation either.
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
        'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/lintian/*' \
        > /etc/dpkg/dpkg.cfg.d/sleepfed-slim \
    && apt-get purge -y python3-pip python3-setuptools python3-wheel python3-venv \
        python3.11-venv python3-pip-whl python3-setuptools-whl python3-distutils \
        python3-lib2to3 >/dev/null \
    && find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete \
    && rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian/* \
        /var/cache/apt/* /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log

FROM scratch
COPY --from=trim / /
ENV LANG=C.UTF-8
CMD ["python3"]
