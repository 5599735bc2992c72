"""The optimizers: `build_optimizer` for --optimizer, the parameter groups it uses (`parameter_groups`: head
and backbone, weights and biases), `freeze_backbone`, and Muon.

Muon for convolution kernels and SGD for everything else, as one optimizer (airbench94_muon).

`torch.optim.Muon` takes 2-D parameters only, so convolution kernels (C_out, C_in, k, k) need this:
each kernel's update is its Nesterov momentum flattened to (C_out, C_in*k*k) and orthogonalised by a
Newton-Schulz iteration (all singular values pushed towards 1), and the kernel's norm is held at
sqrt(C_out) (BatchNorm after every convolution makes its scale irrelevant, so only the direction
learns). Groups without `use_muon` take torch's own SGD step. One optimizer keeps Accelerate,
the schedulers, checkpoints and `freeze_backbone` as they are for SGD.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.optim.sgd import sgd

from .config import TrainingArguments
from .timm_models import classifier_module

__all__ = ["build_optimizer", "parameter_groups", "freeze_backbone", "Muon", "orthogonalize"]

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


def build_optimizer(model: torch.nn.Module, args: TrainingArguments, lr: Optional[float] = None,
                    backbone_lr: Optional[float] = None) -> torch.optim.Optimizer:
    """Muon (+ SGD), SGD (momentum, Nesterov), Adam or AdamW; see `parameter_groups` for weight decay.

    `lr` overrides --learning_rate (the --scale_lr value, see `effective_learning_rate`); `backbone_lr` is
    the learning rate of a timm model's layers but the classifier (default `lr`; see `parameter_groups`).
    With muon, the convolution kernels take Muon at `lr` (their group first: it is the one logged) and
    the rest SGD at --sgd_learning_rate, scaled alike.
    """
    lr = args.learning_rate if lr is None else lr
    if args.optimizer == "muon":
        scale = lr / args.learning_rate
        sgd_lr = args.sgd_learning_rate * scale
        kernels = [p for p in model.parameters() if p.requires_grad and p.ndim == 4]
        rest = parameter_groups(model, sgd_lr, backbone_lr and backbone_lr * sgd_lr / lr, args.weight_decay,
                                args.bias_learning_rate_scale, exclude=kernels)
        muon = [{"params": kernels, "lr": lr, "momentum": args.muon_momentum, "use_muon": True,
                 "backbone": classifier_module(model) is not None}] if kernels else []
        return Muon(muon + rest, lr=sgd_lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0)
    groups = parameter_groups(model, lr, backbone_lr, args.weight_decay, args.bias_learning_rate_scale)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum,
                               nesterov=args.nesterov and args.momentum > 0)
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def parameter_groups(model: nn.Module, lr: float, backbone_lr: Optional[float] = None,
                     weight_decay: float = 0.0, bias_lr_scale: Optional[float] = None,
                     exclude: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the classifier at `lr`, the rest (the backbone) at `backbone_lr`
    (default `lr`); weight decay on weight matrices and kernels, not on biases and norm parameters.

    With `bias_lr_scale` the 1-D parameters (biases, norm scales and shifts) train at that multiple of
    their group's rate instead, decayed by `weight_decay / bias_lr_scale` so that the decay per step
    (lr x decay) equals the weights' (airbench's BatchNorm-bias scaling). `exclude` leaves parameters
    out (those another update rule takes, see `Muon`).

    The head groups come first (param_groups[0]["lr"] is --learning_rate, the one logged). Backbone
    groups carry `"backbone": True`, which `freeze_backbone` acts on. Empty groups are left out; every
    parameter with requires_grad and not excluded is in exactly one group. Schedulers scale each group's
    own lr. A model without a backbone/head split (the small CNN) gets the groups [weights, biases] at `lr`.
    """
    head = classifier_module(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    backbone_lr = lr if backbone_lr is None else backbone_lr
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(b, d): [] for b in (False, True) for d in (True, False)}
    seen: set[int] = {id(p) for p in exclude}
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_backbone = bool(head_ids) and id(p) not in head_ids
        buckets[(is_backbone, p.ndim > 1)].append(p)
    groups = []
    for (is_backbone, is_weight), params in buckets.items():
        if not params:
            continue
        if is_weight:
            scale, decay = 1.0, weight_decay
        elif bias_lr_scale is None:
            scale, decay = 1.0, 0.0
        else:
            scale, decay = bias_lr_scale, weight_decay / bias_lr_scale
        groups.append({"params": params, "lr": (backbone_lr if is_backbone else lr) * scale, "weight_decay": decay,
                       "backbone": is_backbone})
    return groups


def _drop_frozen_grads(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Optimizer step pre-hook: parameters of frozen groups lose their gradient, so the step skips them
    entirely (no update, no weight decay, no momentum or Adam state)."""
    for group in optimizer.param_groups:
        if group.get("frozen"):
            for p in group["params"]:
                p.grad = None


def freeze_backbone(optimizer: torch.optim.Optimizer, frozen: bool) -> bool:
    """Freeze (or release) the backbone groups of an optimizer built from `parameter_groups`.

    Works by dropping the backbone's gradients just before each optimizer step (a step pre-hook,
    installed once), so it is correct under DDP, gradient accumulation, mixed precision and any
    scheduler: the backbone still takes part in the forward and backward pass (BatchNorm statistics
    keep adapting) but its weights do not move. Accepts Accelerate's wrapped optimizer. Returns
    whether anything changed.
    """
    inner = getattr(optimizer, "optimizer", optimizer)          # AcceleratedOptimizer -> torch optimizer
    if not getattr(inner, "_backbone_freeze_hook", None):
        inner._backbone_freeze_hook = inner.register_step_pre_hook(_drop_frozen_grads)
    changed = False
    for group in inner.param_groups:
        if group.get("backbone") and bool(group.get("frozen")) != frozen:
            group["frozen"] = frozen
            changed = True
    return changed
