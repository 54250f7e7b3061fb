"""Every interface a search method implements, in one place (no implementation inheritance).

The recipe (trainer.jobs.search) drives any method the same way:

    method = Method(cfg, ctx)            # ctx: spec, model config, data, the Base model
    run_search(method, ...)              # build() → pretrain / search phases, arch_loss;
                                         # again while method.next_stage(loop) gives a schedule
    decisions = method.derive(ctx)       # a typed trainer.decisions.Decisions
    router = method.router(decisions)    # row → cluster module, or None for one cluster
    for v in method.variants(ctx, decisions): retrain v's decisions per cluster, score it
    method.init_retrain(...)             # a method may start a retrained model from its own weights

Adding a method = a package trainer/search/<name>/ with a class satisfying `SearchMethod`,
its `Config` and `Variants` dataclasses, one entry in trainer.search.registry and a tiny
config under configs/tiny/ (the contract test runs every tiny config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from serving.features import FeatureSpec
from trainer.decisions import ClusterDecision, Decisions
from trainer.distributed import DistEnv
from trainer.models.ctr import CTRModel, ModelConfig
from trainer.training import Log, TrainConfig

VARIANT_KINDS = ("method", "baseline", "ablation", "variant", "transfer", "supernet")
# report rows only: "served" is the method's row after the export guard, what the bundle holds
INITS = ("scratch", "method")


@dataclass
class SearchContext:
    """What a method is built from and derives with.

    Args:
        spec: the dataset's fields.
        model: the base model config (every field at model.embedding_dim unless model.dims says otherwise).
        train: the training settings (batch sizes, seed).
        ds: the cached dataset (train / val / test splits, planted groups on synthetic data); None in unit tests.
        counts: field → train count per id (id 0 = OOV).
        train_rows: rows of the train split.
        base: the recipe's trained Base model (plain, unsharded), for methods that start from it.
        env: the process group.
        log: progress lines.
    """

    spec: FeatureSpec
    model: ModelConfig
    train: TrainConfig
    ds: Any
    counts: dict[str, np.ndarray]
    train_rows: int
    base: CTRModel | None
    env: DistEnv | None
    log: Log

    @classmethod
    def of(cls, ds, model: ModelConfig, train: TrainConfig, base: CTRModel | None, env: DistEnv, log: Log) -> "SearchContext":
        return cls(ds.spec, model, train, ds, ds.id_counts, len(ds.indices("train")), base, env, log)


@dataclass(frozen=True)
class Variant:
    """One report row besides Base: the method itself, a baseline, an ablation or a labelled variant.

    Args:
        name: report key, unique per run (also its output folder).
        label: what a person reads in tables.
        kind: one of VARIANT_KINDS ("method" is the searched architecture that gets exported;
            "supernet" scores the search-stage network itself, nothing is retrained).
        decisions: what to retrain; several = train each, keep the best on validation AUC.
        search: [search] overrides: run a separate search with them and retrain what it derives.
        model: another base model type (the transfer table).
        init: "scratch", or "method": the method's `init_retrain` starts each cluster model.
    """

    name: str
    label: str
    kind: str
    decisions: tuple[Decisions, ...] = ()
    search: dict = field(default_factory=dict)
    model: str | None = None
    init: str = "scratch"

    def __post_init__(self) -> None:
        if self.kind not in VARIANT_KINDS or self.init not in INITS:
            raise ValueError(f"variant {self.name}: kind {self.kind!r} / init {self.init!r} not in {VARIANT_KINDS} / {INITS}")
        if self.kind != "supernet" and not self.decisions and not self.search:
            raise ValueError(f"variant {self.name}: needs decisions or a search")


class SearchMethod(Protocol):
    """A search method (see the module docstring for how the recipe calls it)."""

    Config: ClassVar[type]  # the [search] section dataclass (extends trainer.search.loop.SearchLoopConfig)
    Variants: ClassVar[type]  # the [variants] section dataclass: which extra rows to train
    supernet: nn.Module | None
    # optional, default True: False makes the recipe skip the search stage (a method such as
    # AutoDis that trains end to end in its rows; build() and the loop members are then unused)
    searches: ClassVar[bool]
    phase: str
    retrain_options: dict  # extra build_model keywords for retrained models (e.g. the DPQ-SX temperature)

    def __init__(self, cfg: Any, ctx: SearchContext) -> None: ...

    @staticmethod
    def check_config(exp: Any) -> list[str]:
        """Problems that span config sections (e.g. search vs model), found before any work."""

    def build(self) -> nn.Module:
        """The supernet; built once, then driven by the search loop."""

    def arch_parameters(self) -> list[nn.Parameter]:
        """Parameters updated on architecture batches only."""

    def set_phase(self, phase: str) -> None:
        """"pretrain" (architecture fixed), "search" (stochastic) or "eval" (deterministic)."""

    def search_parameters(self) -> list[nn.Parameter]:
        """Optional: the weights a holdout search trains besides the architecture (every
        other weight stays frozen; trainer.search.loop.SearchLoopConfig.holdout)."""

    def init_architecture(self) -> None:
        """(Re)initialise the architecture parameters when the search starts after pretraining."""

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        """Objective of an architecture step given the batch's BCE (adds regularizers)."""

    def next_stage(self, loop: Any) -> Any:
        """After a stage's search with schedule `loop` (supernet in eval phase): prepare the
        next stage, whose `build()` follows, and return its schedule (a SearchLoopConfig);
        None when the search is complete."""

    def derive(self, ctx: SearchContext) -> Decisions:
        """The searched architecture, from the trained supernet (eval phase)."""

    def router(self, decisions: Decisions) -> nn.Module | None:
        """(dense, sparse) → cluster ids for these decisions; None when there is one cluster."""

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: Any) -> list[Variant]:
        """Every row to train besides Base, including exactly one of kind "method"; `wanted`
        is the [variants] section."""

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        """Fill `model` (plain, on CPU) in place before a variant with init "method" trains it."""

    def build_shared(self, decisions: Decisions) -> Any:
        """(device=None) → one model whose router and cluster heads read one table set; called
        only for decisions with `shared_tables` (a method that never derives them may omit it)."""

    def report(self, ctx: SearchContext, decisions: Decisions, out: Any) -> dict:
        """Method-specific report entries (diagnostics, plots written under `out`)."""
