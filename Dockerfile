# ligeiro's image: `ligeiro serve` over V2 REST (8000) and V2 gRPC (8001), as a non-root
# user, with only the runtime dependencies (no convert, spark or torch extras).
#
#   docker build -t ligeiro .
#   docker run --rm -p 8000:8000 -p 8001:8001 \
#       -v "$PWD/examples/models/iris:/mnt/models:ro" -e LIGEIRO_MODEL_NAME=iris ligeiro
#
# Models: /mnt/models (KServe's mount point) is a repository (<model>/<version>/model.onnx),
# or, with LIGEIRO_MODEL_NAME (or --model-name) set, one model's folder (model.onnx at the
# top, or version folders, and maybe config.toml) served under that name, as KServe
# mounts one. To bake models in instead, build an image on top of this one:
#
#   FROM ligeiro
#   COPY --chown=root:root models/iris /mnt/models
#
# Settings come from LIGEIRO_* variables (LIGEIRO_HTTP__PORT is [http] port; see
# README "Configuration"), or from arguments after the image name: they follow
# `ligeiro serve` (`docker run ligeiro /mnt/models --model-name iris`).

ARG PYTHON_IMAGE=python:3.12-slim

# -- build: the virtual environment, made by the script the tests run too ------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY deploy/image/install.sh ./deploy/image/install.sh
RUN sh deploy/image/install.sh /opt/ligeiro /src

# -- runtime: the same Python, the environment, a user without a home or a shell -------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 ligeiro \
    && useradd --system --uid 10001 --gid ligeiro --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ligeiro \
    && mkdir -p /mnt/models
COPY --from=build /opt/ligeiro /opt/ligeiro
# One worker and one ONNX Runtime thread: the image is sized for a slice of a machine
# (the seed's 0.5 CPU / 128 MB; Kubernetes' 500m / 128Mi). ligeiro counts the host's
# cores, not the container's CPU quota, so raise these with the CPU limit: one worker
# per whole CPU. The drain (LIGEIRO_GRACEFUL_TIMEOUT_S) is shorter than docker stop's
# default 10 s grace, so SIGKILL never cuts it; give `docker run --stop-timeout` or
# Kubernetes' terminationGracePeriodSeconds more than it when you raise it.
ENV PATH=/opt/ligeiro/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIGEIRO_REPOSITORY=/mnt/models \
    LIGEIRO_HTTP__HOST=0.0.0.0 \
    LIGEIRO_HTTP__PORT=8000 \
    LIGEIRO_GRPC__PORT=8001 \
    LIGEIRO_WORKERS=1 \
    LIGEIRO_RUNTIME__THREADS=1 \
    LIGEIRO_GRACEFUL_TIMEOUT_S=8
USER 10001:10001
WORKDIR /nonexistent
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ['LIGEIRO_HTTP__PORT'], timeout=2)"]
ENTRYPOINT ["ligeiro", "serve"]
