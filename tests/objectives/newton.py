"""A tiny exact minimiser for the tests: Newton's method with autograd Hessians, in float64.

The optimisation tests minimise smooth convex functions of a handful of variables; Newton's
method reaches machine precision in a few steps, with no optimiser state and no torch.optim.
The pseudo-inverse handles flat directions (e.g. softmax logits are defined up to a constant).
"""

import torch


def newton_minimise(f, x0: torch.Tensor, iters: int = 50, tol: float = 1e-13) -> torch.Tensor:
    x = x0.detach().clone().to(torch.float64)
    for _ in range(iters):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg), xg)
        if g.abs().max().item() < tol:
            break
        H = torch.autograd.functional.hessian(f, x)
        step = torch.linalg.pinv(H.reshape(x.numel(), x.numel()), hermitian=True) @ g.reshape(-1)
        x = x - step.reshape(x.shape)
    return x
