# The environment of scripts/cloud_train.sh: CUDA runtime, torch of the CUDA build you name, segladder, Kaggle CLI.
# docker build --build-arg TORCH_INDEX_URL=<the pip index of your CUDA build of torch> -t segladder .
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG TORCH_INDEX_URL=""
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace/segladder
COPY pyproject.toml README.md ./
COPY segladder ./segladder
COPY configs ./configs
COPY scripts ./scripts
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip3 install torch torchvision --index-url "$TORCH_INDEX_URL"; \
    else pip3 install torch torchvision; fi \
    && pip3 install -e . kaggle
ENTRYPOINT ["bash", "scripts/cloud_train.sh", "--skip-install"]
