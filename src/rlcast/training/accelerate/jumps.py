"""Writing a prediction into the model, every tensor checked before it touches a parameter, and undoing it exactly."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _problem(name, tensor, params: dict[str, torch.nn.Parameter], written: dict) -> str | None:
    """Why `tensor` cannot be the new value of parameter `name` (None: it can): not a trainable parameter, already
    written in this jump, not a floating-point tensor, or not of the parameter's shape. A broadcastable shape is
    refused too: copy_ would spread one row over the whole matrix."""
    param = params.get(name)
    if param is None:
        return f"{name} is not a trainable parameter"
    if name in written:
        return f"{name} predicted twice"
    if not isinstance(tensor, torch.Tensor):
        return f"{name} predicted as a {type(tensor).__name__}, not a tensor"
    if not tensor.is_floating_point():
        return f"{name} predicted as {tensor.dtype}, not a floating-point tensor"
    if tensor.shape != param.shape:
        return f"{name} predicted with shape {tuple(tensor.shape)}, the parameter has {tuple(param.shape)}"
    return None


def apply(predictions: Iterable, params: dict[str, torch.nn.Parameter], backup: dict[str, torch.Tensor]) -> str | None:
    """Copy (name, tensor) predictions into `params` one tensor at a time: each checked (`_problem`, then finite in
    the parameter's dtype), the parameter's current value copied into `backup` (CPU, once per name), the new value
    written. At the first bad tensor: why, with nothing more written (`restore(params, backup)` undoes the rest)."""
    with torch.no_grad():
        for name, tensor in predictions:
            why = _problem(name, tensor, params, backup)
            if why:
                return why
            param = params[name]
            value = tensor.to(param.dtype)  # finite in float32 can overflow in a half-precision parameter
            if not torch.isfinite(value).all():
                return f"{name} has non-finite weights (in {param.dtype})"
            backup[name] = param.detach().to("cpu", copy=True)
            param.copy_(value)
    return None


def restore(params: dict[str, torch.nn.Parameter], backup: dict[str, torch.Tensor]) -> None:
    """The exact pre-jump weights: every overwritten tensor copied back from its backup (same dtype: bitwise)."""
    with torch.no_grad():
        for name, saved in backup.items():
            params[name].copy_(saved)
