"""GRDA against its defining argmin, its exact zeros and its c = 0 limit."""

import numpy as np
import pytest
import torch

from trainer.search.grda import GRDA


def _run(alpha0: torch.Tensor, grads: list[torch.Tensor], lr: float, c: float, mu: float) -> torch.Tensor:
    p = torch.nn.Parameter(alpha0.clone())
    opt = GRDA([p], lr=lr, c=c, mu=mu)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_closed_form_is_the_argmin_of_the_defining_objective():
    rng = np.random.default_rng(0)
    lr, c, mu, steps = 0.05, 0.3, 0.6, 7
    alpha0 = torch.tensor(rng.normal(size=200), dtype=torch.float64)
    grads = [torch.tensor(rng.normal(size=200), dtype=torch.float64) for _ in range(steps)]
    got = _run(alpha0, grads, lr, c, mu).numpy()
    # objective per coordinate: a * (−α0 + γ Σ∇) + g |a| + a² / 2, minimised on a fine grid
    linear = (-alpha0 + lr * torch.stack(grads).sum(0)).numpy()
    g = c * lr ** 0.5 * (steps * lr) ** mu
    grid = np.linspace(-6, 6, 240_001)  # spacing 5e-5
    obj = grid[None, :] * linear[:, None] + g * np.abs(grid)[None, :] + grid[None, :] ** 2 / 2
    best = grid[obj.argmin(axis=1)]
    assert np.abs(got - best).max() <= 5e-5  # one grid step
    f = lambda a: a * linear + g * np.abs(a) + a * a / 2  # noqa: E731
    assert np.all(f(got) <= obj.min(axis=1) + 1e-12)  # never worse than any grid point


def test_small_duals_become_exact_zeros():
    alpha0 = torch.tensor([0.01, -0.02, 0.5, -0.5, 0.0])
    grads = [torch.zeros(5)] * 3
    got = _run(alpha0, grads, lr=0.1, c=0.5, mu=0.5)  # threshold 0.5·√0.1·√0.3 ≈ 0.087
    assert got[0].item() == 0.0 and got[1].item() == 0.0 and got[4].item() == 0.0
    g = 0.5 * 0.1 ** 0.5 * 0.3 ** 0.5
    assert got[2].item() == pytest.approx(0.5 - g, abs=1e-7)  # float32 rounding of the threshold
    assert got[3].item() == pytest.approx(-(0.5 - g), abs=1e-7)


def test_c_zero_is_plain_dual_averaging():
    rng = np.random.default_rng(1)
    alpha0 = torch.tensor(rng.normal(size=50), dtype=torch.float64)
    grads = [torch.tensor(rng.normal(size=50), dtype=torch.float64) for _ in range(5)]
    got = _run(alpha0, grads, lr=0.01, c=0.0, mu=0.9)
    want = alpha0 - 0.01 * torch.stack(grads).sum(0)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)  # float64: only summation-order rounding


def test_a_parameter_without_gradient_is_left_alone():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.full((3,), 0.001))
    opt = GRDA([p, q], lr=0.1, c=1.0, mu=0.5)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.equal(q.detach(), torch.full((3,), 0.001))
    assert torch.all(p.detach() < 1.0)


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"c": -1.0}, {"mu": -0.1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="GRDA"):
        GRDA([torch.nn.Parameter(torch.ones(1))], **kwargs)
