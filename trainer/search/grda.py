"""GRDA: generalized regularized dual averaging, the sparse optimizer of AutoFIS and AIM.

At step t (1-based) with learning rate γ:

    v_t = α_0 − γ Σ_{i≤t} ∇L_i                       (the dual average, kept in state)
    α_t = argmin_α { −αᵀv_t + g(t, γ)‖α‖₁ + ½‖α‖² }  = sign(v_t) · max(|v_t| − g(t, γ), 0)
    g(t, γ) = c · γ^½ · (tγ)^μ

The soft threshold makes unimportant architecture parameters exactly zero (not small),
which is what lets a gate close. With c = 0 it is plain dual averaging: α_t = v_t.
The threshold grows with t, so parameters that stay near their start are closed over
time, while those whose gradients keep one sign escape it.
"""

from __future__ import annotations

import torch


class GRDA(torch.optim.Optimizer):
    """GRDA for architecture parameters.

    Args:
        params: the parameters (or groups).
        lr: γ.
        c: threshold scale (the AIM paper: 0.05 on Avazu, 0.005 on Criteo).
        mu: threshold growth exponent (0.6 on Avazu, 0.9 on Criteo).
    """

    def __init__(self, params, lr: float = 1e-3, c: float = 0.005, mu: float = 0.9):
        if not lr > 0:
            raise ValueError(f"GRDA: lr must be > 0, got {lr}")
        if c < 0 or mu < 0:
            raise ValueError(f"GRDA: c and mu must be >= 0, got c={c}, mu={mu}")
        super().__init__(params, {"lr": lr, "c": c, "mu": mu})

    @staticmethod
    def threshold(t: int, lr: float, c: float, mu: float) -> float:
        return c * lr ** 0.5 * (t * lr) ** mu

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["dual"] = p.detach().clone()  # v_0 = α_0
                state["step"] += 1
                state["dual"].add_(p.grad, alpha=-group["lr"])
                g = self.threshold(state["step"], group["lr"], group["c"], group["mu"])
                v = state["dual"]
                p.copy_(torch.sign(v) * torch.clamp(v.abs() - g, min=0.0))
        return loss
