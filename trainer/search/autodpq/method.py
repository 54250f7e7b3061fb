"""AutoDPQ as a search method: config, supernet, architecture loss and derived decisions.

Decisions (plain JSON) = the frequency threshold and, per field, its split (n_full
frequent ids, n_low coded ids) and chosen (K, D), with the final α and softmax(α).
Choices where the paper is vague:
  * the pretrain step is the FE model the recipe trains first (its early-stopped best
    epoch); the supernet copies its head and tables, and each candidate's centroids are
    K raw rows drawn per sub-space. With `pretrain_epochs` > 0 the loop instead
    pretrains the supernet uncompressed and the centroids are drawn afterwards.
  * s in τ = max(0.01, 1 − s·5e-5) counts weight steps (the paper writes "epochs",
    which would leave τ ≈ 1 for any practical run).
  * one Gumbel sample per field per batch (shared by the batch's rows); the "eval" phase
    uses argmax α, so validation during the search scores the architecture it would derive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from serving.features import FeatureSpec
from trainer.models.ctr import CTRModel, ModelConfig, build_model
from trainer.models.dpq import TAU_KD, CompressedLayout, Compression, dpq, plan_layout, require_separate_first_order
from trainer.search.autodpq.supernet import GumbelSchedule, SearchEmbeddings
from trainer.search.base import SearchLoopConfig

BASELINES = ("others", "grid", "random")


@dataclass
class AutoDPQConfig(SearchLoopConfig):
    """AutoDPQ settings (SPEC §5). Inherits the alternating schedule.

    Args:
        method: "autodpq".
        threshold: ids with train count < threshold are low-frequency (coded); id 0 (OOV) never is.
        ks: candidate K (centroids per sub-space).
        ds: candidate D (sub-spaces; each must divide the embedding dim). The T candidates
            of every field are ks × ds.
        tau_kd: DPQ-SX softmax temperature τ_KD.
        gumbel_start: τ at weight step 0.
        gumbel_decay: τ decrease per weight step.
        gumbel_min: lowest τ.
        bn_restore: map each candidate's BN output back to the field's pretrained per-dim
            mean/std (constants shared by the field's candidates; see supernet.py); false =
            the paper's eq. (2) exactly (zero mean, unit variance).
        baselines: what else the recipe trains for the report: "others" (low-frequency ids
            of a field share one row), "grid" (one global (K, D), best on validation),
            "random" (random (K, D) per field). FE (no compression) is always trained: it
            is AutoDPQ's pretrain step.
        random_trials: draws of the Random baseline (the best on validation is kept).
        export: write OUT/bundle from the retrained AutoDPQ model.
    """

    method: str = "autodpq"
    pretrain_epochs: int = 0
    threshold: int = 20
    ks: list[int] = field(default_factory=lambda: [8, 16, 32])
    ds: list[int] = field(default_factory=lambda: [2, 4, 8])
    tau_kd: float = TAU_KD
    gumbel_start: float = 1.0
    gumbel_decay: float = 5e-5
    gumbel_min: float = 0.01
    bn_restore: bool = True
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    random_trials: int = 1
    export: bool = True

    @property
    def candidates(self) -> list[tuple[int, int]]:
        return [(k, d) for k in self.ks for d in self.ds]

    def validate(self) -> list[str]:
        p = super().validate()
        if self.threshold < 1:
            p.append(f"search.threshold: must be >= 1, got {self.threshold}")
        if not self.ks or any(k < 1 for k in self.ks):
            p.append(f"search.ks: need K >= 1, got {self.ks}")
        if not self.ds or any(d < 1 for d in self.ds):
            p.append(f"search.ds: need D >= 1, got {self.ds}")
        if not self.tau_kd > 0:
            p.append(f"search.tau_kd: must be > 0, got {self.tau_kd}")
        if not (self.gumbel_min > 0 and self.gumbel_start >= self.gumbel_min and self.gumbel_decay >= 0):
            p.append("search.gumbel_*: need gumbel_start >= gumbel_min > 0 and gumbel_decay >= 0")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            p.append(f"search.baselines: {unknown} not in {list(BASELINES)}")
        if self.random_trials < 1:
            p.append(f"search.random_trials: must be >= 1, got {self.random_trials}")
        return p


def load_pretrained(model: CTRModel, pretrained: CTRModel, seed: int) -> None:
    """Copy an uncompressed model's head and tables into a compressed (or search) model."""
    head = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("embeddings.")}
    missing, unexpected = model.load_state_dict(head, strict=False)
    if unexpected or any(not k.startswith("embeddings.") for k in missing):
        raise ValueError(f"pretrained model does not match: missing {missing}, unexpected {unexpected}")
    model.embeddings.init_from_full(pretrained.embeddings, seed)


