# Serving image: the gRPC inference server over a bundle mounted read-only at /bundle.
# No training code inside: only serving/ (and pyproject.toml) is copied; serving never
# imports trainer.
#   docker build -f docker/serving.Dockerfile -t embstack-serving .
#   docker run --rm -p 50051:50051 -p 9100:9100 -v $PWD/runs/ihas_ml100k/bundle:/bundle:ro embstack-serving
# Hot reload: mount a directory of bundles whose `current` symlink you repoint, run with
# `--bundle /bundles/current`, then `docker kill -s HUP <container>` (or Admin/Reload with
# EMBSTACK_ADMIN_TOKEN set). `docker stop` sends SIGTERM: health NOT_SERVING, 2 s more of
# answers for balancers to notice, in-flight RPCs finish (up to 10 s), exit 0.
# TLS / token: add --tls-cert/--tls-key (mounted read-only) and --auth-token-file to CMD, and
# --tls-ca to the HEALTHCHECK probe (health needs no token).
# tests/serving/test_serving_docker.py checks the pins against the tested venv and runs the
# ENTRYPOINT + CMD and the HEALTHCHECK command against a test bundle.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/embstack \
    PATH=/opt/embstack/bin:$PATH

# The pinned stack of scripts/setup.sh: CPU torch first (PyPI's default build is CUDA),
# fbgemm-gpu-cpu, torchrec without its CUDA fbgemm-gpu dependency, then torchrec's needs.
RUN python -m venv /opt/embstack \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu \
 && pip install fbgemm-gpu-cpu==1.8.0 \
 && pip install --no-deps torchrec==1.8.0 \
 && pip install tensordict==0.15.3 torchmetrics==1.0.3 tqdm==4.70.1 pyre-extensions==0.0.32

WORKDIR /src
COPY pyproject.toml ./
COPY serving ./serving
# A plain (non-editable) install: the pinned gRPC/protobuf/numpy dependencies from
# pyproject.toml; the package finder picks up serving* only (there is no trainer/ here).
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 embstack
USER 10001:10001
WORKDIR /home/embstack

EXPOSE 50051 9100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-m", "serving.healthcheck", "--target", "127.0.0.1:50051", "--timeout", "3"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--bundle", "/bundle", "--port", "50051", "--metrics-port", "9100", "--drain-delay", "2", "--grace", "10"]
