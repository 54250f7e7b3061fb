# The two README commands. Both set everything up first (scripts/setup.sh is idempotent).
.PHONY: setup run test bench

setup:
	scripts/setup.sh

run: setup
	.venv/bin/python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas_ml100k

test: setup
	.venv/bin/python -m pytest tests

bench: setup
	.venv/bin/python -m trainer.bench --out runs/bench.json
