"""MetaLog's meta-learning step (Algorithm 1, eq. 2-3) with `torch.func.functional_call`.

One meta-task per optimizer step: the meta-train systems give L_S(θ); one inner SGD step gives
θ' = θ - α ∇L_S(θ) (eq. 2); the held-out meta-test system gives L_T(θ') at the adapted weights; the
meta-learner minimises L_S(θ) + β L_T(θ') (eq. 3). In our zero-label setting the meta-test system is
another *source* (rotated every step), so the model is trained to generalise to a system it did not
just adapt on, which is exactly the deployment situation.

* second order: ∇_θ L_T(θ') flows through the inner update (create_graph=True), as in eq. 3;
* first order (FOMAML): the inner gradient is detached, ∂θ'/∂θ = I; ~4x cheaper on CPU.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call

from fusionlog.model import Batch, SessionModelOutput


def functional_forward(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> SessionModelOutput:
    """`model(batch)` evaluated at `params` instead of the module's own parameters."""
    with warnings.catch_warnings():
        # nn.GRU warns that swapped-in weights are not one contiguous chunk; harmless here.
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        return functional_call(model, params, (batch.x, batch.mask, batch.session_features))


def inner_update(
    params: dict[str, torch.Tensor], loss: torch.Tensor, inner_lr: float, order: str
) -> dict[str, torch.Tensor]:
    """θ' = θ - α ∇_θ loss. Second order keeps the graph of the gradient so L_T(θ') reaches θ through it."""
    second = order == "second"
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=second, retain_graph=True, allow_unused=True
    )
    adapted = dict(params)
    for name, grad in zip(names, grads, strict=True):
        if grad is None:  # a parameter the loss does not reach
            continue
        adapted[name] = params[name] - inner_lr * (grad if second else grad.detach())
    return adapted
