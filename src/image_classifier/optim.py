"""Muon for convolution kernels and SGD for everything else, as one optimizer (airbench94_muon).

`torch.optim.Muon` takes 2-D parameters only, so convolution kernels (C_out, C_in, k, k) need this:
each kernel's update is its Nesterov momentum flattened to (C_out, C_in*k*k) and orthogonalised by a
Newton-Schulz iteration (all singular values pushed towards 1), and the kernel's norm is held at
sqrt(C_out) (BatchNorm after every convolution makes its scale irrelevant, so only the direction
learns). Groups without `use_muon` take torch's own SGD step. One optimizer keeps Accelerate,
the schedulers, checkpoints and `freeze_backbone` as they are for SGD.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.optim.sgd import sgd

__all__ = ["Muon", "orthogonalize"]

# The quintic Newton-Schulz coefficients of torch.optim.Muon and airbench (steepest slope at zero).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """About U V^T of g = U S V^T for a 2-D g (singular values land in roughly [0.5, 1.5]), in float32."""
    a, b, c = NS_COEFFICIENTS
    x = g.float() / (g.norm() + eps)                 # top singular value <= 1
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T                               # (rows, rows): the small side
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Parameter groups with `use_muon=True` take the Muon step (momentum, then orthogonalised, at the
    group's `lr`; no weight decay: the norm is fixed); the others SGD (`momentum`, `nesterov`, L2
    `weight_decay`). Every group has its own `lr` and `momentum`."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 3):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, use_muon=False,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon groups take matrices and kernels (2-D or more), not biases")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                for p in params:
                    self._muon_step(p, group)
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
                maximize=False)
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer
        return loss

    def _muon_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
        update = p.grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
        p.mul_(p.shape[0] ** 0.5 / p.norm())         # hold ||W|| at sqrt(C_out)
        p.add_(orthogonalize(update.flatten(1), group["ns_steps"]).view_as(p), alpha=-group["lr"])
