# Trainer image: torchrun entry point. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t embstack-trainer .
#   docker run --rm -v $PWD/runs:/app/runs embstack-trainer \
#       --nproc_per_node 2 -m trainer train --config configs/deepfm_ml100k.toml --out runs/deepfm
# tests/serving/test_serving_docker.py checks by reading that every path it uses exists.
FROM python:3.11.7-slim-bookworm
# /app belongs to the runtime user: scripts/setup.sh creates /app/.venv and fetches data
# under /app/data as that user.
RUN useradd --create-home --uid 1000 embstack && install -d -o embstack -g embstack /app
WORKDIR /app
COPY --chown=embstack pyproject.toml README.md ./
COPY --chown=embstack scripts ./scripts
COPY --chown=embstack trainer ./trainer
COPY --chown=embstack serving ./serving
COPY --chown=embstack proto ./proto
COPY --chown=embstack configs ./configs
USER embstack
ENV PYTHON=python3.11
# Same pinned install as the README commands (torch 2.13.0 CPU, fbgemm-gpu-cpu, torchrec
# --no-deps). The CPU torch goes in first from PyTorch's CPU index: PyPI's torch==2.13.0 is
# the multi-GB CUDA build, and setup.sh keeps the +cpu build, which satisfies its pin.
RUN python3.11 -m venv .venv \
 && .venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu \
 && scripts/setup.sh
ENTRYPOINT ["/app/scripts/torchrun"]
CMD ["--nproc_per_node", "1", "-m", "trainer", "train", "--config", "configs/deepfm_ml100k.toml", "--out", "runs/deepfm"]
