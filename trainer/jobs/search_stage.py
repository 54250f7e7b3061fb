"""The search stage shared by the search recipes: run it, or reuse its saved result."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from trainer.distributed import DistEnv
from trainer.jsonfile import write_json
from trainer.search.interface import SearchMethod
from trainer.search.loop import SearchLoopConfig, run_search
from trainer.training import TrainConfig


def search_stage(method: SearchMethod, ds, loop: SearchLoopConfig, tcfg: TrainConfig, env: DistEnv, out: Path,
                 resume: bool, log) -> dict:
    """Pretrain + alternating search, saved as OUT/search/{supernet.pt, search.json}.

    With `resume` and a saved supernet, loads it (architecture in eval mode) instead.
    Returns the search history with the stage's wall-clock `seconds`.
    """
    path = out / "search" / "supernet.pt"
    if resume and path.exists():
        method.build().load_state_dict(torch.load(path, weights_only=True))
        method.set_phase("eval")
        log(f"search: reusing {path}")
        return json.loads((out / "search" / "search.json").read_text())
    torch.manual_seed(tcfg.seed)
    start = time.perf_counter()
    result = run_search(method, ds, loop, tcfg, env, log)
    result["seconds"] = time.perf_counter() - start
    if env.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(method.supernet.state_dict(), path)
        write_json(out / "search" / "search.json", result)
    return result
