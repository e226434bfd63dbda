# docker buildx bake -f docker/docker-bake.hcl            (from the repository root)
# Targets: agent and server, each for linux/amd64 and linux/arm64 (one
# multi-platform manifest per target; needs buildx and a registry or the OCI exporter).
# Where there is no buildx (this project's CI machine), docker/README.md lists the equivalent
# one-platform `docker build --platform ...` commands, and docker/build-local.sh runs them.

variable "BASE_IMAGE" {
  default = "python:3.11-slim-bookworm"
}
variable "REGISTRY" {
  # e.g. "registry.example.org/sleepfed/"; empty: local names
  default = ""
}
variable "VERSION" {
  default = "0.1.0"
}
variable "REVISION" {
  default = "unknown"
}

group "default" {
  targets = ["agent", "server"]
}

target "_common" {
  context   = "."
  platforms = ["linux/amd64", "linux/arm64"]
  args = {
    BASE_IMAGE = BASE_IMAGE
    VERSION    = VERSION
    REVISION   = REVISION
  }
  # Behind a TLS-intercepting proxy, give pip (build stage only) its CA as a secret:
  #   docker buildx bake -f docker/docker-bake.hcl --set '*.secret=id=build_ca,src=/path/ca.pem'
}

target "agent" {
  inherits   = ["_common"]
  dockerfile = "docker/agent.Dockerfile"
  tags       = ["${REGISTRY}sleepfed-agent:${VERSION}"]
}

target "server" {
  inherits   = ["_common"]
  dockerfile = "docker/server.Dockerfile"
  tags       = ["${REGISTRY}sleepfed-server:${VERSION}"]
}