class AutoDPQ:
    """The AutoDPQ search method (implements trainer.search.base.SearchMethod).

    Args:
        cfg: AutoDPQ settings.
        spec: the dataset's fields.
        model_cfg: the base model (every kept field at its configured dim).
        counts: field → train count per id (CachedDataset.id_counts).
        pretrained: the trained FE model to start from (None: pretrain in the loop).
        seed: seed of the centroid draws.
    """

    def __init__(self, cfg: AutoDPQConfig, spec: FeatureSpec, model_cfg: ModelConfig, counts: dict[str, np.ndarray],
                 pretrained: CTRModel | None = None, seed: int = 0):
        require_separate_first_order(model_cfg)
        self.cfg = cfg
        self.spec = spec
        self.model_cfg = model_cfg
        self.seed = seed
        self.pretrained = pretrained
        self.counts = counts
        self.split = plan_layout(spec, counts, model_cfg.field_dims(spec), cfg.threshold)
        bad = [f"{t.name} (dim {t.dim})" for t in self.split.tables if t.n_low for _, d in cfg.candidates if t.dim % d]
        if bad:
            raise ValueError(f"search.ds {cfg.ds} must divide the dim of every coded field: {sorted(set(bad))}")
        self.searched = [t.name for t in self.split.tables if t.n_low > 0]
        self.supernet: CTRModel | None = None
        self.phase = "pretrain"

    def layout(self, choices: dict[str, Compression]) -> CompressedLayout:
        return self.split.with_compression(choices)

    def build(self) -> CTRModel:
        first = dpq(*self.cfg.candidates[0])
        layout = self.layout({name: first for name in self.searched})
        model = build_model(self.spec, self.model_cfg, dims={n: 0 for n in self.spec.names} | dict(zip(layout.fields, layout.dims)))
        schedule = GumbelSchedule(self.cfg.gumbel_start, self.cfg.gumbel_decay, self.cfg.gumbel_min)
        model.embeddings = SearchEmbeddings(layout, self.cfg.candidates, self.model_cfg.init_scale, self.cfg.tau_kd, schedule)
        if self.pretrained is not None:
            load_pretrained(model, self.pretrained, self.seed)
        self.supernet = model
        return model

    @property
    def embeddings(self) -> SearchEmbeddings:
        return self.supernet.embeddings

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        return [self.embeddings.alpha]

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.embeddings.phase = phase

    def init_architecture(self) -> None:
        """α = 0 (uniform) and centroids drawn from the (pre)trained raw rows."""
        with torch.no_grad():
            self.embeddings.alpha.zero_()
        self.embeddings.init_codebooks(self.seed)
        if self.cfg.bn_restore:
            self.embeddings.set_target_moments(self.counts)

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        self.embeddings.arch_steps += 1
        return bce

    def derive(self) -> dict:
        """Per field argmax α → (K, D), as plain JSON."""
        emb = self.embeddings
        chosen = emb.chosen()
        alpha = emb.alpha.detach()
        fields = {}
        for t in self.split.tables:
            entry = {"n_full": t.n_full, "n_low": t.n_low, "dim": t.dim}
            if t.name in chosen:
                i = emb.searched.index(t.name)
                entry |= chosen[t.name].to_json() | {
                    "alpha": [round(float(a), 5) for a in alpha[i]],
                    "probs": [round(float(p), 5) for p in torch.softmax(alpha[i], 0)],
                }
            else:
                entry |= {"kind": "full"}
            fields[t.name] = entry
        return {
            "method": "autodpq",
            "threshold": self.cfg.threshold,
            "candidates": [list(c) for c in self.cfg.candidates],
            "fields": fields,
            "gumbel_tau_final": emb.tau,
            "weight_steps": emb.weight_steps,
            "arch_steps": emb.arch_steps,
            "config": asdict(self.cfg),
        }


def choices_from(decisions: dict) -> dict[str, Compression]:
    """decisions.json → field → Compression."""
    return {name: Compression.from_json(f) for name, f in decisions["fields"].items()}
