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
    """Every stage of the method's search (most methods have one; `method.next_stage(loop)`
    gives the next stage's schedule, or None), each pretrain + alternating search, saved as
    OUT/search/{supernet.pt, search.json} (stage 0) and OUT/search/stage_<k>/ (stage k).

    With `resume`, a stage whose supernet is saved is loaded (architecture in eval mode)
    instead of searched. Returns the last stage's history with the wall-clock `seconds` of
    all stages, and every stage's result under "stages" when there are several.
    """
    results = []
    while True:
        where = out / "search" / (f"stage_{len(results)}" if results else "")
        results.append(_one_stage(method, ds, loop, tcfg, env, where, resume, log))
        loop = method.next_stage(loop)
        if loop is None:
            break
    if len(results) == 1:
        return results[0]
    return {**results[-1], "seconds": sum(r["seconds"] for r in results), "stages": results}


def _one_stage(method: SearchMethod, ds, loop: SearchLoopConfig, tcfg: TrainConfig, env: DistEnv, where: Path,
               resume: bool, log) -> dict:
    path = where / "supernet.pt"
    if resume and path.exists():
        method.build().load_state_dict(torch.load(path, weights_only=True))
        method.set_phase("eval")
        log(f"search: reusing {path}")
        return json.loads((where / "search.json").read_text())
    torch.manual_seed(tcfg.seed)
    start = time.perf_counter()
    result = run_search(method, ds, loop, tcfg, env, log)
    result["seconds"] = time.perf_counter() - start
    if env.is_main:
        where.mkdir(parents=True, exist_ok=True)
        torch.save(method.supernet.state_dict(), path)
        write_json(where / "search.json", result)
    return result
