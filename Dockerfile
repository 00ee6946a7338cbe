# mi_pipeline runtime image: CUDA PyTorch + the mi_pipeline package.
#
#   docker build -t mi_pipeline:0.1.0 \
#       --build-arg SOURCE_URL="$(git remote get-url origin)" --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/myrun:/work" mi_pipeline:0.1.0 \
#       submit --mode resume --executor local --config /opt/mi_pipeline/configs/demo.yaml
#
# ENTRYPOINT is `python -m mi_pipeline`, so `docker run IMAGE submit --mode resume` runs
# `python -m mi_pipeline submit --mode resume`. The run root (progress record, checkpoints, logs,
# data splits) is the working directory /work, a volume: bind-mount a host folder there.
# (Not /run: that is the system's runtime directory, and read-only under Apptainer.)
# The Apptainer image is built from this one: see apptainer.def and docs/CLUSTER.md.
#
# Base image pinned to an exact tag; torch comes from it. Pin it by digest too where your site
# requires (docker buildx imagetools inspect pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime).
# BASE_IMAGE replaces it: any image with `python` and `pip` on the PATH and torch installed, e.g. the
# CPU base tests/containers/build_image.sh makes (debootstrapped Debian 12 + CPU torch) for CI.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG MI_PIPELINE_VERSION=0.1.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="mi_pipeline" \
      org.opencontainers.image.description="Resumable SLURM pipeline for myocardial-infarction estimation from cardiac cine MRI" \
      org.opencontainers.image.version="${MI_PIPELINE_VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# PYTHONNOUSERSITE: Apptainer binds $HOME, so without it packages in the user's ~/.local would
# shadow the image's own.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The README's install command, `pip install -c CONSTRAINTS .`, with one difference: the constraint
# file pins the torch this base image ships (instead of constraints-cpu.txt), so pip never swaps the
# CUDA build for another. The dependency list itself exists once, in pyproject.toml.
# (.dockerignore keeps .git, data, runs, logs and checkpoints out of the build context.)
WORKDIR /opt/mi_pipeline
COPY . .
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/constraints-image.txt \
    && pip install -c /tmp/constraints-image.txt . \
    && python -c "import mi_pipeline.submit, mi_pipeline.train, torch; print('mi_pipeline', mi_pipeline.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"

# Unprivileged user (uid 1000; run with --user "$(id -u):$(id -g)" to write as yourself);
# /work is the run root (the pipeline's default run root is the working directory).
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash mi \
    && mkdir -p /work \
    && chown 1000:1000 /work
USER 1000:1000
WORKDIR /work
VOLUME ["/work"]

ENTRYPOINT ["python", "-m", "mi_pipeline"]
CMD ["--help"]
