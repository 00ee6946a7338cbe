# mi_pipeline runtime image: CUDA PyTorch + the mi_pipeline package.
#
#   docker build -t mi_pipeline:0.1.0 .
#   docker run --rm --gpus all -v "$PWD/myrun:/run" mi_pipeline:0.1.0 submit --mode resume --executor local
#
# The run directory (progress record, checkpoints, logs, data splits) lives in the /run volume;
# bind-mount a host folder there so results survive the container.
# Base image pinned by tag: torch comes from it (pip sees the requirement already satisfied).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ARG MI_PIPELINE_VERSION=0.1.0
LABEL org.opencontainers.image.title="mi_pipeline" \
      org.opencontainers.image.description="Resumable SLURM pipeline for myocardial-infarction estimation from cardiac cine MRI" \
      org.opencontainers.image.version="${MI_PIPELINE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (and its non-torch dependencies) from the copied repository
# (.dockerignore keeps .git, data, runs, logs and checkpoints out of the context).
WORKDIR /opt/mi_pipeline
COPY . .
RUN pip install . \
    && python -c "import mi_pipeline, torch; print('mi_pipeline', mi_pipeline.__version__, 'torch', torch.__version__)"

# Unprivileged user; /run is the run directory (the pipeline's default run root is the CWD).
RUN useradd --create-home --uid 1000 --shell /bin/bash mi \
    && mkdir -p /run \
    && chown mi:mi /run
USER mi
WORKDIR /run
VOLUME ["/run"]

ENTRYPOINT ["python", "-m", "mi_pipeline"]
CMD ["--help"]
