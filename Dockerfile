# AFM images. Two targets:
#
#   serve  the HTTP service (FastAPI + onnxruntime): no torch, no compilers, a non-root user
#            docker build --network host --target serve -t afm-serve .
#   train  the training CLI (PyTorch, CPU) that publishes a bundle into /models
#            docker build --network host --target train -t afm-train .
#
# Both take their settings from the environment (AFM_*; README.md, section Docker). The service
# serves AFM_MODEL_NAME from AFM_MODELS_DIR (/models; without a name: the only model there), in
# AFM_WORKERS worker processes (unset or empty: one per CPU the container may use, its cpuset).
#
# Torch for the train target: pip looks in deploy/wheels/ first (an ignored folder: put a torch
# wheel there to build offline or to avoid PyPI's multi-GB CUDA build; deploy/docker-test.sh copies
# /opt/wheels/*.whl there), then in the indexes. To take PyTorch's CPU wheels from their index:
#   docker build --target train --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# Layout for the build cache: dependencies are installed from pyproject.toml alone, before any
# source is copied, and each final stage ends with the one COPY that a source change invalidates
# (its metadata instructions come first). The stages are ordered so that the classic builder,
# which builds every stage before the target, never builds the train stage for `--target serve`.

ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------------------------------ base
FROM ${PYTHON_IMAGE} AS base
ARG AFM_UID=10001
# One unprivileged user with the same uid in both images, so that the service can read the models
# volume that the trainer writes. /models belongs to it: an empty named volume mounted there
# takes this ownership.
RUN groupadd --system --gid ${AFM_UID} afm \
 && useradd --system --uid ${AFM_UID} --gid afm --home-dir /app --shell /usr/sbin/nologin afm \
 && mkdir -p /app /models \
 && chown afm:afm /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120

# ------------------------------------------------------------------------------- serve: build
FROM base AS serve-build
WORKDIR /src
COPY pyproject.toml deploy/pyproject_deps.py ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python pyproject_deps.py pyproject.toml serve >requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt
COPY README.md deploy/serving_imports.py ./
# Of training, the contract package alone (training/bundle/): the image holds no trainer code.
COPY training/__init__.py ./training/__init__.py
COPY training/bundle ./training/bundle
COPY service ./service
# The final stage gets this venv alone: no pip, setuptools or package test suites in it.
RUN pip install --no-deps . \
 && test ! -e /opt/venv/lib/python3.11/site-packages/training/model.py \
 && cd / && python /src/serving_imports.py && cd /src \
 && pip uninstall -y -q pip setuptools \
 && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# ------------------------------------------------------------------------------------- serve
FROM base AS serve
ENV AFM_HOST=0.0.0.0 \
    AFM_PORT=8000 \
    AFM_MODELS_DIR=/models
EXPOSE 8000
# Healthy only when the model is loaded and warmed: GET /readyz answers 200 (a 503 raises).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('AFM_PORT', '8000'), timeout=2)"]
# AFM_WORKERS worker processes on AFM_PORT (docker run -e AFM_WORKERS=4; default: the cpuset).
CMD ["python", "-m", "service"]
WORKDIR /app
USER afm
COPY --from=serve-build /opt/venv /opt/venv

# ------------------------------------------------------------------------------------- train
FROM base AS train
ENV AFM_MODELS_DIR=/models \
    AFM_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONPATH=/app
ENTRYPOINT ["python", "-m", "training"]
CMD ["train", "--dataset", "synthetic", "--task", "ctr", "--model", "afm", "--name", "demo-afm", "--out", "/models", "--epochs", "8"]
# deploy/wheels/ holds local wheels (torch CPU) when the build script put them there; pip takes
# them before the index. (A separate build stage would keep their layer out of this image, but the
# classic builder then hashes the whole venv on every build: a minute here, on each CI run.)
COPY deploy/wheels/ /wheels/
COPY pyproject.toml deploy/pyproject_deps.py /tmp/build/
# Seen by pip as an environment variable during the install only.
ARG PIP_EXTRA_INDEX_URL=
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python /tmp/build/pyproject_deps.py /tmp/build/pyproject.toml train >/tmp/build/requirements.txt \
 && /opt/venv/bin/pip install --find-links /wheels -r /tmp/build/requirements.txt \
 && /opt/venv/bin/python -c "import torch, onnx, onnxruntime, pyarrow, sklearn, matplotlib" \
 && rm -rf /tmp/build /wheels/*.whl
WORKDIR /app
USER afm
COPY training /app/training
