# syntax=docker/dockerfile:1
# CPU image (head and producer-cpu nodes): the official Ray CPU image of the pinned Ray version, plus this project
# with CPU-only torch and the CJK fonts. Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t registry.example.com/qwen-image-ray:0.1.0-ray2.60.0-py311-cpu .
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu

# Debian/Ubuntu's Noto CJK: text rendering (synthesis, sample grids) draws Chinese with it, never tofu.
ARG FONTS_NOTO_CJK_VERSION=1:20220127+repack1-1
USER 0
RUN apt-get update \
    && apt-get install -y --no-install-recommends "fonts-noto-cjk=${FONTS_NOTO_CJK_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

# The base image's non-root user `ray` (uid 1000, gid 100) owns its Python environment: install and run as it.
USER 1000:100
WORKDIR /home/ray/app
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1
COPY --chown=1000:100 docker/constraints.txt pyproject.toml README.md ./
# CPU wheels of the pinned torch / torchvision first (2.14.1+cpu satisfies ==2.14.1): no 3 GB of CUDA libraries.
RUN pip install --no-cache-dir -c constraints.txt --index-url https://download.pytorch.org/whl/cpu \
    torch==2.14.1 torchvision==0.29.1
COPY --chown=1000:100 models/ models/
COPY --chown=1000:100 store/ store/
COPY --chown=1000:100 pipelines/ pipelines/
COPY --chown=1000:100 training/ training/
COPY --chown=1000:100 serving/ serving/
RUN pip install --no-cache-dir -c constraints.txt .
# Entry points and recipes, named by platform/'s RayJobs as /home/ray/app/jobs/*.py.
COPY --chown=1000:100 jobs/ jobs/
COPY --chown=1000:100 configs/ configs/
COPY --chown=1000:100 platform/ platform/
