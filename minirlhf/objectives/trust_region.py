"""Second-order pieces of TRPO: flat gradients, Hessian-vector products, conjugate gradient,
and the trust-region step with its backtracking line search.

Pure functions of tensors and closures (torch and math only). `params` is always a list of
tensors with requires_grad; "flat" vectors are their concatenation in that order.

Papers:
- Schulman, Levine, Moritz, Jordan, Abbeel (2015), "Trust region policy optimization", section 6
  and Appendix C (the natural-gradient step, CG, and the line search).
- Pearlmutter (1994), "Fast exact multiplication by the Hessian" (Hessian-vector products).
- Hestenes & Stiefel (1952), "Methods of conjugate gradients for solving linear systems".
- Martens (2010), "Deep learning via Hessian-free optimization" (CG with damping).

Data spread over several processes: each process's closures give its part of the objective and
an injected ``reduce_fn`` turns a part (a scalar or a flat vector) into the global value, e.g. the
sum over processes of the parts; make_hvp and trpo_step apply it to every gradient, product and
value they use, so every process computes the same step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

Tensor = torch.Tensor

__all__ = [
    "flat_grad",
    "flat_params",
    "set_flat_params",
    "make_hvp",
    "hessian_vector_product",
    "conjugate_gradient",
    "trpo_step",
]


def _param_list(params: Sequence[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params: expected a non-empty list of tensors")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"params[{i}]: expected a torch.Tensor, got {type(p).__name__}")
    return params


def flat_grad(y: Tensor, params: Sequence[Tensor], retain_graph: bool = False, create_graph: bool = False) -> Tensor:
    """d y / d params as one flat vector (zeros for the parameters y does not use).

    y must be a scalar. The result has sum_p numel(p) entries, in the order of params.
    """
    params = _param_list(params)
    if not isinstance(y, torch.Tensor) or y.numel() != 1:
        raise ValueError(f"y: expected a scalar tensor to differentiate, got {getattr(y, 'shape', type(y).__name__)}")
    if not y.requires_grad:  # y does not depend on any parameter at all
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in params])
    grads = torch.autograd.grad(y, params, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def flat_params(params: Sequence[Tensor]) -> Tensor:
    """The parameters concatenated into one flat vector (a detached copy)."""
    return torch.cat([p.detach().reshape(-1) for p in _param_list(params)]).clone()


def set_flat_params(params: Sequence[Tensor], flat: Tensor) -> None:
    """Write a flat vector back into the parameters, in place (under no_grad)."""
    params = _param_list(params)
    n = sum(p.numel() for p in params)
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1 or flat.numel() != n:
        raise ValueError(f"flat: expected a 1-d tensor of {n} entries (the parameters' total size), got {getattr(flat, 'shape', type(flat).__name__)}")
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def make_hvp(scalar: Tensor, params: Sequence[Tensor], damping: float = 0.0,
             reduce_fn: Callable[[Tensor], Tensor] | None = None) -> Callable[[Tensor], Tensor]:
    """v -> H v + damping v, with H the Hessian of `scalar` w.r.t. params (Pearlmutter 1994):

        H v = d/d theta ( (d scalar / d theta)^T v )

    The gradient d scalar / d theta is built once, with a graph (create_graph=True); each call
    differentiates its inner product with v again, keeping the graph, so the returned function
    can be called any number of times (as conjugate gradient does).

    reduce_fn (optional): `scalar` is one process's part of the objective and reduce_fn(H_part v)
    the global H v (H is linear in the objective, so the parts' products add up like the parts);
    the damping is added once, after it. It must return a new tensor, not change its argument.
    """
    params = _param_list(params)
    if not damping >= 0:
        raise ValueError(f"damping: expected >= 0, got {damping}")
    g = flat_grad(scalar, params, retain_graph=True, create_graph=True)  # (n,), has a graph when H != 0
    n = g.numel()

    def hvp(v: Tensor) -> Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != (n,):
            raise ValueError(f"vector: expected a flat tensor of shape ({n},), got {getattr(v, 'shape', type(v).__name__)}")
        v = v.detach().to(g.dtype)
        gv = (g * v).sum()
        hv = flat_grad(gv, params, retain_graph=True) if gv.requires_grad else torch.zeros_like(g)
        hv = hv.detach()
        if reduce_fn is not None:
            hv = reduce_fn(hv)
        return hv + damping * v

    return hvp


def hessian_vector_product(scalar: Tensor, params: Sequence[Tensor], vector: Tensor, damping: float = 0.0) -> Tensor:
    """H v + damping v by double backprop (see make_hvp); the graph of `scalar` is kept, so this
    may be called many times on one graph. For repeated products make_hvp saves one backward pass."""
    return make_hvp(scalar, params, damping)(vector)


def conjugate_gradient(
    Avp: Callable[[Tensor], Tensor],
    b: Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
    return_info: bool = False,
):
    """Solve A x = b for symmetric positive (semi-)definite A, using only products A v
    (Hestenes & Stiefel 1952; as in Schulman et al. 2015, Appendix C):

        x_0 = 0, r_0 = p_0 = b
        alpha_k = r_k^T r_k / p_k^T A p_k
        x_k+1 = x_k + alpha_k p_k,   r_k+1 = r_k - alpha_k A p_k
        beta_k = r_k+1^T r_k+1 / r_k^T r_k,   p_k+1 = r_k+1 + beta_k p_k

    Stops after `iters` products, or once r^T r < residual_tol (the squared residual norm, as in
    the TRPO reference code), or if the curvature p^T A p is not positive. In exact arithmetic
    it solves an n-dimensional system in n steps. Started at 0, every iterate lies in the Krylov
    space of b, so for singular PSD A with b in its range it converges to the minimum-norm
    solution A^+ b.

    Returns x, or (x, {"residual": ||r||, "iters": products used}) with return_info=True.
    """
    if not isinstance(b, torch.Tensor) or b.dim() != 1:
        raise ValueError(f"b: expected a 1-d tensor, got {getattr(b, 'shape', type(b).__name__)}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters: expected an int >= 0, got {iters!r}")
    b = b.detach()
    x = torch.zeros_like(b)  # (n,)
    r = b.clone()  # residual b - A x
    p = b.clone()  # search direction
    rdotr = r.dot(r)
    used = 0
    for _ in range(iters):
        if rdotr.item() < residual_tol:
            break
        Ap = Avp(p)
        used += 1
        pAp = p.dot(Ap)
        if not pAp.item() > 0:  # no positive curvature along p: stop where we are
            break
        alpha = rdotr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        new_rdotr = r.dot(r)
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    if return_info:
        return x, {"residual": math.sqrt(max(rdotr.item(), 0.0)), "iters": used}
    return x


def trpo_step(
    params: Sequence[Tensor],
    surrogate_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    max_kl: float,
    cg_iters: int = 10,
    damping: float = 0.1,
    backtrack_coeff: float = 0.8,
    backtrack_iters: int = 10,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """One TRPO update (Schulman et al. 2015, section 6 and Appendix C), in place on params:

        maximise L(theta)  subject to  KL_bar(theta_old, theta) <= delta

        g = grad L,   H = Hessian of KL_bar at theta_old (+ damping I),   x = H^-1 g  by CG
        full step  s = sqrt(2 delta / x^T H x) x       (the step whose quadratic KL model is delta)
        line search theta = theta_old + c^k s, k = 0, 1, ..., backtrack_iters - 1, accepting the
        first with KL_bar <= delta and L(theta) - L(theta_old) > 0.

    surrogate_fn() -> scalar L to maximise (it must rebuild its graph from the current params);
    kl_fn() -> scalar mean KL(pi_old || pi_theta), 0 with zero gradient at theta_old.
    H includes the damping, as in the reference code (it keeps CG well posed when the Fisher is
    singular, e.g. softmax logits). If no step is accepted the old parameters are restored exactly.

    reduce_fn (optional, for data spread over processes): surrogate_fn() and kl_fn() return this
    process's part and reduce_fn(t) the global value of a part t, a scalar or a flat vector (e.g.
    the sum over processes of the parts, each weighted by its share of the data); it is applied to
    L, g, every H v and the line search's KL and L, so every process takes the same step. It must
    return a new tensor, not change its argument. None: one process holds all the data.

    Returns floats: "kl" and "improvement" of the accepted step (0 when rejected), "step_frac"
    (c^k, 0 when rejected), "backtracks" (k; backtrack_iters when rejected), "expected_improvement"
    (g^T s, the linear model's prediction for the full step), "cg_residual" (CG's final residual norm, ||g - H x|| in exact arithmetic).
    """
    params = _param_list(params)
    if not max_kl > 0:
        raise ValueError(f"max_kl: expected > 0, got {max_kl}")
    if not 0 < backtrack_coeff < 1:
        raise ValueError(f"backtrack_coeff: expected in (0, 1), got {backtrack_coeff}")
    if not (isinstance(backtrack_iters, int) and backtrack_iters >= 1):
        raise ValueError(f"backtrack_iters: expected an int >= 1, got {backtrack_iters!r}")

    reduce = reduce_fn if reduce_fn is not None else (lambda t: t)
    old = flat_params(params)  # (n,)
    surr_old = surrogate_fn()
    g = reduce(flat_grad(surr_old, params))  # (n,)
    surr_old = reduce(surr_old.detach()).item()
    rejected = {"kl": 0.0, "improvement": 0.0, "step_frac": 0.0, "backtracks": backtrack_iters,
                "expected_improvement": 0.0, "cg_residual": 0.0}
    if not bool(torch.isfinite(g).all()) or g.abs().max().item() == 0.0:
        return rejected  # nothing to climb (or a broken gradient): leave the parameters as they are

    hvp = make_hvp(kl_fn(), params, damping, reduce_fn)
    x, info = conjugate_gradient(hvp, g, iters=cg_iters, return_info=True)  # x ~= H^-1 g
    xHx = x.dot(hvp(x)).item()
    rejected["cg_residual"] = info["residual"]
    if not (xHx > 0 and math.isfinite(xHx)):
        return rejected
    full_step = math.sqrt(2.0 * max_kl / xHx) * x  # (n,)
    expected_improvement = g.dot(full_step).item()

    with torch.no_grad():
        for k in range(backtrack_iters):
            frac = backtrack_coeff**k
            set_flat_params(params, old + frac * full_step)
            kl = reduce(kl_fn()).item()
            improvement = reduce(surrogate_fn()).item() - surr_old
            if kl <= max_kl and improvement > 0:  # False for nan, so a nan never passes
                return {"kl": kl, "improvement": improvement, "step_frac": frac, "backtracks": k,
                        "expected_improvement": expected_improvement, "cg_residual": info["residual"]}
        set_flat_params(params, old)
    rejected["expected_improvement"] = expected_improvement
    return rejected
