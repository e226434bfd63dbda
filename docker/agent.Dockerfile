# sleepfed agent image (one board: sensor ingest, buffer, nights, federated participation).
#
#   DOCKER_BUILDKIT=1 docker build -f docker/agent.Dockerfile --platform linux/arm64 \
#       --build-arg BASE_IMAGE=python:3.11-slim-bookworm -t sleepfed-agent:arm64 .
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
    sh /tmp/install-venv.sh deps /src /opt/sleepfed/venv agent
COPY README.md /src/
COPY src /src/src
RUN --mount=type=secret,id=build_ca \
    sh /tmp/install-venv.sh app /src /opt/sleepfed/venv agent

# ---------------------------------------------------------------- final stage
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sleepfed-agent" \
      org.opencontainers.image.description="sleepfed board agent: sensor ingest, SQLite buffer, federated sleep-quality learning (Flower SuperNode)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sleepfed/sleepfed" \
      io.sleepfed.component="agent"
# User sleepfed (uid/gid 10001), its state folder and /etc/sleepfed; no compilers here.
RUN groupadd --system --gid 10001 sleepfed \
    && useradd --system --uid 10001 --gid sleepfed --home-dir /var/lib/sleepfed \
       --shell /usr/sbin/nologin sleepfed \
    && install -d -o sleepfed -g sleepfed -m 0700 /var/lib/sleepfed \
    && install -d -o root -g sleepfed -m 0750 /etc/sleepfed
COPY --from=build /opt/sleepfed/venv /opt/sleepfed/venv
COPY docker/healthcheck.py /opt/sleepfed/healthcheck.py
ENV PATH=/opt/sleepfed/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SLEEPFED_CONFIG=/etc/sleepfed/agent.toml
USER sleepfed
WORKDIR /var/lib/sleepfed
VOLUME ["/var/lib/sleepfed"]
# Healthy = `sleepfed-agent status --json` exits 0 and reports daemon.running.
# (Under QEMU importing the status code takes seconds: generous timeout and start period.)
HEALTHCHECK --interval=30s --timeout=30s --start-period=120s --retries=3 \
    CMD python /opt/sleepfed/healthcheck.py agent "$SLEEPFED_CONFIG"
ENTRYPOINT ["sleepfed-agent"]
CMD ["run", "--config", "/etc/sleepfed/agent.toml"]
