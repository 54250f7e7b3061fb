"""Process group, sharding plan, DistributedModelParallel and the optimizers.

One code path for 1 process and `torchrun`: a lone process joins a 1-rank gloo group,
so the model is always a DMP-sharded model with FBGEMM fused tables (or, with
storage="local", a plain module whose tables train under the dense optimizer).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DataParallelWrapper
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingType
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from trainer.models.tables import FirstOrderColumnInit

# The planner warns about GPU topology detection and dry-run storage estimates on every plan;
# every plan here is explicit (sharding type and kernel per table) and CPU tables are small.
for _name in ("torchrec.distributed.planner.types", "torchrec.distributed.planner.storage_reservations"):
    logging.getLogger(_name).setLevel(logging.ERROR)
_LOGGED_PLANS: set[str] = set()  # log each distinct plan once per process, not once per retrain


@contextlib.contextmanager
def quiet_torch_deprecations():
    """Silence the FutureWarnings torch and torchrec raise on every checkpoint and plan about
    their own internals (ShardedTensor, the planner's storage heuristic): nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecating ShardedTensor", category=FutureWarning)
        warnings.filterwarnings("ignore", message="HeuristicalStorageReservation", category=FutureWarning)
        yield

FUSED_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
    "adam": EmbOptimType.ADAM,
}
SHARDING_TYPES = {
    "table_wise": ShardingType.TABLE_WISE,
    "column_wise": ShardingType.COLUMN_WISE,
    "data_parallel": ShardingType.DATA_PARALLEL,
    "row_wise": ShardingType.ROW_WISE,
}


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def broadcast(obj, env: DistEnv):
    """Rank 0's picklable `obj` on every rank (the object itself in one process)."""
    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_distributed() -> DistEnv:
    """Join the torchrun group (nccl on GPU, gloo on CPU) or form a 1-rank gloo group."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ:
            dist.init_process_group(backend)
        else:
            # An in-memory store, not env vars + a TCP port: child processes (tests, bench
            # variants) inherit os.environ and would mistake it for a torchrun group.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), device)


def _table_configs(model: nn.Module) -> dict:
    return {t.name: t for m in model.modules() if isinstance(m, EmbeddingBagCollection) for t in m.embedding_bag_configs()}


@torch.no_grad()
def init_tables(dmp: nn.Module, configs: dict, seed: int) -> None:
    """Give every table the same initial values whatever the world size and sharding.

    Each table is drawn in full from a generator seeded by (seed, table index) and each
    rank copies in the slices it holds, so a 2-process run starts from exactly the
    weights of a 1-process run (FBGEMM would otherwise draw each shard from the local
    RNG stream).
    """
    index = {name: i for i, name in enumerate(sorted(configs))}
    for key, value in dmp.state_dict().items():
        name = key.rsplit(".", 2)[-2] if key.endswith(".weight") else None
        if name not in configs:
            continue
        cfg = configs[name]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index[name])
        full = torch.empty(cfg.num_embeddings, cfg.embedding_dim)
        if isinstance(cfg.init_fn, FirstOrderColumnInit):
            cfg.init_fn(full, generator=gen)
        else:
            full.uniform_(cfg.get_weight_init_min(), cfg.get_weight_init_max(), generator=gen)
        copy_full_into(value, full, name)


@torch.no_grad()
def copy_full_into(value, full: torch.Tensor, name: str) -> None:
    """Copy a full (unsharded) tensor into a state entry: this rank's shards of a
    ShardedTensor, or the whole of a plain tensor."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            r, c = shard.metadata.shard_offsets
            h, w = shard.metadata.shard_sizes
            shard.tensor.copy_(full[r : r + h, c : c + w])
    elif isinstance(value, torch.Tensor):
        value.copy_(full)
    else:
        raise TypeError(f"{name}: cannot copy into a {type(value).__name__}")


class SingleProcess(DataParallelWrapper):
    """Leaves the dense modules unwrapped: with one process there are no gradients to
    all-reduce, and DDP's per-step bookkeeping cost ~3 ms of a 60 ms bench step (measured)."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        return None


def shard(
    model: nn.Module,
    env: DistEnv,
    *,
    sharding: str,
    optimizer: str,
    lr: float,
    seed: int = 0,
    eps: float = 1e-8,
    log=print,
) -> DistributedModelParallel:
    """Wrap `model` (built on the meta device) in DMP with an explicit, logged plan.

    Every table gets the requested sharding type and the FUSED kernel (the optimizer
    step runs inside the FBGEMM backward). data_parallel tables can only use the DENSE
    kernel, so they train under the dense optimizer: the log says so.
    """
    if optimizer == "adam" and env.device.type == "cpu":
        raise ValueError(
            "train.embedding_optimizer = 'adam': FBGEMM's fused Adam is GPU-only; on CPU use "
            "'rowwise_adagrad', 'adagrad' or 'sgd', or train.storage = 'local' for plain Adam"
        )
    kernel = "dense" if sharding == "data_parallel" else "fused"
    configs = _table_configs(model)
    constraints = {
        name: ParameterConstraints(sharding_types=[SHARDING_TYPES[sharding].value], compute_kernels=[kernel])
        for name in configs
    }
    sharder = EmbeddingBagCollectionSharder(
        fused_params={"optimizer": FUSED_OPTIMIZERS[optimizer], "learning_rate": lr, "eps": eps}
    )
    topology = Topology(world_size=env.world_size, compute_device=env.device.type)
    with quiet_torch_deprecations():
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    pg = dist.GroupMember.WORLD
    plan = planner.collective_plan(model, [sharder], pg)
    text = f"sharding plan ({sharding}, kernel {kernel}, embedding optimizer {optimizer} lr {lr}):\n{plan}"
    if env.is_main and text not in _LOGGED_PLANS:
        _LOGGED_PLANS.add(text)
        log(text)
        if kernel == "dense":
            log("note: data_parallel tables use the DENSE kernel and train under the dense optimizer")
    dmp = DistributedModelParallel(
        model, env=ShardingEnv.from_process_group(pg), device=env.device, plan=plan, sharders=[sharder],
        data_parallel_wrapper=SingleProcess() if env.world_size == 1 else None,
    )
    init_tables(dmp, configs, seed)
    return dmp


def sparse_rows(model: nn.Module) -> set[int]:
    """ids of the parameters that get sparse gradients (nn.Embedding(sparse=True) weights)."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}


def dense_optimizer(params: dict[str, nn.Parameter], lr: float, weight_decay: float,
                    sparse: set[int] = frozenset()) -> KeyedOptimizerWrapper | CombinedOptimizer:
    """Adam for the parameters, lazy Adam (SparseAdam) for those whose id is in `sparse`."""
    dense = {n: p for n, p in params.items() if id(p) not in sparse}
    rows = {n: p for n, p in params.items() if id(p) in sparse}
    adam = KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay))
    if not rows:  # the optimizer (and its checkpointed state) of every model without sparse rows
        return adam
    return CombinedOptimizer([adam, KeyedOptimizerWrapper(rows, lambda ps: torch.optim.SparseAdam(ps, lr=lr))])


def combined_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> CombinedOptimizer:
    """Fused table optimizer (if sharded) + dense_optimizer for every parameter not updated in backward."""
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    parts = [dense_optimizer(dense_params, lr, weight_decay, sparse_rows(model))]
    if isinstance(model, DistributedModelParallel):
        parts.insert(0, model.fused_optimizer)
    return CombinedOptimizer(parts)
