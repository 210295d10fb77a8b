"""Gradient norms for ``hp.report`` without stalling the GPU.

    from trainer_sdk.torch_utils import grad_norm

    loss.backward()
    hp.report(step, loss=loss.detach(), grad_norm=grad_norm(model.parameters()))
    optimizer.step()

Both functions return a 0-d tensor on the gradients' device and never call
``.item()``: nothing waits for the GPU here. Pass the tensor itself to
``hp.report``; the SDK converts it to a number on its own thread, off the
training loop. Only this module of trainer_sdk imports torch, and only when
one of its functions is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["clip_and_norm", "grad_norm"]

_FOREACH_DEVICES = ("cpu", "cuda", "xpu")


def grad_norm(parameters: torch.Tensor | Iterable[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Total norm of the parameters' gradients, as if they were one vector; a 0-d tensor on their device.

    The same number ``torch.nn.utils.clip_grad_norm_`` returns, without
    clipping: per-(device, dtype) groups of gradients are reduced with
    ``torch._foreach_norm`` (``torch.linalg.vector_norm`` where foreach is not
    supported), then the per-tensor norms with ``vector_norm``. Parameters
    without a gradient are skipped; none at all gives ``tensor(0.)``.
    ``norm_type`` may be ``float("inf")``.

    No ``.item()``, no device synchronisation: pass the returned tensor to
    ``hp.report(step, grad_norm=t)``; the SDK converts it off the training thread.
    """
    import torch

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:  # torch >= 2.6: what clip_grad_norm_ itself calls
        return get_total_norm(grads, norm_type, error_if_nonfinite=False, foreach=None)
    return _total_norm(grads, norm_type)


def _total_norm(grads: list[Any], norm_type: float) -> torch.Tensor:
    """clip_grad_norm_'s reduction, for torch versions without ``get_total_norm``."""
    import torch

    norm_type = float(norm_type)
    if not grads:
        return torch.tensor(0.0)
    first_device = grads[0].device
    groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms: list[torch.Tensor] = []
    with torch.no_grad():
        for (device, _), tensors in groups.items():
            if device.type in _FOREACH_DEVICES and all(type(t) is torch.Tensor for t in tensors):
                norms.extend(torch._foreach_norm(tensors, norm_type))
            else:
                norms.extend(torch.linalg.vector_norm(t, norm_type) for t in tensors)
        return torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)


def clip_and_norm(
    parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``: clip in place, return the total norm before clipping.

    Clipping computes the norm anyway, so reporting it costs nothing more; like
    :func:`grad_norm`, the result stays a 0-d tensor on the device (no sync):
    ``hp.report(step, grad_norm=clip_and_norm(model.parameters(), 1.0))``.
    """
    import torch

    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type, error_if_nonfinite=False)
