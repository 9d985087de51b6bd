# syntax=docker/dockerfile:1.7
#
# One image for the three entry points of the project:
#   supernode            the SuperNode (default command): API :8002, CDN :8001, cache in /var/lib/dragonfly/supernode
#   dfget server         the node's uploader (the chart's optional DaemonSet); `dfget -u URL ...` downloads
#   dragonfly-operator   the kopf operator for Preheat resources
#
#   docker build -t dragonfly-supernode-py:0.1.0 .
#
# Reproducible: the base image is pinned to a full Python and Debian version (pin its digest too where the
# registry is reachable: `docker buildx imagetools inspect python:3.11.13-slim-bookworm`), and every runtime
# dependency is installed from requirements.lock with --require-hashes and wheels only.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# The locked runtime dependencies, into a virtual environment that is copied whole into the final stage.
COPY requirements.lock ./
RUN python -m venv /opt/dragonfly \
 && /opt/dragonfly/bin/pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock

# Our own packages, as a wheel built with a pinned backend and installed without dependencies (every one is
# in the lock above). .dockerignore lets only the sources, pyproject.toml and README.md in.
COPY . .
RUN pip install hatchling==1.27.0 \
 && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/dragonfly/bin/pip install --no-deps --no-index /wheels/*.whl \
 && /opt/dragonfly/bin/pip check

# ---------------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dragonfly-supernode-py" \
      org.opencontainers.image.description="Dragonfly v1 SuperNode, dfget and the Preheat operator, in Python" \
      org.opencontainers.image.licenses="Apache-2.0"

# An unprivileged user with a fixed UID/GID (the chart's securityContext and fsGroup use 10001).
RUN groupadd --system --gid 10001 dragonfly \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dragonfly --no-create-home \
        --shell /usr/sbin/nologin dragonfly \
 && mkdir -p /var/lib/dragonfly/supernode /var/lib/dragonfly/dfget \
 && chown -R 10001:10001 /var/lib/dragonfly

COPY --from=build /opt/dragonfly /opt/dragonfly

ENV PATH=/opt/dragonfly/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    SUPERNODE_HOME_DIR=/var/lib/dragonfly/supernode \
    HOME=/var/lib/dragonfly

USER 10001:10001
WORKDIR /var/lib/dragonfly
EXPOSE 8002 8001

# For `docker run` of the supernode (Kubernetes ignores HEALTHCHECK and uses the chart's probes on /_ping).
# There is no curl in the slim image: Python's urllib fails (non-zero exit) on a refused connection or non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SUPERNODE_PORT', '8002') + '/_ping', timeout=4).read()"]

CMD ["supernode"]
