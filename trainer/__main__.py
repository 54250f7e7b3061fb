"""embstack trainer CLI.

    python -m trainer train --config configs/deepfm_ml100k.toml --out runs/x [section.key=value ...]
    python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas_ml100k [--resume]
    torchrun --nproc_per_node 2 -m trainer train --config ... --out ...
"""

from __future__ import annotations

import argparse
import sys
import time

import torch.distributed as dist

from trainer.config import ConfigError


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one CTR model")
    train.add_argument("--config", required=True, help="experiment TOML")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides (TOML values)")
    search = sub.add_parser("search", help="run an architecture search end to end (method from [search] method)")
    search.add_argument("--config", required=True, help="experiment TOML")
    search.add_argument("--out", required=True, help="output directory")
    search.add_argument("--resume", action="store_true", help="reuse completed stages found in OUT")
    search.add_argument("overrides", nargs="*", help="section.key=value overrides (TOML values)")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from trainer.jobs import train as job

            job.run(job.load_experiment(args.config, args.overrides), args.out, resume=args.resume, log=_log)
        elif args.command == "search":
            from trainer.jobs import search as job

            job.run(job.load_experiment(args.config, args.overrides), args.out, resume=args.resume, log=_log)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
