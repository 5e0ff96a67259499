"""The trainer's Adam: fused (one pass over each parameter per step), with a leaner ``step``."""
from __future__ import annotations

import torch


class LeanAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` whose ``step`` calls the fused kernel directly when nothing
    else is needed: one parameter group, every parameter with a dense gradient and its state made
    (the first step goes through Adam.step), no amsgrad / maximize / capturable / differentiable,
    no closure. Same update (``torch._fused_adam_``, what Adam.step calls), same state_dict. The
    per-parameter step counts become views of one tensor, so one ``add_`` counts them all (CPU
    for-each adds go one tensor at a time). Together ~0.3 ms less per step, ~7% of a 1,000-item
    CPU step."""

    def __init__(self, params, lr: float, weight_decay: float):
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)
        self._steps: torch.Tensor | None = None   # the step counts, one row per parameter
        self._step_ids: list[int] = []

    def _shared_steps(self, states: list[dict]) -> torch.Tensor:
        """One tensor holding every parameter's step count, re-made when the states' own step
        tensors changed (the first fast step, load_state_dict)."""
        if self._steps is None or [id(s["step"]) for s in states] != self._step_ids:
            self._steps = torch.stack([s["step"] for s in states])
            for i, state in enumerate(states):
                state["step"] = self._steps[i]
            self._step_ids = [id(s["step"]) for s in states]
        return self._steps

    def step(self, closure=None):
        if closure is not None or len(self.param_groups) != 1:
            return super().step(closure)
        group = self.param_groups[0]
        params = group["params"]
        if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
                or torch.is_tensor(group["lr"])
                or any(p.grad is None or p.grad.is_sparse or not self.state[p] for p in params)):
            return super().step()
        states = [self.state[p] for p in params]
        self._shared_steps(states).add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                           [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           amsgrad=False, maximize=False)
        return None


def make_optimizer(params, lr: float, l2: float, device: torch.device | None = None,
                   capturable: bool = False) -> torch.optim.Adam:
    """Adam with learning rate ``lr`` and L2 ``l2``: :class:`LeanAdam` (fused: the for-each default
    makes ~7 passes over the [n_items + 1, d] embedding per step on CPU), or, for a step captured
    as a CUDA graph (``capturable``), Adam with its state on the device
    (:func:`srgnn.cuda_graphs.make_optimizer`)."""
    if capturable:
        from srgnn import cuda_graphs

        return cuda_graphs.make_optimizer(params, lr, l2, device or torch.device("cuda"))
    return LeanAdam(params, lr=lr, weight_decay=l2)
