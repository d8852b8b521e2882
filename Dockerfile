# AFM images. Two targets:
#
#   serve  the HTTP service (FastAPI + onnxruntime), no torch, no compilers, runs as a non-root user
#            docker build --target serve -t afm-serve .
#   train  the training CLI (PyTorch CPU) that publishes a bundle into /models
#            docker build --target train -t afm-train .
#
# Both take their settings from the environment (AFM_*); see README.md, section Docker. The service
# serves AFM_MODEL_NAME from AFM_MODELS_DIR (default /models; without a name: the only or newest model).
#
# Torch for the train target: pip looks in deploy/wheels/ first (an ignored folder: drop a torch
# wheel there to build offline or to avoid PyPI's multi-GB CUDA build), then in the indexes. To use
# PyTorch's CPU wheels from their index instead:
#   docker build --target train --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# The stages are ordered so that the classic builder (which builds every stage before the target)
# never builds the train stages for `--target serve`.

ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------------------------------ base
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120
# One unprivileged user, the same uid in both images, so that the models volume the trainer
# writes is readable by the service.
ARG AFM_UID=10001
RUN groupadd --system --gid ${AFM_UID} afm \
 && useradd --system --uid ${AFM_UID} --gid afm --home-dir /app --shell /usr/sbin/nologin afm \
 && mkdir -p /app /models \
 && chown afm:afm /models

# ------------------------------------------------------------------------------- serve: build
FROM base AS serve-build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (this layer changes only with pyproject.toml), then the source.
COPY pyproject.toml deploy/pyproject_deps.py ./
RUN python pyproject_deps.py pyproject.toml serve >requirements.txt \
 && pip install -r requirements.txt
COPY README.md ./
COPY training ./training
COPY service ./service
# The final stage gets this venv alone: no pip, setuptools or package test suites in it.
RUN pip install --no-deps . \
 && python -c "import service.api, training.bundle, onnxruntime" \
 && pip uninstall -y -q pip setuptools \
 && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# ------------------------------------------------------------------------------------- serve
FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    AFM_HOST=0.0.0.0 \
    AFM_PORT=8000 \
    AFM_MODELS_DIR=/models
WORKDIR /app
USER afm
EXPOSE 8000
# Healthy only when the model is loaded and warmed (GET /readyz answers 200; 503 raises).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('AFM_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "service"]

# ------------------------------------------------------------------------------------- train
FROM base AS train
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# deploy/wheels/ holds local wheels (torch CPU) when the build script put them there; pip prefers
# them to the index. PIP_EXTRA_INDEX_URL, when given, is seen by pip as an environment variable.
COPY deploy/wheels/ /wheels/
COPY pyproject.toml deploy/pyproject_deps.py ./
ARG PIP_EXTRA_INDEX_URL=
RUN python pyproject_deps.py pyproject.toml train >requirements.txt \
 && pip install --find-links /wheels -r requirements.txt
COPY README.md ./
COPY training ./training
COPY service ./service
RUN pip install --no-deps . \
 && python -c "import torch, training.model, training.bundle" \
 && rm -rf /src
ENV AFM_MODELS_DIR=/models \
    AFM_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
USER afm
ENTRYPOINT ["python", "-m", "training"]
CMD ["train", "--dataset", "synthetic", "--task", "ctr", "--model", "afm", "--name", "demo-afm", "--out", "/models", "--epochs", "8"]
