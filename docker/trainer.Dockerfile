# Trainer image: torchrun entry point. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t embstack-trainer .
#   docker run --rm -v $PWD/runs:/app/runs embstack-trainer \
#       --nproc_per_node 2 -m trainer train --config configs/deepfm_ml100k.toml --out runs/deepfm
FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 1000 embstack
WORKDIR /app
COPY --chown=embstack pyproject.toml README.md ./
COPY --chown=embstack scripts ./scripts
COPY --chown=embstack trainer ./trainer
COPY --chown=embstack serving ./serving
COPY --chown=embstack proto ./proto
COPY --chown=embstack configs ./configs
USER embstack
ENV PYTHON=python3.11
# Same pinned install as the README commands (torch 2.13.0 CPU, fbgemm-gpu-cpu, torchrec --no-deps)
RUN scripts/setup.sh
ENTRYPOINT ["/app/.venv/bin/torchrun"]
CMD ["--nproc_per_node", "1", "-m", "trainer", "train", "--config", "configs/deepfm_ml100k.toml", "--out", "runs/deepfm"]
