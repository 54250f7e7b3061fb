"""embstack trainer CLI.

    python -m trainer train --config configs/deepfm_ml100k.toml --out runs/x [section.key=value ...]
    python -m trainer train --config configs/deepfm_ml100k.toml --out runs/x --resume   # continue the run in OUT
    python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas_ml100k [--resume]
    python -m trainer frontier --config configs/frontier_ml100k.toml --out runs/frontier_ml100k [--resume]
    torchrun --nproc_per_node 2 -m trainer train --config ... --out ...
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time

import torch.distributed as dist

from trainer.config import ConfigError


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


EXAMPLES = {
    "train": """examples:
  python -m trainer train --config configs/deepfm_ml100k.toml --out runs/deepfm train.seed=1
  torchrun --standalone --nproc_per_node 2 -m trainer train --config configs/deepfm_ml100k.toml --out runs/deepfm2""",
    "search": """examples:
  python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas_ml100k
  python -m trainer search --config configs/autodpq_ml100k.toml --out runs/autodpq variants.baselines='["others"]'""",
    "frontier": """examples:
  python -m trainer frontier --config configs/frontier_ml100k.toml --out runs/frontier_ml100k
  python -m trainer frontier --config configs/tiny/frontier_synthetic.toml --out /tmp/frontier 'frontier.seeds=[0,1]'""",
}
# errors a user can fix from their side: one line (or one list for a config), exit code 2
DISK_ERRORS = (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"train": "train one CTR model", "search": "run an architecture search end to end (method from [search] method)",
             "frontier": "test AUC vs served bytes of every embedding compression scheme, Pareto frontier drawn"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", required=True, help="experiment TOML")
        p.add_argument("--out", required=True, help="output directory (one run per OUT)")
        p.add_argument("--resume", action="store_true", help="continue the run in OUT (refused if the config changed)")
        p.add_argument("--overwrite", action="store_true", help="empty OUT first if it holds another run")
        p.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides (TOML values)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may follow a flag too (`... a.b=1 --resume c.d=2`): argparse alone ends the
    # positional list at the first flag
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides += extra
    from trainer.data.readers.base import DataError
    from trainer.training import TrainingError

    try:
        if args.command == "train":
            from trainer.jobs import train as job
        elif args.command == "frontier":
            from trainer.frontier import job
        else:
            from trainer.jobs import search as job
        exp = job.load_experiment(args.config, args.overrides)
        # a worker that torchrun restarted (--max-restarts) continues the run it belongs to
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        job.run(exp, args.out, resume=args.resume or restarted, overwrite=args.overwrite and not restarted, log=_log)
    except (ConfigError, DataError, TrainingError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug or e.errno not in DISK_ERRORS:
            raise
        print(f"error: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _exit(code: int) -> None:
    """Leave without finalizing the interpreter. A gloo worker thread may still be
    dropping the last collective's work when the main thread finishes; that drops Python
    tensors, so it takes the GIL, and a thread taking the GIL during interpreter
    finalization is unwound through a noexcept destructor: std::terminate, SIGABRT after
    a successful run (seen on a loaded 2-core machine, about 1 run in 10; core dump:
    AsyncAllgatherWork destructor → gil_scoped_acquire → PyThread_exit_thread). Every
    file the job writes is closed by now; only the standard streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
