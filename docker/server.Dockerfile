# sleepfed server image (Flower SuperLink + FedAvg ServerApp, round history).
#
#   DOCKER_BUILDKIT=1 docker build -f docker/server.Dockerfile --platform linux/arm64 \
#       --build-arg BASE_IMAGE=python:3.11-slim-bookworm -t sleepfed-server:arm64 .
#
# The build context is the repository root; platforms and the other builds: docker/README.md.
# No "# syntax=" line on purpose: the frontend image cannot be pulled where there is no
# registry, and the engine's built-in frontend (20.10+) supports RUN --mount=type=secret.

ARG BASE_IMAGE=python:3.11-slim-bookworm
# The final stage's base: by default the same image (the venv needs the same Python at the
# same path). docker/build-local.sh passes a trimmed copy of its Debian base (no pip, docs or
# locales; docker/runtime-base.Dockerfile), as python:3.11-slim is trimmed.
ARG RUNTIME_IMAGE=${BASE_IMAGE}

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY docker/install-venv.sh /tmp/install-venv.sh
# Two layers: the dependencies (from pyproject.toml alone) stay cached while only sleepfed's
# own code changes. build_ca (optional): extra CA certificates for a TLS-intercepting proxy,
# used by pip in this stage only; a secret is never written to a layer.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=build_ca \
    sh /tmp/install-venv.sh deps /src /opt/sleepfed/venv server
COPY README.md /src/
COPY src /src/src
RUN --mount=type=secret,id=build_ca \
    sh /tmp/install-venv.sh app /src /opt/sleepfed/venv server

# ---------------------------------------------------------------- final stage
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sleepfed-server" \
      org.opencontainers.image.description="sleepfed federation server: TLS Flower SuperLink with node authentication, FedAvg, held-out scoring, round history" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sleepfed/sleepfed" \
      io.sleepfed.component="server"
ENV DEBIAN_FRONTEND=noninteractive
# User sleepfed (uid/gid 10001), its state folder and /etc/sleepfed; no compilers here.
RUN groupadd --system --gid 10001 sleepfed \
    && useradd --system --uid 10001 --gid sleepfed --home-dir /var/lib/sleepfed-server \
       --shell /usr/sbin/nologin sleepfed \
    && install -d -o sleepfed -g sleepfed -m 0700 /var/lib/sleepfed-server \
    && install -d -o root -g sleepfed -m 0750 /etc/sleepfed
# nginx (Debian's nginx-light, server image only): the fleet proxy that `sleepfed-server run`
# starts itself, as user sleepfed, in front of the SuperLink on 127.0.0.1 (src/sleepfed/server/fleet/fleet_proxy.py:
# its own config, pid, logs and temporary folders under the state dir, `nginx -e <errlog>`).
# The system's nginx is never used: policy-rc.d keeps the package's postinst from starting it
# during the build, its default site and service scripts are removed, and nothing in the image
# starts a service (ENTRYPOINT is sleepfed-server).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -f /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default /etc/init.d/nginx \
        /lib/systemd/system/nginx.service /etc/logrotate.d/nginx \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log \
    && /usr/sbin/nginx -V
COPY --from=build /opt/sleepfed/venv /opt/sleepfed/venv
COPY docker/healthcheck.py /opt/sleepfed/healthcheck.py
ENV PATH=/opt/sleepfed/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SLEEPFED_CONFIG=/etc/sleepfed/server.toml
USER sleepfed
WORKDIR /var/lib/sleepfed-server
VOLUME ["/var/lib/sleepfed-server"]
# Healthy = GET /health through the fleet proxy on the configured host:port answers 200: nginx
# is up with a certificate from the configured CA and the SuperLink behind it answers.
# (`sleepfed-server status --config …` is the deeper check an operator runs by hand.)
HEALTHCHECK --interval=30s --timeout=30s --start-period=120s --retries=3 \
    CMD python /opt/sleepfed/healthcheck.py server "$SLEEPFED_CONFIG"
ENTRYPOINT ["sleepfed-server"]
CMD ["run", "--config", "/etc/sleepfed/server.toml"]
